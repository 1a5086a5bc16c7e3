"""Read a `--format json` report back into the data model, so a saved report can be re-rendered or diffed.

Readers ignore keys they do not know (docs/report-format.md), so this accepts reports from later
versions of the same schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from doctor.report.model import (
    SCHEMA_VERSION,
    CheckResult,
    CodeEdit,
    Evidence,
    Fix,
    Report,
    Status,
    ToolInfo,
)
from run_plan.errors import UsageError

_KNOWN_TOP = {"schema_version", "tool", "created_at", "target", "summary", "checks", "facts", "redactions"}


def read_report_json(path: Path) -> dict[str, Any]:
    """The parsed JSON document of a saved report; a UsageError (exit 2) naming the file otherwise."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(
            f"{path}: no such file", hint="Save a report with: doctor --format json -o report.json"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{path} is not JSON ({exc.msg}, line {exc.lineno})",
            hint="Give a report saved with: doctor --format json -o report.json",
        ) from None
    if not isinstance(doc, dict) or "checks" not in doc or "schema_version" not in doc:
        raise UsageError(
            f"{path} is not a doctor JSON report (no schema_version/checks)",
            hint="Give a report saved with: doctor --format json -o report.json",
        )
    if int(doc["schema_version"]) > SCHEMA_VERSION:
        raise UsageError(
            f"{path} has schema_version {doc['schema_version']}; this doctor reads {SCHEMA_VERSION}",
            hint="Upgrade niah-doctor on this machine.",
        )
    return doc


def report_from_json_dict(doc: dict[str, Any]) -> Report:
    """The inverse of report_to_json_dict (tuples come back as tuples, statuses as Status)."""
    tool = doc.get("tool") or {}
    return Report(
        tool=ToolInfo(
            str(tool.get("name", "niah-doctor")), str(tool.get("version", "?")), tuple(tool.get("argv") or ())
        ),
        created_at=str(doc.get("created_at", "")),
        target=dict(doc.get("target") or {}),
        checks=tuple(_check(c) for c in doc.get("checks") or ()),
        facts=dict(doc.get("facts") or {}),
        attachments={k: v for k, v in doc.items() if k not in _KNOWN_TOP},
        redactions=tuple(doc.get("redactions") or ()),
        schema_version=int(doc.get("schema_version", SCHEMA_VERSION)),
    )


def _check(c: dict[str, Any]) -> CheckResult:
    fix = c.get("fix")
    return CheckResult(
        id=c["id"],
        title=c.get("title", c["id"]),
        section=c.get("section", "other"),
        status=Status(c["status"]),
        summary=c.get("summary", ""),
        evidence=tuple(_evidence(e) for e in c.get("evidence") or ()),
        fix=_fix(fix) if fix else None,
        duration_ms=int(c.get("duration_ms") or 0),
        error=c.get("error"),
    )


def _fix(fix: dict[str, Any]) -> Fix:
    edits = tuple(
        CodeEdit(str(e.get("path", "")), e.get("line"), str(e.get("code", "")))
        for e in fix.get("edits") or ()
        if isinstance(e, dict)
    )
    # Commands come back as written: a saved report from another doctor is shown, not re-validated.
    fix_obj = Fix(fix.get("summary", ""), (), fix.get("link"), edits)
    object.__setattr__(fix_obj, "commands", tuple(str(c) for c in fix.get("commands") or ()))
    return fix_obj


def _evidence(e: dict[str, Any]) -> Evidence:
    evidence = Evidence(e["key"], e.get("value"), e.get("source", ""))
    object.__setattr__(evidence, "how", e.get("how"))  # as written, like a fix's commands
    return evidence
