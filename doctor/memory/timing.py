"""The prefill time plan: run_plan.timing.PrefillTimeModel filled from the sizing and the card's rates.

Rates come from the live probe (`rates-live`: a bf16 GEMM, the flash attention kernel, transformers'
masked sdpa kernel and a device copy, timed on the planned GPU); without it (planning for `--gpus` on
another machine) from this project's own measurements of known cards (docs/benchmarks.md), named as
assumed in the plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from doctor.memory.gpus import GpuSpec
from doctor.memory.kv import kv_geometry, kv_layers
from run_plan.spec import LEAN_ATTN
from run_plan.timing import AttentionLayers, PrefillTimeModel

# Rates of known cards for planning from another machine (`--gpus H100-80GB` on a laptop); on the GPU itself
# the live probe measures them (doctor/probes/card_rates.py) and the plan names which it used. The H100's:
# what the live probe measured on this project's lent H100 80GB HBM3 on 2026-12-08 (torch 2.11, the flash
# kernel alone for `lean`); the H200's GEMM and copy from the same kind of measurement there, its attention
# taken as the H100's (the same tensor cores). docs/benchmarks.md has the measurements.
MEASURED_RATES: dict[str, dict[str, float]] = {
    "H100": {"matmul": 7.87e14, "lean": 3.4e14, "masked": 3.3e14, "copy": 2.94e12},
    "H200": {"matmul": 7.88e14, "lean": 3.4e14, "masked": 3.3e14, "copy": 4.3e12},
}
_DEQUANT_BYTES_PER_PARAM = {"bnb-4bit": 2.5, "bnb-8bit": 3.0}  # read packed, write the compute dtype


def rates_for(gpus: Sequence[GpuSpec], measured: Mapping[str, Any] | None) -> tuple[dict[str, float], str]:
    """(matmul, flash, masked, copy) rates and where they came from."""
    if (
        measured
        and all(measured.get(k) for k in ("matmul", "masked", "copy"))
        and (measured.get("lean") or measured.get("flash"))
    ):
        values = {k: float(measured[k]) for k in ("matmul", "masked", "copy")}
        values["lean"] = float(measured.get("lean") or measured["flash"])
        return values, f"measured on {measured.get('device', 'this GPU')} (live probe)"
    name = gpus[0].name.upper().replace(" ", "") if gpus else ""
    for card, values in MEASURED_RATES.items():
        if card in name:
            return dict(values), f"assumed: known {card} rates (no live probe of this GPU here)"
    from doctor.memory.gpus import ASSUMED_BF16_FLOPS

    peak = next((v for k, v in ASSUMED_BF16_FLOPS.items() if k in name), 100e12)
    return (
        {"matmul": peak, "lean": 0.4 * peak, "masked": 0.35 * peak, "copy": 1.0e12},
        "assumed: 40 % of the card's dense bf16 peak (unmeasured card, no live probe here)",
    )


def attention_layers(sizing: Mapping[str, Any]) -> tuple[AttentionLayers, ...]:
    """Attention layers grouped by visibility rule, from the measured cache layout and the layer types."""
    cfg = sizing.get("text_config") or {}
    layout = (sizing.get("kv_layout") or {}).get("layers")
    layers = kv_layers(cfg, layout)
    types = list(cfg.get("layer_types") or [])
    groups: dict[tuple[str, int], int] = {}
    for index, layer in enumerate(layers):
        layer_type = types[index] if index < len(types) else None
        if layer_type is not None and "attention" not in str(layer_type):
            continue  # a recurrent / linear-attention layer: no (query, key) pairs
        if layer_type == "chunked_attention":
            key = ("chunked", int(cfg.get("attention_chunk_size") or layer.window or 0))
        elif layer.kind == "window" and layer.window:
            key = ("window", int(layer.window))
        else:
            key = ("full", 0)
        groups[key] = groups.get(key, 0) + 1
    return tuple(AttentionLayers(kind, window, count) for (kind, window), count in sorted(groups.items()))


def active_linear_params(sizing: Mapping[str, Any]) -> float:
    """Weights one token's forward multiplies: every Linear, and of the experts only the routed ones (all of
    them where the model's own MoE runs every expert on every token)."""
    cfg = sizing.get("text_config") or {}
    moe = sizing.get("moe") or {}
    experts = float(sizing.get("expert_params") or 0)
    if experts and not moe.get("all_tokens_to_all_experts"):
        total = max(int(moe.get("num_experts") or cfg.get("num_local_experts") or 1), 1)
        experts *= int(cfg.get("num_experts_per_tok") or 1) / total
    return float(sizing.get("linear_params") or 0) + experts


def prefill_time_model(
    sizing: Mapping[str, Any],
    attn: str,
    quant: str,
    gpus: Sequence[GpuSpec],
    measured: Mapping[str, Any] | None,
) -> PrefillTimeModel | None:
    cfg = sizing.get("text_config") or {}
    if not cfg or not gpus:
        return None
    heads = int(cfg.get("num_attention_heads") or 1)
    kv_heads, head_dim = kv_geometry(cfg)
    rates, source = rates_for(gpus, measured)
    dispatched = str((sizing.get("trace") or {}).get("attn_implementation") or attn)
    lean = dispatched == LEAN_ATTN
    notes = []
    if len(gpus) > 1:
        notes.append("layers split over several GPUs run one after another: one GPU's rates")
    return PrefillTimeModel(
        path="lean" if lean else "masked",
        linear_flops_per_token=2.0 * active_linear_params(sizing),
        attention_flops_per_pair=4.0 * heads * head_dim,
        kv_heads=kv_heads,
        heads=heads,
        head_dim=head_dim,
        layers=attention_layers(sizing),
        dequant_bytes_per_chunk=float(sizing.get("quantized_params") or 0)
        * _DEQUANT_BYTES_PER_PARAM.get(quant, 0.0),
        matmul_flops_per_s=rates["matmul"],
        attention_flops_per_s=rates["lean" if lean else "masked"],
        copy_bytes_per_s=rates["copy"],
        rates_source=source,
        notes=tuple(notes),
    )
