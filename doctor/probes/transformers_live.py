"""The transformers live probe: import transformers in a child (doctor.probes.live_batch) and ask whether
the model's `model_type` and architectures are known to the installed version. Needs no GPU: runs
whenever a --model resolved, unless --no-live.

`transformers_child` runs inside the child; everything else runs in the doctor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from doctor.model_config import ModelResolution
from doctor.probes import Probe, Unavailable, probe
from doctor.probes.live_batch import LIVE_BATCH, LiveRequest, not_installed, short_error
from run_plan.spec import RunSpec


@dataclass(frozen=True)
class TransformersLive:
    version: str | None
    import_error: str | None = None
    model_type: str | None = None
    model_type_known: bool | None = None  # model_type in CONFIG_MAPPING_NAMES
    architectures: tuple[str, ...] = ()
    missing_architectures: tuple[str, ...] = ()  # named by config.json but not exported by transformers
    config_transformers_version: str | None = None


TRANSFORMERS_LIVE: Probe[TransformersLive] = Probe("transformers-live")


def transformers_child(args: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "version": None,
        "model_type": args.get("model_type"),
        "architectures": list(args.get("architectures") or ()),
        "config_transformers_version": args.get("config_transformers_version"),
    }
    try:
        import transformers
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    except Exception as exc:
        out["import_error"] = short_error(exc)
        return out
    out["version"] = transformers.__version__
    if out["model_type"]:
        out["model_type_known"] = out["model_type"] in CONFIG_MAPPING_NAMES
    exported = set(dir(transformers))  # the lazy module lists every class without importing its modeling code
    out["missing_architectures"] = [a for a in out["architectures"] if a not in exported]
    return out


def _model_resolution(target: RunSpec) -> ModelResolution | Unavailable:
    """The `model` probe's facts, or Unavailable."""
    from doctor.probes.model import model_probe

    try:
        return model_probe(target)
    except Exception as exc:  # the model probe's own errors are reported by its own checks
        return Unavailable(f"model probe failed: {short_error(exc, 300)}", "not-applicable")


def transformers_request(
    target: RunSpec, resolution: ModelResolution | None = None, env: dict[str, str] | None = None
) -> LiveRequest | Unavailable:
    if not target.model:
        return Unavailable("no --model given; model support in transformers not checked", "not-applicable")
    if target.live is False:
        return Unavailable("live probes disabled (--no-live)", "not-applicable")
    resolved = _model_resolution(target) if resolution is None else resolution
    if isinstance(resolved, Unavailable):
        return resolved
    if not resolved.found or not resolved.model_type:
        return Unavailable(f"model config not available ({resolved.message})", "not-applicable")
    blocked = not_installed(("transformers",), env)
    if blocked is not None:
        return blocked
    return LiveRequest(
        f"{__name__}:transformers_child",
        {
            "model_type": resolved.model_type,
            "architectures": list(resolved.architectures),
            "config_transformers_version": resolved.config_transformers_version,
        },
        "importing transformers in a child process",
    )


def transformers_live_facts(
    target: RunSpec, resolution: ModelResolution | None = None, env: dict[str, str] | None = None
) -> TransformersLive | Unavailable:
    """model_type / architecture support in the installed transformers."""
    request = transformers_request(target, resolution, env)
    data = LIVE_BATCH.answer(TRANSFORMERS_LIVE.name, target, request, env, private=resolution is not None)
    if isinstance(data, Unavailable):
        return data
    return TransformersLive(
        version=data.get("version"),
        import_error=data.get("import_error"),
        model_type=data.get("model_type"),
        model_type_known=data.get("model_type_known"),
        architectures=tuple(data.get("architectures") or ()),
        missing_architectures=tuple(data.get("missing_architectures") or ()),
        config_transformers_version=data.get("config_transformers_version"),
    )


LIVE_BATCH.register(TRANSFORMERS_LIVE.name, transformers_request)


@probe(TRANSFORMERS_LIVE, announce=LIVE_BATCH.announce)
def transformers_live_probe(target: RunSpec) -> TransformersLive | Unavailable:
    return transformers_live_facts(target)
