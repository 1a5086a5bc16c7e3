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
from run_plan.safe_files import read_text_file

_KNOWN_TOP = {"schema_version", "tool", "created_at", "target", "summary", "checks", "facts", "redactions"}


def read_report_json(path: Path) -> dict[str, Any]:
    """The parsed JSON document of a saved report; a UsageError (exit 2) naming the file otherwise."""
    try:
        doc = json.loads(read_text_file(path))
    except FileNotFoundError:
        raise UsageError(
            f"{path}: no such file", hint="Save a report with: doctor --format json -o report.json"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}", hint=_SAVE_HINT) from None
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
    if isinstance(doc["schema_version"], bool) or not isinstance(doc["schema_version"], int):
        raise UsageError(
            f"{path} is not a doctor JSON report (schema_version {str(doc['schema_version'])[:40]!r})",
            hint=_SAVE_HINT,
        )
    if doc["schema_version"] > SCHEMA_VERSION:
        raise UsageError(
            f"{path} has schema_version {doc['schema_version']}; this doctor reads {SCHEMA_VERSION}",
            hint="Upgrade niah-doctor on this machine.",
        )
    return doc


_SAVE_HINT = "Give a report saved with: doctor --format json -o report.json"


def read_report(path: Path) -> Report:
    """A saved report as the data model; a file that is JSON but not a report's shape (a check without a
    status, evidence that is not a list, an unknown status) is a UsageError naming it, never exit 3."""
    return _as_report(read_report_json(path), path)


def read_report_document(path: Path) -> dict[str, Any]:
    """The parsed document of a saved report whose shape is a report's (as read_report checks it)."""
    doc = read_report_json(path)
    _as_report(doc, path)
    return doc


def _as_report(doc: dict[str, Any], path: Path) -> Report:
    try:
        return report_from_json_dict(doc)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UsageError(
            f"{path} is not a doctor JSON report ({type(exc).__name__}: {str(exc)[:120]})", hint=_SAVE_HINT
        ) from None


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
