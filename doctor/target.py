"""What the user plans to run: the inputs every probe and check reads.

The same flags (`--model`, `--context`, `--quant`, ...) are shared by `doctor` and by
`niah run`'s preflight, so the doctor judges exactly the run that will follow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from doctor.errors import UsageError

Quant = Literal["none", "bnb-8bit", "bnb-4bit"]
QUANT_CHOICES: tuple[str, ...] = ("none", "bnb-8bit", "bnb-4bit")
ATTN_CHOICES: tuple[str, ...] = ("sdpa", "flex_attention", "eager", "flash_attention_2")
DTYPE_CHOICES: tuple[str, ...] = ("auto", "bfloat16", "float16", "float32")

_TOKENS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")
# "128k" means 131072 tokens: context windows are quoted in powers of two (Llama 3.1 "128k" = 131072).
_TOKEN_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}


def parse_token_count(text: str | int, *, what: str = "context") -> int:
    """Parse `8192`, `8k`, `1M` (k = 1024, M = 1024²) into a positive token count."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _TOKENS.match(str(text))
        if not match:
            raise UsageError(f"{what} {text!r} is not a token count",
                             hint="Use an integer like 131072, or 128k / 1M (k = 1024, M = 1048576).")
        number, unit = match.groups()
        scaled = float(number) * _TOKEN_UNITS[unit.lower()]
        if scaled != int(scaled):
            raise UsageError(f"{what} {text!r} is not a whole number of tokens")
        value = int(scaled)
    if value <= 0:
        raise UsageError(f"{what} must be a positive number of tokens, got {value}")
    return value


@dataclass(frozen=True)
class Target:
    """The planned run. Every field has a safe default, so `doctor` alone checks just the machine."""

    model: str | None = None  # hub id, local folder, or "demo"
    context: int | None = None  # tokens the longest trial will feed the model
    quant: str = "none"
    bnb_4bit_type: str = "nf4"
    double_quant: bool = True
    dtype: str = "auto"  # auto = the checkpoint's torch_dtype (bf16 if it has none)
    prequantized: bool | None = None  # None = detect from the config's quantization_config
    gpus: str | None = None  # "1xH100-80GB", "2x80GiB"; None = what NVML sees
    attn: str = "sdpa"
    prefill_chunk: int | None = None  # None = what `niah run` would pick
    kv_dtype: str | None = None  # None = same as dtype
    max_memory: str | None = None  # as given: "0=70GiB,1=70GiB,cpu=200GiB"
    device_map: str | None = None
    scripts: tuple[str, ...] = ()  # files the run executes, checked for git freshness
    fetch: bool = False  # refresh upstream tracking refs before the git check
    online: bool = False  # allow network calls (hub lookups, git fetch)
    trust_remote_code: bool = False
    live: bool | None = None  # import torch/bnb/triton in child processes; None = only when a GPU is visible
    probe_timeout_s: float = 60.0
    base_url: str | None = None  # an OpenAI-compatible server (vLLM, SGLang, niah serve) serving `model`
    extra: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # reserved for later flags

    def __post_init__(self) -> None:
        if self.quant not in QUANT_CHOICES:
            raise UsageError(f"--quant {self.quant!r} is not one of {', '.join(QUANT_CHOICES)}")
        if self.attn not in ATTN_CHOICES:
            raise UsageError(f"--attn {self.attn!r} is not one of {', '.join(ATTN_CHOICES)}")
        if self.bnb_4bit_type not in ("nf4", "fp4"):
            raise UsageError(f"--bnb-4bit-type {self.bnb_4bit_type!r} is not nf4 or fp4")
        if self.context is not None and self.context <= 0:
            raise UsageError(f"--context must be a positive number of tokens, got {self.context}")
        if self.prefill_chunk is not None and self.prefill_chunk <= 0:
            raise UsageError(f"--prefill-chunk must be positive, got {self.prefill_chunk}")
        if self.probe_timeout_s <= 0:
            raise UsageError("--timeout must be positive")

    def describe(self) -> dict[str, object]:
        """The fields worth printing in a report header (defaults that say nothing are dropped)."""
        out: dict[str, object] = {"model": self.model, "context": self.context, "quant": self.quant}
        if self.quant == "bnb-4bit":
            out["bnb_4bit_type"] = self.bnb_4bit_type
            out["double_quant"] = self.double_quant
        for name in ("dtype", "prequantized", "gpus", "attn", "prefill_chunk", "kv_dtype",
                     "max_memory", "device_map"):
            out[name] = getattr(self, name)
        out["scripts"] = list(self.scripts)
        if self.base_url:
            out["base_url"] = self.base_url  # the report's redaction drops any user:password@ part
        return out
