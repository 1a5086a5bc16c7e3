"""Human-readable sizes. Binary units everywhere (GiB = 2^30), as torch and nvidia-smi report."""

from __future__ import annotations

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
