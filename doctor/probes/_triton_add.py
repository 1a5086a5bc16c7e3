"""A tiny Triton kernel, imported only inside the triton probe's child process.

@triton.jit reads the kernel's source with `inspect`, so it must live in a real module file.
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl


@triton.jit
def _add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    tl.store(
        out_ptr + offsets,
        tl.load(x_ptr + offsets, mask=mask) + tl.load(y_ptr + offsets, mask=mask),
        mask=mask,
    )


def run_add(torch: Any, n: int = 4096) -> float:
    """Compile and launch the kernel on cuda:0; return the max abs difference from torch's x + y."""
    x = torch.rand(n, device="cuda")
    y = torch.rand(n, device="cuda")
    out = torch.empty_like(x)
    _add_kernel[(triton.cdiv(n, 1024),)](x, y, out, n, BLOCK=1024)
    torch.cuda.synchronize()
    return float((out - (x + y)).abs().max().item())
