"""Failures the plan is known to hit, judged before the run: kernel limits, placements that cannot load,
and a chunked prefill that would not be exact.

A limit the run is known to hit is a FAIL with the fix, never a note under a passing memory check:
the run would fail all the same.
"""

from __future__ import annotations

from doctor.context import DoctorContext
from doctor.memory.activations import Shapes, flex_index_overflow, flex_repeats_kv
from doctor.memory.estimate import prefill_state
from doctor.plan import estimate_at_plan, rerun_command, resolve_plan
from doctor.probes.memory import MEMORY
from doctor.registry import Outcome, check
from doctor.report.model import Evidence, Fix

SECTION = "memory"


def _flex_limit_tokens(shapes: Shapes) -> int:
    return (2**31 - 1) // max(shapes.heads * shapes.head_dim, 1)


@check(
    "attention-limit",
    title="The attention kernel runs at the planned length",
    section=SECTION,
    needs=(MEMORY,),
)
def attention_limit(ctx: DoctorContext) -> Outcome:
    sizing = ctx.needed(MEMORY)["sizing"]
    spec = resolve_plan(ctx).spec
    shapes = Shapes.from_config(sizing["text_config"], sizing.get("moe") or {})
    context = int(spec.context or 0)
    ev = [
        Evidence("attn", spec.attn, "plan", spec.source_of("attn")),
        Evidence(
            "heads",
            f"{shapes.heads} query / {shapes.kv_heads} key-value, head_dim {shapes.head_dim}",
            "config",
        ),
    ]
    if spec.attn != "flex_attention" or not flex_repeats_kv(shapes):
        return Outcome.ok(f"{spec.attn} has no known length limit for this model", ev)
    limit = _flex_limit_tokens(shapes)
    ev.append(
        Evidence(
            "flex_limit_tokens",
            limit,
            "estimate: K/V repeated to every query head; 2^31 elements per layer",
        )
    )
    if not flex_index_overflow(shapes, context):
        return Outcome.ok(f"flex_attention at {context:,} tokens is under its ~{limit:,}-token limit", ev)
    return Outcome.fail(
        f"flex_attention fails past ~{limit:,} tokens for {shapes.heads} query heads (planned {context:,}): "
        "transformers repeats K/V to every head when the head count is not a power of two, and the compiled "
        "kernel cannot index more than 2^31 elements per layer",
        ev,
        Fix(
            "Use --attn sdpa (or leave --attn on auto): chunked sdpa prefill has no such limit",
            (rerun_command(spec, attn="sdpa"),),
        ),
    )


@check(
    "prefill-exact",
    title="The chunked prefill computes what one forward over the prompt would",
    section=SECTION,
    needs=(MEMORY,),
)
def prefill_exact(ctx: DoctorContext) -> Outcome:
    sizing = ctx.needed(MEMORY)["sizing"]
    trace = sizing.get("trace") or {}
    spec = resolve_plan(ctx).spec
    ev = [Evidence("prefill_chunk", spec.prefill_chunk, "plan", spec.source_of("prefill_chunk"))]
    if "prefill_state_error" in trace or not trace.get("attn_implementation"):
        reason = trace.get("prefill_state_error") or "the model was not traced"
        return Outcome.skip(f"not asked whether a chunked prefill carries this model's state ({reason})", ev)
    state = prefill_state(sizing)
    if state is None:
        return Outcome.ok("a chunked prefill carries every state this model keeps from chunk to chunk", ev)
    ev.append(Evidence("prefill_state", state, "memory probe (two forwards into one cache, meta device)"))
    longest = int(spec.context or 0)
    if spec.prefill_chunk is None or spec.prefill_chunk >= longest:
        return Outcome.ok(
            f"one forward per prompt (up to {longest:,} tokens): a chunked prefill of this model is not exact",
            ev,
        )
    return Outcome.fail(
        f"--prefill-chunk {spec.prefill_chunk:,} cuts the {longest:,}-token prompts into chunks, and a "
        f"chunked prefill of this model is not exact: {state}",
        ev,
        Fix(
            "Prefill each prompt in one forward: drop --prefill-chunk (the plan then does, and sizes it), "
            "or give at least the longest length",
            (rerun_command(spec, prefill_chunk=None),),
        ),
    )


@check("bnb-cpu-offload", title="Quantized weights stay on the GPUs", section=SECTION, needs=(MEMORY,))
def bnb_cpu_offload(ctx: DoctorContext) -> Outcome:
    spec = resolve_plan(ctx).spec
    e, gpus, _source = estimate_at_plan(ctx)
    ev = [
        Evidence("quant", e.quant, "plan"),
        Evidence("weights_on_cpu_bytes", e.weights_on_cpu_bytes, "estimate"),
    ]
    if e.quant == "none" or not gpus:
        return Outcome.ok("no bitsandbytes quantization" if e.quant == "none" else "no GPU planned", ev)
    if not e.weights_on_cpu_bytes:
        return Outcome.ok("every quantized module is placed on a GPU", ev)
    return Outcome.fail(
        f"{e.quant} with weights placed on the CPU/disk: transformers refuses to dispatch bitsandbytes modules "
        "off the GPU (ValueError in from_pretrained) unless fp32 CPU offload is enabled, which runs those "
        "layers unquantized and slowly",
        ev,
        Fix(
            "Give the GPUs room for every layer: more or larger GPUs, larger --max-memory budgets, or a "
            "smaller model/quantization",
            (rerun_command(spec, max_memory=None),) if spec.max_memory else (),
        ),
    )
