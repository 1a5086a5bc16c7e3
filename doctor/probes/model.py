"""The target model's config, resolved without loading weights (doctor.model_config.resolve_model)."""

from __future__ import annotations

from typing import Any

from doctor.probes import Unavailable, probe


@probe("model")
def model_probe(target: object) -> Any:  # ModelResolution | Unavailable
    spec = getattr(target, "model", None)
    if not spec:
        return Unavailable("no --model given: nothing to resolve", "not-applicable")
    # Imported here: resolve_model pulls in huggingface_hub, which a plain `doctor` does not need.
    from doctor.model_config import resolve_model

    return resolve_model(spec, online=bool(getattr(target, "online", False)))
