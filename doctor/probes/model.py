"""The target model's config, resolved without loading weights (doctor.model_config.resolve_model)."""

from __future__ import annotations

import threading
from typing import Any

from doctor.probes import Unavailable, probe

# Hub answers, memoised per process: the `model` and `config-load` probes both need the resolution,
# and asking the hub twice doubles the wait. Offline resolution only reads files, so it is not cached
# (a folder may change between two runs inside one process, e.g. in tests).
_ONLINE: dict[str, Any] = {}
_ONLINE_LOCK = threading.Lock()


def resolved_model(spec: str, *, online: bool) -> Any:  # ModelResolution
    # Imported here: resolve_model pulls in huggingface_hub, which a plain `doctor` does not need.
    from doctor.model_config import resolve_model

    if not online:
        return resolve_model(spec, online=False)
    with _ONLINE_LOCK:
        if spec not in _ONLINE:
            _ONLINE[spec] = resolve_model(spec, online=True)
        return _ONLINE[spec]


@probe("model")
def model_probe(target: object) -> Any:  # ModelResolution | Unavailable
    spec = getattr(target, "model", None)
    if not spec:
        return Unavailable("no --model given: nothing to resolve", "not-applicable")
    return resolved_model(spec, online=bool(getattr(target, "online", False)))
