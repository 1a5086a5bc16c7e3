"""Choices about the code a load runs that the plan records, so the plan line and the saved plan name them:
whether transformers' hub kernels are off (run_plan.hub_kernels) and which path recurrent layers take
(kernel packages or transformers' reference PyTorch code: doctor.memory.recurrent)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from doctor.context import DoctorContext
from doctor.probes import Unavailable
from doctor.probes.config_load import CONFIG_LOAD
from run_plan import hub_kernels
from run_plan.resolved import Decision


def load_decisions(ctx: DoctorContext, sizing: Mapping[str, Any] | None) -> tuple[Decision, ...]:
    out = []
    model = None
    if ctx.target.model:
        facts = ctx.probe(CONFIG_LOAD)
        model = None if isinstance(facts, Unavailable) else facts.model_class
    kernels = model.hub_kernels if model is not None else None
    if kernels is not None and kernels.load_kwargs.get("use_kernels") is False:
        out.append(
            Decision(
                "hub_kernels",
                "off",
                "niah: use_kernels=False, so nothing is fetched from the hub at load and the layers run the "
                f"code the doctor traced (set {hub_kernels.ENV}=1 to let transformers kernelize)",
            )
        )
    if sizing:
        from doctor.memory.recurrent import kernel_path

        path = kernel_path(sizing)
        if path is not None:
            out.append(
                Decision(
                    "recurrent_layers",
                    path,
                    "installed packages: transformers runs a recurrent layer's kernel package when it imports, "
                    "its reference PyTorch code otherwise; the estimate traces the one that runs",
                )
            )
    return tuple(out)
