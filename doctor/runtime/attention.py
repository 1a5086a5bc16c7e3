"""`niah_lean`: exact prefill attention that allocates no repeated K/V and no mask.

transformers' sdpa path, for a prefill chunk against its KV cache, builds a materialised mask and then
cannot use `enable_gqa`: it copies K and V to every query head (`repeat_kv`) and runs the mem-efficient or
math kernel. Here the same attention is computed from what the mask would have said, on the flash kernel:
- bottom-right causal alignment (the flash kernel's `is_causal` for a query block shorter than its keys),
- native GQA (K/V keep their own head count),
- each layer's visibility rule applied by choosing which keys a block of queries attends to: full causal,
  Llama 4's chunked attention (`attention_chunk_size`: a query sees its own chunk up to itself) and sliding
  windows (a query sees the last `sliding_window` keys, itself included), the last as three exact pieces
  merged by their log-sum-exp.

The model's code is untouched: the function is registered under `LEAN_ATTENTION` in transformers'
`AttentionInterface`, with a mask function that builds nothing. The one thing the function cannot see is
where the chunk lies in the sequence (a windowed cache layer returns only its last tokens), so the caller
says it with `query_start(position, tokens)`; without it only layers whose key span tells the position run.

Anything the kernel cannot honour exactly (softcapping, attention sinks, a position bias, padding masks,
bidirectional attention, a mask function of the model's own, dropout, fp32 on CUDA, head_dim > 256) raises
`LeanUnsupported`: the plan then keeps transformers' path.
On CUDA (and on meta, where the doctor traces it) the flash kernel computes each block — except a full
layer's chunk against its cache, whose earlier keys go to cuDNN where `prepare_kernels` found it exact,
copy-free and faster than flash on the device (the doctor's trace always sizes that split); on the CPU a math reference with the
same block structure, which is what the CPU exactness tests compare with eager.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

LEAN_ATTENTION = "niah_lean"
# flash's limits (aten sdp_utils): half/bf16 inputs, head dims up to 256 and a multiple of 8
FLASH_MAX_HEAD_DIM = 256

# (first position, tokens or None) of the chunk the current forward feeds
_START: contextvars.ContextVar[tuple[int, int | None] | None] = contextvars.ContextVar(
    "niah_lean_query_start", default=None
)
# Calls since import: the doctor's trace checks the model really routed its attention through here.
CALLS = [0]
# layer index -> the visibility rule its last call applied, while `recording_rules` is active
_RULES: contextvars.ContextVar[dict[int, VisibilityRule] | None] = contextvars.ContextVar(
    "niah_lean_rules", default=None
)


class LeanUnsupported(ValueError):
    """The lean attention cannot compute this layer exactly; the plan must keep transformers' path."""


@contextlib.contextmanager
def query_start(position: int, tokens: int | None = None) -> Iterator[None]:
    """Tell the lean attention that the forward inside feeds `tokens` tokens starting at absolute `position`.

    A layer may be given the queries of the chunk's last tokens only (Gemma 4's KV-shared layers under
    `logits_to_keep`): with `tokens`, those queries are placed at the chunk's end, where its keys end.
    Without it every layer's queries are taken to be the whole chunk."""
    token = _START.set((int(position), None if tokens is None else int(tokens)))
    try:
        yield
    finally:
        _START.reset(token)


@contextlib.contextmanager
def recording_rules() -> Iterator[dict[int, VisibilityRule]]:
    """Collect, per layer index, the visibility rule each lean attention call inside applied (the doctor's
    probe reads them to find where the lean path will refuse)."""
    rules: dict[int, VisibilityRule] = {}
    token = _RULES.set(rules)
    try:
        yield rules
    finally:
        _RULES.reset(token)


@dataclass(frozen=True)
class VisibilityRule:
    """Which keys query position i sees: [first_visible(i), i]."""

    kind: str  # "full" | "sliding" | "chunked"
    window: int = 0  # sliding_window or attention_chunk_size
    # a window the config sets that neither layer_types nor the attention call gives this layer: full
    # attention equals the model's mask, windowed or not, only for positions before it
    undeclared_window: int = 0

    def first_visible(self, position: int) -> int:
        if self.kind == "sliding":
            return max(0, position - self.window + 1)
        if self.kind == "chunked":
            return position - position % self.window
        return 0


def visibility_rule(module: Any, sliding_window: int | None) -> VisibilityRule:
    """The rule the model's own mask applies to this layer: `config.layer_types[layer_idx]` where the model
    declares layer types (transformers builds one mask per type from them), else the `sliding_window`
    the model passes to its attention function. A disagreement between the two is refused, never guessed;
    so is a layer past a window that only the config names (transformers' cache keeps just that window of
    it, and whether the model's mask applies it is not known here)."""
    config = getattr(module, "config", None)
    index = getattr(module, "layer_idx", None)
    types = getattr(config, "layer_types", None)
    layer_type = types[index] if types and isinstance(index, int) and 0 <= index < len(types) else None
    if layer_type == "chunked_attention":
        size = getattr(config, "attention_chunk_size", None)
        if not size:
            raise LeanUnsupported("a chunked-attention layer without attention_chunk_size")
        return VisibilityRule("chunked", int(size))
    if layer_type == "sliding_attention":
        window = sliding_window or getattr(config, "sliding_window", None)
        if not window:
            raise LeanUnsupported("a sliding-attention layer without sliding_window")
        return VisibilityRule("sliding", int(window))
    if layer_type in (None, "full_attention"):
        if sliding_window:
            if layer_type == "full_attention":
                raise LeanUnsupported("a full-attention layer was given a sliding window")
            return VisibilityRule("sliding", int(sliding_window))
        if layer_type is None:
            windows = [getattr(config, name, None) for name in ("sliding_window", "attention_chunk_size")]
            undeclared = min((int(w) for w in windows if isinstance(w, int) and w > 0), default=0)
            return VisibilityRule("full", undeclared_window=undeclared)
        return VisibilityRule("full")
    raise LeanUnsupported(f"layer type {layer_type!r}")


# keyword arguments that change the result when given (the rest a model passes is position bookkeeping)
_MUST_BE_NONE = ("softcap", "s_aux", "sinks", "position_bias", "head_mask", "alibi", "attention_bias")
_PACKED = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "cu_seqlens_q", "cu_seqlens_k")


def _refuse_what_changes_the_result(
    module: Any, attention_mask: Any, dropout: float, kwargs: dict[str, Any]
) -> None:
    if attention_mask is not None:
        raise LeanUnsupported("an explicit attention mask (padding or a custom pattern)")
    if dropout:
        raise LeanUnsupported("attention dropout")
    for name in _MUST_BE_NONE:
        if kwargs.get(name) is not None:
            raise LeanUnsupported(f"{name} (the flash kernel has no such term)")
    for name in _PACKED:
        if kwargs.get(name) is not None:
            raise LeanUnsupported("packed sequences")
    # as transformers' sdpa decides it: the call's is_causal, else the module's own flag (Gemma 3 with
    # use_bidirectional_attention sets only the flag)
    causal = kwargs.get("is_causal")
    if not (getattr(module, "is_causal", True) if causal is None else causal):
        raise LeanUnsupported("bidirectional attention")
    if kwargs.get("output_attentions"):
        raise LeanUnsupported("output_attentions")


def check_kernel_inputs(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
    """What the flash kernel needs on CUDA (the doctor's meta trace checks the same)."""
    import torch

    if query.device.type == "cpu":
        return
    if query.dtype not in (torch.float16, torch.bfloat16):
        raise LeanUnsupported(f"{str(query.dtype).replace('torch.', '')} (the flash kernel needs fp16/bf16)")
    dims = {query.shape[-1], key.shape[-1], value.shape[-1]}
    if len(dims) != 1:
        raise LeanUnsupported("value head_dim differs from the query's")
    head_dim = query.shape[-1]
    if head_dim > FLASH_MAX_HEAD_DIM or head_dim % 8:
        raise LeanUnsupported(f"head_dim {head_dim} (the flash kernel takes multiples of 8 up to 256)")
    if query.shape[1] % key.shape[1]:
        raise LeanUnsupported("query heads not a multiple of the key/value heads")


def _query_start(rule: VisibilityRule, q_len: int, kv_len: int) -> int:
    given = _START.get()
    if given is not None:
        position, tokens = given
        if tokens is None:
            return position
        if q_len > tokens:
            raise LeanUnsupported(f"{q_len} queries in a forward of {tokens} tokens")
        return position + tokens - q_len  # the chunk's last q_len tokens
    # Without the caller's position: a full layer holds every token, and a windowed layer that has not yet
    # dropped any does too, so the key span says where the queries start.
    window = rule.window or rule.undeclared_window
    if (rule.kind == "full" and not window) or kv_len < window - 1 + q_len:
        return kv_len - q_len
    raise LeanUnsupported("the chunk's position is unknown (run the forward inside query_start(position))")


def lean_attention_forward(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query [B, H, L, D], key/value [B, Hkv, S, D] as the
    cache returned them; returns ([B, L, H, D], None) like its sdpa integration."""
    CALLS[0] += 1
    _refuse_what_changes_the_result(module, attention_mask, dropout, kwargs)
    check_kernel_inputs(query, key, value)
    rule = visibility_rule(module, kwargs.get("sliding_window"))
    rules = _RULES.get()
    if rules is not None and isinstance(getattr(module, "layer_idx", None), int):
        rules[module.layer_idx] = rule
    q_len, kv_len = query.shape[-2], key.shape[-2]
    start = _query_start(rule, q_len, kv_len)
    key_offset = start + q_len - kv_len  # absolute position of key index 0
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    return attend_by_rule(query, key, value, rule, start, key_offset, scale), None


def attend_by_rule(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rule: VisibilityRule,
    start: int,
    key_offset: int,
    scale: float,
) -> torch.Tensor:
    """Attention of queries at absolute positions start.. over keys at key_offset.., each query seeing
    [rule.first_visible(i), i]; [B, L, H, D] in the query dtype."""
    import torch

    q_len = query.shape[-2]
    refused = position_refusal(rule, start, q_len, key_offset)
    if refused:
        raise LeanUnsupported(refused)
    segments = list(_segments(rule, start, start + q_len))
    if len(segments) == 1:
        return _attend_segment(query, key, value, rule, segments[0], start, key_offset, scale).transpose(1, 2)
    batch, heads, _, _ = query.shape
    out = torch.empty(batch, q_len, heads, value.shape[-1], dtype=query.dtype, device=query.device)
    for segment in segments:
        a, b = segment
        piece = _attend_segment(query, key, value, rule, segment, start, key_offset, scale)
        out[:, a - start : b - start] = piece.transpose(1, 2)
        del piece
    return out


def position_refusal(rule: VisibilityRule, start: int, q_len: int, key_offset: int) -> str | None:
    """Why the queries at positions start..start + q_len - 1, against keys from absolute position
    `key_offset` on, cannot be computed exactly under `rule`; None when they can. The lean path's one
    decision that depends on the position: the attention raises it, and the doctor's probe asks it where
    the first refusal lies (`first_refused_position`), so the plan sees it before the run meets it."""
    if rule.undeclared_window and start + q_len > rule.undeclared_window:
        return (
            f"a window of {rule.undeclared_window} tokens that only the config sets (no layer_types, no"
            " sliding_window in the attention call): past it, whether the model's mask applies it is not known"
        )
    first = rule.first_visible(start)
    if first < key_offset:
        return f"the cache no longer holds key {first} (it starts at {key_offset})"
    return None


def first_refused_position(rule: VisibilityRule, keys_kept: int | None) -> int | None:
    """The first position at which `position_refusal` refuses this layer's one-token forward, where its
    cache hands the attention `keys_kept` earlier keys besides the new token's (None: every earlier key);
    None when it never does. Every forward over positions before it is computed.

    Asked at the two positions where a cause can begin: the end of a window only the config sets, and the
    first key the cache drops. A rule's first visible key trails the position by at most its window (full:
    never moves; chunked: trails most at a chunk's start), the cache's first key trails it by exactly
    `keys_kept`: a rule the cache does not short at its first drop, it never shorts."""

    def key_offset(position: int) -> int:
        return 0 if keys_kept is None else position - min(position, keys_kept)

    starts = {rule.undeclared_window, None if keys_kept is None else keys_kept + 1}
    candidates = sorted(p for p in starts if p)
    return next((p for p in candidates if position_refusal(rule, p, 1, key_offset(p))), None)


def _segments(rule: VisibilityRule, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Query rows [start, end) cut where the rule changes shape: at chunk boundaries (chunked), and for a
    sliding window at the first row that drops a key and then every window - 1 rows (so each block of
    rows that slides fits the three-piece split of `_attend_sliding`)."""
    a = start
    while a < end:
        if rule.kind == "chunked":
            b = min(end, a - a % rule.window + rule.window)
        elif rule.kind == "sliding" and a < rule.window:
            b = min(end, rule.window)
        elif rule.kind == "sliding":  # a window of one token: one row at a time (each sees itself only)
            b = min(end, a + max(1, rule.window - 1))
        else:
            b = end
        yield a, b
        a = b


def _attend_segment(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rule: VisibilityRule,
    segment: tuple[int, int],
    start: int,
    key_offset: int,
    scale: float,
) -> torch.Tensor:
    """[B, H, b - a, D] for query rows [a, b)."""
    a, b = segment
    q = query[:, :, a - start : b - start]
    lo_first, lo_last = rule.first_visible(a), rule.first_visible(b - 1)
    if lo_first == lo_last:  # every row sees [lo, i]: one bottom-right causal block over keys [lo, b)
        k = key[:, :, lo_first - key_offset : b - key_offset]
        v = value[:, :, lo_first - key_offset : b - key_offset]
        return attend_block(q, k, v, scale, causal=True, unbounded=rule.kind == "full")[0]
    return _attend_sliding(q, key, value, a, b, rule.window, key_offset, scale)


def _attend_sliding(
    q: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    a: int,
    b: int,
    window: int,
    key_offset: int,
    scale: float,
) -> torch.Tensor:
    """Rows [a, b) (a ≥ window, b - a ≤ window - 1) each seeing [i - window + 1, i], as three exact
    pieces: keys the rows see from their own first key on (a reversed causal square), keys every row
    sees, and the rows' own keys (a causal square); merged by log-sum-exp."""
    n = b - a
    left = slice(a - window + 1 - key_offset, a - window + 1 + n - key_offset)
    middle = slice(a - window + 1 + n - key_offset, a - key_offset)
    right = slice(a - key_offset, b - key_offset)
    flipped_out, flipped_lse = attend_block(
        q.flip(-2), key[:, :, left].flip(-2), value[:, :, left].flip(-2), scale, causal=True
    )
    parts = [(flipped_out.flip(-2), flipped_lse.flip(-1))]
    if middle.stop > middle.start:
        parts.append(attend_block(q, key[:, :, middle], value[:, :, middle], scale, causal=False))
    parts.append(attend_block(q, key[:, :, right], value[:, :, right], scale, causal=True))
    return merge_by_lse(parts, q.dtype)


def merge_by_lse(parts: list[tuple[torch.Tensor, torch.Tensor]], dtype: Any) -> torch.Tensor:
    """softmax over a union of disjoint key sets from each set's output and log-sum-exp (fp32)."""
    import torch

    total = _logsumexp_of(parts)
    merged = None
    for out, lse in parts:
        term = out.float() * torch.exp(lse - total).unsqueeze(-1)
        merged = term if merged is None else merged.add_(term)
    assert merged is not None
    return merged.to(dtype)


def attend_block(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, *, causal: bool, unbounded: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output [B, H, L, D], log-sum-exp [B, H, L] fp32) of one block; `causal` is bottom-right aligned (row
    r of L sees keys up to r + S - L). Flash on CUDA and meta (native GQA), the math reference elsewhere."""
    if q.device.type not in ("cuda", "meta"):
        return _math_block(q, k, v, scale, causal)
    if unbounded and causal and k.shape[-2] > q.shape[-2] and _past_on_cudnn(q):
        # a full layer's chunk against its cache, whose keys grow with the context: the keys before the
        # chunk's own on cuDNN (Hopper's fastest kernel for one big rectangle), its own square on flash,
        # merged by log-sum-exp. Windowed layers' blocks stay bounded by their window: flash alone.
        return causal_by_split(q, k, v, scale, _kernel_block)
    if q.device.type == "cuda" and _needs_split(q, k, causal):  # this build's flash aligns causal top-left
        return causal_by_split(q, k, v, scale, _flash_block)
    return _flash_block(q, k, v, scale, causal)


def _past_on_cudnn(q: torch.Tensor) -> bool:
    # the trace (meta) sizes the split, whatever the GPU: where cuDNN does not run, flash's one block needs
    # less; the decision depends on the layer's kind only, so every trace point meets the structure a run has
    return q.device.type == "meta" or _cudnn_usable(q.device, q.dtype)


def _kernel_block(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's pieces: the causal square on flash, the rectangle of earlier keys on cuDNN."""
    if causal:
        return _flash_block(q, k, v, scale, True)
    try:
        return _cudnn_block(q, k, v, scale)
    except RuntimeError:
        # a shape or layout this cuDNN refuses: flash from now on on this device (same result)
        _CUDNN_OK[(str(q.device), str(q.dtype))] = False
        return _flash_block(q, k, v, scale, False)


def _cudnn_block(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-causal attention on cuDNN with grouped heads folded into rows: the g query heads that share a
    key/value head become g × L rows of one head (a query's result does not depend on the other rows when
    nothing is masked), so K and V keep their own head count without relying on the kernel's GQA."""
    import torch

    batch, heads, rows, dim = q.shape
    kv_heads = k.shape[1]
    groups = heads // kv_heads
    folded = q.reshape(batch, kv_heads, groups, rows, dim).reshape(batch, kv_heads, groups * rows, dim)
    out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(
        folded, k, v, None, True, 0.0, False, False, scale=scale
    )[:2]
    return (
        out.reshape(batch, kv_heads, groups, rows, v.shape[-1]).reshape(batch, heads, rows, v.shape[-1]),
        lse.reshape(batch, heads, rows).float(),
    )


_CUDNN_OK: dict[tuple[str, str], bool] = {}  # per (device, dtype): cuDNN present and exact here


def _cudnn_usable(device: Any, dtype: Any) -> bool:
    """Only after `prepare_kernels` checked it on this device: a block never waits on a self-test."""
    return _CUDNN_OK.get((str(device), str(dtype)), False)


def prepare_kernels(device: Any, dtype: Any) -> str:
    """Check, before any trial, which kernels compute the lean attention on `device` exactly and without
    copying the cache; returns what will run (recorded in the run's facts)."""
    import torch

    key = (str(device), str(dtype))
    if key not in _CUDNN_OK:
        _CUDNN_OK[key] = (
            _cudnn_matches_reference(device, dtype)
            and _cudnn_reads_the_cache_in_place(device, dtype)
            and _cudnn_is_faster(device, dtype)
        )
    if torch.device(device).type == "cuda":
        _needs_split(torch.empty(1, 1, 1, 8, device=device, dtype=dtype), torch.empty(1, 1, 2, 8), True)
    return kernels_in_use(device, dtype)


def _cache_slice(device: Any, dtype: Any) -> torch.Tensor:
    """65,536 keys of 8 heads as a cache holds them: a slice of a longer buffer, not a contiguous tensor."""
    import torch

    return torch.empty(1, 8, 70_000, 128, device=device, dtype=dtype).normal_()[:, :, :65_536]


def _cudnn_reads_the_cache_in_place(device: Any, dtype: Any) -> bool:
    """A kernel that made a contiguous copy of a cache slice would add a layer's whole K/V to the peak
    (gigabytes at millions of tokens) where the plan counted none: measured here on a 64k-token slice."""
    import torch

    keys = _cache_slice(device, dtype)
    q = torch.randn(1, 32, 512, 128, device=device, dtype=dtype)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    try:
        _cudnn_block(q, keys, keys, 0.09)
    except RuntimeError:
        return False
    torch.cuda.synchronize(device)
    extra = torch.cuda.max_memory_allocated(device) - before
    return extra < keys.numel() * keys.element_size() // 2  # its outputs and workspace, not a copy of K


def _cudnn_is_faster(device: Any, dtype: Any) -> bool:
    """The split exists for speed: cuDNN takes the earlier keys only where it beats flash on this card, at a
    long-context block (8192 folded rows against a 65,536-key cache slice), timed here, not assumed."""
    import torch

    keys = _cache_slice(device, dtype)
    q = torch.randn(1, 32, 2048, 128, device=device, dtype=dtype)
    try:
        cudnn = best_cuda_seconds(lambda: _cudnn_block(q, keys, keys, 0.09), device)
    except RuntimeError:
        return False
    flash = best_cuda_seconds(lambda: _flash_block(q, keys, keys, 0.09, False), device)
    _KERNEL_SECONDS[(str(device), str(dtype))] = {"cudnn": cudnn, "flash": flash}
    return cudnn < flash


_KERNEL_SECONDS: dict[tuple[str, str], dict[str, float]] = {}  # the speed check's timings, for the facts


def best_cuda_seconds(work: Callable[[], Any], device: Any = None, repeats: int = 3) -> float:
    """The fastest of `repeats` timings of `work` on a CUDA device (CUDA events, after one warm-up call:
    the first pays for the kernel's plan and workspace). Also the rates probe's timer."""
    import torch

    work()
    torch.cuda.synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        work()
        stop.record()
        stop.synchronize()
        best = min(best, start.elapsed_time(stop) / 1000.0)
    return best


def _cudnn_matches_reference(device: Any, dtype: Any) -> bool:
    """Once per device: the folded cuDNN block against the math reference, keys a slice of a bigger buffer
    as the cache holds them. Any error or mismatch keeps flash for every block."""
    import torch

    try:
        if not hasattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention"):
            return False
        if torch.cuda.get_device_capability(device) < (9, 0):
            return False  # Hopper's kernels are where it is faster; elsewhere flash is the known quantity
        generator = torch.Generator().manual_seed(1)
        q = torch.randn(1, 8, 300, 128, generator=generator)
        buffer = torch.randn(1, 2, 1500, 128, generator=generator)
        k, v = buffer[:, :, :1200], buffer[:, :, 200:1400]
        expected, expected_lse = _math_block(q, k, v, 0.09, False)
        got, lse = _cudnn_block(q.to(device, dtype), k.to(device, dtype), v.to(device, dtype), 0.09)
        close = (got.float().cpu() - expected).abs().max() < 3e-2 and (
            lse.cpu() - expected_lse
        ).abs().max() < 3e-2
        return bool(close)
    except Exception:  # noqa: BLE001 - no cuDNN attention here: flash it is
        return False


def kernels_in_use(device: Any, dtype: Any) -> str:
    """What computes a long prefill's attention on this device (for the run's facts and the rates probe)."""
    timed = _KERNEL_SECONDS.get((str(device), str(dtype)))
    speeds = (
        f" ({timed['cudnn'] * 1e3:.2f} ms on cuDNN, {timed['flash'] * 1e3:.2f} ms on flash per test block)"
        if timed
        else ""
    )
    if _cudnn_usable(device, dtype):
        return f"cuDNN for the keys before a chunk, flash for its own (merged by log-sum-exp){speeds}"
    return f"flash{speeds}"


BlockFn = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor", float, bool], tuple[Any, Any]]


def causal_by_split(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, block: BlockFn
) -> tuple[torch.Tensor, torch.Tensor]:
    """A bottom-right causal block from two a kernel always aligns the same way: the keys before the
    queries' own (all visible) and the square of their own keys (causal), merged by log-sum-exp."""
    own = k.shape[-2] - q.shape[-2]
    parts = [
        block(q, k[:, :, :own], v[:, :, :own], scale, False),
        block(q, k[:, :, own:], v[:, :, own:], scale, True),
    ]
    return merge_by_lse(parts, q.dtype), _logsumexp_of(parts)


def _flash_block(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    # aten's flash op (FlashAttention-2): native GQA; with is_causal, bottom-right alignment (checked once
    # per device by `_needs_split`)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention(
        q, k, v, 0.0, is_causal=causal, return_debug_mask=False, scale=scale
    )[:2]
    return out, lse


_BOTTOM_RIGHT: dict[str, bool] = {}  # per CUDA device: does this build's flash causal align bottom-right?


def _needs_split(q: torch.Tensor, k: torch.Tensor, causal: bool) -> bool:
    if not causal or q.shape[-2] == k.shape[-2]:
        return False
    key = str(q.device)
    if key not in _BOTTOM_RIGHT:
        _BOTTOM_RIGHT[key] = _flash_causal_is_bottom_right(q.device, q.dtype)
    return not _BOTTOM_RIGHT[key]


def _flash_causal_is_bottom_right(device: Any, dtype: Any) -> bool:
    """A 3-query × 7-key block against the math reference, once: the kernel's alignment is a property of
    the torch build, and a wrong one would be silently inexact."""
    import torch

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 64, generator=generator) for n in (3, 7, 7))
    expected, _ = _math_block(q, k, v, 0.125, True)
    got, _ = _flash_block(q.to(device, dtype), k.to(device, dtype), v.to(device, dtype), 0.125, True)
    return bool((got.float().cpu() - expected).abs().max() < 5e-2)


def _logsumexp_of(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    import torch

    return torch.logsumexp(torch.stack([lse for _, lse in parts]), dim=0)


def _math_block(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    groups = q.shape[1] // k.shape[1]
    kf = k.float().repeat_interleave(groups, dim=1) if groups > 1 else k.float()
    vf = v.float().repeat_interleave(groups, dim=1) if groups > 1 else v.float()
    scores = torch.matmul(q.float(), kf.transpose(-2, -1)) * scale
    if causal:
        rows, cols = q.shape[-2], k.shape[-2]
        visible = torch.ones(rows, cols, dtype=torch.bool, device=q.device).tril(cols - rows)
        scores = scores.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.matmul(torch.softmax(scores, dim=-1), vf)
    return out.to(q.dtype), lse


def _build_no_mask(*args: Any, **kwargs: Any) -> None:
    """The mask function registered with the lean attention: every rule is applied inside the attention,
    so nothing is built. A padding mask is not supported (niah never pads); the attention refuses one."""
    if kwargs.get("use_vmap"):  # what transformers sets where the model adds a mask function of its own
        raise LeanUnsupported("a mask pattern of the model's own (or_mask_function / and_mask_function)")
    attention_mask = kwargs.get("attention_mask")
    if attention_mask is not None and not bool(attention_mask.all()):
        raise LeanUnsupported("a padding mask")
    return None


def register() -> str:
    """Make `attn_implementation=LEAN_ATTENTION` known to the installed transformers; returns the name."""
    from transformers import AttentionInterface

    AttentionInterface.register(LEAN_ATTENTION, lean_attention_forward)
    try:
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError:  # transformers without per-implementation masks: it then builds the sdpa one
        raise LeanUnsupported("this transformers has no AttentionMaskInterface") from None
    AttentionMaskInterface.register(LEAN_ATTENTION, _build_no_mask)
    return LEAN_ATTENTION
