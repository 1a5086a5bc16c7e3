"""Which GPUs the run gets: `--gpus 1xH100-80GB`, `2x80GiB`, `4xA100-40GB`, `1xA6000`, or NVML's list.

Capacities are what NVML reports as total memory (nvidia-smi's "MiB" column), because that is
what the default (no --gpus) path reads too; the driver's hidden reserve is part of the overhead.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from run_plan.errors import UsageError

MIB = 1 << 20
GIB = 1 << 30
# NVML memory.total (nvidia-smi, MiB) of the cards people rent, by marketed size in GB. The first size is
# the default when a name is given without one (`A100` = the 80 GB card, the one clouds rent today).
# Compact names: upper case, no spaces or hyphens ("RTX 4090" → RTX4090); form factors with the same
# memory (SXM, PCIe) share a row. H100-80GB = 81559 MiB on both SXM and PCIe.
CARDS: dict[str, dict[int, int]] = {
    "A10G": {24: 23028},
    "A10": {24: 23028},
    "L4": {24: 23034},
    "L40S": {48: 46068},
    "L40": {48: 46068},
    "A100": {80: 81920, 40: 40960},
    "H100": {80: 81559, 94: 95830},
    "H100NVL": {94: 95830},
    "H200": {141: 143771},
    "GH200": {96: 97871},
    "B200": {180: 183359},
    "RTX4090": {24: 24564},
    "RTX5090": {32: 32607},
    "RTXA6000": {48: 49140},
    "RTX3090": {24: 24576},
    "V100": {16: 16384, 32: 32768},
    "T4": {16: 15360},
}
# CUDA compute capability of each card in CARDS (NVIDIA's CUDA GPUs table): what the plan's kernel choice
# needs when the card is named in --gpus rather than seen through NVML.
CAPABILITY: dict[str, tuple[int, int]] = {
    "A10G": (8, 6),
    "A10": (8, 6),
    "L4": (8, 9),
    "L40S": (8, 9),
    "L40": (8, 9),
    "A100": (8, 0),
    "H100": (9, 0),
    "H100NVL": (9, 0),
    "H200": (9, 0),
    "GH200": (9, 0),
    "B200": (10, 0),
    "RTX4090": (8, 9),
    "RTX5090": (12, 0),
    "RTXA6000": (8, 6),
    "RTX3090": (8, 6),
    "V100": (7, 0),
    "T4": (7, 5),
}
# Same card, other spelling (after compacting): the form factor does not change the memory.
ALIASES: dict[str, str] = {
    "A6000": "RTXA6000",
    "4090": "RTX4090",
    "5090": "RTX5090",
    "3090": "RTX3090",
    "H100SXM": "H100",
    "H100SXM5": "H100",
    "H100PCIE": "H100",
    "A100SXM": "A100",
    "A100SXM4": "A100",
    "A100PCIE": "A100",
    "H200SXM": "H200",
    "B200SXM": "B200",
    "GEFORCERTX4090": "RTX4090",
    "GEFORCERTX5090": "RTX5090",
}
# Words in NVML names and marketing that do not identify the card ("NVIDIA H100 80GB HBM3").
_NOISE = {"NVIDIA", "HBM3", "HBM3E", "HBM2", "HBM2E", "TENSOR", "CORE", "GPU"}
# The largest single GPU is well under this; a bigger number is a typo (e.g. `1x4090` meant RTX 4090).
_MAX_GIB = 1024
_MAX_COUNT = 64

# Sustained bf16 tensor throughput we assume for the rough prefill-time estimate (~40% of dense peak).
ASSUMED_BF16_FLOPS: dict[str, float] = {
    "H100": 0.4 * 989e12,
    "H200": 0.4 * 989e12,
    "GH200": 0.4 * 989e12,
    "B200": 0.4 * 2250e12,
    "A100": 0.4 * 312e12,
    "L40": 0.4 * 362e12,
    "L4": 0.4 * 121e12,
    "A10": 0.4 * 125e12,
    "4090": 0.4 * 165e12,
    "3090": 0.4 * 71e12,
    "5090": 0.4 * 209e12,
    "V100": 0.4 * 125e12,
    "T4": 0.4 * 65e12,
}
_SPEC = re.compile(r"^\s*(?:(\d+)\s*[xX×*]\s*)?(.+?)\s*$")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(GiB|GB|G)?$", re.IGNORECASE)
_MEMORY_TOKEN = re.compile(r"^(\d+)(GB|G|GIB)$")

ACCEPTED_FORMS = (
    "NxNAME (1xH100-80GB, 4xA100-40GB, 1xA6000, 2xRTX-4090), NxSIZE (2x80GiB, 1x24GB; "
    "a bare 2x80 means GiB), or a comma-separated mix (1xH100-80GB,1xA100-40GB)"
)


@dataclass(frozen=True)
class GpuSpec:
    index: int
    name: str
    capacity_bytes: int  # total memory as NVML reports it
    source: str  # "--gpus" or "nvml"
    compute_capability: tuple[int, int] | None = None  # None: a card given by its size only


def capability_of(what: str) -> tuple[int, int] | None:
    """The compute capability of a card named like `H100-80GB` or NVML's "NVIDIA H100 80GB HBM3"."""
    name, _ = _split_name(what)
    return CAPABILITY.get(name) or CAPABILITY.get(ALIASES.get(name, ""))


def known_gpu_names() -> list[str]:
    """The names `--gpus` accepts, one spelling each, with their sizes: "A100-40GB", "A100-80GB", "L4", ..."""
    names = []
    for name, sizes in CARDS.items():
        names += [f"{name}-{gb}GB" for gb in sizes] if len(sizes) > 1 else [name]
    return names


def parse_gpus(spec: str) -> list[GpuSpec]:
    """`1xH100-80GB`, `2x80GiB`, `H200`, `1xH100-80GB,1xA100-40GB` → one GpuSpec per card.

    Raises UsageError (exit 2) naming the part it cannot read and the forms it accepts."""
    cards: list[GpuSpec] = []
    for part in (p for p in spec.split(",") if p.strip()):
        match = _SPEC.match(part)
        if not match:
            raise _bad(spec, f"cannot read {part.strip()!r}")
        count, what = int(match.group(1) or 1), match.group(2)
        if not 0 < count <= _MAX_COUNT:
            raise _bad(spec, f"GPU count {count} is not between 1 and {_MAX_COUNT}")
        try:
            capacity = gpu_capacity_bytes(what)
        except UsageError as exc:  # name the whole --gpus value, not only the part
            raise _bad(spec, exc.message.split(": ", 1)[-1]) from None
        capability = None if _is_size(what) else capability_of(what)
        for _ in range(count):
            cards.append(GpuSpec(len(cards), what, capacity, "--gpus", capability))
    if not cards:
        raise _bad(spec, "names no GPU")
    return cards


def _is_size(what: str) -> bool:
    size = _SIZE.match(what.strip())
    # `1x4090`: the card, not 4090 GiB
    return bool(size) and not (size is not None and not size.group(2) and size.group(1) in ALIASES)


def gpu_capacity_bytes(what: str) -> int:
    """NVML-total bytes of one card given as a size (`80GiB`, `24GB`, `80`) or a name (`H100-80GB`)."""
    size = _SIZE.match(what.strip()) if _is_size(what) else None
    if size:
        number, unit = float(size.group(1)), (size.group(2) or "GiB").lower()
        if not 0 < number <= _MAX_GIB:
            raise _bad(
                what,
                f"{size.group(1)} is not a GPU memory size in GiB"
                + (f" (did you mean RTX-{size.group(1)}?)" if f"RTX{size.group(1)}" in CARDS else ""),
            )
        return int(number * GIB) if unit in ("gib", "g") else int(number * 10**9)
    name, gb = _split_name(what)
    card = CARDS.get(name) or CARDS.get(ALIASES.get(name, ""))
    if card is None:
        near = difflib.get_close_matches(name, [*CARDS, *ALIASES], n=1, cutoff=0.6)
        return _raise_unknown(what, f" (did you mean {near[0]}?)" if near else "")
    if gb is None:
        return next(iter(card.values())) * MIB
    if gb not in card:
        raise _bad(what, f"{name} comes with {' or '.join(f'{g} GB' for g in card)}, not {gb} GB")
    return card[gb] * MIB


def _split_name(what: str) -> tuple[str, int | None]:
    """ "NVIDIA H100 80GB HBM3" → ("H100", 80); "RTX-4090" → ("RTX4090", None); "H100-80G" → ("H100", 80)."""
    tokens = [t for t in re.split(r"[\s_\-]+", what.upper()) if t and t not in _NOISE]
    gb = None
    kept = []
    for token in tokens:
        memory = _MEMORY_TOKEN.match(token)
        if memory:
            gb = int(memory.group(1))
        else:
            kept.append(token)
    return "".join(kept), gb


def _raise_unknown(what: str, suggestion: str) -> int:
    raise _bad(what, f"unknown GPU {what.strip()!r}{suggestion}")


def _bad(spec: str, problem: str) -> UsageError:
    return UsageError(
        f"--gpus {spec.strip()!r}: {problem}",
        hint=f"Accepted: {ACCEPTED_FORMS}. Known names: {', '.join(known_gpu_names())}.",
    )


def gpus_from_nvml(facts: Any) -> list[GpuSpec]:
    """Adapt the NVML probe's facts (a dataclass or mapping with a list of GPUs) without depending on its
    exact class: each GPU needs a name and a total memory in bytes."""
    if facts is None:
        return []
    items = facts.get("gpus") if isinstance(facts, dict) else getattr(facts, "gpus", None)
    out = []
    for i, gpu in enumerate(items or []):
        get = gpu.get if isinstance(gpu, dict) else (lambda k, g=gpu: getattr(g, k, None))
        total = next(
            (
                get(k)
                for k in ("memory_total_bytes", "total_bytes", "memory_total", "total_memory_bytes")
                if get(k)
            ),
            None,
        )
        if not total:
            continue
        index = get("index")
        capability = get("compute_capability")
        out.append(
            GpuSpec(
                int(index) if index is not None else i,
                str(get("name") or f"GPU {i}"),
                int(total),
                "nvml",
                (int(capability[0]), int(capability[1])) if capability else None,
            )
        )
    return out


def assumed_flops(gpu_name: str, quant: str) -> float:
    """Rough sustained FLOP/s for prefill; bnb dequantizes every weight per matmul, so halve it."""
    rate = next((v for k, v in ASSUMED_BF16_FLOPS.items() if k in gpu_name.upper()), 100e12)
    return rate * (0.5 if quant != "none" else 1.0)
