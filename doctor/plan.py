"""Resolve a RunSpec into the ResolvedPlan the doctor judges and `niah run` executes.

Every "auto" becomes a value here, once: the attention implementation before any check runs
(`settle_static_choices`), the prefill chunk and the per-length predictions from the memory estimate
(`resolve_plan`). The memory checks read the same object, so the verdict is about the plan that runs.
"""

from __future__ import annotations

import dataclasses
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
)
from doctor.memory.gpus import GpuSpec, gpus_from_nvml, parse_gpus
from doctor.probes import Unavailable
from run_plan.resolved import Decision, DevicePrediction, LengthPlan, ResolvedPlan
from run_plan.shell import shell_join
from run_plan.spec import AUTO_ATTN, DEFAULT_PREFILL_CHUNK, RunSpec

_CACHE_ATTR = "_resolved_plan"
_STATIC_ATTR = "_static_decisions"


def settle_static_choices(spec: RunSpec) -> tuple[RunSpec, tuple[Decision, ...]]:
    """Choices that need no estimate. attn=auto is sdpa: with chunked prefill it runs at every length we
    measured (1M tokens on an H100), while flex_attention's compiled kernel has a length limit for head
    counts that are not a power of two (the `attention-limit` check)."""
    if spec.attn != "auto":
        return spec, ()
    why = f"auto: {AUTO_ATTN} runs at every planned length with chunked prefill"
    return dataclasses.replace(spec, attn=AUTO_ATTN), (Decision("attn", AUTO_ATTN, why),)


def planned_gpus(ctx: DoctorContext) -> tuple[list[GpuSpec], str]:
    """The GPUs the plan is for: --gpus, else what NVML sees."""
    if ctx.target.gpus:
        return parse_gpus(ctx.target.gpus), f"--gpus {ctx.target.gpus}"
    facts = ctx.probe("nvml")
    if isinstance(facts, Unavailable):
        return [], f"no --gpus and NVML unavailable ({facts.reason})"
    gpus = gpus_from_nvml(facts)
    return gpus, "NVML" if gpus else "NVML sees no GPU"


def memory_settings(ctx: DoctorContext) -> Settings | None:
    facts = ctx.probe("memory")
    if isinstance(facts, Unavailable):
        return None
    return Settings(**facts["settings"])


def remember_static_decisions(ctx: DoctorContext, decisions: tuple[Decision, ...]) -> None:
    setattr(ctx, _STATIC_ATTR, decisions)


def resolve_plan(ctx: DoctorContext) -> ResolvedPlan:
    """The plan for ctx.target, computed once per context (the memory checks and the API share it)."""
    cached = getattr(ctx, _CACHE_ATTR, None)
    if cached is not None:
        return cached
    plan = _resolve(ctx, getattr(ctx, _STATIC_ATTR, ()))
    setattr(ctx, _CACHE_ATTR, plan)
    return plan


def _resolve(ctx: DoctorContext, static: tuple[Decision, ...]) -> ResolvedPlan:
    spec = ctx.target
    decisions = list(static)
    settings = memory_settings(ctx) if spec.model and spec.backend == "transformers" else None
    gpus, gpu_source = planned_gpus(ctx) if settings is not None else ([], "")
    if settings is None or not gpus:
        reason = "no memory estimate for this model" if settings is None else f"no GPU known ({gpu_source})"
        return plan_without_estimate(spec, (*decisions, *load_decisions(ctx, None)), reason)
    sizing = ctx.probe("memory")["sizing"]
    decisions.extend(load_decisions(ctx, sizing))
    chunk, why = _choose_chunk(sizing, settings, gpus, spec.prefill_chunk, spec.lengths)
    if spec.prefill_chunk is None:
        decisions.append(Decision("prefill_chunk", chunk, why))
        spec = dataclasses.replace(spec, prefill_chunk=chunk)
    # The longest context is what a plan for THAT length would reach: its chunk is chosen there too, unless
    # the user fixed one. So `doctor` and a later `niah run --lengths <that>` agree on it.
    reach = compute_estimate(sizing, settings, gpus)
    lengths = tuple(_length_plan(sizing, settings, gpus, chunk, n) for n in spec.lengths)
    return ResolvedPlan(
        spec=spec,
        lengths=lengths,
        max_context_tokens=reach.max_context_tokens,
        decisions=tuple(decisions),
        estimate_method=reach.method,
    )


def plan_without_estimate(
    spec: RunSpec, decisions: tuple[Decision, ...], reason: str, verdict: str = "not judged"
) -> ResolvedPlan:
    """A settled spec with no memory estimate: the one default chunk, no length ruled out."""
    if spec.prefill_chunk is None:
        spec = dataclasses.replace(spec, prefill_chunk=DEFAULT_PREFILL_CHUNK)
        decisions = (*decisions, Decision("prefill_chunk", DEFAULT_PREFILL_CHUNK, f"default: {reason}"))
    return ResolvedPlan(spec=spec, decisions=decisions, verdict=verdict)


def rerun_command(spec: RunSpec, **changes: object) -> str:
    """`doctor` for this plan with `changes` applied: complete (model, quantization, GPUs, budgets, length,
    and the attention or chunk the user chose) and shell-quoted, so a fix can be pasted as it is."""
    values: dict[str, object] = {
        "model": spec.model,
        "quant": None if spec.quant == "none" else spec.quant,
        "prequantized": spec.prequantized,
        "gpus": spec.gpus,
        "max_memory": spec.max_memory,
        "context": spec.context,
        "attn": None if spec.attn in ("auto", AUTO_ATTN) else spec.attn,
        "prefill_chunk": spec.prefill_chunk if spec.source_of("prefill_chunk") != "default" else None,
    }
    values.update(changes)
    argv = ["doctor"]
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not None and value is not False:
            argv += [flag, str(value)]
    return shell_join(argv)


def _choose_chunk(
    sizing: Any, settings: Settings, gpus: list[GpuSpec], given: int | None, lengths: tuple[int, ...]
) -> tuple[int, str]:
    """The largest chunk whose predicted peak fits at the longest planned length that can fit at all.

    Lengths beyond what fits are skipped, not run, so they must not drag the chunk down: a smaller chunk
    only buys a longer reach that nobody asked for, at many times the prefill time."""
    if given is not None:
        return given, "given"
    for tokens in sorted(lengths or (settings.context,), reverse=True):
        at_length = dataclasses.replace(settings, context=tokens)
        if fits(sizing, at_length, gpus):
            chunk = choose_prefill_chunk(sizing, at_length, gpus)
            return chunk, f"auto: the largest chunk whose predicted peak fits at {tokens:,} tokens"
    return DEFAULT_PREFILL_CHUNK, "default: no planned length fits at any chunk"


def _length_plan(sizing: Any, settings: Settings, gpus: list[GpuSpec], chunk: int, tokens: int) -> LengthPlan:
    estimate = compute_estimate(
        sizing, dataclasses.replace(settings, context=tokens, prefill_chunk=chunk), gpus
    )
    devices = tuple(
        DevicePrediction(f"cuda:{g['index']}", int(g["predicted_peak_bytes"]), int(g["limit_bytes"]))
        for g in estimate.per_gpu
    )
    return LengthPlan(tokens, estimate.fits, devices, None if estimate.fits else _why_not(estimate))


def _why_not(estimate: Estimate) -> str:
    if estimate.weights_on_cpu_bytes:
        return "weights spill off the GPUs"
    over = [g for g in estimate.per_gpu if g["predicted_peak_bytes"] + ALLOCATOR_RESERVE > g["limit_bytes"]]
    where = ", ".join(f"cuda:{g['index']}" for g in over) or "a GPU"
    return f"predicted peak exceeds the limit on {where} at chunk {estimate.prefill_chunk}"


def estimate_at_plan(ctx: DoctorContext) -> tuple[Estimate, list[GpuSpec], str]:
    """The estimate at the plan's context and prefill chunk — the run that will happen — with the plan's
    longest context (its chunk chosen at that length), so every check quotes one figure."""
    settings = memory_settings(ctx)
    if settings is None:
        raise LookupError("no memory facts for this plan")
    gpus, gpu_source = planned_gpus(ctx)
    plan = resolve_plan(ctx)
    sizing = ctx.probe("memory")["sizing"]
    estimate = compute_estimate(
        sizing, dataclasses.replace(settings, prefill_chunk=plan.spec.prefill_chunk), gpus
    )
    if gpus:
        estimate.max_context_tokens = plan.max_context_tokens
    return estimate, gpus, gpu_source


def with_verdict(plan: ResolvedPlan, verdict: str, failing: tuple[str, ...]) -> ResolvedPlan:
    return dataclasses.replace(plan, verdict=verdict, failing_checks=failing)
