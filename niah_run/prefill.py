"""Exact chunked prefill and greedy decoding on a transformers causal LM, with KV prefix reuse.

Why our own loop instead of `model.generate`: a long prompt must be fed in chunks (one-shot prefill
materializes activations, masks and logits for every token: +40 GiB at 32k tokens on a Scout-shaped
model), every prefill forward must keep only the last position's logits, and the haystack prefix's
KV cache should be reused across needle depths. Each of those is a few lines here and measurable.

Exactness rules this module keeps:
- positions are absolute: chunk k of a prompt gets position_ids/cache_position start..end, and the
  cache already holds exactly `start` tokens (Llama 4's NoPE temperature tuning reads them);
- the cache is only cropped when every layer still holds all the tokens to keep (a sliding or
  chunked layer past its window has dropped them: those caches are rebuilt, never approximated).

torch and transformers are imported inside functions: importing `niah_run.cli` must stay light.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ForwardSignature:
    """How this transformers version spells the forward arguments we need (they were renamed)."""

    cache_kw: str  # "cache" (transformers >= 5.2x) or "past_key_values"
    logits_kw: str | None  # "logits_to_keep", "num_logits_to_keep" (4.45-4.49) or None
    takes_cache_position: bool  # removed from the signature in recent 5.x; required for masks before


def inspect_forward(model: Any) -> ForwardSignature:
    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    logits_kw = next((name for name in ("logits_to_keep", "num_logits_to_keep") if name in params), None)
    return ForwardSignature(
        cache_kw=cache_kw, logits_kw=logits_kw, takes_cache_position="cache_position" in params
    )


def new_cache(model: Any) -> Any:
    """A DynamicCache shaped by the config (sliding/chunked layers keep only their window)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # transformers < 4.56 has no config argument: full-length layers everywhere
        return DynamicCache()


def cache_length(cache: Any) -> int:
    """Tokens the cache has seen (for sliding layers: all of them, not just the window)."""
    return int(cache.get_seq_length()) if cache is not None else 0


def can_crop_to(cache: Any, keep: int) -> bool:
    """True when cropping the cache to its first `keep` tokens gives exactly the KV of those tokens.

    Feature-detected per layer, never assumed: a full layer crops by slicing; a sliding/chunked layer
    only while it still holds every token it has seen (before its window filled up)."""
    if cache is None or not hasattr(cache, "crop"):
        return False
    layers = getattr(cache, "layers", None)
    if layers is None:  # legacy cache object: we cannot see what each layer keeps
        return False
    seen = cache_length(cache)
    if not 0 < keep <= seen:
        return False
    for layer in layers:
        if getattr(layer, "is_croppable", True) is False:
            return False
        window = getattr(layer, "sliding_window", None)
        if getattr(layer, "is_sliding", False) or window is not None:
            layer_seen = int(layer.get_seq_length())
            if window is None or layer_seen >= int(window) - 1:
                return False  # older tokens were dropped: cannot roll back exactly
    return True


def crop_to(cache: Any, keep: int) -> None:
    # A negative argument means "remove that many tokens" in every transformers version since 4.3x;
    # a positive one is an absolute length in old versions and refused in new ones.
    remove = cache_length(cache) - keep
    if remove > 0:
        cache.crop(-remove)
    if cache_length(cache) != keep:
        raise RuntimeError(f"cache crop left {cache_length(cache)} tokens, expected {keep}")


def forward_step(model: Any, sig: ForwardSignature, token_ids: Any, start: int, cache: Any) -> Any:
    """One forward over `token_ids` (shape [1, n]) at absolute positions start..start+n-1.

    Returns the float32 logits of the last position, shape [vocab]."""
    import torch

    n = token_ids.shape[-1]
    if cache_length(cache) != start:
        raise RuntimeError(f"cache holds {cache_length(cache)} tokens but the chunk starts at {start}")
    positions = torch.arange(start, start + n, device=token_ids.device)
    kwargs: dict[str, Any] = {
        "input_ids": token_ids,
        "position_ids": positions.unsqueeze(0),
        sig.cache_kw: cache,
        "use_cache": True,
    }
    if sig.takes_cache_position:
        kwargs["cache_position"] = positions
    if sig.logits_kw is not None:
        kwargs[sig.logits_kw] = 1  # the prefill never needs more than the next-token logits
    out = model(**kwargs)
    return out.logits[0, -1].float()


def chunk_bounds(start: int, end: int, chunk_size: int | None) -> list[tuple[int, int]]:
    """[start, end) cut into pieces of at most `chunk_size` (None or <= 0: one piece)."""
    if end <= start:
        return []
    if not chunk_size or chunk_size <= 0:
        return [(start, end)]
    return [(a, min(a + chunk_size, end)) for a in range(start, end, chunk_size)]


def prefill(
    model: Any, sig: ForwardSignature, input_ids: Any, cache: Any, *, start: int, chunk_size: int | None
) -> Any:
    """Feed input_ids[start:] (tensor [1, T]) into `cache` chunk by chunk; return the last logits."""
    import torch

    logits = None
    with torch.inference_mode():
        for a, b in chunk_bounds(start, input_ids.shape[-1], chunk_size):
            logits = forward_step(model, sig, input_ids[:, a:b], a, cache)
    if logits is None:
        raise ValueError("nothing to prefill: the prompt is fully cached")
    return logits


def greedy_decode(
    model: Any,
    sig: ForwardSignature,
    cache: Any,
    first_logits: Any,
    *,
    start: int,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    fed: list[int] | None = None,
) -> tuple[list[int], bool]:
    """Greedy tokens after a prefilled cache holding `start` tokens.

    `fed` (optional) gets each token appended as it enters the cache, so the caller always knows
    which ids the cache holds, even if a step fails half-way."""
    import torch

    eos = {int(t) for t in eos_ids}
    device = first_logits.device
    tokens: list[int] = []
    logits = first_logits
    with torch.inference_mode():
        for step in range(max_new_tokens):
            token = int(torch.argmax(logits).item())
            tokens.append(token)
            if token in eos:
                return tokens, True
            if step == max_new_tokens - 1:
                break
            # the embedding may live on another device than the logits under a device map
            ids = torch.tensor([[token]], device=_input_device(model, device))
            logits = forward_step(model, sig, ids, start + step, cache)
            if fed is not None:
                fed.append(token)
    return tokens, False


def _input_device(model: Any, fallback: Any) -> Any:
    try:
        return model.get_input_embeddings().weight.device
    except Exception:  # noqa: BLE001 - some wrappers hide the embedding; the logits device works then
        return fallback
