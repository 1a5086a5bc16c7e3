"""Whether a chunked prefill carries this model's state from one chunk to the next.

niah prefills a long prompt in chunks into the cache it passes (niah_run/prefill.py). That equals one
forward over the whole prompt only where every state the model keeps between forwards is read again by
the next forward of several tokens. Two kinds of model break this, found in transformers' own code:
- state kept outside the cache, in the model's modules, set up only when no cache is passed
  (RecurrentGemma's convolution window `conv1d_state`: a forward of several tokens recomputes it from that
  forward's tokens alone);
- state kept in the cache but not read by a forward of several tokens (Mamba-1's selective scan takes no
  initial state: each chunk's scan starts from zero).

`uncarried_state(model)` asks the model itself: a forward of a few tokens, then a second one at the
positions after it into the same cache, with a dispatch mode recording which tensors the second one
reads. A state tensor (one the cache or a module holds after the first forward) that the second forward
replaces or overwrites without reading is not carried. On the meta device (the doctor's sizing child)
this costs no memory; niah asks it again on the loaded model, whose kernels are the ones that run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# what a cache layer holds: K/V, and a recurrent layer's convolution window and state
_CACHE_STATE = ("keys", "values", "conv_states", "recurrent_states")
# ops that overwrite their first argument without reading it
_OVERWRITES = {"copy_", "fill_", "zero_"}


def uncarried_state(model: Any, tokens: int = 4) -> str | None:
    """Why a chunked prefill of this model is not exact (the states a second forward of several tokens
    drops), or None when every state it keeps is read again."""
    import torch

    from doctor.runtime.forward import forward_kwargs, inspect_forward

    device = _input_device(model)
    sig = inspect_forward(model)
    cache = _cache_for(model, 2 * tokens)
    ids = torch.full((1, tokens), 3, dtype=torch.long, device=device)
    before = {name: id(t) for name, t in _module_state(model)}
    _forward(model, forward_kwargs(sig, ids, 0, cache), 0, tokens)
    held = [(f"cache layer {name}", t) for name, t in _cache_state(cache)]
    held += [(name, t) for name, t in _module_state(model) if before.get(name) != id(t)]
    reads, writes = _record(model, forward_kwargs(sig, ids, tokens, cache), tokens)
    now = {name: id(t) for name, t in [*_cache_named(cache), *_module_state(model)]}
    dropped = [
        name
        for name, t in held
        if _storage(t) not in reads and (now.get(name) != id(t) or _storage(t) in writes)
    ]
    if not dropped:
        return None
    outside = [name for name in dropped if not name.startswith("cache layer")]
    where = (
        "kept in the model's own modules, outside the cache niah passes," if outside else "kept in the cache"
    )
    more = f" and {len(dropped) - 1} more" if len(dropped) > 1 else ""
    return (
        f"its state between forwards ({dropped[0]}{more}) is {where} and a forward of several tokens "
        "replaces it without reading it: each chunk after the first starts that state afresh"
    )


def _input_device(model: Any) -> Any:
    """Where the ids go: the input embedding's device (under a device map, not every parameter's)."""
    import torch

    try:
        return model.get_input_embeddings().weight.device
    except Exception:  # noqa: BLE001 - a model without the accessor: its first parameter's device
        return next((p.device for p in model.parameters()), torch.device("cpu"))


def _cache_for(model: Any, capacity: int) -> Any:
    """The cache niah's prefill passes this model: preallocated full layers on the lean path."""
    from transformers import DynamicCache

    from doctor.runtime.attention import LEAN_ATTENTION
    from doctor.runtime.cache import preallocated_cache

    if getattr(model.config, "_attn_implementation", None) == LEAN_ATTENTION:
        return preallocated_cache(model.config, capacity)
    return DynamicCache(config=model.config)


def _forward(model: Any, kwargs: dict[str, Any], start: int, tokens: int) -> None:
    import torch

    from doctor.runtime.attention import query_start

    with torch.no_grad(), query_start(start, tokens):
        model(**kwargs)


def _record(model: Any, kwargs: dict[str, Any], tokens: int) -> tuple[set[int], set[int]]:
    """(storages read, storages written) by every op of one forward at positions tokens.."""
    from torch.utils._python_dispatch import TorchDispatchMode

    reads: set[int] = set()
    writes: set[int] = set()

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            schema = func._schema.arguments
            written = {a.name for a in schema if a.alias_info is not None and a.alias_info.is_write}
            overwrites = func.__name__.split(".")[0] in _OVERWRITES
            named = [*zip((a.name for a in schema), args), *(kwargs or {}).items()]
            for name, value in named:
                for tensor in _tensors_in(value):
                    if name in written:
                        writes.add(_storage(tensor))
                    if not (name in written and overwrites):
                        reads.add(_storage(tensor))
            return func(*args, **(kwargs or {}))

    with Recorder():
        _forward(model, kwargs, tokens, tokens)
    return reads, writes


def _storage(tensor: Any) -> int:
    return int(tensor.untyped_storage()._cdata)


def _tensors_in(value: Any, depth: int = 2) -> Iterator[Any]:
    import torch

    if isinstance(value, torch.Tensor):
        yield value
    elif depth and isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors_in(item, depth - 1)
    elif depth and isinstance(value, dict):
        for item in value.values():
            yield from _tensors_in(item, depth - 1)


def _named(prefix: str, value: Any, depth: int = 2) -> Iterator[tuple[str, Any]]:
    import torch

    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif depth and isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _named(f"{prefix}[{index}]", item, depth - 1)
    elif depth and isinstance(value, dict):
        for key, item in value.items():
            yield from _named(f"{prefix}[{key!r}]", item, depth - 1)


def _cache_named(cache: Any) -> Iterator[tuple[str, Any]]:
    for name, tensor in _cache_state(cache):
        yield f"cache layer {name}", tensor


def _cache_state(cache: Any) -> Iterator[tuple[str, Any]]:
    for index, layer in enumerate(getattr(cache, "layers", None) or ()):
        for attr in _CACHE_STATE:
            yield from _named(f"{index}.{attr}", getattr(layer, attr, None))


def _module_state(model: Any) -> Iterator[tuple[str, Any]]:
    """Tensors a module holds as plain attributes (neither parameters nor buffers): what a forward can
    leave behind for the next one."""
    import torch

    internals = set(vars(torch.nn.Module()))
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            if attr not in internals:
                yield from _named(f"{name}.{attr}" if name else attr, value)
