"""Which GPU holds which block, the way transformers' `device_map="auto"` would place it.

transformers turns "auto" into accelerate's "balanced" plan when there are several GPUs
(`get_balanced_memory`: about total/n per GPU plus room for the largest block, the last GPU takes the
rest) and fills devices in model order with whole no-split blocks (decoder layers). Pure Python: it
works on the per-block byte sizes the skeleton measured, so it can be re-run cheaply for every context.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CPU = -1


BALANCE_BUFFER = 1.25  # get_balanced_memory: each GPU but the last gets total/n + 1.25 × the biggest block


def place_blocks(block_bytes: Sequence[int], budgets: Sequence[int]) -> list[int]:
    """GPU index per block (CPU = -1 for what does not fit on any GPU), sequential like accelerate.

    Mirrors transformers' `_get_device_map("auto")` (checked against it on a meta Scout-shaped model,
    benchmarks/multi_gpu_sweep.py): a GPU with budget 0 (not named in --max-memory) gets nothing; with
    several GPUs each but the last is capped at the balanced share; and the first GPU, accelerate's
    "main device", keeps room for the largest block still to place (for a possibly offloaded layer),
    so it holds one layer fewer than a plain fill would."""
    active = [g for g, b in enumerate(budgets) if b > 0]
    if not active:
        return [CPU] * len(block_bytes)
    total = sum(block_bytes)
    largest = max(block_bytes, default=0)
    caps = list(budgets)
    if len(active) > 1:
        share = total // len(active) + int(BALANCE_BUFFER * largest)
        for g in active[:-1]:
            caps[g] = min(budgets[g], share)
    # largest block after position i (accelerate's max_layer_size once block i is taken)
    later_max = [0] * len(block_bytes)
    for i in range(len(block_bytes) - 2, -1, -1):
        later_max[i] = max(block_bytes[i + 1], later_max[i + 1])
    main = active[0]
    placement: list[int] = []
    slot, used = 0, 0
    for i, size in enumerate(block_bytes):
        while slot < len(active):
            gpu = active[slot]
            reserve = later_max[i] if gpu == main else 0
            if used + size <= caps[gpu] - reserve:
                break
            slot, used = slot + 1, 0
        if slot >= len(active):
            placement.append(CPU)
            continue
        placement.append(active[slot])
        used += size
    return placement


def decoder_layer_gpus(blocks: Sequence[dict[str, Any]], placement: Sequence[int],
                       no_split: Sequence[str]) -> list[int]:
    """GPU of each decoder layer, in layer order (the KV and the layer's transient live there)."""
    layer_classes = set(no_split)
    return [gpu for block, gpu in zip(blocks, placement) if block.get("class") in layer_classes]
