"""Run arguments, checked against the libraries' real rules before anything loads (
F13): `max_memory` as accelerate parses it, `device_map` values, the attention implementation's
requirements, and the dtype against the model and the GPU.

GPU facts come from the `nvml` probe when it has them; without them those parts are skipped, never
guessed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from doctor.context import DoctorContext
from doctor.plan import rerun_command
from doctor.probes import Unavailable
from doctor.probes.memory import MEMORY
from doctor.probes.model import MODEL
from doctor.probes.nvml import NVML, GpuFacts
from doctor.probes.run_args import RUN_ARGS, SCRIPT_SETTINGS, RunArgFacts
from doctor.probes.script_reader import Setting
from doctor.registry import Outcome, check
from doctor.report.model import CodeEdit, Evidence, Fix, Status, worst_status
from run_plan.errors import UsageError
from run_plan.shell import shell_join
from run_plan.sizes import MaxMemory, format_max_memory, is_bits, max_memory_bytes, parse_max_memory
from run_plan.spec import LEAN_ATTN, RunSpec
from run_plan.units import gib

SECTION = "run-args"
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_EAGER_CONTEXT_LIMIT = 16384  # eager attention materialises heads x n² scores: 40 x 16k² fp32 ≈ 40 GiB
_BIG_MODELING = "https://huggingface.co/docs/accelerate/usage_guides/big_modeling"
_EXAMPLE_BUDGET = "0=74GiB,cpu=200GiB"
_KEY_SPELLINGS = re.compile(r"(?:(?<=^)|(?<=,))\s*(?:cuda:|gpu:?)(\d+)\s*=", re.IGNORECASE)


def _as_python(budget_text: str) -> str:
    """`0=74GiB,cpu=200GiB` as the dict a script passes: {0: '74GiB', 'cpu': '200GiB'}."""
    budget = parse_max_memory(budget_text)
    return "{" + ", ".join(f"{k!r}: {v!r}" for k, v in budget.items()) + "}"


def corrected_budget(text: str) -> str | None:
    """The budget with the slips accelerate rejects or misreads put right (`cuda:0=` keys, a lowercase
    b that means bits), or None when what was meant cannot be told."""
    fixed = _KEY_SPELLINGS.sub(lambda m: f"{m.group(1)}=", text.strip())
    fixed = re.sub(r"(?<=\d)([KMGT])b\b", lambda m: f"{m.group(1).upper()}B", fixed, flags=re.IGNORECASE)
    try:
        budget = parse_max_memory(fixed)
    except UsageError:
        return None
    if any(isinstance(v, str) and is_bits(v) for v in budget.values()):
        return None
    return format_max_memory(budget)


def budget_fix(ctx: DoctorContext, summary: str, corrected: str | None) -> Fix:
    """The same run with the budget rewritten, where the budget was written: the script's own line
    (as code) when a --script set it, else the doctor command with the new --max-memory."""
    source = ctx.target.source_of("max_memory")
    if source.startswith("script "):
        path, _, line = source.removeprefix("script ").rpartition(":")
        code = f"max_memory={_as_python(corrected or _EXAMPLE_BUDGET)}"
        return Fix(summary, (), _BIG_MODELING, (CodeEdit(path, int(line) if line.isdigit() else None, code),))
    if corrected:
        return Fix(summary, (rerun_command(ctx.target, max_memory=corrected),), _BIG_MODELING)
    return Fix(
        f"{summary}, e.g. --max-memory {_EXAMPLE_BUDGET} (in a script: max_memory="
        f"{_as_python(_EXAMPLE_BUDGET)})",
        (),
        _BIG_MODELING,
    )


def gpu_list(ctx: DoctorContext) -> tuple[GpuFacts, ...]:
    """GPUs from the nvml probe, or () when it has no facts."""
    facts = ctx.probe(NVML)
    if isinstance(facts, Unavailable):
        return ()
    return tuple(facts.gpus)


# ---------------------------------------------------------------- max_memory


@check(
    "max-memory-format", title="--max-memory as accelerate will read it", section=SECTION, needs=(RUN_ARGS,)
)
def max_memory_format(ctx: DoctorContext) -> Outcome:
    text = ctx.target.max_memory
    if not text:
        return Outcome.skip("no --max-memory given (transformers plans with ~90% of each GPU's free memory)")
    facts = ctx.needed(RUN_ARGS)
    evidence = [Evidence("max_memory", text, "command line"), _confidence(facts)]
    fix = budget_fix(ctx, "Give accelerate integer GPU keys and sizes with units", corrected_budget(text))
    try:
        budget = parse_max_memory(text)
    except UsageError as exc:
        return Outcome.fail(exc.message, evidence, fix)
    if facts.accelerate_errors:  # accelerate's own verdict beats our replica
        value, message = next(iter(facts.accelerate_errors.items()))
        return Outcome.fail(f"accelerate rejects {value!r}: {message}", evidence, fix)
    sizes = (
        max_memory_bytes(budget)
        if facts.accelerate_sizes is None
        else {k: int(facts.accelerate_sizes.get(str(v)) or 0) for k, v in budget.items()}
    )
    evidence.append(Evidence("max_memory.bytes", {str(k): v for k, v in sizes.items()}, "accelerate"))
    return _judge_budget(
        ctx, budget, sizes, gpu_list(ctx), evidence, lower_confidence=facts.accelerate_sizes is None
    )


def _confidence(facts: RunArgFacts) -> Evidence:
    if facts.accelerate_sizes is not None:
        version = facts.versions.get("accelerate")
        return Evidence(
            "checked_by", f"accelerate {version} convert_file_size_to_int (child process)", "accelerate"
        )
    return Evidence(
        "checked_by",
        f"niah-doctor's replica of accelerate's rules, lower confidence "
        f"({facts.accelerate_error or 'accelerate not asked'})",
        "doctor",
    )


def _judge_budget(
    ctx: DoctorContext,
    budget: MaxMemory,
    sizes: Mapping[int | str, int],
    gpus: tuple[GpuFacts, ...],
    evidence: list[Evidence],
    *,
    lower_confidence: bool,
) -> Outcome:
    bits = [(k, v) for k, v in budget.items() if isinstance(v, str) and is_bits(v)]
    if bits:
        shown = ", ".join(f"{k}={v} = {sizes[k] / 1e9:.1f} GB" for k, v in bits)
        return Outcome.warn(
            f"LOWERCASE b MEANS BITS to accelerate: {shown} (one eighth of what you meant)",
            evidence,
            budget_fix(
                ctx, "Write bytes with a capital B: GB or GiB", corrected_budget(format_max_memory(budget))
            ),
        )
    over = _over_capacity(sizes, gpus)
    if over:
        return Outcome.fail(
            over,
            evidence,
            budget_fix(
                ctx,
                "Leave headroom below the card's total (CUDA context, activations, KV cache need it)",
                _within_capacity(budget, sizes, gpus),
            ),
        )
    busy = _over_free(sizes, gpus)
    if busy:
        return Outcome.warn(
            busy, evidence, Fix("Free the GPU (see gpu-busy) or lower the budget", ("nvidia-smi",))
        )
    missing = [k for k in sizes if isinstance(k, int) and gpus and k >= len(gpus)]
    if missing:
        return Outcome.warn(
            f"GPU {missing[0]} does not exist here ({len(gpus)} visible); accelerate only warns "
            "and ignores it",
            evidence,
        )
    notes = [
        f"{k}={v} is {sizes[k] / 2**30:.1f} GiB (GB = 10^9, GiB = 2^30)"
        for k, v in budget.items()
        if isinstance(v, str) and v.upper().endswith("GB")
    ]
    summary = "valid for accelerate: " + ", ".join(f"{k}={gib(b)}" for k, b in sizes.items())
    if notes:
        summary += "; note " + "; ".join(notes)
    if lower_confidence:
        summary += " (checked by a replica of accelerate's rules: lower confidence)"
    return Outcome.ok(summary, evidence)


def _over_capacity(sizes: Mapping[int | str, int], gpus: tuple[GpuFacts, ...]) -> str | None:
    for key, size in sizes.items():
        if isinstance(key, int) and key < len(gpus):
            total = int(gpus[key].memory_total_bytes or 0)
            if total and size > total:
                return (
                    f"budget for GPU {key} ({gib(size)}) is above the card's capacity ({gib(total)}, "
                    f"{gpus[key].name}): accelerate will plan more than fits and the load "
                    "runs out of memory"
                )
    return None


def _within_capacity(budget: MaxMemory, sizes: Mapping[int | str, int], gpus: tuple[GpuFacts, ...]) -> str:
    """The budget with every GPU above its card cut to 90 % of the card (what transformers plans by default)."""
    out = dict(budget)
    for key, size in sizes.items():
        if isinstance(key, int) and key < len(gpus):
            total = int(gpus[key].memory_total_bytes or 0)
            if total and size > total:
                out[key] = f"{int(total * 0.9) >> 30}GiB"
    return format_max_memory(out)


def _over_free(sizes: Mapping[int | str, int], gpus: tuple[GpuFacts, ...]) -> str | None:
    """Other processes already hold memory: the budget fits the card but not what is free now."""
    for key, size in sizes.items():
        if isinstance(key, int) and key < len(gpus):
            free = gpus[key].memory_free_bytes
            if free is not None and size > free:
                return (
                    f"budget for GPU {key} ({gib(size)}) is above its free memory right now ({gib(free)}): "
                    "other processes hold the rest"
                )
    return None


# ---------------------------------------------------------------- device_map


@check("device-map-value", title="--device-map value", section=SECTION)
def device_map_value(ctx: DoctorContext) -> Outcome:
    value = (ctx.target.device_map or "").strip()
    if not value:
        return Outcome.skip("no --device-map given")
    evidence = [Evidence("device_map", value, "command line")]
    gpus = gpu_list(ctx)
    if value in DEVICE_MAP_STRATEGIES:
        return _strategy_note(value, ctx, evidence)
    index = _device_index(value)
    if index is None and value not in ("cpu", "cuda", "mps", "disk", "meta"):
        return Outcome.fail(
            f"{value!r} is not a device_map transformers accepts",
            evidence,
            Fix(f"Use one of {', '.join(DEVICE_MAP_STRATEGIES)}, or one device: cuda:0, cpu"),
        )
    if index is not None and gpus and index >= len(gpus):
        return Outcome.fail(
            f"{value}: there are only {len(gpus)} GPUs here",
            evidence,
            Fix("Pick an existing GPU index", ("nvidia-smi -L",)),
        )
    if ctx.target.max_memory:
        return Outcome.warn(
            f"device_map={value} puts everything on one device: --max-memory is ignored",
            evidence,
            Fix("Use device_map=auto for max_memory to take effect"),
        )
    return Outcome.ok(f"everything on {value}", evidence)


def _device_index(value: str) -> int | None:
    text = value.removeprefix("cuda:")
    return int(text) if text.isascii() and text.isdigit() else None


def _strategy_note(value: str, ctx: DoctorContext, evidence: list[Evidence]) -> Outcome:
    if value == "balanced_low_0" and len(gpu_list(ctx)) == 1:
        return Outcome.warn(
            "balanced_low_0 keeps GPU 0 nearly empty; with one GPU most weights go to CPU",
            evidence,
            Fix("Use device_map=auto on a single GPU"),
        )
    return Outcome.ok(f"{value}: accelerate plans the placement", evidence)


# ---------------------------------------------------------------- attention implementation


@check(
    "attn-implementation", title="Attention implementation is available", section=SECTION, needs=(RUN_ARGS,)
)
def attn_implementation(ctx: DoctorContext) -> Outcome:
    attn = ctx.target.attn
    facts = ctx.needed(RUN_ARGS)
    evidence = [
        Evidence("attn_implementation", attn, "command line"),
        Evidence(
            "versions",
            {k: v for k, v in facts.versions.items() if k != "transformers"},
            "metadata",
            "pip list",
        ),
    ]
    if attn == LEAN_ATTN:
        return _lean_attention(ctx, facts, evidence)
    if attn == "flash_attention_2":
        return _flash_attention(ctx, facts, evidence)
    if attn == "flex_attention":
        return _flex_attention(ctx, facts, evidence)
    if attn == "eager" and (ctx.target.context or 0) > _EAGER_CONTEXT_LIMIT:
        return Outcome.warn(
            f"eager attention materialises the full n² score matrix: at {ctx.target.context} "
            "tokens that alone exceeds any GPU",
            evidence,
            Fix("Use sdpa (default) or flex_attention", (rerun_command(ctx.target, attn="sdpa"),)),
        )
    return Outcome.ok(f"{attn} (built into torch)" if attn == "sdpa" else attn, evidence)


def _lean_attention(ctx: DoctorContext, facts: RunArgFacts, evidence: list[Evidence]) -> Outcome:
    """niah's own attention (doctor/runtime/attention.py): the flash kernel with native GQA needs torch ≥ 2.5
    and a GPU of sm80+, and the model's attention must be one it computes exactly (the sizing child asks
    the model itself, on the meta device).

    Without a planned GPU it is a FAIL, not a note: on the CPU each block is the math reference (scores
    materialised in fp32: slower and larger than sdpa, and not what the plan's memory trace sized), and on
    a CUDA card older than sm_80 torch's flash op refuses to run, so every prefill would fail."""
    from doctor.plan import FLASH_MIN_CAPABILITY, off_the_gpus, planned_gpus_or_none, resolve_plan

    torch_version = facts.versions.get("torch")
    if torch_version is not None and _major_minor(torch_version) < (2, 5):
        return Outcome.fail(
            f"niah_lean needs torch ≥ 2.5, whose flash kernel takes grouped K/V heads (installed: {torch_version})",
            evidence,
            _sdpa_fix(ctx, "Upgrade torch, or use transformers' sdpa"),
        )
    plan = resolve_plan(ctx) if ctx.target.model else None
    if plan is not None and plan.spec.attn != LEAN_ATTN:
        why = next((d.why for d in plan.decisions if d.name == "attn"), "")
        return Outcome.ok(f"{plan.spec.attn} ({why})", evidence)
    gpus = planned_gpus_or_none(ctx)
    old = [g for g in gpus if g.compute_capability and g.compute_capability < FLASH_MIN_CAPABILITY]
    off = off_the_gpus(ctx.target)
    if not gpus or off:
        where = f"--device-map {off} puts the model off the GPUs" if off else "no GPU is planned"
        return Outcome.fail(
            f"niah_lean is a GPU path (torch's flash kernel, sm_80+) and {where}: there it would compute "
            "every block with its math reference (scores materialised in fp32, slower and larger than "
            "sdpa, and not what the memory plan sized)",
            evidence,
            _sdpa_fix(ctx, "Use transformers' sdpa there (or leave --attn on auto, which does)"),
        )
    if old:
        card = old[0]
        capability = card.compute_capability or (0, 0)
        return Outcome.fail(
            f"niah_lean needs torch's flash kernel, which runs on sm_80+ GPUs; {card.name} is "
            f"sm_{capability[0]}{capability[1]}, where the kernel refuses to run: every prefill would fail",
            evidence,
            _sdpa_fix(ctx, f"Use transformers' sdpa on {card.name} (or leave --attn on auto, which does)"),
        )
    refused = _lean_refused(ctx)
    if refused:
        return Outcome.fail(
            f"niah_lean cannot compute this model's attention exactly: {refused}",
            evidence,
            _sdpa_fix(ctx, "Use transformers' own path (or leave --attn on auto, which does)"),
        )
    limited = _lean_limit_outcome(ctx, plan.spec if plan is not None else ctx.target, evidence)
    if limited is not None:
        return limited
    chosen = next((d.why for d in plan.decisions if d.name == "attn"), "") if plan else ""
    return Outcome.ok(
        "niah_lean (flash kernel, bottom-right causal, native GQA: no repeated K/V, no mask"
        + ("; chosen by auto)" if chosen else ")"),
        evidence,
    )


def _lean_refused(ctx: DoctorContext) -> str | None:
    return (_sizing_trace(ctx).get("attn_refused") or {}).get(LEAN_ATTN)


def _sizing_trace(ctx: DoctorContext) -> dict[str, Any]:
    if not ctx.target.model:
        return {}
    facts = ctx.probe(MEMORY)
    if not isinstance(facts, dict):
        return {}
    return dict((facts.get("sizing") or {}).get("trace") or {})


def _lean_limit_outcome(ctx: DoctorContext, spec: RunSpec, evidence: list[Evidence]) -> Outcome | None:
    """A lean path that refuses this model from a position on (the sizing child's probe found where): FAIL
    when the plan feeds that position, else a warning that the estimate follows transformers' path."""
    from doctor.plan import last_fed_position, lean_limit

    trace = _sizing_trace(ctx)
    found = lean_limit(trace)
    if found is None:
        return None
    position, why = found
    reach = last_fed_position(spec)
    evidence = [
        *evidence,
        Evidence("lean_refuses_from_position", position, "memory probe (the lean path's meta forward)"),
        Evidence("last_position_fed", reach, "plan: the longest length and its answer tokens"),
    ]
    fix = _sdpa_fix(ctx, "Use transformers' own path (or leave --attn on auto, which does)")
    if reach >= position:
        return Outcome.fail(
            f"niah_lean refuses this model from position {position:,} on ({why}); the plan feeds positions up "
            f"to {reach:,} (a {int(spec.context or 0):,}-token prompt and up to {spec.max_new_tokens} answer "
            "tokens), so the run would stop there",
            evidence,
            fix,
        )
    fallback = trace.get("attn_implementation") or "sdpa"
    return Outcome.warn(
        f"niah_lean computes this model only before position {position:,} ({why}); the plan stays below it, "
        f"but the memory estimate follows transformers' {fallback}, which the sizing traced instead (its "
        "trace reaches past that position)",
        evidence,
        fix,
    )


def _sdpa_fix(ctx: DoctorContext, summary: str, *first: str, at: Setting | None = None) -> Fix:
    """Switch to sdpa where the attention was chosen: in the script (`at`, or where the plan says the value
    came from) as code at its line, else as the doctor command with --attn sdpa."""
    source = ctx.target.source_of("attn")
    where: tuple[str, int | None] | None = (at.file, at.line) if at is not None else None
    if where is None and source.startswith("script "):
        path, _, line = source.removeprefix("script ").rpartition(":")
        where = (path, int(line) if line.isdigit() else None)
    if where is not None:
        return Fix(summary, first, None, (CodeEdit(where[0], where[1], 'attn_implementation="sdpa"'),))
    return Fix(summary, (*first, rerun_command(ctx.target, attn="sdpa")))


def _flash_attention(
    ctx: DoctorContext, facts: RunArgFacts, evidence: list[Evidence], at: Setting | None = None
) -> Outcome:
    if not facts.flash_attn_importable:
        return Outcome.fail(
            "flash_attention_2 needs the flash-attn package, which is not installed",
            evidence,
            _sdpa_fix(
                ctx,
                "Install it (needs a matching CUDA toolkit), or use sdpa",
                "pip install flash-attn --no-build-isolation",
                at=at,
            ),
        )
    old = [(g.name, cc) for g in gpu_list(ctx) if (cc := g.compute_capability or (9, 0)) < (8, 0)]
    if old:
        name, (major, minor) = old[0]
        return Outcome.fail(
            f"flash_attention_2 needs compute capability ≥ 8.0; {name} has {major}.{minor}",
            evidence,
            _sdpa_fix(ctx, "Use sdpa on this GPU", at=at),
        )
    return Outcome.ok(f"flash_attention_2 (flash-attn {facts.versions.get('flash-attn')})", evidence)


def _flex_attention(
    ctx: DoctorContext, facts: RunArgFacts, evidence: list[Evidence], at: Setting | None = None
) -> Outcome:
    torch_version = facts.versions.get("torch")
    if torch_version is None or _major_minor(torch_version) < (2, 5):
        return Outcome.warn(
            f"flex_attention needs torch ≥ 2.5 (installed: {torch_version or 'none'})",
            evidence,
            _sdpa_fix(ctx, "Upgrade torch or use sdpa", at=at),
        )
    if facts.versions.get("triton") is None:
        return Outcome.warn(
            "flex_attention compiles Triton kernels, and triton is not installed",
            evidence,
            _sdpa_fix(ctx, "Install the triton build that matches torch, or use sdpa", at=at),
        )
    return Outcome.ok(
        f"flex_attention (torch {torch_version}, triton {facts.versions.get('triton')})", evidence
    )


def _major_minor(version: str) -> tuple[int, int]:
    parts = version.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return (0, 0)


# ---------------------------------------------------------------- dtype


@check("dtype-choice", title="dtype suits the model and the GPU", section=SECTION)
def dtype_choice(ctx: DoctorContext) -> Outcome:
    model = ctx.probe(MODEL)
    config = {} if isinstance(model, Unavailable) else dict(model.config or {})
    dtype = _effective_dtype(ctx.target.dtype, config)
    evidence = [Evidence("dtype", f"{ctx.target.dtype} -> {dtype}", "command line / config.json")]
    old = [(g.name, cc) for g in gpu_list(ctx) if (cc := g.compute_capability) and tuple(cc) < (8, 0)]
    if dtype == "bfloat16" and old:
        name, (major, minor) = old[0]
        return Outcome.fail(
            f"bfloat16 needs compute capability ≥ 8.0 (Ampere); {name} is {major}.{minor}",
            evidence,
            Fix("Use float16 on this GPU, or a newer GPU", (rerun_command(ctx.target, dtype="float16"),)),
        )
    model_type = model.model_type if not isinstance(model, Unavailable) else None
    if dtype == "float16" and model_type and model_type.startswith("llama4"):
        return Outcome.warn(
            "float16 with Llama 4: bfloat16 is recommended (trained in bf16; fp16 can overflow to inf/NaN)",
            evidence,
            Fix("Use bfloat16", (rerun_command(ctx.target, dtype="bfloat16"),)),
        )
    why = "" if ctx.target.dtype != "auto" else " (auto: the checkpoint's dtype, bfloat16 when it names none)"
    return Outcome.ok(f"{dtype}{why}", evidence)


def _effective_dtype(requested: str, config: Mapping[str, Any]) -> str:
    """`auto` means the checkpoint's own dtype (`torch_dtype` in v4 configs, `dtype` in v5), bf16 if none."""
    if requested != "auto":
        return requested
    text_config = nested if isinstance(nested := config.get("text_config"), dict) else {}
    for source in (config, text_config):
        value = source.get("torch_dtype") or source.get("dtype")
        if isinstance(value, str):
            return value
    return "bfloat16"


# ---------------------------------------------------------------- what the run script passes


# Implementations transformers' from_pretrained knows by name; "org/repo" names are hub kernels.
_TRANSFORMERS_ATTN = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


@dataclass(frozen=True)
class _ScriptFinding:
    status: Status
    line: str
    fix: Fix | None = None


def _git_show(setting: Setting) -> tuple[str, ...]:
    path = Path(setting.file)
    return ("git", "-C", str(path.parent), "show", f"HEAD:./{path.name}")


def _setting_evidence(setting: Setting) -> list[Evidence]:
    name = Path(setting.file).name
    value = setting.value if setting.determined else f"could not determine ({setting.note})"
    out = [
        Evidence(
            f"{name}.{setting.key}",
            value,
            f"script {setting.where}",
            ("sed", "-n", f"{setting.line}p", setting.file) if setting.line else None,
        )
    ]
    if setting.committed is not None:
        committed = setting.committed.value if setting.committed.determined else "could not determine"
        out.append(
            Evidence(
                f"{name}.{setting.key}.committed",
                committed,
                f"git HEAD:{name}:{setting.committed.line or '?'}",
                _git_show(setting),
            )
        )
    return out


def _model_resolves(model: object) -> bool:
    if not isinstance(model, str):
        return False
    from doctor.model_config import resolve_model

    return resolve_model(model).found


def _committed_finding(setting: Setting) -> _ScriptFinding | None:
    then = setting.committed
    if then is None:
        return None
    shown_then = repr(then.value) if then.determined else "a value the reader could not determine"
    shown_now = repr(setting.value) if setting.determined else "a value the reader could not determine"
    line = (
        f"{setting.where}: the committed file (HEAD, line {then.line or '?'}) has {setting.key} {shown_then}; "
        f"the working tree has {shown_now}"
    )
    path = Path(setting.file)
    fix = Fix(
        f"Commit and push {path.name}, so a fresh clone, `git checkout` or `git pull` elsewhere runs what "
        "you edited",
        (
            ("git", "-C", str(path.parent), "add", path.name),
            ("git", "-C", str(path.parent), "commit", "-m", f"{path.name}: set {setting.key}"),
            ("git", "-C", str(path.parent), "push"),
        ),
    )
    if setting.key == "model" and not _model_resolves(then.value) and _model_resolves(setting.value):
        return _ScriptFinding(
            Status.FAIL, line + ": the committed id does not resolve (placeholder?), the edited one does", fix
        )
    return _ScriptFinding(Status.WARN, line, fix)


def _quant_finding(setting: Setting) -> _ScriptFinding | None:
    if setting.determined and setting.value == "none" and setting.note.startswith("quantization is off:"):
        why = setting.note.removeprefix("quantization is off:").strip()
        return _ScriptFinding(
            Status.WARN,
            f"{setting.where}: quantization is off behind a flag ({why}): the weights "
            "load unquantized (memory-fit judges whether that fits)",
            Fix(
                "Turn the flag on if the model must be quantized to fit; the doctor's memory "
                "estimate shows both",
                (("doctor", "--script", setting.file, "--quant", "bnb-4bit"),),
            ),
        )
    return None


def _max_memory_finding(setting: Setting) -> _ScriptFinding | None:
    if not setting.determined or not isinstance(setting.value, dict):
        return None
    try:
        budget = parse_max_memory(setting.flag_text() or "")
    except UsageError as exc:
        problem = exc.message.removeprefix("--max-memory ")
        corrected = corrected_budget(setting.flag_text() or "") or _EXAMPLE_BUDGET
        edit = CodeEdit(setting.file, setting.line, f"max_memory={_as_python(corrected)}")
        fix = Fix("Give accelerate integer GPU keys and sizes with units", (), _BIG_MODELING, (edit,))
        return _ScriptFinding(Status.FAIL, f"{setting.where}: max_memory={setting.text}: {problem}", fix)
    bits = [f"{k}={v}" for k, v in budget.items() if isinstance(v, str) and is_bits(v)]
    if bits:
        return _ScriptFinding(
            Status.WARN,
            f"{setting.where}: max_memory {', '.join(bits)}: a lowercase b means "
            "BITS to accelerate (one eighth of what you meant)",
            Fix(
                "Write bytes with a capital B: GB or GiB",
                edits=[
                    CodeEdit(
                        setting.file,
                        setting.line,
                        f"max_memory={_as_python(corrected_budget(format_max_memory(budget)) or _EXAMPLE_BUDGET)}",
                    )
                ],
            ),
        )
    return None


def _attn_finding(ctx: DoctorContext, setting: Setting) -> _ScriptFinding | None:
    attn = setting.value
    if not setting.determined or not isinstance(attn, str) or "/" in attn:
        return None
    if attn not in _TRANSFORMERS_ATTN:
        return _ScriptFinding(
            Status.FAIL,
            f"{setting.where}: attn_implementation={attn!r} is not an implementation "
            "transformers knows: from_pretrained raises ValueError",
            Fix(
                f"Use one of {', '.join(_TRANSFORMERS_ATTN)}",
                edits=[CodeEdit(setting.file, setting.line, 'attn_implementation="sdpa"')],
            ),
        )
    facts = ctx.probe(RUN_ARGS)
    if isinstance(facts, Unavailable) or attn not in ("flash_attention_2", "flex_attention"):
        return None
    outcome = (
        _flash_attention(ctx, facts, [], setting)
        if attn == "flash_attention_2"
        else _flex_attention(ctx, facts, [], setting)
    )
    if outcome.status in (Status.FAIL, Status.WARN):
        return _ScriptFinding(outcome.status, f"{setting.where}: {outcome.summary}", outcome.fix)
    return None


def _undetermined_finding(ctx: DoctorContext, settings: list[Setting]) -> _ScriptFinding | None:
    unknown = [s for s in settings if not s.determined]
    if not unknown:
        return None
    shown = "; ".join(
        f"{s.key} at {s.where} ({s.note.removeprefix('could not determine: ')})" for s in unknown
    )
    model_unknown = any(s.key == "model" for s in unknown) and not ctx.target.model
    status = Status.WARN if model_unknown else Status.PASS
    # The model is the user's to name: a command with a stand-in id would paste and judge the wrong run.
    fix = (
        Fix(
            "Pass what the script decides at run time as flags, so the doctor judges the same run: "
            f"{shell_join(['doctor', *[a for path in ctx.target.scripts for a in ('--script', path)]])} "
            "--model <the hub id or folder> (plus --quant and --max-memory when the script sets them)"
        )
        if model_unknown
        else None
    )
    return _ScriptFinding(status, f"could not determine: {shown}", fix)


def script_findings(ctx: DoctorContext, settings: Mapping[str, Setting]) -> list[_ScriptFinding]:
    findings: list[_ScriptFinding | None] = [_committed_finding(s) for s in settings.values()]
    if "quant" in settings:
        findings.append(_quant_finding(settings["quant"]))
    if "max_memory" in settings:
        findings.append(_max_memory_finding(settings["max_memory"]))
    if "attn" in settings:
        findings.append(_attn_finding(ctx, settings["attn"]))
    findings.append(_undetermined_finding(ctx, list(settings.values())))
    return [f for f in findings if f is not None]


@check(
    "script-settings",
    title="What the run script passes to transformers",
    section=SECTION,
    needs=(SCRIPT_SETTINGS,),
)
def script_settings_check(ctx: DoctorContext) -> Outcome:
    facts = ctx.needed(SCRIPT_SETTINGS)
    findings: list[_ScriptFinding] = []
    evidence: list[Evidence] = []
    read: list[str] = []
    for reading in facts.readings:
        if reading.problem:
            findings.append(_ScriptFinding(Status.WARN, reading.problem))
            continue
        if reading.committed_problem:
            evidence.append(
                Evidence(f"{Path(reading.path).name}.committed", reading.committed_problem, "git")
            )
        for setting in reading.settings.values():
            evidence.extend(_setting_evidence(setting))
        findings.extend(script_findings(ctx, reading.settings))
        determined = ", ".join(f"{k}={s.flag_text()}" for k, s in reading.settings.items() if s.determined)
        read.append(f"{reading.path}: {determined or 'no model-loading settings found'}")
    worst = worst_status((f.status for f in findings), default=Status.PASS)
    shown = [f for f in findings if f.status is not Status.PASS]
    if worst is Status.PASS:
        notes = [f.line for f in findings]
        return Outcome.ok("; ".join(read + notes) + " (read with ast, not executed; flags win)", evidence)
    return Outcome(worst, "; ".join(f.line for f in shown), tuple(evidence), _combined_fix(shown))


def _combined_fix(findings: list[_ScriptFinding]) -> Fix | None:
    """One row, several problems: every fix, worst first, each said once."""
    fixes = [f.fix for f in sorted(findings, key=lambda f: f.status is not Status.FAIL) if f.fix is not None]
    fixes = list({fix.summary: fix for fix in fixes}.values())
    if len(fixes) <= 1:
        return fixes[0] if fixes else None
    commands = tuple(dict.fromkeys(c for fix in fixes for c in fix.commands))
    link = next((fix.link for fix in fixes if fix.link), None)
    edits = tuple(dict.fromkeys(e for fix in fixes for e in fix.edits))
    return Fix(" — and: ".join(fix.summary for fix in fixes), commands, link, edits)
