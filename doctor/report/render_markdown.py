"""`--format markdown`: paste into a bug ticket.

Order: the verdict naming the failing checks, the problems (cause, evidence, fix), the machine in a
short table, the other checks (skips in one line), the memory estimate folded, and the raw facts only
when asked (`--facts`), cut to fit. A GitHub issue body holds 65,536 characters; the whole report stays
under HARD_LIMIT so the user has room for their own words.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from doctor.report.environment import environment_rows
from doctor.report.model import CheckResult, Report, Status, to_jsonable
from doctor.report.render_text import plan_line, problems, target_line, verdict_line
from run_plan.text import inert_tree
from run_plan.units import gib

HARD_LIMIT = 60_000  # characters; a GitHub issue body holds 65,536
FACTS_LIMIT = 20_000  # characters of raw facts JSON; the rest is in `--format json`
ATTACHMENT_LIMIT = 6_000  # characters per folded attachment (e.g. the memory estimate)
VALUE_LIMIT = 300  # characters of one evidence value

_BADGE = {
    Status.PASS: "✅ pass",
    Status.WARN: "⚠️ warn",
    Status.FAIL: "❌ fail",
    Status.SKIP: "⏭️ skip",
    Status.ERROR: "💥 error",
}
# Outside code spans: characters Markdown or HTML would act on ("model.layers.*.x" italicised, "<redacted:X>"
# swallowed as an HTML tag).
# Intraword "_" (x86_64, max_memory) never emphasises in GFM, and "~/" (a home path) never strikes through:
# left alone so the pasted source stays readable.
_SPECIAL = re.compile(r"([\\*\[\]<>|]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])|~(?!/))")
_FULL_JSON = "`doctor --format json -o report.json` keeps everything; attach that file"


def md_text(text: str) -> str:
    """Escape prose for Markdown, leaving `code spans` as they are; one line."""
    parts = " ".join(str(text).split()).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: treat it all as prose
        parts = [" ".join(str(text).split()).replace("`", "'")]
    return "`".join(p if i % 2 else _SPECIAL.sub(r"\\\1", p) for i, p in enumerate(parts))


def md_code(text: str, *, cell: bool = False) -> str:
    """An inline code span that survives backticks in the text; in a table cell `|` must be escaped even
    inside code (GFM splits cells before it reads code spans)."""
    text = " ".join(str(text).split())
    if cell:
        text = text.replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"


def md_cell(text: str) -> str:
    """md_text for a table cell: pipes inside code spans escaped too."""
    parts = md_text(text).split("`")
    return "`".join(p.replace("|", "\\|") if i % 2 else p for i, p in enumerate(parts))


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _value(value: Any, key: str = "") -> str:
    if key.endswith("bytes") and isinstance(value, int) and not isinstance(value, bool):
        return f"{gib(value)} ({value:,} B)" if value >= 1024 else f"{value} B"
    text = value if isinstance(value, str) else json.dumps(to_jsonable(value), ensure_ascii=False)
    return _cut(text, VALUE_LIMIT)


def _problem(check: CheckResult) -> list[str]:
    lines = [
        f"#### {_BADGE[check.status]} `{check.id}` — {md_text(check.title)}",
        "",
        md_text(check.summary),
        "",
    ]
    if check.error:
        lines += ["**Error inside the doctor:**", "", "```text", _cut(check.error, 2_000), "```", ""]
    if check.evidence:
        lines += ["| Evidence | Value | Source | See it yourself |", "| --- | --- | --- | --- |"]
        for ev in check.evidence:
            how = md_code(ev.how, cell=True) if ev.how else ""
            lines.append(
                f"| {md_code(ev.key, cell=True)} | {md_cell(_value(ev.value, ev.key))} | "
                f"{md_cell(ev.source)} | {how} |"
            )
        lines.append("")
    if check.fix:
        lines += [f"**Fix:** {md_text(check.fix.summary)}", ""]
        if check.fix.commands:
            lines += ["```bash", *check.fix.commands, "```", ""]
        for edit in check.fix.edits:  # a change in a script: code at its line, never a shell block
            code = edit.code.replace("```", "'''")
            lines += [f"In {md_code(edit.where)}, write:", "", "```python", code, "```", ""]
        if check.fix.link:
            lines += [f"See: <{check.fix.link}>", ""]
    return lines


def _environment(report: Report) -> list[str]:
    rows = environment_rows(to_jsonable(report.facts))
    if not rows:
        return []
    return [
        "### Environment",
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {md_cell(label)} | {md_cell(value)} |" for label, value in rows),
        "",
    ]


def skipped_line(skips: Iterable[CheckResult]) -> str:
    """All skipped checks in one line, grouped by their reason."""
    by_reason: dict[str, list[str]] = {}
    for check in skips:
        by_reason.setdefault(check.summary, []).append(f"`{check.id}`")
    total = sum(len(ids) for ids in by_reason.values())
    groups = "; ".join(f"{md_text(reason)}: {', '.join(ids)}" for reason, ids in by_reason.items())
    return f"**Skipped ({total}):** {groups}"


def _other_checks(report: Report) -> list[str]:
    rest = [c for c in report.checks if c.status in (Status.PASS, Status.SKIP)]
    shown = [c for c in rest if c.status is Status.PASS]
    skips = [c for c in rest if c.status is Status.SKIP]
    if not rest:
        return []
    lines = ["### Other checks", ""]
    if shown:
        lines += ["| Status | Check | Summary |", "| --- | --- | --- |"]
        lines += [f"| {_BADGE[c.status]} | `{c.id}` | {md_cell(c.summary)} |" for c in shown]
        lines.append("")
    if skips:
        lines += [skipped_line(skips), ""]
    return lines


def _folded_json(title: str, value: Any, limit: int) -> list[str]:
    text = json.dumps(to_jsonable(value), indent=1, ensure_ascii=False)
    note = []
    if len(text) > limit:
        note = [f"_{md_text(title)} cut at {limit:,} of {len(text):,} characters; {_FULL_JSON}._", ""]
        text = text[:limit].rsplit("\n", 1)[0] + "\n…"
    return [
        f"<details><summary>{md_text(title)}</summary>",
        "",
        "```json",
        text.replace("```", "'''"),
        "```",
        "",
        *note,
        "</details>",
        "",
    ]


def render_markdown(report: Report, *, strict: bool = False, facts: bool = False) -> str:
    """The ticket. `facts=True` appends the raw facts, cut to keep the whole under HARD_LIMIT."""
    report = inert_tree(report)  # a viewer that shows raw text (a terminal `cat`) must act on none of it
    lines = [
        f"## {report.tool.name} {report.tool.version} — {md_text(verdict_line(report, strict=strict, markup='`'))}",
        "",
        f"- Command: {md_code(report.tool.command_line)}",  # shell-quoted: safe to paste
        f"- Planned run: {md_text(target_line(report))}",
        *([f"- Resolved plan: {md_text(resolved)}"] if (resolved := plan_line(report)) else []),
        f"- Created: {report.created_at}",
        "",
    ]
    found = problems(report)
    if found:
        lines += ["### Problems", ""]
        for check in found:
            lines += _problem(check)
    lines += _environment(report)
    lines += _other_checks(report)
    if facts:  # the attachments (e.g. the memory estimate) are raw numbers too: summarised by the checks
        for key, value in report.attachments.items():
            lines += _folded_json(f"{key} (JSON)", value, ATTACHMENT_LIMIT)
    if report.redactions:
        lines += [f"_Redacted before printing: {md_text(', '.join(report.redactions))}._", ""]
    body = "\n".join(lines)
    if facts:
        room = HARD_LIMIT - len(body) - 400  # the note and the <details> wrapper
        if room > 1_000:
            body += "\n" + "\n".join(_folded_json("Raw facts", report.facts, min(FACTS_LIMIT, room)))
        else:
            body += f"\n_Raw facts left out to fit a ticket; {_FULL_JSON}._\n"
    elif report.facts or report.attachments:
        body += f"\n_Raw facts not included (add `--facts`); {_FULL_JSON}._\n"
    if len(body) > HARD_LIMIT:  # only with pathological evidence: never hand over a body GitHub refuses
        body = (
            body[: HARD_LIMIT - 200].rsplit("\n", 1)[0] + f"\n\n_Report cut at {HARD_LIMIT:,} characters; "
            f"{_FULL_JSON}._\n"
        )
    return body.rstrip("\n") + "\n"
