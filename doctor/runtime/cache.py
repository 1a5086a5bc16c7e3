"""The KV cache of the lean path, and exact snapshots of it for prefix reuse.

`transformers.DynamicCache(config)` gives each layer the cache its type needs (full, sliding window,
chunked). Its full-attention layers grow by `torch.cat(old, new)`, which holds two copies of the layer's
whole K/V for a moment in every chunk: at 8M tokens on one global layer that is 32 GiB beside the 32 GiB
it copies. `preallocated_cache` keeps transformers' cache object and its windowed layers, and swaps each
full-attention layer for `PreallocatedLayer`, which writes every chunk into one buffer sized for the
prompt and its answer and returns views of it.

A windowed layer keeps only its last `window - 1` tokens, so it cannot be cropped back once it has dropped
some. `PrefixSnapshot` saves those tokens at one position during a prefill (a copy of at most window - 1
tokens per windowed layer) and `restore` puts the cache back to exactly that position: the full layers
cropped, the windowed ones replaced. Layer classes not known here (recurrent states, quantized caches)
are never snapshotted: the caller then prefills from the start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def preallocated_layer_class() -> type:
    """`PreallocatedLayer`, defined on first use (it subclasses transformers' DynamicLayer)."""
    global _PREALLOCATED
    if _PREALLOCATED is None:
        _PREALLOCATED = _define_preallocated_layer()
    return _PREALLOCATED


_PREALLOCATED: type | None = None


def _define_preallocated_layer() -> type:
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        """A full-attention layer whose K/V live in one buffer of `capacity` tokens, filled in place; `keys`
        and `values` are views of the filled part, so crop, seq length and masks work as for DynamicLayer."""

        def __init__(self, capacity: int) -> None:
            super().__init__()
            self.capacity = int(capacity)
            self._key_buffer: torch.Tensor | None = None
            self._value_buffer: torch.Tensor | None = None

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            super().lazy_initialization(key_states, value_states)
            self._key_buffer = key_states.new_empty(
                (*key_states.shape[:-2], self.capacity, key_states.shape[-1])
            )
            self._value_buffer = value_states.new_empty(
                (*value_states.shape[:-2], self.capacity, value_states.shape[-1])
            )
            self.keys = self._key_buffer[..., :0, :]
            self.values = self._value_buffer[..., :0, :]

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized or self._key_buffer is None:
                self.lazy_initialization(key_states, value_states)
            assert self._key_buffer is not None and self._value_buffer is not None and self.keys is not None
            held, new = self.keys.shape[-2], key_states.shape[-2]
            if held + new > self.capacity:
                self._grow(held + new)
            self._key_buffer[..., held : held + new, :].copy_(key_states)
            self._value_buffer[..., held : held + new, :].copy_(value_states)
            self.keys = self._key_buffer[..., : held + new, :]
            self.values = self._value_buffer[..., : held + new, :]
            return self.keys, self.values

        def _grow(self, needed: int) -> None:
            """More tokens than planned (a longer answer): one bigger buffer, the old one copied once."""
            assert self._key_buffer is not None and self._value_buffer is not None and self.keys is not None
            capacity = max(needed, 2 * self.capacity)
            held = self.keys.shape[-2]
            for name in ("_key_buffer", "_value_buffer"):
                old = getattr(self, name)
                grown = old.new_empty((*old.shape[:-2], capacity, old.shape[-1]))
                grown[..., :held, :].copy_(old[..., :held, :])
                setattr(self, name, grown)
            self.capacity = capacity
            self.keys = self._key_buffer[..., :held, :]
            self.values = self._value_buffer[..., :held, :]

        def reset(self) -> None:
            super().reset()
            self._key_buffer = self._value_buffer = None

    return PreallocatedLayer


def preallocated_cache(config: Any, capacity: int) -> Any:
    """`DynamicCache(config)` with its full-attention layers preallocated for `capacity` tokens."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=config)
    layer_class = preallocated_layer_class()
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError("this transformers' DynamicCache has no per-layer list")
    for index, layer in enumerate(layers):
        if type(layer) is DynamicLayer:
            layers[index] = layer_class(capacity)
    return cache


def is_preallocated(layer: Any) -> bool:
    return _PREALLOCATED is not None and isinstance(layer, _PREALLOCATED)


# ---------------------------------------------------------------- prefix snapshots


@dataclass
class _WindowState:
    index: int
    keys: torch.Tensor
    values: torch.Tensor
    cumulative_length: int


@dataclass
class PrefixSnapshot:
    """The cache at `length` tokens: what its windowed layers held then (full layers are cropped)."""

    length: int
    windows: list[_WindowState]


def _layer_kind(layer: Any) -> str:
    """ "full", "window" or "unknown": exact classes only, since a subclass may hold more state than these
    (an indexer cache, a recurrent state) that a crop would leave behind."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    if type(layer) is DynamicSlidingWindowLayer and hasattr(layer, "cumulative_length"):
        return "window"
    if type(layer) is DynamicLayer or is_preallocated(layer):
        return "full"
    return "unknown"


def keys_kept(layer: Any) -> int | None:
    """Earlier keys a cache layer hands the attention beside a new token's: a windowed layer (transformers'
    DynamicSlidingWindowLayer, chunked layers included) keeps its last window - 1; None: every one."""
    window = getattr(layer, "sliding_window", None)
    return max(int(window) - 1, 0) if isinstance(window, int) and window > 0 else None


def cache_length(cache: Any) -> int | None:
    """Tokens the cache has seen (for sliding layers: all of them, not just the window): the most any of
    its layers counts. The cache's own answer reads one layer, which may count none: a recurrent layer
    whose state the model keeps in its modules (RecurrentGemma under transformers 5.25), a layer reading
    another's K/V. None where nothing counts them (recurrent layers only, under transformers 5.17)."""
    if cache is None:
        return 0
    counts = [int(layer.get_seq_length()) for layer in getattr(cache, "layers", None) or () if _counts(layer)]
    if counts:
        return max(counts)
    try:
        return int(cache.get_seq_length())
    except ValueError:  # "can only be called on Attention layers"
        return None


def _counts(layer: Any) -> bool:
    return callable(getattr(layer, "get_seq_length", None))


def take_snapshot(cache: Any) -> PrefixSnapshot | None:
    """Snapshot of the cache as it is now, or None when a layer's state cannot be saved exactly."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return None
    windows = []
    for index, layer in enumerate(layers):
        kind = _layer_kind(layer)
        if kind == "unknown":
            return None
        if kind == "window" and getattr(layer, "is_initialized", False):
            windows.append(
                _WindowState(index, layer.keys.clone(), layer.values.clone(), int(layer.cumulative_length))
            )
    length = cache_length(cache)
    return None if length is None else PrefixSnapshot(length, windows)


def holds_prefix(cache: Any, keep: int) -> bool:
    """True when cropping to `keep` tokens is exact without a snapshot: every layer still holds them (full
    layers always; a windowed layer until it has dropped its first token)."""
    layers = getattr(cache, "layers", None)
    held = cache_length(cache)
    if layers is None or held is None or not 0 < keep <= held:
        return False
    for layer in layers:
        kind = _layer_kind(layer)
        if kind == "unknown":
            return False
        if kind == "window" and int(layer.get_seq_length()) >= int(layer.sliding_window):
            return False
    return True


def restore(cache: Any, keep: int, snapshot: PrefixSnapshot | None) -> None:
    """Put the cache back to exactly its first `keep` tokens: by cropping where every layer holds them,
    else from a snapshot taken at `keep`. Raises ValueError when neither is exact."""
    seen = cache_length(cache) or 0
    if holds_prefix(cache, keep):
        for layer in cache.layers:
            if seen > keep:
                layer.crop(keep - seen)
        _check_length(cache, keep)
        return
    if snapshot is None or snapshot.length != keep:
        raise ValueError(f"no exact way back to {keep} tokens")
    saved = {state.index: state for state in snapshot.windows}
    for index, layer in enumerate(cache.layers):
        if _layer_kind(layer) == "full":
            if int(layer.get_seq_length()) > keep:
                layer.crop(keep - int(layer.get_seq_length()))
        elif index in saved:
            state = saved[index]
            # never written in place (a windowed layer's update concatenates), so the snapshot can serve again
            layer.keys, layer.values = state.keys, state.values
            layer.cumulative_length = state.cumulative_length
        else:
            raise ValueError(f"layer {index} was not in the snapshot")
    _check_length(cache, keep)


def _check_length(cache: Any, keep: int) -> None:
    for layer in cache.layers:
        if getattr(layer, "is_initialized", True) and int(layer.get_seq_length()) != keep:
            raise RuntimeError(f"cache layer holds {layer.get_seq_length()} tokens after restore, not {keep}")
