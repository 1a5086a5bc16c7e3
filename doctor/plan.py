"""Resolve a RunSpec into the ResolvedPlan the doctor judges and `niah run` executes.

Every "auto" becomes a value here, once: the attention implementation before any check runs
(`settle_static_choices`), the prefill chunk and the per-length predictions from the memory estimate
(`resolve_plan`). The memory checks read the same object, so the verdict is about the plan that runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from doctor.context import DoctorContext
from doctor.load_decisions import load_decisions
from doctor.memory.estimate import (
    ALLOCATOR_RESERVE,
    Estimate,
    Settings,
    choose_prefill_chunk,
    compute_estimate,
    fits,
    prefill_state,
)
from doctor.memory.gpus import GpuSpec, gpus_from_nvml, parse_gpus
from doctor.memory.timing import prefill_time_model
from doctor.probes import Unavailable
from doctor.probes.card_rates import RATES_LIVE
from doctor.probes.memory import MEMORY, MemoryFacts
from doctor.probes.nvml import NVML
from run_plan.errors import UsageError
from run_plan.options import BY_NAME, DOCTOR, OPTIONS
from run_plan.resolved import Decision, DevicePrediction, LengthPlan, ResolvedPlan
from run_plan.shell import shell_join
from run_plan.spec import (
    AUTO_ATTN,
    DEFAULT_PREFILL_CHUNK,
    EXPERTS_DENSE,
    LEAN_ATTN,
    LEAN_MIN_CAPABILITY,
    RunSpec,
    experts_setting,
    experts_setting_has_effect,
)
from run_plan.timing import PrefillTimeModel


def settle_static_choices(
    spec: RunSpec,
    gpus: Sequence[GpuSpec] | None = None,
    refusals: Mapping[str, str | None] | None = None,
) -> tuple[RunSpec, tuple[Decision, ...]]:
    """Choices the GPUs decide before any estimate: attn=auto becomes niah_lean where a planned GPU runs the
    flash kernel (sm80+), else sdpa. Whether the lean attention computes this model exactly is asked of
    the model itself by the sizing child; `resolve_plan` then keeps sdpa where it does not. `gpus`: the
    planned GPUs (None: --gpus, else what NVML sees). `refusals`: what the model's class refuses
    (doctor.probes.config_load.attention_refusals); auto never picks one of those."""
    if spec.attn != "auto":
        return spec, ()
    choice, why = _auto_attention(spec, _gpus_without_context(spec) if gpus is None else list(gpus))
    refused = (refusals or {}).get(choice)
    if refused and not (refusals or {}).get("eager"):
        choice, why = (
            "eager",
            f"auto: eager — this model's class refuses {choice} ({refused.splitlines()[0][:160]})",
        )
    return dataclasses.replace(spec, attn=choice), (Decision("attn", choice, why),)


_LEAN_WHY = (
    "auto: niah_lean — flash kernel, bottom-right causal, native GQA: no repeated K/V and no mask "
    "(exact on full, sliding-window and chunked layers)"
)


def off_the_gpus(spec: RunSpec) -> str | None:
    """The device `--device-map` puts the whole model on where that is not a CUDA GPU (cpu, mps): the
    planned GPUs then compute nothing. None otherwise."""
    value = (spec.device_map or "").strip().lower()
    return value if value in ("cpu", "mps") else None


def _auto_attention(spec: RunSpec, gpus: Sequence[GpuSpec]) -> tuple[str, str]:
    if spec.backend != "transformers":
        return AUTO_ATTN, f"auto: {AUTO_ATTN} (the server computes the attention)"
    if not gpus:
        return AUTO_ATTN, f"auto: {AUTO_ATTN} — no GPU planned (the lean attention runs on CUDA GPUs)"
    if off := off_the_gpus(spec):
        return AUTO_ATTN, (
            f"auto: {AUTO_ATTN} — --device-map {off} puts the model off the GPUs (the lean attention runs on "
            "CUDA GPUs)"
        )
    capabilities = [g.compute_capability for g in gpus]
    if any(c is None for c in capabilities):
        return AUTO_ATTN, (
            f"auto: {AUTO_ATTN} — the GPU model is not known (--gpus by size); name the card "
            "(e.g. 1xH100-80GB) to plan the lean attention"
        )
    old = sorted({c for c in capabilities if c is not None and c < FLASH_MIN_CAPABILITY})
    if old:
        return AUTO_ATTN, (
            f"auto: {AUTO_ATTN} — sm_{old[0][0]}{old[0][1]} is older than the flash kernel's sm_80"
        )
    return LEAN_ATTN, _LEAN_WHY


# torch's flash attention kernel needs Ampere or newer (the loader refuses older cards with the same bound)
FLASH_MIN_CAPABILITY = LEAN_MIN_CAPABILITY


def _gpus_without_context(spec: RunSpec) -> list[GpuSpec]:
    """The planned GPUs outside a doctor run (a saved plan's resume check, --skip-preflight)."""
    if spec.gpus:
        try:
            return parse_gpus(spec.gpus)
        except UsageError:
            return []
    from doctor.probes import load_probes

    try:
        return gpus_from_nvml(load_probes()["nvml"](spec))
    except Exception:  # noqa: BLE001 - no NVML is no GPU
        return []


def planned_gpus(ctx: DoctorContext) -> tuple[list[GpuSpec], str]:
    """The GPUs the plan is for: --gpus, else what NVML sees."""
    if ctx.target.gpus:
        return parse_gpus(ctx.target.gpus), f"--gpus {ctx.target.gpus}"
    facts = ctx.probe(NVML)
    if isinstance(facts, Unavailable):
        return [], f"no --gpus and NVML unavailable ({facts.reason})"
    gpus = gpus_from_nvml(facts)
    return gpus, "NVML" if gpus else "NVML sees no GPU"


def planned_gpus_or_none(ctx: DoctorContext) -> list[GpuSpec]:
    """planned_gpus, or none where --gpus cannot be read (the run-args check reports that)."""
    try:
        return planned_gpus(ctx)[0]
    except UsageError:
        return []


def memory_facts(ctx: DoctorContext) -> MemoryFacts | None:
    """The memory probe's facts (settings and sizing), or None where it has none."""
    facts = ctx.probe(MEMORY)
    return None if isinstance(facts, Unavailable) else facts


def remember_static_decisions(ctx: DoctorContext, decisions: tuple[Decision, ...]) -> None:
    """What settle_static_choices decided for ctx.target, so the resolved plan lists those decisions too."""
    ctx.static_decisions = decisions


def resolve_plan(ctx: DoctorContext) -> ResolvedPlan:
    """The plan for ctx.target, computed once per context (the memory checks and the API share it)."""
    if ctx.plan is None:
        ctx.plan = _resolve(ctx, ctx.static_decisions)
    return ctx.plan


def _resolve(ctx: DoctorContext, static: tuple[Decision, ...]) -> ResolvedPlan:
    spec = ctx.target
    decisions = list(static)
    facts = memory_facts(ctx) if spec.model and spec.backend == "transformers" else None
    gpus, gpu_source = planned_gpus(ctx) if facts is not None else ([], "")
    if facts is None or not gpus:
        reason = "no memory estimate for this model" if facts is None else f"no GPU known ({gpu_source})"
        decisions += _given_experts_without_effect(spec, facts["sizing"] if facts is not None else {})
        return plan_without_estimate(spec, (*decisions, *load_decisions(ctx, None)), reason)
    settings = Settings(**facts["settings"])
    sizing = facts["sizing"]
    spec, decisions = _paths_from_sizing(spec, decisions, sizing)
    settings = dataclasses.replace(settings, attn=spec.attn)
    decisions.extend(load_decisions(ctx, sizing))
    chunk, why = _choose_chunk(sizing, settings, gpus, spec.prefill_chunk, spec.lengths)
    if spec.prefill_chunk is None:
        decisions.append(Decision("prefill_chunk", chunk, why))
        spec = dataclasses.replace(spec, prefill_chunk=chunk)
    # The longest context is what a plan for THAT length would reach: its chunk is chosen there too, unless
    # the user fixed one. So `doctor` and a later `niah run --lengths <that>` agree on it.
    reach = compute_estimate(sizing, settings, gpus)
    timing = prefill_time_model(sizing, spec.attn, settings.quant, gpus, measured_rates(ctx))
    lengths = tuple(_length_plan(sizing, settings, gpus, chunk, n, timing) for n in spec.lengths)
    return ResolvedPlan(
        spec=spec,
        lengths=lengths,
        max_context_tokens=reach.max_context_tokens,
        decisions=tuple(decisions),
        estimate_method=reach.method,
        prefill_time=timing,
    )


def measured_rates(ctx: DoctorContext) -> dict[str, Any] | None:
    """The planned GPU's kernel rates from the live probe, when it ran here on that GPU."""
    if ctx.target.gpus:  # planning for other GPUs than these: their rates were not measured here
        return None
    facts = ctx.probe(RATES_LIVE)
    return facts if isinstance(facts, dict) else None


def _paths_from_sizing(
    spec: RunSpec, decisions: list[Decision], sizing: Mapping[str, Any]
) -> tuple[RunSpec, list[Decision]]:
    """What the sizing child found when it built the planned paths on the model: an auto lean attention the
    model refuses becomes transformers' sdpa (the sizing traced that instead), and experts=auto becomes the
    MoE forward that was put on the model."""
    trace = sizing.get("trace") or {}
    cause = lean_cause(trace)
    if cause and spec.attn == LEAN_ATTN and any(d.name == "attn" for d in decisions):
        # what the sizing child traced instead: transformers' sdpa, or eager where the class refuses sdpa
        fallback = str(trace.get("attn_implementation") or AUTO_ATTN)
        spec = dataclasses.replace(spec, attn=fallback)
        why = f"auto: {fallback} — {cause}"
        decisions = [d for d in decisions if d.name != "attn"] + [Decision("attn", fallback, why)]
    if spec.experts == "auto":
        path = str((sizing.get("experts_path") or {}).get("experts") or "")
        value = experts_setting(path)
        decisions.append(Decision("experts", value, f"auto: {path or 'no experts path reported'}"))
        return dataclasses.replace(spec, experts=value), decisions
    return spec, decisions + _given_experts_without_effect(spec, sizing)


def _given_experts_without_effect(spec: RunSpec, sizing: Mapping[str, Any]) -> list[Decision]:
    """An --experts value the user gave that the model makes a no-op (no MoE layer, or MoE layers niah does
    not recognise, where the model's own forward runs): said where the plan's decisions are shown. Not a
    failure: the run computes what it would compute with any value (and its identity does not split)."""
    path = (sizing.get("experts_path") or {}).get("experts")
    if spec.experts == "auto" or experts_setting_has_effect(path):
        return []
    if experts_setting(str(path)) == spec.experts:
        return []  # --experts transformers: the model's own forward, which is what runs
    what = "no MoE layer" if path == EXPERTS_DENSE else "MoE not recognised"
    return [
        Decision(
            "experts",
            spec.experts,
            f"given; no effect — {what}: --experts {spec.experts} changes nothing on this model "
            f"({path}); the model's own forward runs",
        )
    ]


def lean_cause(trace: Mapping[str, Any]) -> str | None:
    """Why the sizing child traced transformers' path instead of the lean attention, in the plan's words:
    a refusal its short forward met, or the position from which the lean path refuses (its memory then
    cannot be traced past there, so transformers' path is what was sized, at every length)."""
    refused = (trace.get("attn_refused") or {}).get(LEAN_ATTN)
    if refused:
        return f"the lean attention cannot compute this model exactly: {refused}"
    limit = (trace.get("attn_limit") or {}).get(LEAN_ATTN)
    if limit:
        return f"the lean attention refuses this model from position {int(limit['position']):,} on ({limit['why']})"
    return None


def lean_limit(trace: Mapping[str, Any]) -> tuple[int, str] | None:
    """(first position the lean attention refuses, why) where that depends on the position."""
    limit = (trace.get("attn_limit") or {}).get(LEAN_ATTN)
    return (int(limit["position"]), str(limit["why"])) if limit else None


def last_fed_position(spec: RunSpec) -> int:
    """The last position a forward of this plan feeds: the longest prompt and its answer, less the last
    answer token (never fed back)."""
    return int(spec.context or 0) + max(int(spec.max_new_tokens), 1) - 2


def plan_without_estimate(spec: RunSpec, decisions: tuple[Decision, ...], reason: str) -> ResolvedPlan:
    """A settled spec with no memory estimate: the one default chunk, no length ruled out."""
    if spec.prefill_chunk is None:
        spec = dataclasses.replace(spec, prefill_chunk=DEFAULT_PREFILL_CHUNK)
        decisions = (*decisions, Decision("prefill_chunk", DEFAULT_PREFILL_CHUNK, f"default: {reason}"))
    return ResolvedPlan(spec=spec, decisions=decisions)


def rerun_command(spec: RunSpec, **changes: object) -> str:
    """`doctor` for this plan with `changes` applied: complete (every setting the doctor judges that is not
    its default: model and revision, dtype, quantization, experts, GPUs, budgets, lengths, and the attention
    or chunk the user chose) and shell-quoted, so a fix can be pasted as it is and judges the same run."""
    values: dict[str, object] = {
        "model": spec.model,
        "quant": None if spec.quant == "none" else spec.quant,
        "prequantized": spec.prequantized,
        "gpus": spec.gpus,
        "max_memory": spec.max_memory,
        "context": spec.context,
        # what the plan chose itself (an "auto") is chosen again by the rerun
        "attn": _given(spec, "attn"),
        "prefill_chunk": spec.prefill_chunk if spec.source_of("prefill_chunk") != "default" else None,
        "experts": _given(spec, "experts"),
        "lengths": ",".join(map(str, spec.lengths))
        if spec.lengths and spec.lengths != (spec.context,)
        else None,
    }
    defaults = RunSpec()
    for option in OPTIONS:
        if DOCTOR in option.tools and option.name not in values and option.name not in _NOT_RERUN:
            value = getattr(spec, option.name)
            values[option.name] = None if value == getattr(defaults, option.name) else value
    if isinstance(values.get("base_url"), str):
        values["base_url"] = _without_credentials(str(values["base_url"]))
    values.update(changes)
    argv = ["doctor"]
    for name, value in values.items():
        declared = BY_NAME.get(name)
        flag = declared.cli_flag if declared else "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False and declared is not None and declared.kind == "switch":
            argv.append(declared.cli_negative_flag)
        elif value is not None and value is not False:
            argv += [flag, str(value)]
    return shell_join(argv)


# The doctor's own knobs (what is checked, how long a probe may take), not the run it judges.
_NOT_RERUN = frozenset({"scripts", "fetch", "live", "deep", "probe_timeout_s"})


def _without_credentials(url: str) -> str | None:
    """The server's URL without user:password@ (redacted in every output, `<redacted>` would break the
    pasted command; the key belongs in $OPENAI_API_KEY), or None where it does not parse."""
    from doctor.probes.git import strip_url_credentials

    try:
        return strip_url_credentials(url)
    except ValueError:
        return None


def _given(spec: RunSpec, name: str) -> object:
    value = getattr(spec, name)
    return None if value in ("auto", AUTO_ATTN) or spec.source_of(name) == "default" else value


def _choose_chunk(
    sizing: Mapping[str, Any],
    settings: Settings,
    gpus: list[GpuSpec],
    given: int | None,
    lengths: tuple[int, ...],
) -> tuple[int, str]:
    """The largest chunk whose predicted peak fits at the longest planned length that can fit at all.

    Lengths beyond what fits are skipped, not run, so they must not drag the chunk down: a smaller chunk
    only buys a longer reach that nobody asked for, at many times the prefill time."""
    if given is not None:
        return given, "given"
    state = prefill_state(sizing)
    if state:  # every planned prompt in one forward; a length that does not fit so is ruled out
        return max(lengths or (settings.context,)), (
            f"auto: one forward per prompt — a chunked prefill of this model is not exact: {state}"
        )
    for tokens in sorted(lengths or (settings.context,), reverse=True):
        at_length = dataclasses.replace(settings, context=tokens)
        if fits(sizing, at_length, gpus):
            chunk = choose_prefill_chunk(sizing, at_length, gpus)
            return chunk, f"auto: the largest chunk whose predicted peak fits at {tokens:,} tokens"
    return DEFAULT_PREFILL_CHUNK, "default: no planned length fits at any chunk"


def _length_plan(
    sizing: Mapping[str, Any],
    settings: Settings,
    gpus: list[GpuSpec],
    chunk: int,
    tokens: int,
    timing: PrefillTimeModel | None,
) -> LengthPlan:
    estimate = compute_estimate(
        sizing, dataclasses.replace(settings, context=tokens, prefill_chunk=chunk), gpus
    )
    devices = tuple(
        DevicePrediction(f"cuda:{g['index']}", int(g["predicted_peak_bytes"]), int(g["limit_bytes"]))
        for g in estimate.per_gpu
    )
    seconds = timing.seconds(0, tokens, min(chunk, tokens)) if timing else None
    return LengthPlan(
        tokens, bool(estimate.fits), devices, None if estimate.fits else _why_not(estimate), seconds
    )


def _why_not(estimate: Estimate) -> str:
    if estimate.weights_on_cpu_bytes:
        return "weights spill off the GPUs"
    over = [g for g in estimate.per_gpu if g["predicted_peak_bytes"] + ALLOCATOR_RESERVE > g["limit_bytes"]]
    where = ", ".join(f"cuda:{g['index']}" for g in over) or "a GPU"
    return f"predicted peak exceeds the limit on {where} at chunk {estimate.prefill_chunk}"


def estimate_at_plan(ctx: DoctorContext) -> tuple[Estimate, list[GpuSpec], str]:
    """The estimate at the plan's context and prefill chunk — the run that will happen — with the plan's
    longest context (its chunk chosen at that length), so every check quotes one figure."""
    facts = memory_facts(ctx)
    if facts is None:
        raise LookupError("no memory facts for this plan")
    settings, sizing = Settings(**facts["settings"]), facts["sizing"]
    gpus, gpu_source = planned_gpus(ctx)
    plan = resolve_plan(ctx)
    estimate = compute_estimate(
        sizing,
        dataclasses.replace(settings, attn=plan.spec.attn, prefill_chunk=plan.spec.prefill_chunk),
        gpus,
    )
    if gpus:
        estimate.max_context_tokens = plan.max_context_tokens
        estimate.prefill_seconds_estimate = plan.predicted_prefill_seconds(0, estimate.context)
        estimate.prefill_rates = plan.prefill_time.rates_source if plan.prefill_time else None
    return estimate, gpus, gpu_source
