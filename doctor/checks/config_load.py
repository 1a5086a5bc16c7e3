"""Does the model's config.json (and its tokenizer and generation config) load in the installed
transformers, exactly as the run will load them? (doctor/probes/config_load.py does the loading.)

`model-type-supported` and `model-architecture-class` only ask whether transformers knows the model
type and class. A config can pass both and still be refused field by field: since transformers
5.4.0 the config classes are strict dataclasses, and Llama 4 configs published with
`"attn_temperature_tuning": 4` (the class says bool) fail in `AutoConfig.from_pretrained`. These
rows FAIL with transformers' own error text, the field, its value, and both ways out: a corrected
value in a local copy, or the transformers releases that accept the file as it is.
"""

from __future__ import annotations

import json

from doctor.checks.libraries import FIRST_RELEASE
from doctor.context import DoctorContext
from doctor.probes.config_load import (
    CONFIG_LOAD,
    ConfigLoadFacts,
    FieldRejection,
    LoadAttempt,
    corrected_value,
)
from doctor.registry import Outcome, check
from doctor.report.model import Evidence, Fix
from run_plan.shell import shell_join

SECTION = "model"
# transformers 5.3.0 assigns config fields without checks; 5.4.0 made PreTrainedConfig a huggingface_hub
# @strict dataclass (huggingface/transformers#41250, merged 2026-03-16). Read from the two wheels'
# configuration_utils.py and models/llama4/configuration_llama4.py.
STRICT_CONFIG_SINCE = "5.4.0"
STRICT_CONFIG_LINK = "https://github.com/huggingface/transformers/pull/41250"
_ERROR_TYPES_OF_VALIDATION = ("StrictDataclassFieldValidationError", "StrictDataclassClassValidationError")


def _release(version: str | None) -> tuple[int, ...] | None:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version).release if version else None
    except InvalidVersion:
        return None


def _dotted(release: tuple[int, ...]) -> str:
    return ".".join(str(x) for x in release)


def _name(facts: ConfigLoadFacts) -> str:
    return facts.resolved_id or facts.model


def _where(facts: ConfigLoadFacts) -> str:
    if facts.stand_in:
        return f"the published config.json of {_name(facts)} (embedded copy, loaded from a temporary folder)"
    return f"{facts.load_from}/config.json"


def _attempt_evidence(attempt: LoadAttempt, facts: ConfigLoadFacts) -> list[Evidence]:
    source = f"transformers {facts.transformers_version} (child)"
    out = [Evidence(f"{attempt.what}.call", attempt.call, source)]
    if attempt.status == "loaded":
        out.append(Evidence(f"{attempt.what}.loaded_class", attempt.loaded_class, source))
    elif attempt.status == "failed":
        out.append(Evidence(f"{attempt.what}.error", f"{attempt.error_type}: {attempt.error}", source))
    else:
        out.append(Evidence(f"{attempt.what}.not_checked", attempt.note, "doctor"))
    return out


def accepting_releases(facts: ConfigLoadFacts) -> str | None:
    """pip specifier of the releases that load a file refused only by strict field validation:
    from the first release that knows the model type (else the one that wrote the file) up to 5.4.0."""
    upper = _release(STRICT_CONFIG_SINCE)
    lower = _release(FIRST_RELEASE.get(facts.model_type or "")) or _release(facts.config_transformers_version)
    if lower is None:
        return f"<{STRICT_CONFIG_SINCE}"
    if upper is not None and lower >= upper:
        return None  # written by a strict release: no older release is known to accept it
    return f">={_dotted(lower)},<{STRICT_CONFIG_SINCE}"


def _jq_path(path: str) -> str:
    return "".join(f".{part}" if part.isidentifier() else f"[{json.dumps(part)}]" for part in path.split("."))


def _edit_command(rejections: list[tuple[FieldRejection, object]], config_json: str) -> str:
    program = " | ".join(f"{_jq_path(r.path)} = {json.dumps(v)}" for r, v in rejections)
    fixed = config_json + ".fixed"
    return f"{shell_join(['jq', program, config_json])} > {shell_join([fixed])} && {shell_join(['mv', fixed, config_json])}"


def _field_fix(facts: ConfigLoadFacts) -> Fix:
    fixable = [(r, corrected_value(r)) for r in facts.rejected_fields]
    fixable = [(r, v) for r, v in fixable if v is not None]
    commands: list[str | tuple[str, ...]] = []
    steps: list[str] = []
    if fixable:
        values = ", ".join(f"{r.path}: {json.dumps(r.value)} → {json.dumps(v)}" for r, v in fixable)
        if facts.source == "local-folder" and facts.load_from:
            steps.append(f"correct the file ({values})")
            commands.append(_edit_command(fixable, f"{facts.load_from}/config.json"))
        else:
            local = f"./{_name(facts).rsplit('/', 1)[-1]}"
            steps.append(f"download a local copy and correct its config.json ({values})")
            commands.append(("hf", "download", _name(facts), "--local-dir", local))
            commands.append(_edit_command(fixable, f"{local}/config.json"))
            commands.append(("doctor", "--model", local))
    releases = accepting_releases(facts)
    if releases:
        steps.append(
            f"or use a transformers release that accepts the file as published ({releases}: "
            f"releases from {STRICT_CONFIG_SINCE} on validate config field types; check its torch minimum)"
        )
        commands.append(("pip", "install", f"transformers{releases}"))
    if not steps:
        steps.append("set each refused field to a value of the type transformers names, in a local copy")
    summary = "; ".join(steps)
    return Fix(summary[0].upper() + summary[1:], tuple(commands), STRICT_CONFIG_LINK)


def _other_fix(facts: ConfigLoadFacts, attempt: LoadAttempt) -> Fix:
    text = attempt.error or ""
    if "trust_remote_code" in text:
        return Fix(
            "The config needs the model's own Python code: read it first, then opt in",
            (("doctor", "--trust-remote-code", "--model", facts.model),),
        )
    if "model_type" in text and "Should have" in text:
        return Fix(
            "config.json names no model_type, so transformers cannot pick a class: re-download it, or add "
            "the model_type of the architecture the weights are",
            _redownload(facts, "config.json"),
        )
    if "does not recognize this architecture" in text or "Unrecognized model" in text:
        needed = FIRST_RELEASE.get(facts.model_type or "") or facts.config_transformers_version
        release = _release(needed)
        if release:
            return Fix(
                f"Upgrade transformers to ≥ {_dotted(release)} (check its torch minimum)",
                (("pip", "install", "-U", f"transformers>={_dotted(release)}"),),
                "https://github.com/huggingface/transformers/releases",
            )
        return Fix(
            "Install transformers from source for brand-new models",
            ("pip install -U git+https://github.com/huggingface/transformers",),
        )
    by_hand = "import sys, transformers; transformers.AutoConfig.from_pretrained(sys.argv[1])"
    return Fix(
        "Re-download the config (a killed download leaves broken files) and load it by hand to see the "
        "full traceback",
        (("python", "-c", by_hand, facts.load_from or facts.model),),
    )


def _redownload(facts: ConfigLoadFacts, *files: str) -> tuple[tuple[str, ...], ...]:
    """A hub download command, or nothing for a local folder (we cannot know where it came from)."""
    if facts.source == "local-folder":
        return ()
    return (("hf", "download", _name(facts), *files, "--force-download"),)


@check(
    "model-config-loads",
    title="Model's config.json loads in the installed transformers",
    section=SECTION,
    needs=(CONFIG_LOAD,),
)
def model_config_loads(ctx: DoctorContext) -> Outcome:
    facts = ctx.needed(CONFIG_LOAD)
    attempt = facts.attempt("config")
    if attempt is None:
        return Outcome.skip("the config was not loaded")
    evidence = [
        Evidence("transformers.version", facts.transformers_version, "transformers (child)"),
        Evidence("config.file", _where(facts), facts.source or "doctor"),
        *_attempt_evidence(attempt, facts),
    ]
    if attempt.status == "loaded":
        return Outcome.ok(
            f"AutoConfig.from_pretrained loads {_name(facts)}'s config as {attempt.loaded_class} "
            f"(transformers {facts.transformers_version})",
            evidence,
        )
    for r in facts.rejected_fields:
        evidence.append(
            Evidence(
                f"config.{r.path}",
                r.value,
                "config.json",
                shell_join(["jq", _jq_path(r.path), "config.json"]),
            )
        )
        evidence.append(
            Evidence(f"config.{r.path}.expected", r.expected or r.message, "transformers (child)")
        )
    stand_in = " (embedded copy of the published file)" if facts.stand_in else ""
    if facts.rejected_fields and attempt.error_type in _ERROR_TYPES_OF_VALIDATION + (
        "TypeError",
        "ValueError",
    ):
        first = facts.rejected_fields[0]
        more = f" (+{len(facts.rejected_fields) - 1} more field(s))" if len(facts.rejected_fields) > 1 else ""
        return Outcome.fail(
            f"transformers {facts.transformers_version} refuses {_name(facts)}'s config.json{stand_in}: "
            f"{attempt.error_type}: {first.message} at {first.path}{more} — from_pretrained stops before "
            "loading any weights",
            evidence,
            _field_fix(facts),
        )
    first_line = (attempt.error or "").splitlines()[0] if attempt.error else ""
    return Outcome.fail(
        f"AutoConfig.from_pretrained fails on {_name(facts)}'s config.json{stand_in}: "
        f"{attempt.error_type}: {first_line}",
        evidence,
        _other_fix(facts, attempt),
    )


@check(
    "tokenizer-generation-config-load",
    title="Tokenizer and generation config load as the run loads them",
    section=SECTION,
    needs=(CONFIG_LOAD,),
)
def tokenizer_generation_config_load(ctx: DoctorContext) -> Outcome:
    facts = ctx.needed(CONFIG_LOAD)
    attempts = [a for a in (facts.attempt("tokenizer"), facts.attempt("generation_config")) if a is not None]
    evidence = [Evidence("transformers.version", facts.transformers_version, "transformers (child)")]
    for attempt in attempts:
        evidence.extend(_attempt_evidence(attempt, facts))
    failed = [a for a in attempts if a.status == "failed" and not a.run_falls_back]
    fallen_back = [a for a in attempts if a.status == "failed" and a.run_falls_back]
    if not failed and fallen_back:
        bad = fallen_back[0]
        return Outcome.warn(
            f"generation_config.json does not load ({bad.error_type}: "
            f"{(bad.error or '').splitlines()[0]}); the run silently falls back to config.json's "
            "generation defaults, so its EOS ids may differ from the model's",
            evidence,
            Fix(
                "Re-download generation_config.json (a killed download leaves it truncated)",
                _redownload(facts, "generation_config.json"),
            ),
        )
    if failed:
        bad = failed[0]
        first_line = (bad.error or "").splitlines()[0] if bad.error else ""
        same = [r.field for r in facts.rejected_fields if r.field in (bad.error or "")]
        why = f" (the same config field as model-config-loads: {same[0]})" if same else ""
        label = "AutoTokenizer" if bad.what == "tokenizer" else "GenerationConfig"
        fix = (
            _field_fix(facts)
            if same
            else Fix(
                f"Re-download the {bad.what.replace('_', ' ')} files; if they are intact, the installed "
                "transformers cannot read them: try the release the checkpoint names in config.json",
                _redownload(facts),
            )
        )
        return Outcome.fail(
            f"{label}.from_pretrained fails{why}: {bad.error_type}: {first_line}", evidence, fix
        )
    loaded = [a for a in attempts if a.status == "loaded"]
    if not loaded:
        notes = "; ".join(dict.fromkeys(a.note or "" for a in attempts))
        return Outcome.skip(f"nothing to load yet: {notes}", evidence)
    parts = [f"{a.what.replace('_', ' ')}: {a.loaded_class}" for a in loaded]
    parts += [
        f"{a.what.replace('_', ' ')} not checked ({a.note})" for a in attempts if a.status == "not-checked"
    ]
    return Outcome.ok("; ".join(parts), evidence)
