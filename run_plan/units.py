"""Human-readable sizes. Binary units everywhere (GiB = 2^30), as torch and nvidia-smi report."""

from __future__ import annotations

import math

GIB = 1 << 30
MIB = 1 << 20


def gib(n_bytes: float | int | None) -> str:
    if n_bytes is None:
        return "unknown"
    if abs(n_bytes) >= GIB:
        return f"{n_bytes / GIB:.1f} GiB"
    if abs(n_bytes) >= MIB:
        return f"{n_bytes / MIB:.0f} MiB"
    return f"{int(n_bytes)} B"


def duration(seconds: float | None) -> str:
    """`42 s`, `6 min 40 s`, `2 h 05 min`: what a person reads off a time plan."""
    if seconds is None or not math.isfinite(seconds):  # a time model's overflow is no time at all
        return "unknown"
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
