"""Import bitsandbytes in a child without paying for torch.compile (used by the live probe and the sizing child).

bitsandbytes 0.50's default (CPU) backend wraps its ops in `torch.compile` at import time, which imports
torch._dynamo and torch._inductor: 3-6 s on an H200 host without bytecode, 0.7 s on the 2-core CPU box
with it. Those wrappers already fall back to the plain function whenever `torch.compile` fails, and
neither the CUDA path the live probe exercises (native library, nf4 quantize, Linear4bit) nor the meta
model the sizing child prepares with transformers' quantizer ever runs them, so the answers are the same
without them. Whether Inductor itself works is the Triton probe's question.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def compile_decorators_skipped(torch: Any) -> Iterator[None]:
    """`torch.compile` returns the function unchanged inside this block."""
    real = torch.compile

    def unchanged(model: Any = None, **_options: Any) -> Any:
        return model if model is not None else (lambda fn: fn)

    torch.compile = unchanged
    try:
        yield
    finally:
        torch.compile = real


def import_bitsandbytes(torch: Any) -> Any:
    """`import bitsandbytes` with its compile wrappers skipped; raises what the import raises."""
    with compile_decorators_skipped(torch):
        import bitsandbytes
    return bitsandbytes
