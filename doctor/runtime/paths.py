"""Putting the plan's paths on a built model, the same way in `niah run` and in the doctor's sizing child.

- `apply_experts(model, experts)`: the MoE forward the plan chose — Llama 4's routed forward
  (doctor.runtime.experts), transformers' own `grouped_mm` for models on its experts interface, or the
  model's own forward (`experts="transformers"`). Returns what was done, for the plan line and the row.
- `lean_probe(model)`: whether the lean attention really computes this model's attention: one short
  forward through every layer (on the meta device in the doctor) that must call it and must not meet
  anything it refuses; and the first position at which it will refuse, for refusals that depend on the
  position (the short forward cannot meet those). `lean_refusal(model)`: the reason alone, or None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from run_plan.spec import EXPERTS_DENSE, EXPERTS_NOT_RECOGNISED


def apply_experts(model: Any, experts: str) -> dict[str, Any]:
    """{"experts": what runs, "swapped": [module names]}; "dense" for a model without experts, and
    "not recognised: ..." for MoE layers on neither path (the model's own forward runs, whatever --experts
    says)."""
    from doctor.runtime.experts import fused_experts, route_llama4_experts

    if experts == "transformers":
        return {"experts": _library_experts(model) or _unrouted(model), "swapped": []}
    swapped = route_llama4_experts(model)
    if swapped:
        fused = all(fused_experts(model.get_submodule(name).experts) for name in swapped)
        how = "grouped GEMM over routed tokens" if fused else "each expert's own module on its routed tokens"
        return {"experts": f"routed: niah's Llama 4 forward, {how}", "swapped": swapped}
    if _on_experts_interface(model):
        current = getattr(model.config, "_experts_implementation", None)
        if current != "grouped_mm":
            model.set_experts_implementation("grouped_mm")
        return {"experts": "routed: transformers' experts interface, grouped_mm", "swapped": []}
    return {"experts": _library_experts(model) or _unrouted(model), "swapped": []}


def _unrouted(model: Any) -> str:
    """A model on neither experts path: dense, unless something marks it as a mixture of experts."""
    signs = _moe_signs(model)
    if not signs:
        return EXPERTS_DENSE
    return (
        f"{EXPERTS_NOT_RECOGNISED}: {', '.join(signs)} — neither Llama 4's MoE nor on transformers' experts "
        "interface, so the model's own forward runs (whether it computes only the routed experts is not "
        "known) and --experts changes nothing"
    )


# Config fields that count a model's experts (transformers' own classes and remote code alike).
_EXPERT_COUNTS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def _moe_signs(model: Any) -> list[str]:
    """What marks `model` as a mixture of experts: a config field counting experts, a module holding
    `experts`."""
    config: Any = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    signs = []
    for name in _EXPERT_COUNTS:
        value = getattr(text, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 1:
            signs.append(f"config {name}={value}")
            break
    named_modules = getattr(model, "named_modules", None)
    for name, module in named_modules() if callable(named_modules) else ():
        if getattr(module, "experts", None) is not None:
            signs.append(f"{type(module).__name__} at {name or 'the model'}")
            break
    return signs


def _on_experts_interface(model: Any) -> bool:
    can_set = getattr(type(model), "_can_set_experts_implementation", None)
    try:
        return bool(can_set()) if callable(can_set) else False
    except Exception:  # noqa: BLE001 - a heuristic of transformers' (it reads the module source)
        return False


def _library_experts(model: Any) -> str | None:
    from doctor.runtime.experts import has_llama4_moe

    if has_llama4_moe(model):
        return "all experts for every token: transformers' Llama4TextMoe"
    if _on_experts_interface(model):
        return f"transformers' experts interface, {getattr(model.config, '_experts_implementation', None)}"
    return None


@dataclass(frozen=True)
class LeanProbe:
    """What the doctor's short forward found about the lean attention on this model."""

    refused: str | None = None  # why it cannot compute this model at all (None: it can)
    # the first position it refuses, where the refusal depends on the position (None: none)
    limit: int | None = None
    limit_why: str | None = None


def lean_probe(model: Any, tokens: int = 4) -> LeanProbe:
    """One forward of `tokens` tokens where the model's parameters live (meta: no memory): a refusal met
    there, or else the first position at which the lean path will refuse (a window only the config sets,
    a cache that drops keys a layer's rule needs), read from each layer's rule and cache layer by the very
    function the attention decides with (doctor.runtime.attention.first_refused_position)."""
    import torch

    from doctor.runtime import attention
    from doctor.runtime.cache import keys_kept, preallocated_cache
    from doctor.runtime.forward import inspect_forward

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    before = attention.CALLS[0]
    ids = torch.zeros(1, tokens, dtype=torch.long, device=device)
    sig = inspect_forward(model)  # the cache's keyword as this transformers spells it (no deprecated alias)
    try:
        cache = preallocated_cache(model.config, tokens)
        kwargs = {sig.cache_kw: cache, **({sig.logits_kw: 1} if sig.logits_kw else {})}
        with torch.no_grad(), attention.query_start(0, tokens), attention.recording_rules() as rules:
            model(input_ids=ids, use_cache=True, **kwargs)
    except attention.LeanUnsupported as refused:
        return LeanProbe(refused=str(refused))
    if attention.CALLS[0] == before:
        return LeanProbe(
            refused="the model computes attention in its own code, not through transformers' attention interface"
        )
    layers = list(getattr(cache, "layers", None) or [])
    found = []
    for index, rule in sorted(rules.items()):
        kept = keys_kept(layers[index]) if index < len(layers) else None
        position = attention.first_refused_position(rule, kept)
        if position is not None:
            offset = 0 if kept is None else position - min(position, kept)
            found.append((position, index, attention.position_refusal(rule, position, 1, offset)))
    if not found:
        return LeanProbe()
    position, index, why = min(found)
    return LeanProbe(limit=position, limit_why=f"layer {index}: {why}")


def lean_refusal(model: Any, tokens: int = 4) -> str | None:
    """None when the lean attention computes this model's attention (at least before `lean_probe`'s
    limit); else why not (transformers' path is kept then)."""
    return lean_probe(model, tokens).refused
