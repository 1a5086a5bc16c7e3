"""The facts transformers' `device_map="auto"` decides on, read from a meta model (child process only).

`placement_tree(model, quantization_config, prequantized)` runs where torch and transformers are
imported (the meta-skeleton child). It records what transformers' own `_get_device_map` reads — the
module tree down to the no-split modules, every size as transformers' `compute_module_sizes` gives it
(with the quantizer's `param_element_size`: 0.5 byte per 4-bit weight, 1 per int8), the tied-parameter
groups and the two sizes `get_balanced_memory` pads each GPU with — as plain JSON. The doctor process then
replays the placement in pure Python (`doctor.memory.placement.transformers_device_map`), as often as it
needs, without torch.
"""

from __future__ import annotations

from typing import Any

TREE_VERSION = 1


def _quantizer(quantization_config: Any, prequantized: bool) -> Any:
    if quantization_config is None:
        return None
    from transformers.quantizers.auto import AutoHfQuantizer

    return AutoHfQuantizer.from_config(quantization_config, pre_quantized=prequantized)


def _node(name: str, module: Any, no_split: set[str]) -> dict[str, Any]:
    """One module: class, own parameters (full names, in order) and children — not below a no-split module,
    whose inside transformers never looks at when placing."""
    children = list(module.named_children())
    node: dict[str, Any] = {"name": name, "class": type(module).__name__, "has_children": bool(children)}
    if type(module).__name__ in no_split or not children:
        return node
    prefix = f"{name}." if name else ""
    node["params"] = [prefix + n for n, _ in module.named_parameters(recurse=False)]
    node["children"] = [_node(prefix + n, child, no_split) for n, child in children]
    return node


def _tied_groups(model: Any) -> list[list[str]]:
    """transformers' `_init_infer_auto_device_map`: one sorted group per tie target."""
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
    if not tied:
        return [[]]
    return [sorted([k for k, v in tied.items() if v == target] + [target]) for target in set(tied.values())]


def placement_tree(model: Any, quantization_config: Any = None, prequantized: bool = False) -> dict[str, Any]:
    """JSON-able inventory for `doctor.memory.placement.transformers_device_map` (see module doc)."""
    from transformers.integrations.accelerate import compute_module_sizes

    hf_quantizer = _quantizer(quantization_config, prequantized)
    sizes, leaves = compute_module_sizes(model, hf_quantizer, only_modules=False)
    no_split = set(getattr(model, "_no_split_modules", None) or [])
    no_split_names = [n for n, m in model.named_modules() if type(m).__name__ in no_split]
    root = _node("", model, no_split)
    root["buffers"] = [n for n, _ in model.named_buffers(recurse=False)]
    named = _names(root)  # the placement only ever asks for the size of a unit in the tree
    return {
        "version": TREE_VERSION,
        "root": root,
        "sizes": {k: v for k, v in sizes.items() if v and k in named},
        "no_split_modules": sorted(no_split),
        "biggest_no_split": max((sizes[n] for n in no_split_names), default=0),
        "biggest_leaf": max(leaves.values(), default=0),
        "tied_parameters": _tied_groups(model),
        "no_placement_params": sorted(getattr(model, "_no_placement_params", None) or []) or None,
        # bitsandbytes' adjust_max_memory scales every budget by 0.9; read from the quantizer, not assumed
        "quantizer_scales_budgets": _budget_scale(hf_quantizer),
    }


def _budget_scale(hf_quantizer: Any) -> float:
    if hf_quantizer is None:
        return 1.0
    probe = hf_quantizer.adjust_max_memory({0: 1 << 30})
    return float(probe[0]) / float(1 << 30)


def _names(node: dict[str, Any]) -> set[str]:
    out = {node["name"], *node.get("params", []), *node.get("buffers", [])}
    for child in node.get("children", []):
        out |= _names(child)
    return out


def safe_placement_tree(
    model: Any, quantization_config: Any = None, prequantized: bool = False
) -> dict[str, Any] | None:
    """`placement_tree`, or None where this transformers lacks what it reads (the estimator then places by
    blocks): it must never cost the rest of the sizing."""
    try:
        return placement_tree(model, quantization_config, prequantized)
    except Exception:  # noqa: BLE001 - older transformers, no bitsandbytes, an unexpected model
        return None
