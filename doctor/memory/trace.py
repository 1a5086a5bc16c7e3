"""KV layout and prefill activation peak, measured on the model's own forward (meta device, no memory).

Runs ONLY in the skeleton child (imports torch/transformers). Two measurements, both on the meta-device
model `doctor.memory.skeleton` built with the requested attention implementation:

1. **KV cache from the library.** One forward of a few tokens through every layer with
   `DynamicCache(config)`; each cache layer's stored tensors give bytes per token (whatever transformers
   caches: full K/V, an MLA latent, nothing for a layer that shares another's cache) and the layer's cap
   (`sliding_window` of a sliding/chunked cache layer). KV at any context is arithmetic afterwards.
2. **Activation peak from the forward.** A TorchDispatchMode counts live bytes: an allocation when an op
   creates a new storage, a free when that storage dies (weakref finalizer; meta storages die like real
   ones, by reference count). Only one decoder layer per distinct structure runs (the others pass the
   hidden states through), over a cache already holding P tokens in the steady state of a chunked
   prefill, for a chunk of C tokens with `logits_to_keep=1`. Every byte count in that forward is a
   polynomial in C and P (sizes are products of C, the kept length P_t ∈ {P, window − 1} and constants),
   so several (C, P) points per regime fit each allocation event *exactly* on the basis
   (1, C, P, C·P, C²) — integer coefficients, checked on a spare point. The pure estimate then evaluates
   max over events at any (context, chunk) without torch.

Where CUDA and meta differ, CUDA's behaviour is stood in for: `scaled_dot_product_attention` → when
aten's CUDA dispatch rules allow a fused kernel, its output + fp32 log-sum-exp + the additive mask aten
makes from a boolean mask; otherwise CUDA's math path op by op (fp32 copies, the full score matrix);
flash / flex attention interfaces → their output. Everything else (repeat_kv, masks, eager scores and
softmax copies, rotary tables, MoE routing and grouped_mm, MLA decompression, torch.cat in the cache
update, attention written in a model's own code) is traced as transformers really runs it. What a layer
returns besides its hidden states and the model's loop still holds while the next layer runs (BLOOM keeps
its attention probabilities) is measured as `carry:<signature>`. What the trace cannot vouch for is named in
the result: ops outside KNOWN_OPS, each charged one more output-sized buffer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import types
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from doctor.children.forked import map_shared

BASIS = ("1", "C", "P", "CP", "CC")
_FLASH_LIKE = (
    "flash_attention_2",
    "flash_attention_3",
    "flex_attention",
    "kernels-community/flash-attn",
    "kernels-community/vllm-flash-attn3",
)


# aten ops whose CUDA kernels allocate nothing beyond their outputs (elementwise, views, copies, factories,
# GEMMs through cuBLAS whose workspace is a per-GPU constant, softmax, reductions, indexing, sorting, norms).
# Any other op that allocates is charged one more output-sized temporary and named in the result
# (`unmodelled_ops`): its CUDA implementation may hold buffers a meta kernel does not show.
# benchmarks/cuda_op_transients.py measures this on a GPU (docs/estimator-accuracy.md): on 21 models no op
# here held more than 1 MiB beyond its outputs, except `_safe_softmax` inside CUDA's math sdpa, which
# `_math_sdpa_cuda` models; `baddbmm` (BLOOM's ALiBi scores) is listed because it held nothing there.
KNOWN_OPS = frozenset(
    """
_grouped_mm _scaled_dot_product_cudnn_attention _scaled_dot_product_flash_attention _softmax _safe_softmax _log_softmax _to_copy _unsafe_view _reshape_alias abs add add_ addcmul addmm
alias all amax any arange argmax argsort baddbmm bernoulli_ bitwise_and bitwise_not bitwise_or bmm cat clamp clamp_ clone
contiguous copy_ cos cumsum detach div div_ embedding empty empty_like empty_strided eq erf exp expand expand_as
fill_ flatten flip floor_divide full full_like gather ge gelu gelu_ gt histc index index_add_ index_copy_ index_put_
index_select isinf isnan le lift_fresh log logical_and logical_not logical_or lt masked_fill masked_fill_ max
maximum mean min minimum mm mul mul_ native_dropout native_layer_norm ne neg new_empty new_full new_ones new_zeros
ones ones_like permute polar pow reciprocal relu repeat repeat_interleave reshape rsqrt scalar_tensor scatter
scatter_ scatter_add_ select sigmoid silu silu_ sin slice softplus sort split split_with_sizes sqrt squeeze stack
sub sub_ sum t tanh topk transpose tril triu unbind unsqueeze view view_as_complex view_as_real where zero_
zeros zeros_like _fused_rms_norm rms_norm
""".split()
)


def basis(chunk: int, past: int) -> tuple[int, int, int, int, int]:
    return 1, chunk, past, chunk * past, chunk * chunk


# ---------------------------------------------------------------- live-byte tracking


class _Tracker:
    """State shared by the dispatch mode and the layer wrappers."""

    def __init__(self) -> None:
        self.live = 0
        self.seen: set[int] = set()
        self.events: list[tuple[str, int]] = []  # (zone, live bytes) at each allocation
        # the op of each allocation event, by index in `events`: a loop over the sequence repeats a
        # pattern of ops once per step, which is how its steps are told apart (doctor.memory.trace._runs)
        self.op_at: dict[int, str] = {}
        self.zone = "outside"
        self.enabled = False
        self.unmodelled: set[str] = set()
        # What a real layer returned besides its hidden states: (signature, weak references to those
        # storages, bytes). Whether the caller still holds them when the next layer starts decides if
        # they are carried through that layer (weak references: a freed address may be reused).
        self.returned: tuple[str, list[Any], int] | None = None
        self.cache: Any = None  # the DynamicCache of the traced forward: its tensors are KV, never carried

    def cache_storages(self) -> Iterator[int]:
        for t in cache_tensors(self.cache):
            yield t.untyped_storage()._cdata

    def check_carried(self) -> None:
        """At a layer's start: is the previous layer's extra output still alive? Then it is carried."""
        if self.returned is None:
            return
        name, refs, size = self.returned
        self.returned = None
        if self.enabled and size and any(ref() is not None for ref in refs):
            self.events.append((f"carry:{name}", size))

    def register(self, storage: Any) -> None:
        key = storage._cdata
        if key in self.seen:
            return
        self.seen.add(key)
        n = int(storage.nbytes())
        self.live += n

        def free(n: int = n, key: int = key) -> None:
            self.live -= n
            self.seen.discard(key)

        weakref.finalize(storage, free)

    def mark(self, what: str) -> None:
        if self.enabled:
            self.events.append((what, self.live))

    def record(self, extra: int = 0, op: str = "") -> None:
        if self.enabled:
            if op:
                self.op_at[len(self.events)] = op
            self.events.append((self.zone, self.live + extra))


def _dispatch_mode(torch: Any, tracker: _Tracker) -> Any:
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class LiveBytes(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types_: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            # a storage shared with an input is a view or an in-place result (of a weight, a cache or an
            # activation): not a new allocation
            inputs = {
                t.untyped_storage()._cdata
                for t in tree_flatten((args, kwargs))[0]
                if isinstance(t, torch.Tensor)
            }
            grew = 0
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    if storage._cdata in inputs:
                        continue
                    before = tracker.live
                    tracker.register(storage)
                    grew += tracker.live - before
            if grew:
                name = str(func.overloadpacket.__name__)
                if name in KNOWN_OPS:
                    tracker.record(op=name)
                else:
                    tracker.unmodelled.add(name)
                    tracker.record(extra=grew, op=name)
            return out

    return LiveBytes()


def fused_sdpa_applies(torch: Any, query: Any, key: Any, value: Any, mask: Any, enable_gqa: bool) -> bool:
    """Whether PyTorch's CUDA dispatcher can pick a fused sdpa kernel (flash / memory-efficient) for these
    inputs (aten sdp_utils: half/bf16/fp32, head dims multiples of 8 up to 256, query/key/value with the
    same batch and head count — unequal heads only with enable_gqa and no mask, i.e. flash). Otherwise it
    takes the math path, which materialises the scores: counted as such (safe side when unsure)."""
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        return False
    if query.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    dims = (query.shape[-1], key.shape[-1], value.shape[-1])
    if any(d % 8 or d > 256 for d in dims) or query.shape[-1] != key.shape[-1]:
        return False
    if query.shape[0] != key.shape[0] or key.shape[0] != value.shape[0]:
        return False
    heads_q, heads_k, heads_v = query.shape[1], key.shape[1], value.shape[1]
    if heads_q == heads_k == heads_v:
        return True
    return bool(enable_gqa) and mask is None and heads_k == heads_v and heads_q % heads_k == 0


def _math_sdpa_cuda(torch: Any, query: Any, key: Any, value: Any, mask: Any, bound: dict[str, Any]) -> Any:
    """CUDA's math sdpa (aten `_scaled_dot_product_attention_math`), op by op, because on meta aten's
    softmax is one meta kernel: half/bf16 inputs upcast to fp32 (unless low-precision math reductions are
    allowed), q and kᵀ scaled by √scale, a boolean (or is_causal) mask made an fp32 additive mask, the full
    score matrix, `_safe_softmax` (softmax + a boolean "row fully masked" test, zeroed in place), the
    output and a copy of the weights in the input dtype (the math path returns both)."""
    import math

    dtype = query.dtype
    low_precision = getattr(torch.backends.cuda, "fp16_bf16_reduction_math_sdp_allowed", lambda: False)()
    upcast = dtype in (torch.float16, torch.bfloat16) and not low_precision
    q, k, v = (t.float() for t in (query, key, value)) if upcast else (query, key, value)
    length, span = q.shape[-2], k.shape[-2]
    if mask is None and bound.get("is_causal"):
        mask = torch.ones(length, span, dtype=torch.bool, device=q.device).tril()
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(
            mask.logical_not(), float("-inf")
        )
    scale = bound.get("scale") or 1 / math.sqrt(q.shape[-1])
    root = math.sqrt(abs(scale))
    if bound.get("enable_gqa") and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], -3)
    attn = torch.matmul(q * root, k.transpose(-2, -1) * root)
    if mask is not None:
        attn.add_(mask)
    probs = torch.softmax(attn, -1)
    masked = attn.eq(float("-inf"))
    probs.masked_fill_(masked.all(-1, keepdim=True), 0.0)
    del masked, attn
    out = torch.matmul(probs, v)
    weights = probs.to(dtype)
    del weights, probs
    return out.to(dtype) if upcast else out


def _function_mode(torch: Any, tracker: _Tracker) -> Any:
    """Stand-in for CUDA's fused sdpa kernels (flash / memory-efficient): they allocate the output and an
    fp32 log-sum-exp (on meta PyTorch would take the math path and materialise the scores). Inputs no
    fused kernel accepts on CUDA take CUDA's math path instead (`_math_sdpa_cuda`)."""
    from torch.overrides import TorchFunctionMode

    sdpa = torch.nn.functional.scaled_dot_product_attention

    class FusedKernels(TorchFunctionMode):
        def __torch_function__(self, func: Any, types_: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            if func is sdpa:
                names = (
                    "query",
                    "key",
                    "value",
                    "attn_mask",
                    "dropout_p",
                    "is_causal",
                    "scale",
                    "enable_gqa",
                )
                bound = {**dict(zip(names, args)), **kwargs}
                query, key, value = bound.pop("query"), bound.pop("key"), bound.pop("value")
                mask = bound.get("attn_mask")
                if not fused_sdpa_applies(torch, query, key, value, mask, bool(bound.get("enable_gqa"))):
                    return _math_sdpa_cuda(torch, query, key, value, mask, bound)
                # a boolean mask becomes an additive mask in the query dtype for the kernel
                # (aten convert_boolean_attn_mask: where(mask, 0, -inf)), held while the kernel runs
                held = (
                    int(mask.numel()) * query.element_size()
                    if mask is not None and mask.dtype == torch.bool
                    else 0
                )
                lse = torch.empty(*query.shape[:-1], dtype=torch.float32, device=query.device)
                out = torch.empty(
                    (*query.shape[:-1], value.shape[-1]), dtype=query.dtype, device=query.device
                )
                tracker.record(extra=held)
                del lse
                return out
            return func(*args, **kwargs)

    return FusedKernels()


def _flash_stand_in(torch: Any) -> Callable[..., Any]:
    def attention(
        module: Any, query: Any, key: Any, value: Any, attention_mask: Any, *args: Any, **kwargs: Any
    ) -> tuple[Any, None]:
        batch, heads, length, _ = query.shape
        out = torch.empty(batch, length, heads, value.shape[-1], dtype=query.dtype, device=query.device)
        return out, None

    return attention


@contextlib.contextmanager
def _kernel_stand_ins(torch: Any, implementation: str) -> Iterator[None]:
    """flash/flex attention cannot run on meta: register a stand-in under the same name while tracing."""
    if implementation not in _FLASH_LIKE:
        yield
        return
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    mapping = ALL_ATTENTION_FUNCTIONS._global_mapping
    old = mapping.get(implementation)  # the registry holds functions: None is "not registered"
    mapping[implementation] = _flash_stand_in(torch)
    try:
        yield
    finally:
        if old is not None:
            mapping[implementation] = old
        else:
            mapping.pop(implementation, None)


# ---------------------------------------------------------------- model plumbing


def _decoder_layers(model: Any) -> list[Any]:
    """The decoder layers in run order: the ModuleList whose entries are the no-split modules."""
    no_split = set(getattr(model, "_no_split_modules", None) or [])
    best: list[Any] = []
    for _, module in model.named_modules():
        if type(module).__name__ == "ModuleList":
            entries = list(module)
            if entries and all(type(m).__name__ in no_split for m in entries) and len(entries) > len(best):
                best = entries
    return best


def _signature(layer: Any, cache_layer: Any, layer_type: Any) -> str:
    """Layers with the same structure, attributes and cache kind allocate the same bytes."""
    parts = [repr(layer_type), type(cache_layer).__name__, repr(getattr(cache_layer, "sliding_window", None))]
    for name, module in layer.named_modules():
        attrs = sorted(
            (k, v)
            for k, v in vars(module).items()
            if isinstance(v, (bool, int, float, str, type(None)))
            and not k.startswith("_")
            and "idx" not in k
            and "index" not in k
        )
        params = [(n, tuple(p.shape), str(p.dtype)) for n, p in module.named_parameters(recurse=False)]
        parts.append(f"{name}:{type(module).__name__}:{attrs}:{params}")
    return "|".join(parts)


def _hidden_from(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs.get("hidden_states")


def _extra_outputs(out: Any, tracker: _Tracker, name: str) -> tuple[str, list[Any], int] | None:
    """Storages a layer allocated and returned besides its hidden states and the cache (e.g. BLOOM's
    attention probabilities, which its model loop keeps in `outputs` while the next block runs)."""
    if not isinstance(out, tuple) or len(out) < 2:
        return None
    from torch.utils._pytree import tree_flatten

    skip = set(tracker.cache_storages())
    if hasattr(out[0], "untyped_storage"):
        skip.add(out[0].untyped_storage()._cdata)
    found: dict[int, Any] = {}
    for t in tree_flatten(out[1:])[0]:
        if hasattr(t, "untyped_storage"):
            storage = t.untyped_storage()
            if storage._cdata not in skip and storage._cdata in tracker.seen:
                found[storage._cdata] = storage
    size = sum(int(storage.nbytes()) for storage in found.values())
    return (name, [weakref.ref(storage) for storage in found.values()], size) if found else None


@contextlib.contextmanager
def _only_representatives(layers: Sequence[Any], reps: dict[int, str], tracker: _Tracker) -> Iterator[None]:
    """Run one layer per signature; the others return their input (same structure as a real layer's output)."""
    shape_of_output: list[Any] = [None]

    def real(index: int, layer: Any) -> Callable[..., Any]:
        original = type(layer).forward

        def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
            name = reps[index]
            tracker.check_carried()
            tracker.mark(f"enter:{name}")
            tracker.zone = f"layer:{name}"
            out = original(self, *args, **kwargs)
            tracker.zone = "outside"
            tracker.mark(f"exit:{name}")
            tracker.returned = _extra_outputs(out, tracker, name)
            shape_of_output[0] = out
            return out

        return forward

    def skip(self: Any, *args: Any, **kwargs: Any) -> Any:
        tracker.check_carried()
        hidden = _hidden_from(args, kwargs)
        sample = shape_of_output[0]
        if isinstance(sample, tuple):
            return (hidden, *([None] * (len(sample) - 1)))
        return hidden

    for i, layer in enumerate(layers):
        layer.forward = types.MethodType(real(i, layer) if i in reps else skip, layer)
    try:
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)


# ---------------------------------------------------------------- the two measurements


def _cache(transformers: Any, config: Any, capacity: int = 1, model: Any = None) -> Any:
    """The cache the run uses: niah's preallocated one where `model` runs the lean attention (sized for the
    `capacity` tokens a trace point holds, as a run sizes it for its prompt), else DynamicCache(config).
    The model's own config says which attention it runs (the text config may be the one it was built from)."""
    from doctor.runtime.attention import LEAN_ATTENTION

    if getattr(getattr(model, "config", None), "_attn_implementation", None) == LEAN_ATTENTION:
        from doctor.runtime.cache import preallocated_cache

        return preallocated_cache(config, capacity)
    return transformers.DynamicCache(config=config)


# What a cache layer holds besides its per-token K/V: recurrent and hybrid layers (Mamba, gated delta
# net, short convolutions) keep a fixed-size convolution window and recurrent state per layer
# (transformers' LinearAttentionLayer: dicts by state index).
_STATE_ATTRS = ("conv_states", "recurrent_states")


def _tensors_in(value: Any) -> Iterator[Any]:
    if hasattr(value, "untyped_storage"):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors_in(item)


def state_tensors(layer: Any) -> Iterator[Any]:
    """The fixed-size recurrent state tensors of one cache layer (none for a plain attention layer)."""
    for attr in _STATE_ATTRS:
        yield from _tensors_in(getattr(layer, attr, None))


def holds_state(layer: Any) -> bool:
    """A cache layer of a recurrent or hybrid layer (it has state slots, filled or not yet)."""
    return any(getattr(layer, attr, None) is not None for attr in _STATE_ATTRS)


def _register_cache(tracker: _Tracker, cache: Any) -> None:
    """Count what the cache holds as live before the traced chunk. In a function of its own so that no
    loop variable keeps a cache tensor alive through the forward (it would not be freed when the layer
    replaces it)."""
    for t in cache_tensors(cache):
        tracker.register(t.untyped_storage())


def cache_tensors(cache: Any) -> Iterator[Any]:
    """Every tensor the cache holds: K/V and recurrent states."""
    for layer in getattr(cache, "layers", None) or ():
        for attr in ("keys", "values"):
            t = getattr(layer, attr, None)
            if hasattr(t, "untyped_storage"):
                yield t
        yield from state_tensors(layer)


def _cache_keyword(model: Any) -> str:
    """How this model's forward takes the cache (doctor.runtime.forward: asked, not assumed)."""
    from doctor.runtime.forward import inspect_forward

    return inspect_forward(model).cache_kw


def _forward(torch: Any, model: Any, cache: Any, tokens: int, start: int = 0) -> None:
    """One forward of `tokens` tokens at absolute positions start.. (the lean attention reads them: a
    recurrent layer's cache on meta cannot say its own length)."""
    from doctor.runtime.attention import query_start

    ids = torch.zeros(1, tokens, dtype=torch.long, device="meta")
    with torch.no_grad(), query_start(start, tokens):
        model(input_ids=ids, use_cache=True, logits_to_keep=1, **{_cache_keyword(model): cache})


def _tensor_bytes(obj: Any, torch: Any) -> tuple[int, int]:
    """(bytes of the tensors a cache layer holds, tokens they hold)."""
    total = tokens = 0
    for name in ("keys", "values"):
        t = getattr(obj, name, None)
        if isinstance(t, torch.Tensor) and t.dim() >= 2:
            total += t.numel() * t.element_size()
            tokens = max(tokens, int(t.shape[-2]))
    return total, tokens


def _state_bytes(layer: Any) -> int:
    """Bytes of a cache layer's recurrent states (the same at any context once the first chunk ran)."""
    storages = {t.untyped_storage()._cdata: int(t.untyped_storage().nbytes()) for t in state_tensors(layer)}
    return sum(storages.values())


def measure_kv(
    torch: Any, transformers: Any, model: Any, config: Any, probe_tokens: int = 16
) -> dict[str, Any]:
    """Bytes per cached token and cap of every cache layer, from one forward through every layer."""
    cache = _cache(transformers, config, probe_tokens, model)
    _forward(torch, model, cache, probe_tokens)
    out = []
    for layer in getattr(cache, "layers", []):
        size, tokens = _tensor_bytes(layer, torch)
        window = getattr(layer, "sliding_window", None)
        per_token = size // tokens if tokens else 0
        state = _state_bytes(layer)
        kind = "window" if window else ("full" if per_token else ("recurrent" if state else "none"))
        out.append(
            {
                "class": type(layer).__name__,
                "kind": kind,
                "window": int(window) if window else None,
                "bytes_per_token": per_token,
                "state_bytes": state,
                "dtype": str(getattr(getattr(layer, "keys", None), "dtype", "")),
            }
        )
    return {
        "source": f"transformers {transformers.__version__}: DynamicCache(config) after a meta forward",
        "layers": out,
    }


def _regimes(windows: Sequence[int], granule: int = 1) -> list[dict[str, Any]]:
    """Intervals where no branch changes: P = 0 split at each window on C (sdpa skips the mask below the
    window), P > 0 split at each window on P (the kept length stops growing). Points are inside each.
    With a granule G > 1 (recurrent layers that pad the chunk to a multiple of their scan's block) every
    traced chunk is a multiple of G of at least 4 blocks, so that padded sizes are polynomials in C / G
    and every loop over the blocks runs the same way at each point."""
    bounds = sorted({w for w in windows if w and w > 8})
    edges: list[int | None] = [1, *bounds, None]
    chunks = (64, 128, 192) if granule == 1 else tuple(k * granule for k in _BLOCKS_PER_CHUNK)
    out = []
    for kind in ("oneshot", "chunked"):
        for low, hi in itertools.pairwise(edges):
            lo = int(low or 1)
            if hi is None:
                if granule == 1:
                    vals = [lo + 256, lo + 512, lo + 1024]
                else:
                    vals = [lo // granule * granule + k * granule for k in _BLOCKS_PER_CHUNK]
            elif hi - lo < 8:
                continue
            else:
                vals = [lo + (hi - lo) * k // 4 for k in (1, 2, 3)]
                grid = [c for c in range(chunks[0], hi + 1, granule) if c > lo]
                if granule > 1 and len(grid) >= 3:
                    vals = [grid[(len(grid) - 1) * k // 2] for k in (0, 1, 2)]
            if kind == "oneshot":
                points = [(c, 0) for c in vals]
            else:
                points = [(c, p) for p in vals[:2] for c in chunks]
            out.append({"kind": kind, "lo": lo, "hi": hi, "points": points})
    return out


def _trace_point(
    torch: Any,
    transformers: Any,
    model: Any,
    config: Any,
    layers: Sequence[Any],
    reps: dict[int, str],
    chunk: int,
    past: int,
) -> dict[str, Any]:
    """Zone-relative byte counts at each allocation of one chunk's forward (zone -> list of byte counts),
    with the ops it could not model under "_unmodelled" and the ops per zone under "_ops"."""
    tracker = _Tracker()
    cache = _cache(transformers, config, past + chunk, model)
    tracker.cache = cache
    with _only_representatives(layers, reps, tracker):
        # steady state of a chunked prefill: the cache was filled by a previous chunk of the same size
        if past > chunk:
            _forward(torch, model, cache, past - chunk)
        if past:
            _forward(torch, model, cache, min(chunk, past), max(past - chunk, 0))
        _register_cache(tracker, cache)
        start = tracker.live
        tracker.enabled = True
        with _function_mode(torch, tracker), _dispatch_mode(torch, tracker):
            _forward(torch, model, cache, chunk, past)
        tracker.enabled = False
    zones = _zones(tracker.events, start, tracker.op_at)
    zones["_unmodelled"] = sorted(tracker.unmodelled)
    return zones


def _zones(
    events: Sequence[tuple[str, int]], start: int, op_at: dict[int, str] | None = None
) -> dict[str, Any]:
    """Split the allocation events: inside a layer relative to the layer's entry; outside relative to
    the start minus what the layers that already ran left behind (their cache growth, counted as KV);
    `entry:t` = what the forward holds when a layer of signature t starts (masks, rotary, residual).
    `_ops` names the op of each event per zone (a loop over the sequence repeats a pattern of ops)."""
    zones: dict[str, Any] = {}
    ops: dict[str, list[str]] = {}

    def add(zone: str, value: int, op: str) -> None:
        zones.setdefault(zone, []).append(value)
        ops.setdefault(zone, []).append(op)

    done = 0
    entry = start
    ran = False
    for index, (zone, live) in enumerate(events):
        op = (op_at or {}).get(index, "")
        if zone.startswith("enter:"):
            entry = live
            add(f"entry:{zone[6:]}", live - start - done, op)
            zones.setdefault(f"layer:{zone[6:]}", [])
        elif zone.startswith("exit:"):
            done += live - entry
            ran = True
        elif zone.startswith("layer:"):
            add(zone, live - entry, op)
        elif zone.startswith("carry:"):  # bytes a layer returned that stay alive through the next layer
            add(zone, live, op)
        else:
            add("post" if ran else "pre", live - start - done, op)
    zones["_ops"] = ops
    return zones


# A loop over the sequence (the reference scans of Mamba, the chunk loop of a gated delta net) allocates
# the same pattern of ops once per step, so the number of events differs between trace points. Each run
# of a repeated pattern is cut to its first two and last two repetitions: the steps between change by
# the same bytes every step (checked), so the largest of them is at one end.
_MAX_PERIOD = 96  # ops in one step of such a loop (checked up to this many)
_KEPT_STEPS = 4


def _runs(ops: Sequence[str]) -> list[tuple[int, int, int]]:
    """(start, period, repetitions) of each maximal run of a repeated op pattern, left to right; single
    events are runs of one repetition of period 1."""
    out = []
    i, n = 0, len(ops)
    while i < n:
        found = None
        for period in range(1, min(_MAX_PERIOD, (n - i) // 2) + 1):
            block = ops[i : i + period]
            if ops[i + period : i + 2 * period] != block:
                continue
            count = 2
            while ops[i + count * period : i + (count + 1) * period] == block:
                count += 1
            found = (i, period, count)
            break
        out.append(found or (i, 1, 1))
        i += found[1] * found[2] if found else 1
    return out


def _affine_steps(values: Sequence[int], start: int, period: int, count: int) -> bool:
    """The inner steps (all but the first and the last) of a run change by the same bytes every step."""
    steps = [values[start + k * period : start + (k + 1) * period] for k in range(1, count - 1)]
    if len(steps) < 3:
        return True
    delta = [b - a for a, b in zip(steps[0], steps[1])]
    return all(
        abs(step[e] - steps[0][e] - k * delta[e]) <= 4096
        for k, step in enumerate(steps)
        for e in range(period)
    )


def _fold_loops(zone: str, values: Sequence[Sequence[int]], ops: Sequence[Sequence[str]]) -> list[list[int]]:
    """Events of one zone at every trace point, made comparable when a loop ran a different number of
    steps at each point: runs whose repetition count differs between points keep their first two and
    last two steps. Raises ValueError when the points do not share one structure."""
    parsed = [_runs(o) for o in ops]
    shape = [[(tuple(o[s : s + p]), c) for s, p, c in runs] for o, runs in zip(ops, parsed)]
    if len({len(x) for x in shape}) != 1 or any(
        len({x[j][0] for x in shape}) != 1 for j in range(len(shape[0]))
    ):
        raise ValueError(f"the forward's allocations differ between trace points in zone {zone}")
    out: list[list[int]] = [[] for _ in values]
    for j in range(len(shape[0])):
        counts = {x[j][1] for x in shape}
        for point, runs in enumerate(parsed):
            start, period, count = runs[j]
            v = values[point]
            if len(counts) == 1:
                out[point].extend(v[start : start + period * count])
                continue
            if min(counts) < _KEPT_STEPS or not _affine_steps(v, start, period, count):
                raise ValueError(f"a loop in zone {zone} allocates unevenly from step to step")
            for k in (0, 1, count - 2, count - 1):
                out[point].extend(v[start + k * period : start + (k + 1) * period])
    return out


def _fit(points: Sequence[tuple[int, int]], values: Sequence[Sequence[int]]) -> list[list[int]] | None:
    """Integer coefficients on BASIS for each event, exact at every point; None if not exact."""
    import torch

    a = torch.tensor([basis(c, p) for c, p in points], dtype=torch.float64)
    y = torch.tensor(values, dtype=torch.float64).T  # events × points
    # one-shot points have P = 0: only 1, C, C² are identifiable
    cols = [0, 1, 4] if all(p == 0 for _, p in points) else list(range(len(BASIS)))
    sub = a[:, cols]
    sol = torch.linalg.lstsq(sub, y.T).solution.T  # events × cols
    coeffs = []
    for row in sol:
        full = [0] * len(BASIS)
        for j, col in enumerate(cols):
            full[col] = round(float(row[j]))
        coeffs.append(full)
    for k, (c, p) in enumerate(points):
        b = basis(c, p)
        for e, co in enumerate(coeffs):
            if abs(sum(x * v for x, v in zip(co, b)) - values[k][e]) > 4096:
                return None
    return coeffs


def _prune(coeffs: list[list[int]]) -> list[list[int]]:
    """Drop events that never exceed another (all basis terms are ≥ 0 for C, P ≥ 0)."""
    unique = sorted({tuple(c) for c in coeffs}, reverse=True)
    kept: list[tuple[int, ...]] = []
    for c in unique:
        if not any(all(x <= y for x, y in zip(c, k)) for k in kept):
            kept = [k for k in kept if not all(x <= y for x, y in zip(k, c))] + [c]
    return [list(k) for k in kept]


@dataclasses.dataclass(frozen=True)
class _ActivationPlan:
    """Which layers run for real (one per distinct signature) and which (C, P) points each regime traces."""

    layers: list[Any]
    representatives: dict[int, str]  # layer index -> signature name
    layer_signatures: list[str]
    regimes: list[dict[str, Any]]
    granule: int = 1  # traced chunks are multiples of this (recurrent layers pad to their scan's block)

    @property
    def points(self) -> list[tuple[int, int]]:
        return [(c, p) for regime in self.regimes for c, p in regime["points"]]


def _windows(kv_layers: Sequence[dict[str, Any]]) -> list[int]:
    return [int(x["window"]) for x in kv_layers if x.get("window")]


def _windows_before_forward(transformers: Any, config: Any) -> list[int]:
    """The caps DynamicCache(config) gives its layers at construction: what the KV forward will report,
    known before it runs (checked against it afterwards)."""
    return [
        int(w) for w in (getattr(x, "sliding_window", None) for x in _cache(transformers, config).layers) if w
    ]


# Recurrent scans pad the sequence to a multiple of their block: Mamba-2's `chunk_size` (128 or 256 in
# published configs, an attribute of the mixer) or the gated delta rule's 64 (a default argument of
# transformers' reference function). The trace runs at multiples of the least common multiple G of these,
# fits on C / G (whole numbers: every coefficient is then an integer count of bytes) and the estimate
# rounds C up to a multiple of G.
_RECURRENT_GRANULE = 64
_BLOCKS_PER_CHUNK = (4, 6, 8)  # traced chunks, in blocks of G: loops over the blocks run ≥ 4 steps


def _granule(layers: Sequence[Any], cache_layers: Sequence[Any]) -> int:
    """1 for attention-only models; for models with recurrent cache layers the least common multiple of
    64 and every `chunk_size` a module of the decoder layers names."""
    if not any(holds_state(x) for x in cache_layers):
        return 1
    sizes = {_RECURRENT_GRANULE}
    for layer in layers:
        for module in layer.modules():
            size = vars(module).get("chunk_size")
            if isinstance(size, int) and not isinstance(size, bool) and 0 < size <= 1 << 16:
                sizes.add(size)
    return math.lcm(*sizes)


def _activation_plan(transformers: Any, model: Any, config: Any, windows: Sequence[int]) -> _ActivationPlan:
    layers = _decoder_layers(model)
    if not layers:
        raise ValueError("no decoder-layer list found")
    cache_layers = list(getattr(_cache(transformers, config, 1, model), "layers", []))
    granule = _granule(layers, cache_layers)
    layer_types = list(getattr(config, "layer_types", None) or [None] * len(layers))
    sig_of: list[str] = []
    names: dict[str, str] = {}
    reps: dict[int, str] = {}
    for i, layer in enumerate(layers):
        cache_layer = cache_layers[i] if i < len(cache_layers) else None
        sig = _signature(layer, cache_layer, layer_types[i] if i < len(layer_types) else None)
        if sig not in names:
            names[sig] = f"t{len(names)}"
            reps[i] = names[sig]
        sig_of.append(names[sig])
    return _ActivationPlan(layers, reps, sig_of, _regimes(windows, granule), granule)


class _ForwardFailed(Exception):
    """The KV forward or a trace point's forward raised (here or in the forked copy); `text` is its error."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _fit_regimes(plan: _ActivationPlan, traced: Sequence[dict[str, Any] | _ForwardFailed]) -> dict[str, Any]:
    """Exact integer polynomials per zone event from the traced points (in plan.points order). Errors come
    in the order a one-after-another run meets them: each regime's points, then its fits."""
    samples_in_order = iter(traced)
    regimes = []
    unmodelled: set[str] = set()
    for regime in plan.regimes:
        samples = []
        for _ in regime["points"]:
            outcome = next(samples_in_order)
            if isinstance(outcome, _ForwardFailed):
                raise outcome
            samples.append(dict(outcome))
        ops: list[dict[str, list[str]]] = []
        for sample in samples:
            unmodelled.update(sample.pop("_unmodelled", []))
            ops.append(sample.pop("_ops", {}))
        zones = sorted(samples[0])
        entry: dict[str, Any] = {"kind": regime["kind"], "lo": regime["lo"], "hi": regime["hi"], "zones": {}}
        for zone in zones:
            values = [s.get(zone, []) for s in samples]
            if len({len(v) for v in values}) != 1:
                values = _fold_loops(zone, values, [o.get(zone, []) for o in ops])
            if not values[0]:
                continue
            coeffs = _fit([(c // plan.granule, p) for c, p in regime["points"]], values)
            if coeffs is None:
                raise ValueError(f"allocations in zone {zone} are not polynomial in (chunk, past)")
            entry["zones"][zone] = coeffs if zone.startswith("entry:") else _prune(coeffs)
        regimes.append(entry)
    return {
        "basis": list(BASIS),
        "granule": plan.granule,
        "layer_signatures": plan.layer_signatures,
        "regimes": regimes,
        "representatives": {name: i for i, name in plan.representatives.items()},
        "unmodelled_ops": sorted(unmodelled),
    }


def measure_activations(
    torch: Any, transformers: Any, model: Any, config: Any, kv_layers: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The activation model alone, for a KV layout already measured."""
    plan = _activation_plan(transformers, model, config, _windows(kv_layers))
    traced = map_shared(
        lambda point: _trace_point(
            torch, transformers, model, config, plan.layers, plan.representatives, *point
        ),
        plan.points,
    )
    return _fit_regimes(plan, traced)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _measure_both(torch: Any, transformers: Any, model: Any, config: Any, result: dict[str, Any]) -> None:
    """The KV forward and every trace point are independent forwards: they share one queue between this
    process and a forked copy. The regimes are planned from the caps the cache layers get at
    construction; should the KV forward report other caps, the activations are traced again for those.
    Errors land in `result` exactly as a one-after-another run reports them (KV first, then the plan,
    then each regime's points and fits in order)."""
    try:
        plan: _ActivationPlan | str = _activation_plan(
            transformers, model, config, _windows_before_forward(transformers, config)
        )
    except Exception as exc:  # noqa: BLE001 - reported after the KV forward, as the sequential order would
        plan = _error_text(exc)
    jobs: list[tuple[int, int] | None] = [None, *(plan.points if isinstance(plan, _ActivationPlan) else [])]

    def run(job: tuple[int, int] | None) -> Any:
        try:
            if job is None:
                return measure_kv(torch, transformers, model, config)
            assert isinstance(plan, _ActivationPlan)
            return _trace_point(torch, transformers, model, config, plan.layers, plan.representatives, *job)
        except Exception as exc:  # noqa: BLE001 - carried back as a value, reported below in order
            return _ForwardFailed(_error_text(exc))

    kv, *traced = map_shared(run, jobs)
    if isinstance(kv, _ForwardFailed):
        result["kv_error"] = kv.text
        return
    result["kv"] = kv
    try:
        if isinstance(plan, str):
            raise _ForwardFailed(plan)
        if plan.regimes != _regimes(_windows(kv["layers"]), plan.granule):
            result["activations"] = measure_activations(torch, transformers, model, config, kv["layers"])
        else:
            result["activations"] = _fit_regimes(plan, traced)
    except _ForwardFailed as failed:
        result["activations_error"] = failed.text
    except Exception as exc:  # noqa: BLE001 - the estimate falls back to the analytic activation model
        result["activations_error"] = _error_text(exc)


_ATTENTION_DISPATCH = (
    "attention_interface",
    "ALL_ATTENTION_FUNCTIONS",
    "eager_attention_forward",
    "scaled_dot_product_attention",
)


def custom_attention_classes(model: Any) -> list[str]:
    """Attention modules whose forward computes attention in the model's own code (no transformers
    attention interface, no sdpa call). Traced op by op like any other code; named in the estimate's notes
    because no fused kernel stands in for them (their scores are materialised)."""
    import inspect

    out = set()
    for layer in _decoder_layers(model)[:1]:
        for _, module in layer.named_modules():
            name = type(module).__name__
            if "Attention" not in name or (
                not list(module.parameters(recurse=False)) and not list(module.children())
            ):
                continue
            try:
                source = inspect.getsource(type(module).forward)
            except (OSError, TypeError):
                continue
            if "softmax" in source and not any(word in source for word in _ATTENTION_DISPATCH):
                out.add(name)
    return sorted(out)


# ---------------------------------------------------------------- recurrent kernels or reference paths


def _closure(fn: Any) -> dict[str, Any]:
    cells = getattr(fn, "__closure__", None) or ()
    names = getattr(getattr(fn, "__code__", None), "co_freevars", ())
    out = {}
    for name, cell in zip(names, cells):
        try:
            out[name] = cell.cell_contents
        except ValueError:  # an empty cell
            continue
    return out


def _kernel_choice(obj: Any) -> dict[str, Any] | None:
    """What transformers' `use_kernel_func_from_hub_with_fallback` decided for one module-level function
    when the modeling module was imported: the kernel package's implementation if the package imported,
    else its reference PyTorch function. With the `kernels` package installed the wrapper is itself held by
    a small nn.Module (kernels' function layer), whose forward keeps it as `func`."""
    fn = obj
    if not hasattr(fn, "__code__"):
        fn = _closure(getattr(type(obj), "forward", None)).get("func")
    cells = _closure(fn)
    if "is_new_implementation" not in cells or not callable(cells.get("torch_function")):
        return None
    return {
        "function": str(cells.get("func_name") or getattr(fn, "__name__", "?")),
        "package": str(cells.get("package") or "?"),
        "fused": bool(cells["is_new_implementation"]),
        "reference": cells["torch_function"],
    }


def _distribution(transformers: Any, package: str) -> str:
    """The pip name of a kernel package (transformers' own map where the two differ, e.g. fla)."""
    try:
        from transformers.integrations import hub_kernels

        mapping = getattr(hub_kernels, "_PACKAGE_TO_DISTRIBUTION", {}) or {}
    except ImportError:
        mapping = {}
    return str(mapping.get(package, package.replace("_", "-")))


def _kernel_functions(model: Any) -> list[tuple[Any, str, dict[str, Any]]]:
    """(module, global name, choice) for each kernel-or-reference function of the model's modeling code."""
    import sys

    modules = {type(m).__module__ for m in model.modules()}
    found = []
    for module_name in sorted(modules):
        module = sys.modules.get(module_name)
        for name, obj in list(vars(module).items()) if module is not None else ():
            choice = _kernel_choice(obj)
            if choice is not None:
                found.append((module, name, choice))
    return found


def recurrent_kernels(transformers: Any, model: Any) -> list[dict[str, Any]]:
    """Which recurrent-layer functions run a kernel package here and which run transformers' reference
    PyTorch path (it warns "falling back to its reference PyTorch implementation"): one entry per
    function, with the package and its pip name. Empty for models without such layers."""
    out: dict[str, dict[str, Any]] = {}
    for _, _, choice in _kernel_functions(model):
        out.setdefault(
            choice["function"],
            {
                "function": choice["function"],
                "package": choice["package"],
                "distribution": _distribution(transformers, choice["package"]),
                "fused": choice["fused"],
            },
        )
    return sorted(out.values(), key=lambda x: (x["package"], x["function"]))


@contextlib.contextmanager
def _fused_kernel_stand_ins(torch: Any, model: Any) -> Iterator[None]:
    """A kernel package's function (mamba_ssm, causal_conv1d, flash-linear-attention) cannot run on meta:
    while tracing it is stood in for by its reference function, run untraced for the shapes of its
    outputs, which are then allocated as the kernel allocates them. The kernel's internal buffers (its
    per-block states) are not seen: the estimate names this."""
    from torch.utils._python_dispatch import _disable_current_modes
    from torch.utils._pytree import tree_map

    def stand_in(reference: Any) -> Callable[..., Any]:
        def fused(*args: Any, **kwargs: Any) -> Any:
            with _disable_current_modes():
                out = reference(*args, **kwargs)
            return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out)

        return fused

    patched = [(m, name, m.__dict__[name]) for m, name, c in _kernel_functions(model) if c["fused"]]
    for module, name, _ in patched:
        choice = _kernel_choice(module.__dict__[name])
        assert choice is not None
        module.__dict__[name] = stand_in(choice["reference"])
    try:
        yield
    finally:
        for module, name, original in patched:
            module.__dict__[name] = original


def trace_model(
    torch: Any, transformers: Any, model: Any, config: Any, requested_attn: str
) -> dict[str, Any]:
    """KV layout + activation model of the meta `model`; errors are reported, never raised."""
    actual = str(getattr(getattr(model, "config", None), "_attn_implementation", None) or requested_attn)
    model.eval()  # niah runs inference: no dropout masks
    from doctor.runtime.attention import LEAN_ATTENTION

    result: dict[str, Any] = {
        "attn_requested": requested_attn,
        "attn_implementation": actual,
        "custom_attention": custom_attention_classes(model),
        # full-attention layers write into a buffer sized for the prompt: a chunk adds no KV bytes
        "kv_preallocated": actual == LEAN_ATTENTION,
        "recurrent_kernels": recurrent_kernels(transformers, model),
    }
    with _kernel_stand_ins(torch, actual), _fused_kernel_stand_ins(torch, model):
        _measure_both(torch, transformers, model, config, result)
    return result
