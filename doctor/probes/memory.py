"""Probe "memory": the model's weight inventory as transformers + bitsandbytes would lay it out.

The expensive part (building the real model class on the meta device and running transformers' bnb
preparation on it) happens in a child process (doctor.memory.skeleton); the context-dependent rest of
the estimate is computed by the memory check from these facts.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypedDict

from doctor.probes import Probe, Unavailable, probe
from run_plan.spec import RunSpec

if TYPE_CHECKING:
    from doctor.model_config import ModelResolution

# The skeleton imports torch + transformers and builds up to ~100 decoder layers: allow for a slow disk.
MIN_TIMEOUT_S = 240.0


class MemoryFacts(TypedDict):
    """The memory probe's facts: the settings the estimate is made for and the skeleton child's sizing."""

    model: str
    config_source: str | None
    settings: dict[str, Any]  # doctor.memory.estimate.Settings as a dict
    sizing: dict[str, Any]  # the weight inventory, KV layout and traced activations (doctor.memory.skeleton)


def resolve_for_memory(model: str, target: RunSpec) -> ModelResolution:
    """The model's config (doctor.model_config.resolve_model), judged again by the installed transformers
    where the doctor's own validator doubts a field (doctor.probes.model.judged_by_library)."""
    from doctor.model_config import resolve_model
    from doctor.probes.model import judged_by_library

    return judged_by_library(resolve_model(model, online=target.online), target)


def size_weights(args: dict[str, Any], timeout_s: float = 240.0) -> dict[str, Any]:
    """Weight inventory from the real transformers class in a child (remembered on disk, keyed by the
    arguments, the library versions and the sizing code; NIAH_DOCTOR_SIZING_CACHE=0 turns that off);
    analytic fallback if the child fails."""
    if os.environ.get("NIAH_DOCTOR_SIZING_CACHE", "1") == "0":
        return _size_in_child(args, timeout_s)
    from doctor.memory.sizing_cache import cached_sizing

    return cached_sizing(args, lambda a: _size_in_child(a, timeout_s))


def _size_in_child(args: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    from doctor.children.child import run_in_child

    # transformers builds some models' masks in the order of a set of layer-type names (Llama 4), which
    # follows Python's string hash and moves transient bytes between trace events: one fixed seed makes
    # the estimate the same on every run and machine
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    result = run_in_child("doctor.memory.skeleton:size_model", args, timeout_s=timeout_s, env=env)
    if result.ok and result.data:
        return result.data
    from doctor.memory.analytic import size_analytic

    sizing = size_analytic(args)
    sizing["fallback_reason"] = f"meta skeleton failed: {result.error}"
    return sizing


MEMORY: Probe[MemoryFacts] = Probe("memory")


@probe(MEMORY)
def memory_probe(target: RunSpec) -> MemoryFacts | Unavailable:
    model = target.model
    if not model:
        return Unavailable("no --model given: nothing to size", "not-applicable")
    if target.base_url:
        return Unavailable(
            "the model runs on the server at --base-url: its memory is the server's "
            "(server-max-model-len judges the length)",
            "not-applicable",
        )
    resolution = resolve_for_memory(model, target)
    if not resolution.found:
        return Unavailable(f"model config unavailable: {resolution.message}", "missing")
    from doctor.memory.estimate import settings_for, sizing_args

    settings = settings_for(target, resolution.config, resolution.quantization_config)
    args = sizing_args(settings, resolution.config, resolution.quantization_config)
    sizing = size_weights(args, timeout_s=max(float(target.probe_timeout_s), MIN_TIMEOUT_S))
    return {
        "model": resolution.resolved_id or resolution.requested,
        "config_source": resolution.source,
        "settings": asdict(settings),
        "sizing": sizing,
    }
