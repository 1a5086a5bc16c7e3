"""KV cache bytes per layer, per the layout the installed transformers really uses.

Measured first: `doctor.memory.trace.measure_kv` runs a meta forward through every layer with
`DynamicCache(config)` and reads each cache layer's stored tensors (bytes per token, whatever the
architecture caches: grouped K/V, an MLA latent, nothing for a layer that reuses another's cache) and its
cap (`sliding_window`). The formula `2 × kv_heads × head_dim` is only the fallback when that forward
could not run; for MLA configs the fallback takes the larger, decompressed per-head K/V (safe side).

`DynamicCache(config)` (transformers ≥ 4.57) keeps sliding-window and chunked layers (Llama 4's
`attention_chunk_size`) as `DynamicSlidingWindowLayer`: after each update it keeps a *view* of the last
`window − 1` tokens of `torch.cat(past, new)`, so the storage that stays alive is `window − 1 + chunk`
tokens (the view pins the whole concatenation). Full layers keep every token. Older transformers
(`DynamicCache()`) keep all layers full. Recurrent and hybrid layers (`LinearAttentionLayer`: Mamba,
gated delta nets, short convolutions) add their convolution window and recurrent state, measured the same
way and constant in the context.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KvLayer:
    # "full" | "window" | "none" (shares another layer's cache) | "recurrent" (a fixed-size state only)
    kind: str
    window: int | None
    bytes_per_token: int | None = None  # measured at `measured_dtype_bytes` per element; None = formula
    measured_dtype_bytes: int = 2
    # Recurrent / hybrid layers (Mamba, gated delta net, short convolutions): the convolution window and
    # recurrent state the cache keeps, the same bytes at any context once the first chunk has run.
    state_bytes: int = 0


def kv_geometry(text_config: Mapping[str, Any]) -> tuple[int, int]:
    """(num_key_value_heads, head_dim) from a (text) config dict."""
    heads = int(text_config.get("num_attention_heads") or 1)
    kv_heads = int(text_config.get("num_key_value_heads") or heads)
    head_dim = text_config.get("head_dim") or int(text_config.get("hidden_size", 0)) // heads
    return kv_heads, int(head_dim)


def formula_elements_per_token(text_config: Mapping[str, Any]) -> int:
    """K + V elements per token per layer by formula (fallback). MLA (kv_lora_rank in the config): the
    larger of the decompressed per-head K/V and the latent, since versions differ in what they cache."""
    if text_config.get("kv_lora_rank"):
        heads = int(text_config.get("num_attention_heads") or 1)
        rope = int(text_config.get("qk_rope_head_dim") or 0)
        nope = int(text_config.get("qk_nope_head_dim") or 0)
        v_dim = int(text_config.get("v_head_dim") or nope + rope)
        return max(heads * (nope + rope + v_dim), int(text_config["kv_lora_rank"]) + rope)
    kv_heads, head_dim = kv_geometry(text_config)
    return 2 * kv_heads * head_dim


def kv_layers(text_config: Mapping[str, Any], layout: Sequence[Mapping[str, Any]] | None) -> list[KvLayer]:
    """Per-layer cache kind: from transformers' own DynamicCache(config) when the child could ask it,
    else every layer full (what DynamicCache() without a config does)."""
    n_layers = int(text_config.get("num_hidden_layers") or 0)
    if layout:
        from doctor.memory.storage import dtype_bytes

        return [
            KvLayer(
                str(x.get("kind", "full")),
                x.get("window"),
                x.get("bytes_per_token"),
                dtype_bytes(str(x.get("dtype") or "bfloat16")),
                int(x.get("state_bytes") or 0),
            )
            for x in layout
        ]
    return [KvLayer("full", None) for _ in range(n_layers)]


def tokens_kept(layer: KvLayer, context: int, chunk: int) -> int:
    if layer.kind in ("none", "recurrent"):
        return 0
    if layer.kind == "window" and layer.window:
        return min(context, layer.window - 1 + min(chunk, context))
    return context


def kv_bytes_per_layer(
    text_config: Mapping[str, Any], layers: Sequence[KvLayer], context: int, chunk: int, kv_dtype_bytes: int
) -> list[int]:
    formula = formula_elements_per_token(text_config) * kv_dtype_bytes
    out = []
    for layer in layers:
        per_token = formula
        if layer.bytes_per_token is not None:  # measured at the model dtype; rescale to the KV dtype
            per_token = layer.bytes_per_token * kv_dtype_bytes // max(layer.measured_dtype_bytes, 1)
        # the recurrent state is allocated by the first chunk and updated in place after it (it is not
        # a K/V tensor: it stays in the dtype the layer computes it in, whatever --kv-dtype says)
        state = layer.state_bytes if context > 0 else 0
        out.append(per_token * tokens_kept(layer, context, chunk) + state)
    return out
