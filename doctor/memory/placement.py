"""Which device holds which module: transformers' own `device_map="auto"` decision, replayed in pure Python.

`from_pretrained(device_map="auto")` calls `transformers.integrations.accelerate._get_device_map`, which
(transformers 5.x, accelerate 1.x):

1. takes the user's `max_memory`, or every GPU's free memory (`torch.cuda.mem_get_info`) plus 90 % of the
   available RAM as "cpu" when there is none (`get_max_memory`);
2. balances (`get_balanced_memory`): with one GPU and no user `max_memory` it keeps 90 % of that GPU's free
   memory; with n GPUs every GPU but the last is capped at total/n + 1.25 × max(biggest no-split module,
   biggest leaf);
3. lets the quantizer adjust the budgets (`adjust_max_memory`: bitsandbytes 4- and 8-bit scale EVERY budget,
   the user's too, by 0.9);
4. places modules in model order (`infer_auto_device_map`): whole no-split modules (decoder layers), other
   modules split into children when they do not fit, tied parameters kept with their partner, room for the
   largest remaining layer kept on the first GPU and on the CPU (the "main devices", for offloaded layers),
   then GPUs, "cpu" (only where it has a budget) and "disk";
5. bitsandbytes then refuses any map with "cpu" or "disk" in it (`validate_environment`, ValueError).

`transformers_device_map` replays steps 1-4 over the inventory `doctor.memory.module_tree.placement_tree`
reads from the meta model in the child process (sizes from transformers' own `compute_module_sizes`), so
it is exact and cheap enough to re-run for every context the estimator tries. tests/
test_placement_vs_transformers.py compares it with `_get_device_map` itself. Where that inventory is
missing (analytic sizing), `place_blocks` applies the same rules to the flat block list.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

CPU = -1  # in a block placement: not on any GPU (CPU or disk offload)
GIB = 1 << 30
# What torch.cuda.mem_get_info reports as free right after from_pretrained creates the CUDA context:
# NVML's total minus the driver's hidden reserve (~0.5 GiB) minus the fresh context (0.51 GiB measured on an
# H200, torch 2.11 / CUDA 13.0). accelerate takes that as the GPU's budget when no max_memory is given.
DRIVER_RESERVED = int(0.5 * GIB)
CONTEXT_AT_LOAD = int(0.51 * GIB)
BALANCE_BUFFER = 1.25  # get_balanced_memory's padding factor
SINGLE_GPU_SHARE = 0.9  # get_balanced_memory: one GPU, no user max_memory → 90 % of its free memory
CPU_SHARE = 0.9  # transformers' get_max_memory: 90 % of the available RAM when max_memory is not given
BNB_BUDGET_SCALE = (
    0.9  # bitsandbytes' adjust_max_memory (used only when the inventory lacks the quantizer's own)
)

Device = int | str  # GPU index, "cpu" or "disk"


class UnsupportedPlacement(Exception):
    """A branch of transformers' placement this replay does not model (the caller falls back)."""


def free_at_load(capacity_bytes: int) -> int:
    """accelerate's budget for a GPU of this NVML capacity when the user gives no max_memory."""
    return max(capacity_bytes - DRIVER_RESERVED - CONTEXT_AT_LOAD, 0)


# ---------------------------------------------------------------- steps 1-3: the budgets


def _max_memory(
    max_memory: Mapping[Device, float] | None, gpu_free: Mapping[int, int], cpu_free: int | None
) -> dict[Device, float]:
    """get_max_memory: GPUs in index order, then cpu/disk; without max_memory, free memory + 90 % of RAM."""
    if max_memory is None:
        out: dict[Device, float] = {i: gpu_free[i] for i in sorted(gpu_free)}
        if cpu_free is not None:
            out["cpu"] = cpu_free * CPU_SHARE
        return out
    gpus = sorted(k for k in max_memory if isinstance(k, int))
    return {k: max_memory[k] for k in [*gpus, *(k for k in ("mps", "cpu", "disk") if k in max_memory)]}


def _balanced(
    tree: Mapping[str, Any], budgets: dict[Device, float], user_not_set: bool, low_zero: bool
) -> dict[Device, float]:
    """get_balanced_memory, line for line."""
    num_devices = len([d for d, v in budgets.items() if d not in ("cpu", "disk") and v > 0])
    if num_devices == 0:
        return budgets
    if num_devices == 1:
        low_zero = False
        if user_not_set:
            for key in budgets:
                if isinstance(key, int):
                    budgets[key] *= SINGLE_GPU_SHARE
                    break
    total = tree["sizes"].get("", 0)
    per_gpu = total // (num_devices - 1 if low_zero else num_devices)
    per_gpu += int(BALANCE_BUFFER * max(tree.get("biggest_no_split", 0), tree.get("biggest_leaf", 0)))
    gpus = sorted(d for d, v in budgets.items() if isinstance(d, int) and v > 0)
    for idx in gpus[:-1]:
        budgets[idx] = min(budgets[0] if low_zero and idx == 0 else per_gpu, budgets[idx])
    if low_zero:
        min_zero = max(0, total - sum(budgets[i] for i in range(1, num_devices)))
        budgets[0] = min(min_zero, budgets[0])
    return budgets


def effective_budgets(
    tree: Mapping[str, Any],
    max_memory: Mapping[Device, float] | None = None,
    *,
    gpu_free: Mapping[int, int] | None = None,
    cpu_free: int | None = None,
    strategy: str = "auto",
) -> dict[Device, float]:
    """The max_memory transformers hands to infer_auto_device_map (steps 1-3 of the module doc)."""
    budgets = _max_memory(max_memory, gpu_free or {}, cpu_free)
    if strategy != "sequential":
        budgets = _balanced(tree, budgets, max_memory is None, strategy == "balanced_low_0")
    scale = tree.get("quantizer_scales_budgets")
    if scale is not None:
        budgets = {k: v * scale for k, v in budgets.items()}
    return budgets


# ---------------------------------------------------------------- step 4: infer_auto_device_map


def _is_module(node: Mapping[str, Any]) -> bool:
    return node.get("kind", "module") == "module"


def _unsplittable(node: Mapping[str, Any], no_split: set[str]) -> bool:
    return not _is_module(node) or not node.get("has_children") or node.get("class") in no_split


def _split(node: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A module replaced by its own parameters, then its children (infer_auto_device_map's order)."""
    params = [(p, {"name": p, "kind": "param"}) for p in node.get("params", [])]
    return params + [(c["name"], c) for c in node.get("children", [])]


def _max_layer_size(
    items: Sequence[tuple[str, Mapping[str, Any]]], sizes: Mapping[str, float], no_split: set[str]
) -> tuple[float, list[str]]:
    """accelerate's get_max_layer_size: the biggest unsplittable unit among these (children only, not own params)."""
    max_size: float = 0
    names: list[str] = []
    todo = list(items)
    while todo:
        name, node = todo.pop(0)
        if _unsplittable(node, no_split):
            size = sizes.get(name, 0)
            if size > max_size:
                max_size, names = size, [name]
            elif size == max_size:
                names.append(name)
        else:
            todo = [(c["name"], c) for c in node.get("children", [])] + todo
    return max_size, names


def _size_with_ties(
    tied_params: list[str],
    module_size: float,
    sizes: Mapping[str, float],
    todo: list[tuple[str, dict[str, Any]]],
) -> tuple[float, list[str], list[dict[str, Any]]]:
    """transformers' get_module_size_with_ties (adds each partner module once, subtracts nothing)."""
    if not tied_params:
        return module_size, [], []
    names: list[str] = []
    nodes: list[dict[str, Any]] = []
    total = module_size
    for tied_param in tied_params:
        index = next(
            i for i, (n, _) in enumerate(todo) if tied_param.startswith(n + ".")
        )  # transformers: IndexError
        name = todo[index][0]
        if name not in names:
            names.append(name)
            nodes.append(todo[index][1])
            total += sizes.get(name, 0)
    return total, names, nodes


def _clean_device_map(device_map: dict[str, Device], module_name: str = "") -> dict[str, Device]:
    """accelerate's clean_device_map: a subtree whose parts all sit on one device becomes one entry."""
    prefix = "" if module_name == "" else f"{module_name}."
    values = [v for k, v in device_map.items() if k.startswith(prefix)]
    if len(set(values)) == 1 and len(values) > 1:
        for k in [k for k in device_map if k.startswith(prefix)]:
            del device_map[k]
        device_map[module_name] = values[0]
    children = [k for k in device_map if k.startswith(prefix) and len(k) > len(module_name)]
    depth = len(module_name.split(".")) + 1 if module_name else 1
    for child in sorted({".".join(k.split(".")[:depth]) for k in children}):
        _clean_device_map(device_map, child)
    return device_map


def infer_device_map(tree: Mapping[str, Any], budgets: Mapping[Device, float]) -> dict[str, Device]:
    """transformers' infer_auto_device_map over the inventory, with these (already adjusted) budgets."""
    sizes: Mapping[str, float] = tree["sizes"]
    no_split = set(tree.get("no_split_modules") or [])
    tied_parameters: list[list[str]] = tree.get("tied_parameters") or [[]]
    no_placement = tree.get("no_placement_params")
    max_memory = dict(_max_memory(budgets, {}, None))
    devices: list[Device] = list(max_memory)
    if "disk" not in devices:
        devices.append("disk")
    gpus = [d for d in devices if d not in ("cpu", "disk")]
    main_devices: list[Device] = ["mps"] if "mps" in gpus else ([gpus[0], "cpu"] if gpus else ["cpu"])
    root = tree["root"]
    todo: list[tuple[str, dict[str, Any]]] = (
        [(p, {"name": p, "kind": "param"}) for p in root.get("params", [])]
        + [(c["name"], c) for c in root.get("children", [])]
        + [(b, {"name": b, "kind": "buffer"}) for b in root.get("buffers", [])]
    )

    device_map: OrderedDict[str, Device] = OrderedDict()
    current = 0
    used: dict[Device, float] = dict.fromkeys(devices, 0)
    max_layer, max_layer_names = _max_layer_size(todo, sizes, no_split)
    while todo:
        name, node = todo.pop(0)
        max_layer_names = [n for n in max_layer_names if n != name and not n.startswith(name + ".")]
        if not max_layer_names:
            max_layer, max_layer_names = _max_layer_size(
                [x for x in todo if _is_module(x[1])], sizes, no_split
            )
        module_size = sizes.get(name, 0)
        groups = [
            g
            for g in tied_parameters
            if any(name + "." in k + "." for k in g) and not all(name + "." in k + "." for k in g)
        ]
        tied_params = [p for g in groups for p in g if name + "." not in p + "."]
        device = devices[current]
        limit = max_memory[device] if device != "disk" else None
        reserved: float = 0
        if device in main_devices and limit is not None:
            limit -= max_layer
            reserved = max_layer
        size_with_ties, tied_names, tied_nodes = _size_with_ties(tied_params, module_size, sizes, todo)
        if limit is None or used[device] + size_with_ties <= limit:
            used[device] += size_with_ties
            device_map[name] = device
            for tied_name in tied_names:
                if tied_name in [n for n, _ in todo]:
                    todo.pop(next(i for i, (n, _) in enumerate(todo) if n == tied_name))
                device_map[tied_name] = device
            continue
        if tied_params and used[device] + module_size <= limit:
            split_happened = False
            for tied_name, tied_node in zip(tied_names, tied_nodes):
                if _unsplittable(tied_node, no_split):
                    continue
                index = next(i for i, (n, _) in enumerate(todo) if n == tied_name)
                todo = [(name, node), *todo[:index], *_split(tied_node), *todo[index + 1 :]]
                max_layer, max_layer_names = _max_layer_size(
                    [x for x in todo if _is_module(x[1])], sizes, no_split
                )
                split_happened = True
                break
            if split_happened:
                continue
        if _unsplittable(node, no_split):
            if no_placement is not None and _is_module(node) and node.get("class") in no_split:
                raise UnsupportedPlacement("a no-split module with _no_placement_params")
        else:
            todo = _split(node) + todo
            max_layer, max_layer_names = _max_layer_size(
                [x for x in todo if _is_module(x[1])], sizes, no_split
            )
            continue
        used[device] += reserved
        current += 1
        todo = [(name, node), *todo]
    if no_placement is None:
        _clean_device_map(device_map)
    return dict(device_map)


def transformers_device_map(
    tree: Mapping[str, Any],
    max_memory: Mapping[Device, float] | None = None,
    *,
    gpu_free: Mapping[int, int] | None = None,
    cpu_free: int | None = None,
    strategy: str = "auto",
) -> dict[str, Device]:
    """What `_get_device_map(model, strategy, max_memory, quantizer)` returns, from the inventory.

    `max_memory` in bytes as the user passes it (None: transformers reads each GPU's free memory, given
    here as `gpu_free`, and the RAM, `cpu_free`; without `cpu_free` there is no "cpu" entry and what the
    GPUs cannot hold goes to "disk" — the GPUs' share is the same either way)."""
    budgets = effective_budgets(tree, max_memory, gpu_free=gpu_free, cpu_free=cpu_free, strategy=strategy)
    return infer_device_map(tree, budgets)


# ---------------------------------------------------------------- the estimator's view: GPU per block


def device_of(device_map: Mapping[str, Device], name: str) -> Device:
    """The device of a module under this (cleaned) map: its own entry or its closest ancestor's; for a module
    the map splits, off-GPU if any part is, else the first part's GPU."""
    best: str | None = None
    for key in device_map:
        if (key == "" or name == key or name.startswith(key + ".")) and (
            best is None or len(key) > len(best)
        ):
            best = key
    if best is not None:
        return device_map[best]
    parts = [v for k, v in device_map.items() if k.startswith(name + ".")]
    off = [v for v in parts if not isinstance(v, int)]
    return off[0] if off else (parts[0] if parts else "disk")


def place_like_transformers(
    sizing: Mapping[str, Any],
    gpus: Sequence[tuple[int, int]],
    max_memory: Mapping[int, int] | None,
    quant: str = "none",
    strategy: str = "auto",
) -> list[int]:
    """Position in `gpus` ((index, NVML capacity) per GPU) of each of `sizing["blocks"]`, CPU for cpu/disk.

    Uses the inventory from the meta model when the sizing has it (exact); else `place_blocks` on the
    blocks. `max_memory`: the user's GPU budgets in bytes, or None for accelerate's free-memory default;
    `strategy`: the --device-map string (auto, balanced, balanced_low_0, sequential)."""
    blocks = sizing.get("blocks") or []
    if not gpus:
        return [CPU] * len(blocks)
    tree = sizing.get("placement_tree")
    if tree:
        try:
            device_map = _cached_map(tree, max_memory, gpus, strategy)
            position = {index: pos for pos, (index, _) in enumerate(gpus)}
            out = []
            for block in blocks:
                device = device_of(device_map, "" if block["name"] == "(root)" else block["name"])
                out.append(position.get(device, CPU) if isinstance(device, int) else CPU)
            return out
        except Exception:  # noqa: BLE001, S110 - an unmodelled branch or an odd inventory: use the block rules
            pass
    if max_memory is not None:
        budgets = [int(max_memory.get(index, 0)) for index, _ in gpus]
    else:
        budgets = [free_at_load(capacity) for _, capacity in gpus]
    return place_blocks(
        [bl["bytes"] for bl in blocks],
        budgets,
        user_budgets=max_memory is not None,
        quantized=quant.startswith("bnb"),
        balanced=strategy != "sequential",
    )


def placement_summary(
    sizing: Mapping[str, Any],
    gpus: Sequence[tuple[int, int]],
    max_memory: Mapping[int, int] | None,
    quant: str = "none",
    strategy: str = "auto",
) -> dict[str, Any]:
    """For the report: how the placement was decided and what transformers would put off the GPUs (with
    bitsandbytes it then refuses to load: "Some modules are dispatched on the CPU or the disk")."""
    tree = sizing.get("placement_tree")
    if tree and gpus:
        try:
            device_map = _cached_map(tree, max_memory, gpus, strategy)
            return {
                "method": "transformers' device_map rules over the module inventory",
                "device_map": device_map,
                "offloaded": {k: v for k, v in device_map.items() if not isinstance(v, int)},
            }
        except Exception:  # noqa: BLE001, S110 - fall through to the block rules
            pass
    per_block = place_like_transformers(sizing, gpus, max_memory, quant, strategy)
    return {
        "method": "transformers' device_map rules over the weight blocks (no module inventory)",
        "device_map": None,
        "offloaded": {
            b["name"]: "cpu/disk" for b, g in zip(sizing.get("blocks") or [], per_block) if g == CPU
        },
    }


_CACHE: dict[tuple[int, Any, Any, str], tuple[Mapping[str, Any], dict[str, Device]]] = {}


def _cached_map(
    tree: Mapping[str, Any],
    max_memory: Mapping[int, int] | None,
    gpus: Sequence[tuple[int, int]],
    strategy: str = "auto",
) -> dict[str, Device]:
    """The estimator asks for the same placement at every context it tries: compute it once."""
    key = (
        id(tree),
        tuple(sorted(max_memory.items())) if max_memory is not None else None,
        tuple(gpus),
        strategy,
    )
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is tree:
        return hit[1]
    if max_memory is not None:
        user: dict[Device, float] = {k: v for k, v in max_memory.items()}
        device_map = transformers_device_map(tree, user, strategy=strategy)
    else:
        device_map = transformers_device_map(
            tree, None, gpu_free={i: free_at_load(c) for i, c in gpus}, strategy=strategy
        )
    if len(_CACHE) > 64:
        _CACHE.clear()
    _CACHE[key] = (tree, device_map)
    return device_map


def place_blocks(
    block_bytes: Sequence[int],
    budgets: Sequence[int],
    *,
    user_budgets: bool = True,
    quantized: bool = False,
    balanced: bool = True,
) -> list[int]:
    """GPU position per block (CPU = -1 for what goes to cpu/disk) by transformers' rules on a flat block list.

    The fallback when there is no module inventory: blocks are the no-split modules and top-level leaves in
    model order. `budgets` per GPU position (0 = not given to transformers); `user_budgets` False means they are
    free memory (one GPU then keeps 90 %); `quantized` applies bitsandbytes' 0.9. Balanced like "auto":
    every active GPU but the last capped at total/n + 1.25 × the biggest block; the first active GPU keeps
    room for the biggest block still to place."""
    active = [g for g, b in enumerate(budgets) if b > 0]
    if not active:
        return [CPU] * len(block_bytes)
    caps: list[float] = [float(b) for b in budgets]
    if balanced:  # "sequential" skips get_balanced_memory entirely
        if len(active) == 1 and not user_budgets:
            caps[active[0]] *= SINGLE_GPU_SHARE
        share = sum(block_bytes) // len(active) + int(BALANCE_BUFFER * max(block_bytes, default=0))
        for g in active[:-1]:
            caps[g] = min(caps[g], share)
    if quantized:
        caps = [c * BNB_BUDGET_SCALE for c in caps]
    later_max = [0] * len(block_bytes)  # the largest block after position i
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


def decoder_layer_gpus(
    blocks: Sequence[dict[str, Any]], placement: Sequence[int], no_split: Sequence[str]
) -> list[int]:
    """GPU of each decoder layer, in layer order (the KV and the layer's transient live there)."""
    layer_classes = set(no_split)
    return [gpu for block, gpu in zip(blocks, placement) if block.get("class") in layer_classes]
