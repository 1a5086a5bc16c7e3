"""Prefill activation peak: what one forward over a chunk of C prompt tokens (with T − C tokens already
cached) allocates on top of the weights and the KV cache, in transformers' eager PyTorch code.

Layers run one after another, so the peak is the worst single layer plus what lives for the whole
forward (masks, the residual stream, the chunk's embeddings). Terms and where they come from:
- sdpa with a mask (chunked prefill against a cache, or a window/chunked layer longer than its window):
  transformers builds a bool mask [1, 1, C, kv_len] per layer type (masking_utils.sdpa_mask) that lives
  for the whole forward; sdpa holds one more C × kv_len byte copy of it (measured), and
  with a mask `use_gqa_in_sdpa` is false, so `repeat_kv` expands K and V to all query heads
  (transformers' attention integrations).
- eager: repeat_kv always, plus the C × heads × kv_len score matrix (compute dtype, plus the fp32
  copy and fp32 output of softmax(dtype=float32)).
- flash_attention_2 / flex_attention: no dense mask, no GQA expansion (kernel-side masking / enable_gqa),
  except flex with a query head count that is not a power of two (see flex_repeats_kv).
- DynamicCache update: `torch.cat(past, new)` holds old and new copies at once.
- MoE: transformers' Llama 4 sends every token to every expert (`hidden_states.repeat(num_experts, 1)`,
  then bmm): E × C × (H + 4I) elements; measured 1.23 MiB/token at Scout width (§0.5). The pre-quantized
  `SequentialLlama4TextExperts` loops over experts with two E × C × H buffers. Routed MoE (Mixtral in
  5.x, grouped_mm) processes the S = C × top_k routed rows at once: S·(H + 4I), or 4·S·H after the
  down projection, whichever is larger.
- bitsandbytes: a 4-bit matmul with more than one token dequantizes the whole weight to the compute dtype.
- logits: `logits_to_keep=1` (what niah passes) keeps one row; otherwise C × vocab in fp32.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from doctor.memory.kv import KvLayer, kv_geometry, tokens_kept

MASKED_ATTN = ("sdpa", "eager")


@dataclass(frozen=True)
class Shapes:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int  # dense MLP width (Llama 4: intermediate_size_mlp)
    expert_intermediate: int
    num_experts: int
    top_k: int
    vocab: int

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], moe: Mapping[str, Any]) -> Shapes:
        kv_heads, head_dim = kv_geometry(cfg)
        experts = int(moe.get("num_experts") or cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
        inter = int(cfg.get("intermediate_size") or 4 * int(cfg.get("hidden_size", 0)))
        expert_inter = int(cfg.get("moe_intermediate_size") or inter)
        dense = int(cfg.get("intermediate_size_mlp") or inter)
        return cls(
            int(cfg.get("hidden_size", 0)),
            int(cfg.get("num_attention_heads") or 1),
            kv_heads,
            head_dim,
            dense,
            expert_inter,
            experts,
            int(cfg.get("num_experts_per_tok") or 1),
            int(cfg.get("vocab_size") or 0),
        )


def needs_dense_mask(attn: str, layer: KvLayer, context: int, chunk: int) -> bool:
    """sdpa can use is_causal (no mask) only for a one-shot prefill of a full-attention layer."""
    if attn not in MASKED_ATTN:
        return False
    if chunk < context:
        return True
    window = layer.window
    return layer.kind == "window" and window is not None and window != 0 and context > window


def attention_transient(
    s: Shapes, attn: str, layer: KvLayer, context: int, chunk: int, b: int, kv_b: int
) -> int:
    """Bytes alive inside one attention block beyond weights, persistent KV and forward-wide buffers."""
    kv_len = min(context, (layer.window - 1 + chunk) if layer.kind == "window" and layer.window else context)
    kept_before = tokens_kept(layer, max(context - chunk, 0), chunk) if layer.kind != "none" else 0
    projections = chunk * (2 * s.heads + 3 * s.kv_heads) * s.head_dim * b  # q, k, v + rotated q, k
    cat_copy = 2 * kept_before * s.kv_heads * s.head_dim * kv_b  # old cache alive during torch.cat
    out = 2 * chunk * s.heads * s.head_dim * b  # attention output + its transposed copy
    extra = 0
    if attn == "eager":
        # scores in the compute dtype + softmax(dtype=float32): an fp32 copy of the input and the fp32
        # output are alive together (measured: 10 B per score element in bf16)
        extra = 2 * kv_len * s.heads * s.head_dim * b + chunk * s.heads * kv_len * (b + 8)
    elif attn == "sdpa" and needs_dense_mask(attn, layer, context, chunk):
        gqa_expand = 2 * kv_len * s.heads * s.head_dim * b if s.kv_heads < s.heads else 0
        # repeat_kv + one more C × kv_len byte mask inside sdpa (measured: the bool mask is copied once, not
        # turned into a compute-dtype additive mask; docs/estimator-accuracy.md)
        extra = gqa_expand + chunk * kv_len
    elif attn == "flex_attention" and flex_repeats_kv(s):
        extra = 2 * kv_len * s.heads * s.head_dim * b
    return projections + cat_copy + out + extra


def flex_repeats_kv(s: Shapes) -> bool:
    """transformers' flex integration (integrations/flex_attention.py, 5.17–5.24) passes enable_gqa only when
    the query head count is a power of two; otherwise it repeat_kv's K and V to every query head. Scout's
    40 heads hit this: measured on an H200, the repeated global-layer K/V fails Inductor's flex kernel past
    ~419k tokens (more than 2^31 elements) and runs out of memory at 2M (docs/benchmarks.md)."""
    return s.kv_heads < s.heads and (s.heads & (s.heads - 1)) != 0


def flex_index_overflow(s: Shapes, context: int) -> bool:
    """The repeated K of one layer holds heads × head_dim × context elements; past 2^31 the compiled flex
    kernel fails to build (32-bit indexing), whatever the free memory."""
    return flex_repeats_kv(s) and s.heads * s.head_dim * context >= 2**31


def mlp_transient(s: Shapes, moe: Mapping[str, Any], is_moe_layer: bool, chunk: int, b: int) -> int:
    if not is_moe_layer or not s.num_experts:
        return 3 * chunk * s.intermediate * b  # gate, up, act(gate)*up
    experts_class = str(moe.get("experts_class", ""))
    if moe.get("all_tokens_to_all_experts"):
        if experts_class.startswith("Sequential"):
            # routed_in (E·C·H, kept by the MoE forward) + zeros_like output (E·C·H) + one expert MLP at a time
            return 2 * s.num_experts * chunk * s.hidden * b + 3 * chunk * s.expert_intermediate * b
        # routed_in E·C·H + gate_up E·C·2I + act(gate) E·C·I + up*act E·C·I
        return s.num_experts * chunk * (s.hidden + 4 * s.expert_intermediate) * b
    # Routed MoE: transformers 5.x's default experts implementation on GPU (grouped_mm) gathers all
    # S = C·top_k (token, expert) rows at once: hidden S·H + gate_up S·2I + act and product S·I each.
    # After the down projection the gathered input, the output, the weighted output and its re-ordered
    # copy (S·H each) are alive at once, which dominates when H > 4I (fine-grained experts, Qwen3-MoE).
    routed = chunk * s.top_k
    one_hot = routed * (s.num_experts + 1) * 8  # int64 routing masks / sort indices
    rows = max(s.hidden + 4 * s.expert_intermediate, 4 * s.hidden)
    return chunk * s.hidden * b + routed * rows * b + one_hot


def forward_persistent(
    s: Shapes,
    attn: str,
    layers: list[KvLayer],
    context: int,
    chunk: int,
    b: int,
    logits_to_keep_one: bool = True,
) -> int:
    """Buffers alive for the whole forward: the residual stream, masks per distinct layer type, logits."""
    residual = 3 * chunk * s.hidden * b
    masks = 0
    seen: set[tuple[str, int | None]] = set()
    for layer in layers:
        key = (layer.kind, layer.window)
        if key in seen or layer.kind == "none":
            continue
        seen.add(key)
        if needs_dense_mask(attn, layer, context, chunk):
            kv_len = min(
                context, (layer.window - 1 + chunk) if layer.kind == "window" and layer.window else context
            )
            masks += chunk * kv_len  # bool
    rotary = 2 * chunk * s.head_dim * 4
    logits = (1 if logits_to_keep_one else chunk) * s.vocab * (4 + b)
    return residual + masks + rotary + logits


def dequant_transient(quant: str, largest_quantized_linear: int, chunk: int, largest_out: int, b: int) -> int:
    if quant == "bnb-4bit":
        return largest_quantized_linear * b
    if quant == "bnb-8bit":
        return chunk * largest_out * 4 + largest_quantized_linear  # int32 accumulators + outlier copy
    return 0


# ---------------------------------------------------------------- traced model (doctor.memory.trace)


def _value(coeffs: list[int], chunk: int, past: int) -> int:
    one, c, p, cp, cc = coeffs
    return one + c * chunk + p * past + cp * chunk * past + cc * chunk * chunk


def _regimes_for(model: Mapping[str, Any], context: int, chunk: int) -> list[Mapping[str, Any]]:
    """The traced regime(s) covering (context, chunk); both neighbours within one token of a boundary
    (where transformers' branch may flip), so the larger answer wins."""
    past = context - chunk
    kind, x = ("oneshot", chunk) if past <= 0 else ("chunked", past)
    out = []
    for regime in model.get("regimes") or []:
        if regime["kind"] != kind:
            continue
        lo, hi = int(regime["lo"]), regime["hi"]
        if lo - 1 <= x and (hi is None or x <= int(hi)):
            out.append(regime)
    return out


def _carried_into(
    zones: Mapping[str, Any], signatures: list[str], layer_gpu: list[int], i: int, chunk: int, past: int
) -> int:
    """Bytes the previous layer returned besides its hidden states that the model's loop still holds
    while layer i runs (traced as `carry:<signature>`; e.g. BLOOM's attention probabilities), when both
    layers are on the same GPU."""
    if i == 0:
        return 0
    same_gpu = i >= len(layer_gpu) or layer_gpu[i - 1] == layer_gpu[i]
    carry = zones.get(f"carry:{signatures[i - 1]}")
    return max((_value(c, chunk, past) for c in carry), default=0) if carry and same_gpu else 0


def traced_activation_per_gpu(
    model: Mapping[str, Any],
    layer_gpu: list[int],
    kv_now: list[int],
    kv_before: list[int],
    context: int,
    chunk: int,
    per_layer_extra: int,
    n_gpus: int,
) -> list[int] | None:
    """Peak bytes above weights + KV(context) per GPU, from the traced allocation events; None when the
    trace does not cover this (context, chunk).

    Layer i peaks at entry(i) + its worst event; at that moment the layers after it on the same GPU still
    hold their cache from before this chunk, so their growth (counted in KV at full length) is subtracted.
    Events outside the layers (embeddings, rotary, masks, final norm, one row of logits) land on the first
    and the last GPU."""
    regimes = _regimes_for(model, context, chunk)
    signatures = model.get("layer_signatures") or []
    if not regimes or not signatures or n_gpus == 0:
        return None
    past = max(context - chunk, 0)
    # Recurrent layers pad a chunk to a multiple of their scan's block G. The trace ran at multiples of G
    # and was fitted on C / G; a chunk in between is evaluated at the next multiple (its padded sizes are
    # the same there, the rest a little larger).
    granule = max(int(model.get("granule") or 1), 1)
    chunk = -(-chunk // granule)
    best = [0] * n_gpus
    for regime in regimes:
        zones = regime["zones"]
        suffix = [0] * n_gpus
        per_gpu = [0] * n_gpus
        for i in range(len(signatures) - 1, -1, -1):
            gpu = layer_gpu[i] if i < len(layer_gpu) else (layer_gpu[-1] if layer_gpu else 0)
            if gpu < 0 or gpu >= n_gpus:
                continue
            growth = (kv_now[i] - kv_before[i]) if i < len(kv_now) else 0
            suffix[gpu] += growth
            sig = signatures[i]
            if f"entry:{sig}" not in zones:
                return None
            entry = max(_value(c, chunk, past) for c in zones[f"entry:{sig}"])
            inside = max((_value(c, chunk, past) for c in zones.get(f"layer:{sig}", [])), default=0)
            carried = _carried_into(zones, signatures, layer_gpu, i, chunk, past)
            per_gpu[gpu] = max(per_gpu[gpu], entry + inside + carried + per_layer_extra - suffix[gpu])
        first = layer_gpu[0] if layer_gpu and 0 <= layer_gpu[0] < n_gpus else 0
        last = layer_gpu[-1] if layer_gpu and 0 <= layer_gpu[-1] < n_gpus else n_gpus - 1
        for zone, gpu in (("pre", first), ("post", last)):
            peak = max((_value(c, chunk, past) for c in zones.get(zone, [])), default=0)
            per_gpu[gpu] = max(per_gpu[gpu], peak)
        best = [max(a, b) for a, b in zip(best, per_gpu)]
    return [max(x, 0) for x in best]


FALLBACK_MARGIN = 1.25  # analytic activation model (no trace): widen, it was fitted on a few architectures
# Allocations a meta trace cannot see: cuBLAS/cuBLASLt and attention-kernel workspaces that CUDA libraries
# take through PyTorch's caching allocator during a prefill. The traced peak was 32–94 MiB under the
# measured one on every bf16 case of the calibration set (H200, torch 2.11; docs/estimator-accuracy.md).
KERNEL_WORKSPACE = 64 << 20


def unmodelled_ops(sizing: Mapping[str, Any]) -> list[str]:
    """What the trace could not vouch for: ops outside its list of ops whose CUDA kernels allocate
    nothing beyond their outputs (each was charged one more output-sized buffer)."""
    trace = sizing.get("trace") or {}
    return list((trace.get("activations") or {}).get("unmodelled_ops") or [])


def activation_method(sizing: Mapping[str, Any]) -> str:
    """ "traced" when the model's own forward gave the activation model, else "analytic"."""
    return "traced" if ((sizing.get("trace") or {}).get("activations") or {}).get("regimes") else "analytic"


def traced_for_sizing(
    sizing: Mapping[str, Any],
    layers: list[KvLayer],
    layer_gpu: list[int],
    context: int,
    chunk: int,
    kv_dtype_bytes: int,
    per_layer_extra: int,
    n_gpus: int,
) -> list[int] | None:
    from doctor.memory.kv import kv_bytes_per_layer

    model = (sizing.get("trace") or {}).get("activations")
    if not model:
        return None
    cfg = sizing.get("text_config") or {}
    now = kv_bytes_per_layer(cfg, layers, context, chunk, kv_dtype_bytes)
    before = kv_bytes_per_layer(cfg, layers, max(context - chunk, 0), chunk, kv_dtype_bytes)
    if (sizing.get("trace") or {}).get("kv_preallocated") and context > chunk:
        # the lean path's full layers were allocated for the whole prompt by its first chunk: a later chunk
        # adds nothing to them (its windowed layers still grow by a torch.cat, bounded by the window)
        before = [n if layer.kind == "full" else b for n, b, layer in zip(now, before, layers)]
    traced = traced_activation_per_gpu(model, layer_gpu, now, before, context, chunk, per_layer_extra, n_gpus)
    if traced is None:
        return None
    return [x + KERNEL_WORKSPACE for x in traced]


def dispatched_attn(sizing: Mapping[str, Any], requested: str) -> str:
    """The attention implementation transformers really dispatched for this model (read from
    model.config._attn_implementation after building it with the requested one), else the request."""
    return str((sizing.get("trace") or {}).get("attn_implementation") or requested)


def trace_notes(sizing: Mapping[str, Any], requested_attn: str) -> list[str]:
    trace = sizing.get("trace") or {}
    notes: list[str] = []
    actual = trace.get("attn_implementation")
    if actual and actual != requested_attn:
        notes.append(
            f"attention: {requested_attn} was requested but this transformers dispatches {actual} for this "
            "model; the prefill peak follows what really runs."
        )
    if activation_method(sizing) == "traced":
        notes.append(
            "Prefill peak traced from the model's own forward on the meta device (one decoder layer per "
            "distinct structure, fused CUDA attention kernels stood in for)."
        )
        own = trace.get("custom_attention") or []
        if own:
            notes.append(
                f"Attention computed in the model's own code ({', '.join(own)}): traced op by op as it runs."
            )
        unmodelled = unmodelled_ops(sizing)
        if unmodelled:
            notes.append(
                f"Ops whose CUDA kernels may hold temporaries a meta trace cannot see ({', '.join(unmodelled)}): "
                "each is charged one more output-sized buffer (uncertain, confidence medium)."
            )
    else:
        why = trace.get("activations_error") or trace.get("kv_error") or "no trace"
        notes.append(
            f"Prefill peak from the analytic fallback model, widened by {FALLBACK_MARGIN:.2f}× "
            f"(uncertain: {why})."
        )
    if (sizing.get("kv_layout") or {}).get("measured"):
        notes.append(
            "KV bytes per token and per-layer caps measured from transformers' own DynamicCache on a meta "
            "forward."
        )
    elif sizing.get("text_config", {}).get("kv_lora_rank"):
        notes.append(
            "KV of this MLA model by formula (the trace failed): the larger decompressed K/V is assumed."
        )
    return notes
