"""Exact chunked prefill and greedy decoding on a transformers causal LM, with KV prefix reuse.

Why our own loop instead of `model.generate`: a long prompt must be fed in chunks (one-shot prefill
materializes activations, masks and logits for every token: +40 GiB at 32k tokens on a Scout-shaped
model), every prefill forward must keep only the last position's logits, and the haystack prefix's
KV cache should be reused across needle depths. Each of those is a few lines here and measurable.

Exactness rules this module keeps:
- positions are absolute: chunk k of a prompt gets position_ids/cache_position start..end, and the
  cache already holds exactly `start` tokens (Llama 4's NoPE temperature tuning reads them); every
  forward runs inside `query_start(start, n)`, which the lean attention reads;
- chunks are cut on one absolute grid (multiples of the chunk size), whatever the prefill resumes from;
- the cache goes back to a prefix only exactly: by cropping where every layer still holds it, or from a
  snapshot of the windowed layers taken at that very position (doctor.runtime.cache).

torch and transformers are imported inside functions: importing `niah_run.cli` must stay light.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# the one chunk grid (the time plan counts the same chunks) and what a cache has seen
from doctor.runtime.cache import cache_length as cache_length

# how this transformers spells the forward's arguments, as the doctor's probe and trace ask it
from doctor.runtime.forward import ForwardSignature as ForwardSignature
from doctor.runtime.forward import forward_kwargs
from doctor.runtime.forward import inspect_forward as inspect_forward
from run_plan.timing import chunk_bounds as chunk_bounds


def new_cache(model: Any, capacity: int | None = None) -> Any:
    """The cache for one prompt: DynamicCache shaped by the config (sliding/chunked layers keep only their
    window). With `capacity` (the lean path), its full-attention layers are preallocated for that many
    tokens, so no chunk copies a layer's whole K/V (doctor.runtime.cache)."""
    from transformers import DynamicCache

    if capacity is not None:
        from doctor.runtime.cache import preallocated_cache

        return preallocated_cache(model.config, capacity)
    try:
        return DynamicCache(config=model.config)
    except TypeError:  # transformers < 4.56 has no config argument: full-length layers everywhere
        return DynamicCache()


def can_crop_to(cache: Any, keep: int) -> bool:
    """True when cropping the cache to its first `keep` tokens gives exactly the KV of those tokens
    without a snapshot: every layer still holds them (doctor.runtime.cache.holds_prefix)."""
    from doctor.runtime.cache import holds_prefix

    return holds_prefix(cache, keep)


def forward_step(model: Any, sig: ForwardSignature, token_ids: Any, start: int, cache: Any) -> Any:
    """One forward over `token_ids` (shape [1, n]) at absolute positions start..start+n-1.

    Returns the float32 logits of the last position, shape [vocab]."""
    from doctor.runtime.attention import query_start

    n = token_ids.shape[-1]
    held = cache_length(cache)
    if held is not None and held != start:  # None: a cache that counts no tokens (recurrent layers only)
        raise RuntimeError(f"cache holds {held} tokens but the chunk starts at {start}")
    with query_start(start, n):  # the lean attention reads the chunk's position here; others ignore it
        out = model(**forward_kwargs(sig, token_ids, start, cache))
    return out.logits[0, -1].float()


ProgressCallback = Callable[[int, int], None]


@dataclass
class Prefilled:
    """What a prefill leaves: the next-token logits, and the cache snapshot taken on the way (if asked)."""

    logits: Any
    snapshot: Any = None


def prefill(
    model: Any,
    sig: ForwardSignature,
    input_ids: Any,
    cache: Any,
    *,
    start: int,
    chunk_size: int | None,
    snapshot_at: int | None = None,
    on_chunk: ProgressCallback | None = None,
) -> Prefilled:
    """Feed input_ids[start:] (tensor [1, T]) into `cache` chunk by chunk.

    With `snapshot_at` (start < snapshot_at < T), a chunk ends there and the cache is snapshotted at that
    length (doctor.runtime.cache.take_snapshot), so a later prompt sharing those tokens can resume from it.
    `on_chunk(tokens_done, tokens_total)` is called after each chunk, counting from `start`."""
    import torch

    from doctor.runtime.cache import take_snapshot

    total = input_ids.shape[-1]
    cuts = [snapshot_at] if snapshot_at is not None and start < snapshot_at < total else []
    logits, snapshot = None, None
    with torch.inference_mode():
        for a, b in chunk_bounds(start, total, chunk_size, cuts):
            logits = forward_step(model, sig, input_ids[:, a:b], a, cache)
            if cuts and b == cuts[0]:
                snapshot = take_snapshot(cache)
            if on_chunk is not None:
                on_chunk(b - start, total - start)
    if logits is None:
        raise ValueError("nothing to prefill: the prompt is fully cached")
    return Prefilled(logits, snapshot)


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
