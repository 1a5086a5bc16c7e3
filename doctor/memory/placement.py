"""Which GPU holds which block, the way transformers' `device_map="auto"` would place it.

transformers turns "auto" into accelerate's "balanced" plan when there are several GPUs
(`get_balanced_memory`: about total/n per GPU plus room for the largest block, the last GPU takes the
rest) and fills devices in model order with whole no-split blocks (decoder layers). Pure Python: it
works on the per-block byte sizes the skeleton measured, so it can be re-run cheaply for every context.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

CPU = -1


def place_blocks(block_bytes: Sequence[int], budgets: Sequence[int]) -> list[int]:
    """GPU index per block (CPU = -1 for what does not fit on any GPU), sequential like accelerate."""
    n = len(budgets)
    if n == 0:
        return [CPU] * len(block_bytes)
    total = sum(block_bytes)
    largest = max(block_bytes, default=0)
    if n == 1:
        caps = [budgets[0]]
    else:
        share = math.ceil(total / n) + largest  # accelerate get_balanced_memory: mean share + one block of slack
        caps = [min(b, share) for b in budgets[:-1]] + [budgets[-1]]
    placement: list[int] = []
    gpu, used = 0, 0
    for size in block_bytes:
        while gpu < n and used + size > caps[gpu]:
            gpu, used = gpu + 1, 0
        if gpu >= n:
            placement.append(CPU)
            continue
        placement.append(gpu)
        used += size
    return placement


def decoder_layer_gpus(blocks: Sequence[dict[str, Any]], placement: Sequence[int],
                       no_split: Sequence[str]) -> list[int]:
    """GPU of each decoder layer, in layer order (the KV and the layer's transient live there)."""
    layer_classes = set(no_split)
    return [gpu for block, gpu in zip(blocks, placement) if block.get("class") in layer_classes]
