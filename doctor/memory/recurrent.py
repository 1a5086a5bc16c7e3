"""Recurrent and hybrid layers (Mamba-1/-2, gated delta nets, short convolutions): which path runs, and
what that costs. Pure Python over the sizing child's answer (`doctor.memory.trace.recurrent_kernels`).

transformers routes each recurrent-layer function (`selective_scan_fn`, `mamba_chunk_scan_combined`,
`causal_conv1d_fn`, `chunk_gated_delta_rule`, ...) to a kernel package when that package imports
(mamba_ssm, causal_conv1d, flash-linear-attention) and to its reference PyTorch implementation when it
does not ("falling back to its reference PyTorch implementation"). The choice is made when the modeling
module is imported, so the sizing child, on the machine of the run, sees the same choice the run makes.
The reference paths materialise per-step tensors that grow with the chunk (Mamba-1's discretised A and
B·x: chunk × 2·hidden × state × 4 bytes each, per layer); the trace counts them. Kernel packages are
traced by their outputs (their internal per-block buffers are not seen).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from doctor.memory.activations import _regimes_for, _value
from doctor.memory.kv import KvLayer

GIB = 1 << 30
# A reference path whose per-layer transient reaches this is worth a kernel package: say so with the figure.
LARGE_TRANSIENT = GIB


def kernel_functions(sizing: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((sizing.get("trace") or {}).get("recurrent_kernels") or [])


def missing_packages(sizing: Mapping[str, Any]) -> list[str]:
    """pip names of the kernel packages whose functions run on the reference PyTorch path here."""
    return sorted({str(k["distribution"]) for k in kernel_functions(sizing) if not k.get("fused")})


def kernel_path(sizing: Mapping[str, Any]) -> str | None:
    """One line for the plan: the path the recurrent layers take (None: the model has none)."""
    kernels = kernel_functions(sizing)
    if not kernels:
        return None
    missing = missing_packages(sizing)
    fused = sorted({str(k["distribution"]) for k in kernels if k.get("fused")})
    if not missing:
        return f"kernels ({', '.join(fused)})"
    text = f"reference PyTorch ({', '.join(missing)} not installed)"
    return text + (f"; kernels: {', '.join(fused)}" if fused else "")


def recurrent_transient(
    sizing: Mapping[str, Any], layers: Sequence[KvLayer], context: int, chunk: int
) -> int | None:
    """The largest traced transient inside one recurrent or hybrid layer (a layer whose cache keeps a
    state) at this context and chunk; None without a trace that covers it."""
    model = (sizing.get("trace") or {}).get("activations") or {}
    signatures = list(model.get("layer_signatures") or [])
    stateful = {signatures[i] for i, layer in enumerate(layers) if i < len(signatures) and layer.state_bytes}
    regimes = _regimes_for(model, context, min(chunk, context))
    if not stateful or not regimes:
        return None
    granule = max(int(model.get("granule") or 1), 1)
    blocks = -(-min(chunk, context) // granule)
    past = max(context - chunk, 0)
    return max(
        (
            _value(c, blocks, past)
            for regime in regimes
            for sig in stateful
            for c in regime["zones"].get(f"layer:{sig}", [])
        ),
        default=None,
    )


def _size(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB // 10 else f"{n / (1 << 20):.1f} MiB"


def recurrent_notes(
    sizing: Mapping[str, Any], layers: Sequence[KvLayer], context: int, chunk: int
) -> list[str]:
    kernels = kernel_functions(sizing)
    if not kernels:
        return []
    notes = []
    states = sum(layer.state_bytes for layer in layers)
    if states:
        notes.append(
            f"Recurrent layers keep a fixed-size state in the cache ({_size(states)} in all, measured from "
            "transformers' own cache after a meta forward), counted in the KV figure."
        )
    missing = missing_packages(sizing)
    if missing:
        transient = recurrent_transient(sizing, layers, context, chunk)
        reference = sorted({str(k["function"]) for k in kernels if not k.get("fused")})
        text = (
            f"Recurrent layers run transformers' reference PyTorch code for {', '.join(reference)} "
            f"({', '.join(missing)} not installed): traced as it runs, and much slower than the kernels."
        )
        if transient is not None:
            text += f" Its largest transient is {_size(transient)} per layer at chunk {min(chunk, context):,}"
            text += (
                f": large; `pip install {' '.join(missing)}` runs the fused kernels instead (or give a smaller "
                "--prefill-chunk)."
                if transient >= LARGE_TRANSIENT
                else "."
            )
        notes.append(text)
    if any(k.get("fused") for k in kernels):
        notes.append(
            "Recurrent-layer kernels are traced by their outputs; their internal per-block buffers are not "
            "seen (unmeasured on a GPU)."
        )
    return notes
