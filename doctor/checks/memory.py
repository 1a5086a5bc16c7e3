"""Memory: what bitsandbytes really quantizes, and whether weights + KV + prefill peak fit the GPUs.

The weight inventory comes from the "memory" probe (meta-device skeleton in a child process); the
context-dependent part (KV, activations, placement, longest context) is pure Python here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from doctor.checks.gpu import runs_on_cpu
from doctor.context import DoctorContext
from doctor.memory.estimate import Estimate, Settings, fits
from doctor.memory.gpus import GpuSpec
from doctor.plan import estimate_at_plan, rerun_command, resolve_plan
from doctor.probes.card_rates import RATES_LIVE
from doctor.probes.memory import MEMORY, MemoryFacts
from doctor.registry import Outcome, check
from doctor.report.model import Evidence, Fix
from run_plan.errors import UsageError
from run_plan.units import duration, gib

SECTION = "memory"
PREQUANTIZED_UNFUSED = {"llama4_text": "bnb-community/Llama-4-Scout-17B-16E-Instruct-bnb-4bit"}
_MAX_GPUS_TRIED = 16


def _settings(facts: MemoryFacts) -> Settings:
    return Settings(**facts["settings"])


def _estimate(ctx: DoctorContext) -> tuple[Estimate, list[GpuSpec], str, MemoryFacts]:
    estimate, gpus, gpu_source = estimate_at_plan(ctx)
    return estimate, gpus, gpu_source, ctx.needed(MEMORY)


def _gpus_flag(count: int, like: GpuSpec) -> str:
    """A --gpus value parse_gpus accepts again, naming the card where it is a known one (its compute
    capability decides the attention the rerun plans); by size otherwise (NVML names contain spaces)."""
    from doctor.memory.gpus import capability_of, gpu_capacity_bytes

    name = "-".join(like.name.replace("NVIDIA", "").split()[:2])  # "NVIDIA H100 80GB HBM3" → "H100-80GB"
    try:
        if capability_of(name) and gpu_capacity_bytes(name) == like.capacity_bytes:
            return f"{count}x{name}"
    except UsageError:
        pass
    return f"{count}x{like.capacity_bytes / (1 << 30):.1f}GiB"


def _gpus_needed(sizing: dict[str, Any], settings: Settings, like: GpuSpec) -> int | None:
    """Fewest GPUs like `like` on which this run fits (None beyond 16)."""
    # --max-memory names today's GPUs only (an unnamed GPU gets no weights): size more cards without it
    settings = dataclasses.replace(settings, max_memory=())
    for n in range(1, _MAX_GPUS_TRIED + 1):
        cards = [dataclasses.replace(like, index=i) for i in range(n)]
        if fits(sizing, settings, cards):
            return n
    return None


def _evidence(e: Estimate, gpu_source: str) -> list[Evidence]:
    ev = [
        Evidence(
            "estimate.method",
            f"{e.method} ({e.model_class}, transformers {e.transformers_version})",
            "estimate",
        ),
        Evidence("estimate.weights_bytes", e.weights_bytes, "estimate"),
        Evidence("estimate.kv_bytes", e.kv_bytes, "estimate", None),
        *(
            [Evidence("estimate.activation_peak_bytes", e.activation_peak_bytes, "estimate")]
            if e.activation_peak_bytes is not None
            else []
        ),
        Evidence("estimate.overhead_bytes", e.overhead_bytes, "estimate"),
        Evidence("estimate.prefill_chunk", e.prefill_chunk, "estimate"),
        Evidence("estimate.kv_layout", e.kv_layout, "estimate"),
        Evidence("gpus.source", gpu_source, "estimate"),
    ]
    for g in e.per_gpu:
        ev.append(
            Evidence(
                f"gpu[{g['index']}].needed_vs_capacity",
                f"{gib(g['needed_bytes'])} of {gib(g['capacity_bytes'])} ({g['name']})",
                "estimate",
            )
        )
    return ev


@check("quantized-weights", title="What bitsandbytes really quantizes", section=SECTION, needs=(MEMORY,))
def quantized_weights(ctx: DoctorContext) -> Outcome:
    facts = ctx.needed(MEMORY)
    sizing = facts["sizing"]
    s = _settings(facts)
    weights = int(sizing["weights_bytes"])
    fused = [g for g in sizing.get("unquantized_modules") or [] if g.get("fused_3d")]
    ev = [
        Evidence("weights_bytes", weights, "estimate: meta-device skeleton + transformers' bnb quantizer"),
        Evidence("quantized_params", sizing.get("quantized_params"), "estimate"),
        Evidence("unquantized_params", sizing.get("unquantized_params"), "estimate"),
        Evidence("model_class", sizing.get("model_class"), "transformers"),
        Evidence("quantizer", (sizing.get("quantizer") or {}).get("mode"), "transformers"),
    ]
    for g in (sizing.get("unquantized_modules") or [])[:4]:
        ev.append(
            Evidence(
                f"unquantized[{g['module']}]",
                f"{g['params']:,} params, {gib(g['bytes'])} {g['dtype']}",
                "estimate",
            )
        )
    if s.quant == "none":
        return Outcome.ok(f"no quantization: weights {gib(weights)} at {s.dtype}", ev)
    if fused:
        experts = sum(int(g["params"]) for g in fused)
        names = ", ".join(g["module"] for g in fused)
        model_type = sizing.get("text_config", {}).get("model_type")
        alt = PREQUANTIZED_UNFUSED.get(str(model_type))
        fix = Fix(
            f"The fused experts ({names}) are 3-D parameters, not nn.Linear, so {s.quant} on the fly leaves "
            f"them {sizing.get('dtype')}. Load a pre-quantized checkpoint with un-fused experts"
            + (f" ({alt})" if alt else " (if one exists for this architecture)")
            + ", an FP8 checkpoint, or give the 16-bit weights enough GPUs",
            (
                rerun_command(resolve_plan(ctx).spec, prequantized=True)
                + "   # sizes the pre-quantized layout",
            )
            if alt
            else (),
        )
        return Outcome.warn(
            f"{experts / 1e9:.1f}B expert parameters stay {sizing.get('dtype')} under {s.quant}: "
            f"weights {gib(weights)}, not the ~{gib(_naive_bytes(sizing, s))} a per-parameter "
            "estimate gives",
            ev,
            fix,
        )
    mode = "pre-quantized" if s.prequantized else "on the fly"
    return Outcome.ok(
        f"{s.quant} {mode}: {int(sizing.get('quantized_params', 0)) / 1e9:.2f}B params quantized, "
        f"weights {gib(weights)}",
        ev,
    )


def _naive_bytes(sizing: dict[str, Any], s: Settings) -> int:
    params = int(sizing.get("quantized_params", 0)) + int(sizing.get("unquantized_params", 0))
    return params // 2 if s.quant == "bnb-4bit" else params


@check(
    "memory-fit",
    title="Weights + KV cache + prefill peak fit the GPUs",
    section=SECTION,
    needs=(MEMORY,),
    wants=(RATES_LIVE,),  # the card's rates for the prefill time, when the live probe runs here
)
def memory_fit(ctx: DoctorContext) -> Outcome:
    try:
        e, gpus, gpu_source, facts = _estimate(ctx)
    except UsageError as exc:
        return Outcome.error(str(exc), fix=Fix(exc.hint or "Use e.g. --gpus 1xH100-80GB"))
    attachments = {"estimate": e.to_dict()}
    ev = _evidence(e, gpu_source)
    need = (
        f"weights {gib(e.weights_bytes)} + KV {gib(e.kv_bytes)} + prefill peak {gib(e.activation_peak_bytes)}"
        f" + overhead {gib(e.overhead_bytes)} = {gib(e.total_bytes)}"
    )
    if not gpus and runs_on_cpu(ctx):  # no GPU, and none needed: the RAM holds the run
        return Outcome.ok(
            f"runs on the CPU: weights {gib(e.weights_bytes)} + KV {gib(e.kv_bytes)} at {e.context:,} "
            "tokens fit this machine's RAM",
            ev,
            attachments=attachments,
        )
    if not gpus:
        # The prefill peak and the longest context depend on the GPUs: say what is missing, never "0 B".
        return Outcome.warn(
            f"no GPU to compare with ({gpu_source}): weights {gib(e.weights_bytes)} + KV "
            f"{gib(e.kv_bytes)} + overhead {gib(e.overhead_bytes)} at {e.context:,} tokens; the "
            "prefill peak and the longest context that fits need the GPUs (--gpus)",
            ev,
            Fix(
                "Say which GPUs the run will use: --gpus 1xH100-80GB, 4xA100-40GB, 2x80GiB",
                (rerun_command(resolve_plan(ctx).spec, gpus="1xH100-80GB"),),
            ),
            attachments=attachments,
        )
    speed = (
        f"; prefill ≈ {duration(e.prefill_seconds_estimate)} per trial "
        f"({(e.prefill_rates or 'rates assumed').split(' (')[0]})"
        if e.prefill_seconds_estimate
        else ""
    )
    if e.fits:
        return Outcome.ok(
            f"fits: {need} on {len(gpus)}× {gpus[0].name} (chunk {e.prefill_chunk}); longest context "
            f"≈ {e.max_context_tokens:,} tokens{speed}",
            ev,
            attachments=attachments,
        )
    sizing, settings = facts["sizing"], _settings(facts)
    usable_weights = sum(g.capacity_bytes for g in gpus)
    n_needed = _gpus_needed(sizing, settings, gpus[0])
    more = f"≥{n_needed}× {gpus[0].name}" if n_needed else f"more than {_MAX_GPUS_TRIED} GPUs"
    if e.weights_bytes + e.overhead_bytes > usable_weights or e.max_context_tokens == 0:
        cause = f"the weights alone ({gib(e.weights_bytes)}) do not fit"
        if e.fused_experts_unquantized:
            cause += f": {', '.join(e.fused_experts_unquantized)} stay {e.dtype} ({e.quant} quantizes only nn.Linear)"
        fix = Fix(
            f"Use a pre-quantized checkpoint with un-fused experts, an FP8 checkpoint, or {more}"
            if e.fused_experts_unquantized
            else f"Quantize (--quant bnb-4bit) or use {more}",
            # --max-memory names today's GPUs only, so the command for more GPUs drops it (as _gpus_needed does)
            (rerun_command(resolve_plan(ctx).spec, gpus=_gpus_flag(n_needed, gpus[0]), max_memory=None),)
            if n_needed
            else (),
        )
        return Outcome.fail(
            f"does not fit at any context: {cause}; needs {more}", ev, fix, attachments=attachments
        )
    fix = Fix(
        f"Use --context {e.max_context_tokens} or less, a smaller --prefill-chunk, --attn flex_attention, "
        f"or {more}",
        (rerun_command(resolve_plan(ctx).spec, context=e.max_context_tokens),),
    )
    return Outcome.fail(
        f"does not fit at {e.context:,} tokens: {need}; longest that fits ≈ {e.max_context_tokens:,} tokens",
        ev,
        fix,
        attachments=attachments,
    )
