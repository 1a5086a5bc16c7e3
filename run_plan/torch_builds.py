"""Which build of torch a machine wants: PyTorch's CPU index, or its CUDA index for the driver's CUDA.

Standard library only: `install.py` reads it before anything is installed, and the doctor's torch checks
name the same index in their fixes.
"""

from __future__ import annotations

__all__ = ["CPU_INDEX", "torch_index_url"]

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# CUDA variants download.pytorch.org publishes wheels for (aarch64 CUDA wheels start with torch 2.6's cu126).
_CUDA_INDEXES = {
    "x86_64": ((11, 8), (12, 1), (12, 4), (12, 6), (12, 8), (12, 9), (13, 0)),
    "aarch64": ((12, 6), (12, 8), (12, 9), (13, 0)),
}
# Oldest CUDA whose torch wheels carry kernels for a compute-capability major (Blackwell needs 12.8).
_MIN_CUDA_FOR_CC_MAJOR = {10: (12, 8), 11: (13, 0), 12: (12, 8)}


def torch_index_url(
    driver_cuda: tuple[int, int] | None, machine: str, capability: tuple[int, int] | None = None
) -> str | None:
    """The newest download.pytorch.org CUDA index not newer than the driver's CUDA (None: no such index)."""
    options = _CUDA_INDEXES.get(machine, _CUDA_INDEXES["x86_64"])
    floor = _MIN_CUDA_FOR_CC_MAJOR.get(capability[0]) if capability else None
    usable = [
        v for v in options if (driver_cuda is None or v <= driver_cuda) and (floor is None or v >= floor)
    ]
    if not usable:
        return None
    major, minor = (12, 8) if driver_cuda is None and (12, 8) in usable else usable[-1]
    return f"https://download.pytorch.org/whl/cu{major}{minor}"
