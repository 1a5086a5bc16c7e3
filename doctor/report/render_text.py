"""Default human output, laid out for the terminal it is printed in.

The default view fits one screen (LINE_BUDGET lines): the verdict first, the planned run, then each
problem as one line of cause and one fix (a command, or the code change with its file:line), then one
line of facts per section. Evidence waits for `-v` (everything, each check on its own) or
`doctor explain CHECK_ID` (one check in full).

Width comes from the terminal (`COLUMNS` first, as `shutil.get_terminal_size` reads it). Prose is
wrapped or cut to it; a shell command never is: a command wrapped mid-line breaks copy-paste, so it may
overflow the width instead (terminals soft-wrap it, and copying a soft-wrapped line joins it again).
The same holds for the code of an edit. Every text from outside is made inert first (run_plan.text).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import textwrap
from collections import Counter
from collections.abc import Iterable, Sequence

from doctor.report.model import CheckResult, Fix, Report, Status, to_jsonable
from doctor.report.overview import section_line, section_status
from run_plan.text import inert_tree
from run_plan.units import gib

MIN_WIDTH, MAX_WIDTH = 40, 160  # below 40 nothing fits; beyond 160 prose lines get too long to read
FALLBACK_WIDTH = 100  # a pipe or a file has no width
_EVIDENCE_VALUE_CHARS = 240  # a long value (a JSON blob) is cut here unless --verbose
_SUMMARY_BELOW_UNDER = 28  # fewer columns than this left for a summary: put it on its own line
LINE_BUDGET = 40  # the default view fits one screen of a laptop terminal

_GLYPH = {Status.PASS: "✓", Status.WARN: "!", Status.FAIL: "✗", Status.SKIP: "-", Status.ERROR: "?"}
_ANSI = {"bold": "1", "dim": "2", "red": "1;31", "green": "32", "yellow": "33", "magenta": "35", "cyan": "36"}
_STYLE = {
    Status.PASS: "green",
    Status.WARN: "yellow",
    Status.FAIL: "red",
    Status.SKIP: "dim",
    Status.ERROR: "magenta",
}
# Problems first, worst first: a failure is what blocks the run, an error is what the doctor could not tell.
PROBLEM_ORDER = (Status.FAIL, Status.ERROR, Status.WARN)


def terminal_width(width: int | None = None) -> int:
    """`width`, else COLUMNS, else the terminal's width, clamped to a readable range."""
    if width is None:
        width = shutil.get_terminal_size(fallback=(0, 0)).columns  # COLUMNS, then stdout's terminal
    if not width:
        width = _stderr_columns() or FALLBACK_WIDTH
    return max(MIN_WIDTH, min(MAX_WIDTH, width))


def _stderr_columns() -> int:
    """`doctor | less`: stdout is a pipe, but stderr is usually still the terminal the user reads."""
    try:
        return os.get_terminal_size(2).columns
    except OSError:
        return 0


class _Painter:
    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, style: str | None) -> str:
        if not self.color or not style or not text:
            return text
        return f"\x1b[{_ANSI[style]}m{text}\x1b[0m"


def _wrap(text: str, width: int, indent: str, first: str | None = None) -> list[str]:
    """Wrap prose at word boundaries; never split an id or a flag at its hyphens."""
    return textwrap.wrap(
        text,
        width=width,
        initial_indent=indent if first is None else first,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    ) or [(indent if first is None else first).rstrip()]


def _one_line(text: str, room: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= room else text[: max(room - 1, 1)].rstrip() + "…"


_ASIDE = re.compile(r"\s*\([^()]*\)")


def _headline(text: str, room: int) -> str:
    """`text` in one line of `room` columns: asides in parentheses go first (the earliest first: a
    sentence ends on its point), so it keeps its verb ("no GPU visible, but --quant bnb-4bit needs a
    CUDA GPU"); then it is cut."""
    text = " ".join(text.split())
    while len(text) > room and (aside := _ASIDE.search(text)):
        text = text[: aside.start()] + text[aside.end() :]
    return _one_line(text, room)


def _value_text(value: object, verbose: bool, key: str = "") -> str:
    if key.endswith("bytes") and isinstance(value, int) and not isinstance(value, bool):
        return f"{gib(value)} ({value:,} B)" if value >= 1024 else f"{value} B"  # raw counts are unreadable
    text = value if isinstance(value, str) else json.dumps(to_jsonable(value), ensure_ascii=False)
    return text if verbose else _one_line(text, _EVIDENCE_VALUE_CHARS)


def problems(report: Report) -> list[CheckResult]:
    """FAIL, then ERROR, then WARN rows, each group in report order."""
    return [c for status in PROBLEM_ORDER for c in report.checks if c.status is status]


def verdict_line(report: Report, *, strict: bool = False, markup: str = "") -> str:
    """`PROBLEMS FOUND: 1 fail (memory-fit), 1 warn (x), 19 pass, 20 skip` — names every non-pass, non-skip.

    `markup` wraps each id (e.g. "`" for markdown)."""
    head = report.verdict(strict=strict).split(":", 1)[0]
    parts = []
    for status in (*PROBLEM_ORDER, Status.PASS, Status.SKIP):
        ids = [c.id for c in report.checks if c.status is status]
        if not ids:
            continue
        named = f" ({', '.join(f'{markup}{i}{markup}' for i in ids)})" if status in PROBLEM_ORDER else ""
        parts.append(f"{len(ids)} {status.value}{named}")
    return f"{head}: {', '.join(parts)}" if parts else head


def target_line(report: Report) -> str:
    """The planned run in one line: only what was given (defaults are noise)."""
    labels = []
    for key, value in report.target.items():
        if value in (None, (), [], "", False) or (
            isinstance(value, (str, int, float)) and (key, value) in _DEFAULTS
        ):
            continue
        if key == "context" and isinstance(value, int):
            value = f"{value:,}"
        if isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value)
        name = key.replace("_", "-")
        labels.append(name if value is True else f"{name} {value}")  # a switch that is on: its name says it
    return " · ".join(labels) if labels else "no --model/--context given: machine checks only"


def plan_line(report: Report) -> str | None:
    """What the doctor decided for the run (every "auto"), and which planned lengths fit: one line."""
    plan = report.attachments.get("plan") if isinstance(report.attachments, dict) else None
    if not isinstance(plan, dict) or not (plan.get("spec") or {}).get("model"):
        return None  # machine checks only: there is no run to plan
    decisions = [d for d in plan.get("decisions") or [] if isinstance(d, dict)]
    parts = [f"{d['name'].replace('_', '-')} {d['value']} ({d['why'].split(':')[0]})" for d in decisions]
    spec = plan.get("spec") or {}
    attn = spec.get("attn")
    if attn and not any(d.get("name") == "attn" for d in decisions):  # the attention path, always named
        parts.insert(0, f"attn {attn} (given)")
    experts = spec.get("experts")
    if (
        experts not in (None, "auto")
        and spec.get("backend", "transformers") == "transformers"
        and not any(d.get("name") == "experts" for d in decisions)
    ):  # the experts path the user chose, named as the attention is (a server computes its own)
        parts.insert(1 if attn else 0, f"experts {experts} (given)")
    lengths = [x for x in plan.get("lengths") or [] if isinstance(x, dict)]
    if lengths:
        parts.append(
            "lengths " + ", ".join(f"{x['tokens']:,} {'fits' if x['fits'] else 'too long'}" for x in lengths)
        )
    if plan.get("max_context_tokens"):
        parts.append(f"longest that fits ≈ {plan['max_context_tokens']:,}")
    sources = (plan.get("spec") or {}).get("sources") or {}
    from_scripts: dict[str, list[str]] = {}
    for name, source in sorted(sources.items()):
        if str(source).startswith("script "):
            from_scripts.setdefault(str(source).removeprefix("script "), []).append(name.replace("_", "-"))
    parts += [f"{', '.join(names)} from {where}" for where, names in from_scripts.items()]
    return " · ".join(parts) if parts else None


# RunSpec values that are flags' defaults: showing them on every report hides what the user chose.
_DEFAULTS = {
    ("quant", "none"),
    ("bnb_4bit_type", "nf4"),
    ("double_quant", True),
    ("dtype", "auto"),
    ("attn", "sdpa"),
    ("attn", "auto"),
    ("attn", "niah_lean"),  # what auto picks on a GPU: the plan line names the attention either way
    ("experts", "auto"),
    ("probe_timeout_s", 60.0),
    ("kv_dtype", "auto"),
    ("backend", "transformers"),
}


def _problem_block(check: CheckResult, width: int, paint: _Painter, verbose: bool) -> list[str]:
    label = f"{_GLYPH[check.status]} {check.status.value.upper()}"
    lines = [f"{paint(label, _STYLE[check.status])} {paint(check.id, 'bold')} — {check.title}"]
    if (
        len(f"{label} {check.id} — {check.title}") > width
    ):  # the title wraps under the id, never the id itself
        lines = [f"{paint(label, _STYLE[check.status])} {paint(check.id, 'bold')}"]
        lines += _wrap(check.title, width, "  ")
    lines += _wrap(check.summary, width, "  ")
    if check.error:
        lines += _wrap(f"error: {check.error}", width, "    ", first="  ")
    if check.evidence:
        lines.append("  " + paint("evidence:", "dim"))
    for ev in check.evidence:
        lines += _wrap(
            f"{ev.key} = {_value_text(ev.value, verbose, ev.key)} [{ev.source}]",
            width,
            "      ",
            first="    ",
        )
        if ev.how:
            lines.append("      " + paint(f"see: $ {ev.how}", "dim"))  # a command: one line, never wrapped
    if check.fix:
        lines += _wrap(f"fix: {check.fix.summary}", width, "       ", first="  ")
        lines += ["    " + paint(f"$ {cmd}", "bold") for cmd in check.fix.commands]
        for edit in check.fix.edits:
            lines += _edit_lines(edit.where, edit.code, paint, "    ")
        if check.fix.link:
            lines.append("    " + paint(check.fix.link, "dim"))  # a URL: never wrapped either
    return lines


def _edit_lines(where: str, code: str, paint: _Painter, indent: str) -> list[str]:
    """A change in a script: where, then the code as it should read (never wrapped: it is copied)."""
    return [f"{indent}in {where}, write:", indent + "  " + paint(code, "bold")]


def _skip_entry(skips: Sequence[CheckResult], width: int, paint: _Painter) -> list[str]:
    """All skipped checks of a section in one entry: their ids and the (most common) reason."""
    reasons = Counter(c.summary for c in skips)
    reason, _ = reasons.most_common(1)[0]
    if len(reasons) > 1:
        reason += f" (+{len(reasons) - 1} other reason{'s' if len(reasons) > 2 else ''}: --verbose)"
    text = f"{_GLYPH[Status.SKIP]} {len(skips)} skipped: {', '.join(c.id for c in skips)} — {reason}"
    return [paint(line, "dim") for line in _wrap(text, width, "      ", first="  ")]


def _row(check: CheckResult, id_width: int, width: int, paint: _Painter, verbose: bool) -> list[str]:
    glyph = paint(_GLYPH[check.status], _STYLE[check.status])
    room = width - 4 - id_width - 2
    if verbose:
        lines = [f"  {glyph} {check.id}"]
        lines += _wrap(check.summary, width, "      ")
        for ev in check.evidence:
            lines += [
                paint(line, "dim")
                for line in _wrap(
                    f"{ev.key} = {_value_text(ev.value, True, ev.key)} [{ev.source}]",
                    width,
                    "          ",
                    first="        ",
                )
            ]
        return lines
    if room < _SUMMARY_BELOW_UNDER:
        return [f"  {glyph} {check.id}", "      " + _one_line(check.summary, width - 6)]
    return [f"  {glyph} {check.id.ljust(id_width)}  {_one_line(check.summary, room)}"]


def _sections(checks: Iterable[CheckResult]) -> dict[str, list[CheckResult]]:
    out: dict[str, list[CheckResult]] = {}
    for check in checks:
        out.setdefault(check.section, []).append(check)
    return out


def _rest_table(rest: Sequence[CheckResult], width: int, paint: _Painter, verbose: bool) -> list[str]:
    shown = [c for c in rest if c.status is not Status.SKIP or verbose]
    id_width = max((len(c.id) for c in shown), default=0)
    lines: list[str] = []
    for section, checks in _sections(rest).items():
        lines.append(paint(section, "bold"))
        for check in checks:
            if check.status is not Status.SKIP or verbose:
                lines += _row(check, id_width, width, paint, verbose)
        skips = [c for c in checks if c.status is Status.SKIP]
        if skips and not verbose:
            lines += _skip_entry(skips, width, paint)
    return lines


def render_text(
    report: Report,
    *,
    verbose: bool = False,
    strict: bool = False,
    color: bool | None = False,
    width: int | None = None,
) -> str:
    """The report as terminal text; `color=None` means colour unless NO_COLOR is set.

    Default: the one-screen view. `verbose`: every check with its evidence, problems in full first."""
    width = terminal_width(width)
    paint = _Painter(bool(color) if color is not None else not os.environ.get("NO_COLOR"))
    report = inert_tree(report)  # before any of our own escape codes go in
    lines = _full(report, width, paint, strict) if verbose else _overview(report, width, paint, strict)
    return "\n".join(line.rstrip() for line in lines) + "\n"


def render_check(
    report: Report, check_id: str, *, color: bool | None = False, width: int | None = None, source: str = ""
) -> str:
    """One check in full (`doctor explain CHECK_ID`): cause, every piece of evidence, every fix; `source`
    says which report it came from."""
    width = terminal_width(width)
    paint = _Painter(bool(color) if color is not None else not os.environ.get("NO_COLOR"))
    report = inert_tree(report)
    check = next(c for c in report.checks if c.id == check_id)
    lines = _problem_block(check, width, paint, verbose=True)
    if source:
        tail = _wrap(f"{source} · {report.created_at}", width, "  ", first="")
        lines += ["", *(paint(line, "dim") for line in tail)]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _header(report: Report, width: int) -> list[str]:
    lines = _wrap(f"target: {target_line(report)}", width, "  ", first="")
    resolved = plan_line(report)
    if resolved:
        lines += _wrap(f"plan: {resolved}", width, "  ", first="")
    return lines


def _verdict(report: Report, width: int, paint: _Painter, strict: bool, *, named: bool) -> list[str]:
    ok = report.exit_code(strict=strict) == 0
    text = verdict_line(report, strict=strict) if named else _counts_line(report, strict)
    return [paint(line, "green" if ok else "red") for line in _wrap(text, width, "  ", first="")]


def _counts_line(report: Report, strict: bool) -> str:
    """`PROBLEMS FOUND: 3 fail, 1 warn · 25 pass, 17 skip` — the problems themselves follow."""
    head = report.verdict(strict=strict).split(":", 1)[0]
    counts = report.counts()
    bad = ", ".join(f"{counts[s.value]} {s.value}" for s in PROBLEM_ORDER if counts[s.value])
    rest = ", ".join(f"{counts[s.value]} {s.value}" for s in (Status.PASS, Status.SKIP) if counts[s.value])
    return f"{head}: " + " · ".join(part for part in (bad, rest) if part) if bad or rest else head


def _overview(report: Report, width: int, paint: _Painter, strict: bool) -> list[str]:
    head = [*_verdict(report, width, paint, strict, named=False), *_header(report, width)]
    sections = _sections(report.checks)
    section_rows = _section_rows(report, sections, width, paint)
    found = problems(report)
    footer = _footer(report, width, paint, found)
    room = LINE_BUDGET - len(head) - len(section_rows) - len(footer) - 3  # three blank separators
    lines = [*head, ""]
    if found:
        lines += [*_problem_rows(found, width, paint, room), ""]
    lines += [*section_rows, "", *footer]
    return lines


def _problem_rows(found: Sequence[CheckResult], width: int, paint: _Painter, room: int) -> list[str]:
    """Each problem in two lines (three for a code change); those beyond the room named in one line."""
    rows: list[str] = []
    for index, check in enumerate(found):
        block = _problem_row(check, width, paint)
        last = index == len(found) - 1
        if rows and len(rows) + len(block) + (0 if last else 1) > room:
            rest = [c.id for c in found[index:]]
            text = f"+{len(rest)} more (rerun with -v): {', '.join(rest)}"
            return [*rows, paint("  " + _one_line(text, width - 2), "dim")]
        rows += block
    return rows


def _problem_row(check: CheckResult, width: int, paint: _Painter) -> list[str]:
    glyph = paint(f"{_GLYPH[check.status]} {check.id}", _STYLE[check.status])
    cause = _headline(check.summary, max(width - len(check.id) - 4, 10))
    return [f"{glyph}: {cause}", *_fix_line(check.fix, width, paint)]


def _fix_line(fix: Fix | None, width: int, paint: _Painter) -> list[str]:
    """The one fix a problem shows by default: its first command, else its first code change, else its
    sentence cut to one line."""
    if fix is None:
        return []
    if fix.commands:
        return ["  " + paint(f"$ {fix.commands[0]}", "bold")]
    if fix.edits:
        return _edit_lines(fix.edits[0].where, fix.edits[0].code, paint, "  ")
    return ["  " + _headline(f"fix: {fix.summary}", width - 2)]


def _section_rows(
    report: Report, sections: dict[str, list[CheckResult]], width: int, paint: _Painter
) -> list[str]:
    name_width = max((len(name) for name in sections), default=0)
    rows = []
    for name, checks in sections.items():
        status = section_status(checks)
        label = f"{_GLYPH[status]} {name.ljust(name_width)}"
        facts = _headline(section_line(report, name, checks), max(width - len(label) - 2, 10))
        style = "dim" if status is Status.SKIP else None
        rows.append(
            f"{paint(_GLYPH[status], _STYLE[status])} {paint(name.ljust(name_width), 'bold')}  "
            + paint(facts, style)
        )
    return rows


def _footer(report: Report, width: int, paint: _Painter, found: Sequence[CheckResult]) -> list[str]:
    example = found[0].id if found else next((c.id for c in report.checks), "CHECK_ID")
    parts = [
        f"{report.tool.name} {report.tool.version} · {report.created_at}",
        f"evidence and every fix step: rerun with -v, or `doctor explain {example}`",
    ]
    if report.redactions:
        parts.append(f"redacted: {', '.join(report.redactions)}")
    return [paint(line, "dim") for line in _wrap(" · ".join(parts), width, "  ", first="")]


def _full(report: Report, width: int, paint: _Painter, strict: bool) -> list[str]:
    """Everything: problems in full, every check with its evidence, the verdict naming the failures."""
    lines = [paint(f"{report.tool.name} {report.tool.version}", "bold") + f" · {report.created_at}"]
    lines += _header(report, width)
    found = problems(report)
    if found:
        counts = Counter(c.status.value for c in found)
        lines += ["", paint(f"Problems ({', '.join(f'{n} {s}' for s, n in counts.items())})", "bold")]
        for check in found:
            lines += ["", *_problem_block(check, width, paint, True)]
    rest = [c for c in report.checks if c.status not in PROBLEM_ORDER]
    if rest:
        lines += ["", paint("Other checks" if found else "Checks", "bold")]
        lines += _rest_table(rest, width, paint, True)
    lines += ["", *_verdict(report, width, paint, strict, named=True)]
    if report.redactions:
        lines += [
            paint(line, "dim")
            for line in _wrap(f"Redacted before printing: {', '.join(report.redactions)}.", width, "")
        ]
    return lines
