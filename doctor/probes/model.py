"""The target model's config, resolved without loading weights (doctor.model_config.resolve_model)."""

from __future__ import annotations

import threading

from doctor.model_config import ModelResolution
from doctor.probes import Probe, Unavailable, probe
from run_plan.spec import RunSpec

# Hub answers, memoised per process: the `model` and `config-load` probes both need the resolution,
# and asking the hub twice doubles the wait. Offline resolution only reads files, so it is not cached
# (a folder may change between two runs inside one process, e.g. in tests).
_ONLINE: dict[str, ModelResolution] = {}
_ONLINE_LOCK = threading.Lock()


def resolved_model(spec: str, *, online: bool) -> ModelResolution:
    # Imported here: resolve_model pulls in huggingface_hub, which a plain `doctor` does not need.
    from doctor.model_config import resolve_model

    if not online:
        return resolve_model(spec, online=False)
    with _ONLINE_LOCK:
        if spec not in _ONLINE:
            _ONLINE[spec] = resolve_model(spec, online=True)
        return _ONLINE[spec]


def judged_by_library(res: ModelResolution, target: RunSpec) -> ModelResolution:
    """A resolution refused only for fields the doctor's validator doubts, judged again by the installed
    transformers (doctor.probes.config_fields): whatever the config class accepts and the model never
    reads is accepted, with a note. Unchanged when nothing is doubted, with --no-live, or without
    transformers (then the doctor's own rule stands)."""
    from dataclasses import replace

    if res.status != "invalid" or not res.field_problems:
        return res
    if target.live is False:
        return res
    from doctor.probes.packages import find_dist

    if find_dist("transformers") is None:
        return res
    from doctor.model_config import from_config
    from doctor.probes.config_fields import TIMEOUT_S, judge_fields

    answer = judge_fields(
        res.rejected_config,
        list(res.doubted_fields),
        list(res.missing_fields),
        max(float(target.probe_timeout_s), TIMEOUT_S),
    )
    if answer.get("error") or answer.get("standing"):
        standing = answer.get("standing") or []
        why = (
            f" ({standing[0][1]})"
            if standing
            else f" (transformers could not be asked: {answer.get('error')})"
        )
        return replace(res, message=res.message + why)
    from doctor.model_config import text_config_of

    accepted = tuple(answer.get("accepted") or ())
    text = text_config_of(res.rejected_config)
    notes = [
        f"{name} missing (the class's default)"
        if name in res.missing_fields
        else f"{name}={text.get(name)!r} (never read by the model)"
        for name in accepted
    ]
    found = from_config(replace(res, status="found"), res.rejected_config, check_fields=False)
    return replace(
        found,
        message=(
            f"{found.path or found.requested}: transformers {answer.get('transformers_version')} "
            f"({answer.get('config_class')}) accepts the config as it is — {'; '.join(notes)}"
        ),
        field_problems=(),
        accepted_fields=accepted,
    )


MODEL: Probe[ModelResolution] = Probe("model")


@probe(MODEL)
def model_probe(target: RunSpec) -> ModelResolution | Unavailable:
    spec = target.model
    if not spec:
        return Unavailable("no --model given: nothing to resolve", "not-applicable")
    return judged_by_library(resolved_model(spec, online=bool(target.online)), target)
