"""How long a prefill takes on the planned path: FLOPs and bytes of the path over rates measured on the card.

The doctor fills a `PrefillTimeModel` from the model's sizing and the card's rates (doctor.memory.timing);
it travels in the ResolvedPlan, and `niah run` evaluates it for each trial's exact token range (a trial
that reuses a cached prefix only prefills the rest). Pure arithmetic: no torch.

For a prefill of absolute positions [start, end) in chunks:
- linear work: tokens × 2 FLOP per active weight (projections, MLP, the routed experts only — or every
  expert where the model's own MoE runs them all), at the card's bf16 GEMM rate;
- attention: for every layer, the (query, key) pairs it computes × 4 · heads · head_dim FLOP. The lean path
  computes exactly the visible pairs (a causal triangle, a window, an attention chunk) at the flash
  kernel's rate; transformers' masked sdpa computes the whole chunk × keys rectangle at the mem-efficient
  kernel's rate, and first copies K and V to every query head and builds a chunk × keys mask (bytes at
  the card's copy bandwidth);
- per chunk: bitsandbytes dequantizes every 4-bit weight once per forward (bytes at the copy bandwidth).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class AttentionLayers:
    """Layers sharing one visibility rule: `count` of them, `kind` full | window | chunked."""

    kind: str
    window: int
    count: int


@dataclass(frozen=True)
class PrefillTimeModel:
    path: str  # "lean" (flash, visible pairs only) | "masked" (transformers' sdpa/eager with a mask)
    linear_flops_per_token: float
    attention_flops_per_pair: float  # 4 · heads · head_dim, per layer
    kv_heads: int
    heads: int
    head_dim: int
    layers: tuple[AttentionLayers, ...]
    dequant_bytes_per_chunk: float
    matmul_flops_per_s: float
    attention_flops_per_s: float
    copy_bytes_per_s: float
    rates_source: str  # where the rates came from (measured on the card, or assumed)
    notes: tuple[str, ...] = field(default=())

    def seconds(self, start: int, end: int, chunk: int | None) -> float:
        """Predicted prefill seconds for positions [start, end) in chunks of `chunk` on the absolute grid."""
        if end <= start:
            return 0.0
        bounds = chunk_bounds(start, end, chunk)
        linear = (end - start) * self.linear_flops_per_token / self.matmul_flops_per_s
        dequant = len(bounds) * self.dequant_bytes_per_chunk / self.copy_bytes_per_s
        attention = 0.0
        copies = 0.0
        for group in self.layers:
            for a, b in bounds:
                pairs = (
                    _visible_pairs(group.kind, group.window, a, b)
                    if self.path == "lean"
                    else (b - a) * _keys_held(group.kind, group.window, a, b)
                )
                attention += group.count * pairs * self.attention_flops_per_pair
                if self.path != "lean":
                    keys = _keys_held(group.kind, group.window, a, b)
                    # repeat_kv writes K and V at every query head (reading the kv heads), and the mask
                    # is written once and read once
                    per_key = 2 * 2 * (self.heads + self.kv_heads) * self.head_dim + 2 * (b - a)
                    copies += group.count * keys * per_key
        return linear + dequant + attention / self.attention_flops_per_s + copies / self.copy_bytes_per_s

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["layers"] = [asdict(x) for x in self.layers]
        out["notes"] = list(self.notes)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrefillTimeModel:
        """The model as `to_dict` wrote it (a plan file); a ValueError names the first value that no doctor
        writes: the rates divide, and a zero, a negative or a NaN would make every prediction nonsense."""
        values = dict(data)
        values["layers"] = tuple(AttentionLayers(**x) for x in values.get("layers") or ())
        values["notes"] = tuple(str(note) for note in values.get("notes") or ())
        model = cls(**values)
        model._check()
        return model

    def _check(self) -> None:
        if self.path not in TIME_PATHS:
            raise ValueError(f"prefill_time.path {self.path!r} is not one of {', '.join(TIME_PATHS)}")
        for name in ("matmul_flops_per_s", "attention_flops_per_s", "copy_bytes_per_s"):
            _number(name, getattr(self, name), positive=True)
        for name in ("linear_flops_per_token", "attention_flops_per_pair", "dequant_bytes_per_chunk"):
            _number(name, getattr(self, name), positive=False)
        for name in ("kv_heads", "heads", "head_dim"):
            _count(name, getattr(self, name))
        for group in self.layers:
            if group.kind not in LAYER_KINDS:
                raise ValueError(
                    f"prefill_time.layers kind {group.kind!r} is not one of {', '.join(LAYER_KINDS)}"
                )
            _count("layers window", group.window)
            _count("layers count", group.count)
        if not isinstance(self.rates_source, str):
            raise ValueError("prefill_time.rates_source is not text")


TIME_PATHS = ("lean", "masked")
LAYER_KINDS = ("full", "window", "chunked")


def _number(name: str, value: object, *, positive: bool) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or (value <= 0 if positive else value < 0)
    ):
        rule = "a positive" if positive else "a non-negative"
        raise ValueError(f"prefill_time.{name} must be {rule} finite number, got {value!r}")


def _count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"prefill_time.{name} must be a whole number ≥ 0, got {value!r}")


def chunk_bounds(start: int, end: int, chunk: int | None, cuts: Sequence[int] = ()) -> list[tuple[int, int]]:
    """[start, end) cut at every multiple of `chunk` (None or <= 0: no such cuts) and at `cuts`: the grid
    `niah run` prefills on (niah_run/prefill.py), so the time plan counts the chunks the run computes.

    Cutting at absolute multiples, not every `chunk` tokens from `start`, keeps a prefill that resumes
    from a reused prefix on the same chunk grid as a fresh one: a chunk never straddles a window or
    attention-chunk boundary that a chunk size dividing it would not."""
    if end <= start:
        return []
    points = {start, end, *(c for c in cuts if start < c < end)}
    if chunk and chunk > 0:
        points.update(range(start - start % chunk + chunk, end, chunk))
    return list(itertools.pairwise(sorted(points)))


def _prefix_sum_visible(kind: str, window: int, n: int) -> int:
    """Σ over query positions i < n of the keys position i sees."""
    if n <= 0:
        return 0
    if kind == "window" and window:
        inside = min(n, window)
        return inside * (inside + 1) // 2 + max(0, n - window) * window
    if kind == "chunked" and window:
        full, rest = divmod(n, window)
        return full * window * (window + 1) // 2 + rest * (rest + 1) // 2
    return n * (n + 1) // 2


def _visible_pairs(kind: str, window: int, a: int, b: int) -> int:
    return _prefix_sum_visible(kind, window, b) - _prefix_sum_visible(kind, window, a)


def _keys_held(kind: str, window: int, a: int, b: int) -> int:
    """Keys a chunk [a, b) attends over under a cache: all for a full layer, the window's for others."""
    if kind in ("window", "chunked") and window:
        return min(a, window - 1) + (b - a)
    return b
