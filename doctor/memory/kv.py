"""KV cache bytes per layer, per the layout the installed transformers really uses.

`DynamicCache(config)` (transformers ≥ 4.57) keeps sliding-window and chunked layers (Llama 4's
`attention_chunk_size`) as `DynamicSlidingWindowLayer`: after each update it keeps a *view* of the last
`window − 1` tokens of `torch.cat(past, new)`, so the storage that stays alive is `window − 1 + chunk`
tokens (the view pins the whole concatenation). Full layers keep every token. Older transformers
(`DynamicCache()`) keep all layers full (vram-anchors.md §3.5, §4.3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KvLayer:
    kind: str  # "full" | "window" | "none" (shares another layer's cache)
    window: int | None


def kv_geometry(text_config: Mapping[str, Any]) -> tuple[int, int]:
    """(num_key_value_heads, head_dim) from a (text) config dict."""
    heads = int(text_config.get("num_attention_heads") or 1)
    kv_heads = int(text_config.get("num_key_value_heads") or heads)
    head_dim = text_config.get("head_dim") or int(text_config.get("hidden_size", 0)) // heads
    return kv_heads, int(head_dim)


def kv_layers(text_config: Mapping[str, Any], layout: Sequence[Mapping[str, Any]] | None) -> list[KvLayer]:
    """Per-layer cache kind: from transformers' own DynamicCache(config) when the child could ask it,
    else every layer full (what DynamicCache() without a config does)."""
    n_layers = int(text_config.get("num_hidden_layers") or 0)
    if layout:
        return [KvLayer(str(x.get("kind", "full")), x.get("window")) for x in layout]
    return [KvLayer("full", None) for _ in range(n_layers)]


def tokens_kept(layer: KvLayer, context: int, chunk: int) -> int:
    if layer.kind == "none":
        return 0
    if layer.kind == "window" and layer.window:
        return min(context, layer.window - 1 + min(chunk, context))
    return context


def kv_bytes_per_layer(text_config: Mapping[str, Any], layers: Sequence[KvLayer], context: int, chunk: int,
                       kv_dtype_bytes: int) -> list[int]:
    kv_heads, head_dim = kv_geometry(text_config)
    per_token = 2 * kv_heads * head_dim * kv_dtype_bytes  # K and V
    return [per_token * tokens_kept(layer, context, chunk) for layer in layers]
