"""`--format markdown`: paste into a bug ticket. Verdict, summary table, then raw facts in <details>."""

from __future__ import annotations

import json

from doctor.report.model import CheckResult, Report, Status, to_jsonable

_BADGE = {Status.PASS: "✅ pass", Status.WARN: "⚠️ warn", Status.FAIL: "❌ fail",
          Status.SKIP: "⏭️ skip", Status.ERROR: "💥 error"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _check_details(check: CheckResult) -> list[str]:
    lines = [f"<details><summary><code>{check.id}</code> — {_BADGE[check.status]}: {_cell(check.summary)}"
             "</summary>", ""]
    if check.error:
        lines += ["**Error inside the doctor:**", "", "```text", check.error, "```", ""]
    if check.evidence:
        lines += ["| Evidence | Value | Source | See it yourself |", "| --- | --- | --- | --- |"]
        for ev in check.evidence:
            value = ev.value if isinstance(ev.value, str) else json.dumps(to_jsonable(ev.value))
            how = f"`{_cell(ev.how)}`" if ev.how else ""
            lines.append(f"| `{ev.key}` | {_cell(str(value))} | {ev.source} | {how} |")
        lines.append("")
    if check.fix:
        lines += [f"**Fix:** {check.fix.summary}", ""]
        if check.fix.commands:
            lines += ["```bash", *check.fix.commands, "```", ""]
        if check.fix.link:
            lines += [f"See: {check.fix.link}", ""]
    lines += ["</details>", ""]
    return lines


def render_markdown(report: Report, *, strict: bool = False) -> str:
    lines = [
        f"## {report.tool.name} {report.tool.version} report — {report.verdict(strict=strict)}",
        "",
        f"- Command: `{' '.join(report.tool.argv)}`",
        f"- Created: {report.created_at}",
    ]
    for key, value in report.target.items():
        if value not in (None, (), [], ""):
            lines.append(f"- Target {key}: `{value}`")
    lines += ["", "| Status | Check | Summary |", "| --- | --- | --- |"]
    lines += [f"| {_BADGE[c.status]} | `{c.id}` | {_cell(c.summary)} |" for c in report.checks]
    lines += ["", "### Details", ""]
    for check in report.checks:
        if check.status != Status.PASS or check.evidence:
            lines += _check_details(check)
    for key, value in report.attachments.items():
        lines += [f"<details><summary>{key}</summary>", "", "```json",
                  json.dumps(to_jsonable(value), indent=2, ensure_ascii=False), "```", "", "</details>", ""]
    lines += ["<details><summary>Raw facts</summary>", "", "```json",
              json.dumps(to_jsonable(report.facts), indent=2, ensure_ascii=False), "```", "", "</details>", ""]
    if report.redactions:
        lines.append(f"_Redacted before printing: {', '.join(report.redactions)}._")
    return "\n".join(lines) + "\n"
