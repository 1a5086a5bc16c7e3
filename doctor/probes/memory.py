"""Probe "memory": the model's weight inventory as transformers + bitsandbytes would lay it out.

The expensive part (building the real model class on the meta device and running transformers' bnb
preparation on it) happens in a child process (doctor.memory.skeleton); the context-dependent rest of
the estimate is computed by the memory check from these facts.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from doctor.probes import Unavailable, probe

# The skeleton imports torch + transformers and builds up to ~100 decoder layers: allow for a slow disk.
MIN_TIMEOUT_S = 240.0


def resolve_for_memory(target: Any) -> Any:
    """The model's config: doctor.model_config.resolve_model when implemented, else a local folder or a
    config embedded in this package (doctor/memory/configs)."""
    from doctor.model_config import DEMO_MODEL_ID, ModelResolution, resolve_model
    from doctor.probes.model import judged_by_library

    try:
        return judged_by_library(resolve_model(target.model, online=target.online), target)
    except NotImplementedError:
        pass
    import json

    spec = DEMO_MODEL_ID if target.model == "demo" else target.model
    folder = Path(spec).expanduser()
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
        return ModelResolution(
            target.model,
            "found",
            "local folder",
            source="local-folder",
            path=str(folder),
            config=config,
            model_type=config.get("model_type"),
            quantization_config=config.get("quantization_config"),
        )
    from doctor.memory.embedded import embedded_config

    config = embedded_config(spec)
    if config is None:
        return ModelResolution(target.model, "offline-not-cached", f"no config for {spec!r} here (offline)")
    return ModelResolution(
        target.model,
        "found",
        "embedded config",
        resolved_id=spec,
        source="embedded",
        config=config,
        model_type=config.get("model_type"),
        quantization_config=config.get("quantization_config"),
        embedded_source=config.get("_source"),
    )


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


@probe("memory")
def memory_probe(target: Any) -> dict[str, Any] | Unavailable:
    if not target.model:
        return Unavailable("no --model given: nothing to size", "not-applicable")
    if getattr(target, "base_url", None):
        return Unavailable(
            "the model runs on the server at --base-url: its memory is the server's "
            "(server-max-model-len judges the length)",
            "not-applicable",
        )
    resolution = resolve_for_memory(target)
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
