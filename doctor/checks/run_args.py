"""Run arguments, checked against the libraries' real rules before anything loads (doctor-anchors F12,
F13): `max_memory` as accelerate parses it, `device_map` values, the attention implementation's
requirements, and the dtype against the model and the GPU.

GPU facts come from the `nvml` probe when it has them; without them those parts are skipped, never
guessed.
"""

from __future__ import annotations

from typing import Any

from doctor.context import DoctorContext
from doctor.errors import UsageError
from doctor.probes import Unavailable
from doctor.probes.run_args import RunArgFacts
from doctor.registry import Outcome, check
from doctor.report.model import Evidence, Fix
from doctor.sizes import is_bits, max_memory_bytes, parse_max_memory
from doctor.units import gib

SECTION = "run-args"
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_EAGER_CONTEXT_LIMIT = 16384  # eager attention materialises heads x n² scores: 40 x 16k² fp32 ≈ 40 GiB
_MAX_MEMORY_FIX = Fix("Give accelerate integer GPU keys and sizes with units", ('--max-memory "0=74GiB,cpu=200GiB"',
                      'from_pretrained(..., max_memory={0: "74GiB", "cpu": "200GiB"})'),
                      "https://huggingface.co/docs/accelerate/usage_guides/big_modeling")


def gpu_list(ctx: DoctorContext) -> tuple[Any, ...]:
    """GPUs from the nvml probe (helper module doctor/probes/nvml.py), or () when it has no facts."""
    facts = ctx.probe("nvml")
    if isinstance(facts, Unavailable):
        return ()
    return tuple(getattr(facts, "gpus", ()) or ())


# ---------------------------------------------------------------- max_memory


@check("max-memory-format", title="--max-memory as accelerate will read it", section=SECTION,
       needs=("run-args",))
def max_memory_format(ctx: DoctorContext) -> Outcome:
    text = ctx.target.max_memory
    if not text:
        return Outcome.skip("no --max-memory given (transformers plans with ~90% of each GPU's free memory)")
    facts: RunArgFacts = ctx.probe("run-args")
    evidence = [Evidence("max_memory", text, "command line"), _confidence(facts)]
    try:
        budget = parse_max_memory(text)
    except UsageError as exc:
        return Outcome.fail(exc.message, evidence, _MAX_MEMORY_FIX)
    if facts.accelerate_errors:  # accelerate's own verdict beats our replica
        value, message = next(iter(facts.accelerate_errors.items()))
        return Outcome.fail(f"accelerate rejects {value!r}: {message}", evidence, _MAX_MEMORY_FIX)
    sizes = max_memory_bytes(budget) if facts.accelerate_sizes is None else {
        k: int(facts.accelerate_sizes.get(str(v)) or 0) for k, v in budget.items()}
    evidence.append(Evidence("max_memory.bytes", {str(k): v for k, v in sizes.items()}, "accelerate"))
    return _judge_budget(budget, sizes, gpu_list(ctx), evidence, lower_confidence=facts.accelerate_sizes is None)


def _confidence(facts: RunArgFacts) -> Evidence:
    if facts.accelerate_sizes is not None:
        version = facts.versions.get("accelerate")
        return Evidence("checked_by", f"accelerate {version} convert_file_size_to_int (child process)", "accelerate")
    return Evidence("checked_by", f"niah-doctor's replica of accelerate's rules, lower confidence "
                                  f"({facts.accelerate_error or 'accelerate not asked'})", "doctor")


def _judge_budget(budget: dict, sizes: dict, gpus: tuple, evidence: list[Evidence], *,
                  lower_confidence: bool) -> Outcome:
    bits = [(k, v) for k, v in budget.items() if isinstance(v, str) and is_bits(v)]
    if bits:
        shown = ", ".join(f"{k}={v} = {sizes[k] / 1e9:.1f} GB" for k, v in bits)
        return Outcome.warn(f"LOWERCASE b MEANS BITS to accelerate: {shown} (one eighth of what you meant)",
                            evidence, Fix("Write bytes with a capital B: GB or GiB", ('--max-memory "0=75GiB"',)))
    over = _over_capacity(sizes, gpus)
    if over:
        return Outcome.fail(over, evidence, Fix("Leave headroom below the card's total (CUDA context, activations, "
                                                "KV cache need it)", ('--max-memory "0=70GiB,cpu=200GiB"',)))
    busy = _over_free(sizes, gpus)
    if busy:
        return Outcome.warn(busy, evidence, Fix("Free the GPU (see gpu-busy) or lower the budget", ("nvidia-smi",)))
    missing = [k for k in sizes if isinstance(k, int) and gpus and k >= len(gpus)]
    if missing:
        return Outcome.warn(f"GPU {missing[0]} does not exist here ({len(gpus)} visible); accelerate only warns "
                            "and ignores it", evidence)
    notes = [f"{k}={v} is {sizes[k] / 2**30:.1f} GiB (GB = 10^9, GiB = 2^30)"
             for k, v in budget.items() if isinstance(v, str) and v.upper().endswith("GB")]
    summary = "valid for accelerate: " + ", ".join(f"{k}={gib(b)}" for k, b in sizes.items())
    if notes:
        summary += "; note " + "; ".join(notes)
    if lower_confidence:
        summary += " (checked by a replica of accelerate's rules: lower confidence)"
    return Outcome.ok(summary, evidence)


def _over_capacity(sizes: dict, gpus: tuple) -> str | None:
    for key, size in sizes.items():
        if isinstance(key, int) and key < len(gpus):
            total = int(getattr(gpus[key], "memory_total_bytes", 0) or 0)
            if total and size > total:
                return (f"budget for GPU {key} ({gib(size)}) is above the card's capacity ({gib(total)}, "
                        f"{getattr(gpus[key], 'name', 'GPU')}): accelerate will plan more than fits and the load "
                        "runs out of memory")
    return None


def _over_free(sizes: dict, gpus: tuple) -> str | None:
    """Other processes already hold memory: the budget fits the card but not what is free now."""
    for key, size in sizes.items():
        if isinstance(key, int) and key < len(gpus):
            free = getattr(gpus[key], "memory_free_bytes", None)
            if free is not None and size > free:
                return (f"budget for GPU {key} ({gib(size)}) is above its free memory right now ({gib(free)}): "
                        "other processes hold the rest")
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
        return Outcome.fail(f"{value!r} is not a device_map transformers accepts", evidence,
                            Fix(f"Use one of {', '.join(DEVICE_MAP_STRATEGIES)}, or one device: cuda:0, cpu"))
    if index is not None and gpus and index >= len(gpus):
        return Outcome.fail(f"{value}: there are only {len(gpus)} GPUs here", evidence,
                            Fix("Pick an existing GPU index", ("nvidia-smi -L",)))
    if ctx.target.max_memory:
        return Outcome.warn(f"device_map={value} puts everything on one device: --max-memory is ignored", evidence,
                            Fix("Use device_map=auto for max_memory to take effect"))
    return Outcome.ok(f"everything on {value}", evidence)


def _device_index(value: str) -> int | None:
    text = value.removeprefix("cuda:")
    return int(text) if text.isascii() and text.isdigit() else None


def _strategy_note(value: str, ctx: DoctorContext, evidence: list[Evidence]) -> Outcome:
    if value == "balanced_low_0" and len(gpu_list(ctx)) == 1:
        return Outcome.warn("balanced_low_0 keeps GPU 0 nearly empty; with one GPU most weights go to CPU",
                            evidence, Fix("Use device_map=auto on a single GPU"))
    return Outcome.ok(f"{value}: accelerate plans the placement", evidence)


# ---------------------------------------------------------------- attention implementation


@check("attn-implementation", title="Attention implementation is available", section=SECTION, needs=("run-args",))
def attn_implementation(ctx: DoctorContext) -> Outcome:
    attn = ctx.target.attn
    facts: RunArgFacts = ctx.probe("run-args")
    evidence = [Evidence("attn_implementation", attn, "command line"),
                Evidence("versions", {k: v for k, v in facts.versions.items() if k != "transformers"}, "metadata",
                         "pip list")]
    if attn == "flash_attention_2":
        return _flash_attention(ctx, facts, evidence)
    if attn == "flex_attention":
        return _flex_attention(facts, evidence)
    if attn == "eager" and (ctx.target.context or 0) > _EAGER_CONTEXT_LIMIT:
        return Outcome.warn(f"eager attention materialises the full n² score matrix: at {ctx.target.context} "
                            "tokens that alone exceeds any GPU", evidence,
                            Fix("Use sdpa (default) or flex_attention", ("--attn sdpa",)))
    return Outcome.ok(f"{attn} (built into torch)" if attn == "sdpa" else attn, evidence)


def _flash_attention(ctx: DoctorContext, facts: RunArgFacts, evidence: list[Evidence]) -> Outcome:
    if not facts.flash_attn_importable:
        return Outcome.fail("flash_attention_2 needs the flash-attn package, which is not installed", evidence,
                            Fix("Install it (needs a matching CUDA toolkit), or use sdpa",
                                ("pip install flash-attn --no-build-isolation", "--attn sdpa")))
    old = [g for g in gpu_list(ctx) if (getattr(g, "compute_capability", None) or (9, 0)) < (8, 0)]
    if old:
        return Outcome.fail(f"flash_attention_2 needs compute capability ≥ 8.0; {old[0].name} has "
                            f"{old[0].compute_capability[0]}.{old[0].compute_capability[1]}", evidence,
                            Fix("Use sdpa on this GPU", ("--attn sdpa",)))
    return Outcome.ok(f"flash_attention_2 (flash-attn {facts.versions.get('flash-attn')})", evidence)


def _flex_attention(facts: RunArgFacts, evidence: list[Evidence]) -> Outcome:
    torch_version = facts.versions.get("torch")
    if torch_version is None or _major_minor(torch_version) < (2, 5):
        return Outcome.warn(f"flex_attention needs torch ≥ 2.5 (installed: {torch_version or 'none'})", evidence,
                            Fix("Upgrade torch or use sdpa", ("--attn sdpa",)))
    if facts.versions.get("triton") is None:
        return Outcome.warn("flex_attention compiles Triton kernels, and triton is not installed", evidence,
                            Fix("Install the triton build that matches torch, or use sdpa", ("--attn sdpa",)))
    return Outcome.ok(f"flex_attention (torch {torch_version}, triton {facts.versions.get('triton')})", evidence)


def _major_minor(version: str) -> tuple[int, int]:
    parts = version.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return (0, 0)


# ---------------------------------------------------------------- dtype


@check("dtype-choice", title="dtype suits the model and the GPU", section=SECTION)
def dtype_choice(ctx: DoctorContext) -> Outcome:
    model = ctx.probe("model")
    config = {} if isinstance(model, Unavailable) else dict(getattr(model, "config", {}) or {})
    dtype = _effective_dtype(ctx.target.dtype, config)
    evidence = [Evidence("dtype", f"{ctx.target.dtype} -> {dtype}", "command line / config.json")]
    old = [g for g in gpu_list(ctx) if getattr(g, "compute_capability", None) and tuple(g.compute_capability) < (8, 0)]
    if dtype == "bfloat16" and old:
        cc = old[0].compute_capability
        return Outcome.fail(f"bfloat16 needs compute capability ≥ 8.0 (Ampere); {old[0].name} is {cc[0]}.{cc[1]}",
                            evidence, Fix("Use float16 on this GPU, or a newer GPU", ("--dtype float16",)))
    model_type = getattr(model, "model_type", None) if not isinstance(model, Unavailable) else None
    if dtype == "float16" and model_type and model_type.startswith("llama4"):
        return Outcome.warn("float16 with Llama 4: bfloat16 is recommended (trained in bf16; fp16 can overflow "
                            "to inf/NaN)", evidence, Fix("Use bfloat16", ("--dtype bfloat16",)))
    why = "" if ctx.target.dtype != "auto" else " (auto: the checkpoint's dtype, bfloat16 when it names none)"
    return Outcome.ok(f"{dtype}{why}", evidence)


def _effective_dtype(requested: str, config: dict) -> str:
    """`auto` means the checkpoint's own dtype (`torch_dtype` in v4 configs, `dtype` in v5), bf16 if none."""
    if requested != "auto":
        return requested
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    for source in (config, text_config):
        value = source.get("torch_dtype") or source.get("dtype")
        if isinstance(value, str):
            return value
    return "bfloat16"
