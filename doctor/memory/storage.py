"""bitsandbytes storage rules: bytes a quantized weight really occupies on the GPU.

Source: bitsandbytes `functional.quantize_4bit` / `quantize_blockwise` / `int8_vectorwise_quant`
(0.49–0.50; bitsandbytes' storage rules, which match GPU allocations to 4–5 significant digits). Pure Python, no imports.
"""

from __future__ import annotations

import math

BLOCKSIZE_4BIT = 64  # Params4bit's default blocksize; transformers does not change it
DQ_BLOCKSIZE = 256  # blocksize of the second (double) quantization of absmax
_CODE_4BIT = 16 * 4  # the nf4/fp4 16-entry fp32 code table kept in QuantState
_DQ_CODE = 256 * 4 + 4  # double quant: 256-entry fp32 dynamic map + fp32 offset

DTYPE_BYTES: dict[str, int] = {
    "float32": 4,
    "float": 4,
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "fp8": 1,
    "int8": 1,
    "uint8": 1,
}


def dtype_bytes(name: str | None, default: int = 2) -> int:
    """Bytes per element for a dtype name ("bfloat16", "torch.float16", "fp8")."""
    if not name:
        return default
    return DTYPE_BYTES.get(str(name).replace("torch.", ""), default)


def bytes_4bit(n_params: int, double_quant: bool) -> int:
    """One Linear4bit weight: packed 4-bit data + absmax (fp32, or uint8 + fp32 absmax2 with double quant)."""
    blocks = math.ceil(n_params / BLOCKSIZE_4BIT)
    packed = math.ceil(n_params / 2)
    if double_quant:
        return packed + blocks + 4 * math.ceil(blocks / DQ_BLOCKSIZE) + _DQ_CODE + _CODE_4BIT
    return packed + 4 * blocks + _CODE_4BIT


def bytes_int8(in_features: int, out_features: int) -> int:
    """One Linear8bitLt weight: int8 data + one fp32 scale (SCB) per output row."""
    return in_features * out_features + 4 * out_features


def bytes_per_param_4bit(double_quant: bool) -> float:
    """Asymptotic bytes/param: 0.5625 (nf4/fp4) or 0.515869 (double quant)."""
    if double_quant:
        return 0.5 + 1 / BLOCKSIZE_4BIT + 4 / (BLOCKSIZE_4BIT * DQ_BLOCKSIZE)
    return 0.5 + 4 / BLOCKSIZE_4BIT
