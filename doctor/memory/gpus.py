"""Which GPUs the run gets: `--gpus 1xH100-80GB`, `2x80GiB`, `4xA100-40GB`, or NVML's list.

Capacities are what NVML reports as total memory (nvidia-smi's "MiB" column), because that is
what the default (no --gpus) path reads too; the driver's hidden reserve is part of the overhead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from doctor.errors import UsageError

MIB = 1 << 20
# NVML memory.total of common cards (nvidia-smi, MiB). H100-80GB = 81559 MiB (vram-anchors.md §0 units).
KNOWN_GPUS: dict[str, int] = {
    "H100-80GB": 81559, "H100": 81559, "H100-SXM": 81559, "H100-PCIE": 81559, "H100-NVL": 95830,
    "H100-94GB": 95830, "H200": 143771, "H200-141GB": 143771, "GH200": 97871, "B200": 183359,
    "A100-80GB": 81920, "A100": 81920, "A100-40GB": 40960, "L40S": 46068, "L40": 46068, "L4": 23034,
    "A10G": 23028, "A10": 23028, "RTX4090": 24564, "RTX-4090": 24564, "RTX3090": 24576, "RTX-3090": 24576,
    "RTX5090": 32607, "RTX-5090": 32607, "V100-32GB": 32768, "V100": 16384, "T4": 15360,
}
# Sustained bf16 tensor throughput we assume for the rough prefill-time estimate (~40% of dense peak).
ASSUMED_BF16_FLOPS: dict[str, float] = {"H100": 0.4 * 989e12, "H200": 0.4 * 989e12, "GH200": 0.4 * 989e12,
                                        "B200": 0.4 * 2250e12, "A100": 0.4 * 312e12, "L40": 0.4 * 362e12,
                                        "L4": 0.4 * 121e12, "A10": 0.4 * 125e12, "4090": 0.4 * 165e12,
                                        "3090": 0.4 * 71e12, "5090": 0.4 * 209e12, "V100": 0.4 * 125e12,
                                        "T4": 0.4 * 65e12}
_SPEC = re.compile(r"^\s*(?:(\d+)\s*[xX×]\s*)?(.+?)\s*$")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(GiB|GB|G)$", re.IGNORECASE)


@dataclass(frozen=True)
class GpuSpec:
    index: int
    name: str
    capacity_bytes: int  # total memory as NVML reports it
    source: str  # "--gpus" or "nvml"


def parse_gpus(spec: str) -> list[GpuSpec]:
    """`1xH100-80GB`, `2x80GiB`, `H200`, `1xH100-80GB,1xA100-40GB` → one GpuSpec per card."""
    cards: list[GpuSpec] = []
    for part in (p for p in spec.split(",") if p.strip()):
        match = _SPEC.match(part)
        count = int(match.group(1) or 1) if match else 0
        what = match.group(2) if match else ""
        if count <= 0 or count > 64:
            raise UsageError(f"--gpus {spec!r}: cannot read a GPU count", hint="Use e.g. 1xH100-80GB or 2x80GiB.")
        capacity = _capacity(what)
        if capacity is None:
            known = ", ".join(sorted(KNOWN_GPUS)[:8])
            raise UsageError(f"--gpus {spec!r}: unknown GPU {what!r}",
                             hint=f"Give a size (2x80GiB, 1x24GB) or a known name ({known}, ...).")
        for _ in range(count):
            cards.append(GpuSpec(len(cards), what, capacity, "--gpus"))
    if not cards:
        raise UsageError(f"--gpus {spec!r} names no GPU", hint="Use e.g. 1xH100-80GB or 2x80GiB.")
    return cards


def _capacity(what: str) -> int | None:
    size = _SIZE.match(what)
    if size:
        number, unit = float(size.group(1)), size.group(2).lower()
        return int(number * (1 << 30)) if unit in ("gib", "g") else int(number * 10**9)
    key = what.upper().replace("NVIDIA", "").replace(" ", "-").strip("-")
    if key in KNOWN_GPUS:
        return KNOWN_GPUS[key] * MIB
    for name, mib in KNOWN_GPUS.items():  # "H100-80GB-HBM3" and similar marketing suffixes
        if key.startswith(name) and "-" in name:
            return mib * MIB
    return None


def gpus_from_nvml(facts: Any) -> list[GpuSpec]:
    """Adapt the NVML probe's facts (a dataclass or mapping with a list of GPUs) without depending on its
    exact class: each GPU needs a name and a total memory in bytes."""
    if facts is None:
        return []
    items = facts.get("gpus") if isinstance(facts, dict) else getattr(facts, "gpus", None)
    out = []
    for i, gpu in enumerate(items or []):
        get = gpu.get if isinstance(gpu, dict) else (lambda k, g=gpu: getattr(g, k, None))
        total = next((get(k) for k in ("memory_total_bytes", "total_bytes", "memory_total", "total_memory_bytes")
                      if get(k)), None)
        if not total:
            continue
        index = get("index")
        out.append(GpuSpec(int(index) if index is not None else i, str(get("name") or f"GPU {i}"), int(total),
                           "nvml"))
    return out


def assumed_flops(gpu_name: str, quant: str) -> float:
    """Rough sustained FLOP/s for prefill; bnb dequantizes every weight per matmul, so halve it."""
    rate = next((v for k, v in ASSUMED_BF16_FLOPS.items() if k in gpu_name.upper()), 100e12)
    return rate * (0.5 if quant != "none" else 1.0)
