"""transformers / accelerate: versions, and whether the target model's model_type and architecture
class are known to the installed transformers (config.json read by the `model` probe; the class
lookup happens in a child process)."""

from __future__ import annotations

from doctor.context import DoctorContext
from doctor.probes import Unavailable
from doctor.probes.model import MODEL
from doctor.probes.packages import PACKAGES
from doctor.probes.transformers_live import TRANSFORMERS_LIVE
from doctor.registry import Outcome, check
from doctor.report.model import Evidence, Fix
from run_plan.shell import shell_join

SECTION = "libraries"
HOW_VERSIONS = "python -m pip show transformers accelerate | grep -E '^(Name|Version)'"
HOW_MODEL_TYPE = (
    "python -c 'from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES as M; "
    'print("{model_type}" in M)\''
)
# First transformers release that knows a model_type, where the gap has bitten users.
FIRST_RELEASE = {"llama4": "4.51.0", "llama4_text": "4.51.0"}


def _base(version: str | None) -> tuple[int, ...] | None:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version).release if version else None
    except InvalidVersion:
        return None


@check(
    "transformers-accelerate",
    title="transformers and accelerate installed",
    section=SECTION,
    needs=(PACKAGES,),
)
def transformers_accelerate(ctx: DoctorContext) -> Outcome:
    packages = ctx.needed(PACKAGES)
    tv, av = packages.versions.get("transformers"), packages.versions.get("accelerate")
    evidence = [
        Evidence("transformers.version", tv, "metadata", HOW_VERSIONS),
        Evidence("accelerate.version", av, "metadata", HOW_VERSIONS),
    ]
    missing = [name for name, v in (("transformers", tv), ("accelerate", av)) if v is None]
    if missing:
        fix = Fix("Install the run's libraries", ('pip install -e ".[niah]"',))
        summary = f"{' and '.join(missing)} not installed (device_map loading needs both)"
        return (
            Outcome.fail(summary, evidence, fix) if ctx.target.model else Outcome.warn(summary, evidence, fix)
        )
    return Outcome.ok(f"transformers {tv}, accelerate {av}", evidence)


def _upgrade_fix(version: str) -> Fix:
    return Fix(
        f"Upgrade transformers to ≥ {version} (check its torch minimum)",
        (f'pip install -U "transformers>={version}"',),
        "https://github.com/huggingface/transformers/releases",
    )


@check(
    "model-type-supported",
    title="Model's model_type known to transformers",
    section=SECTION,
    needs=(TRANSFORMERS_LIVE,),
)
def model_type_supported(ctx: DoctorContext) -> Outcome:
    live = ctx.needed(TRANSFORMERS_LIVE)
    evidence = [
        Evidence("config.model_type", live.model_type, "config.json", "jq .model_type config.json"),
        Evidence("transformers.version", live.version, "transformers (child)", HOW_VERSIONS),
        Evidence(
            "model_type in CONFIG_MAPPING_NAMES",
            live.model_type_known,
            "transformers (child)",
            HOW_MODEL_TYPE.format(model_type=live.model_type),
        ),
    ]
    if live.import_error:
        return Outcome.fail(
            f"`import transformers` fails: {live.import_error}",
            evidence,
            Fix("Reinstall transformers", ("pip install --force-reinstall -U transformers",)),
        )
    if live.model_type_known:
        return Outcome.ok(f"transformers {live.version} knows model_type {live.model_type!r}", evidence)
    needed = FIRST_RELEASE.get(live.model_type or "") or live.config_transformers_version
    since = f" (added in {FIRST_RELEASE[live.model_type]})" if live.model_type in FIRST_RELEASE else ""
    model = ctx.probe(MODEL)
    if not isinstance(model, Unavailable) and model.has_remote_code:
        return Outcome.warn(
            f"model_type {live.model_type!r} is not built into transformers {live.version}; the "
            "checkpoint ships its own code (auto_map)",
            evidence,
            Fix(
                "Allow the model's code only if you trust it",
                (shell_join(["doctor", "--model", str(ctx.target.model), "--trust-remote-code"]),),
            ),
        )
    fix = (
        _upgrade_fix(_release_text(needed))
        if needed
        else Fix(
            "Install transformers from source for brand-new models",
            ("pip install -U git+https://github.com/huggingface/transformers",),
        )
    )
    return Outcome.fail(
        f"transformers {live.version} does not recognize model_type {live.model_type!r}{since}: "
        "loading fails with 'Transformers does not recognize this architecture'",
        evidence,
        fix,
    )


def _release_text(version: str) -> str:
    base = _base(version)
    return ".".join(str(x) for x in base) if base else version


@check(
    "model-architecture-class",
    title="Model's architecture class exists in transformers",
    section=SECTION,
    needs=(TRANSFORMERS_LIVE,),
)
def model_architecture_class(ctx: DoctorContext) -> Outcome:
    live = ctx.needed(TRANSFORMERS_LIVE)
    if live.import_error:
        return Outcome.skip("transformers does not import")
    if not live.architectures:
        return Outcome.skip("config.json names no architectures")
    evidence = [
        Evidence(
            "config.architectures", list(live.architectures), "config.json", "jq .architectures config.json"
        ),
        Evidence(
            "missing_in_transformers",
            list(live.missing_architectures),
            "transformers (child)",
            ("python", "-c", f"import transformers; getattr(transformers, {live.architectures[0]!r})"),
        ),
    ]
    if live.missing_architectures:
        model = ctx.probe(MODEL)
        summary = f"transformers {live.version} has no class {', '.join(live.missing_architectures)}"
        if not isinstance(model, Unavailable) and model.has_remote_code:
            return Outcome.warn(
                summary + " (the checkpoint ships its own code: needs --trust-remote-code)", evidence
            )
        needed = live.config_transformers_version
        return Outcome.fail(summary, evidence, _upgrade_fix(_release_text(needed)) if needed else None)
    return Outcome.ok(f"{', '.join(live.architectures)} found in transformers {live.version}", evidence)


@check(
    "config-transformers-version",
    title="config.json's transformers_version vs installed",
    section=SECTION,
    needs=(TRANSFORMERS_LIVE,),
)
def config_transformers_version(ctx: DoctorContext) -> Outcome:
    live = ctx.needed(TRANSFORMERS_LIVE)
    evidence = [
        Evidence(
            "config.transformers_version",
            live.config_transformers_version,
            "config.json",
            "jq .transformers_version config.json",
        ),
        Evidence("transformers.version", live.version, "transformers (child)", HOW_VERSIONS),
    ]
    saved, installed = _base(live.config_transformers_version), _base(live.version)
    if saved is None or installed is None:
        return Outcome.skip("config.json records no transformers_version")
    if installed < saved:
        return Outcome.warn(
            f"config.json was saved by transformers {live.config_transformers_version}; installed "
            f"{live.version} is older (new config fields may be ignored)",
            evidence,
            _upgrade_fix(_release_text(live.config_transformers_version or "")),
        )
    return Outcome.ok(
        f"installed transformers {live.version} ≥ {live.config_transformers_version} (config)", evidence
    )
