"""Default human output, laid out for the terminal it is printed in.

Order: what was planned, the problems (each FAIL/ERROR/WARN with cause, evidence and fix), a compact
one-line-per-check table of the rest with the skipped checks of a section folded into one entry,
then the verdict naming the checks that failed.

Width comes from the terminal (`COLUMNS` first, as `shutil.get_terminal_size` reads it). Prose is
wrapped to it; a shell command never is: a command wrapped mid-line breaks copy-paste, so it may
overflow the width instead (terminals soft-wrap it, and copying a soft-wrapped line joins it again).
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from collections import Counter
from collections.abc import Iterable, Sequence

from doctor.report.model import CheckResult, Report, Status, to_jsonable
from run_plan.units import gib

MIN_WIDTH, MAX_WIDTH = 40, 160  # below 40 nothing fits; beyond 160 prose lines get too long to read
FALLBACK_WIDTH = 100  # a pipe or a file has no width
_EVIDENCE_VALUE_CHARS = 240  # a long value (a JSON blob) is cut here unless --verbose
_SUMMARY_BELOW_UNDER = 28  # fewer columns than this left for a summary: put it on its own line

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
    attn = (plan.get("spec") or {}).get("attn")
    if attn and not any(d.get("name") == "attn" for d in decisions):  # the attention path, always named
        parts.insert(0, f"attn {attn} (given)")
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
        if check.fix.link:
            lines.append("    " + paint(check.fix.link, "dim"))  # a URL: never wrapped either
    return lines


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
    """The report as terminal text; `color=None` means colour unless NO_COLOR is set."""
    width = terminal_width(width)
    paint = _Painter(bool(color) if color is not None else not os.environ.get("NO_COLOR"))
    lines = [paint(f"{report.tool.name} {report.tool.version}", "bold") + f" · {report.created_at}"]
    lines += _wrap(f"target: {target_line(report)}", width, "  ", first="")
    resolved = plan_line(report)
    if resolved:
        lines += _wrap(f"plan: {resolved}", width, "  ", first="")
    found = problems(report)
    if found:
        counts = Counter(c.status.value for c in found)
        lines += ["", paint(f"Problems ({', '.join(f'{n} {s}' for s, n in counts.items())})", "bold")]
        for check in found:
            lines += ["", *_problem_block(check, width, paint, verbose)]
    rest = [c for c in report.checks if c.status not in PROBLEM_ORDER]
    if rest:
        lines += ["", paint("Other checks" if found else "Checks", "bold")]
        lines += _rest_table(rest, width, paint, verbose)
    ok = report.exit_code(strict=strict) == 0
    lines += [""] + [
        paint(line, "green" if ok else "red")
        for line in _wrap(verdict_line(report, strict=strict), width, "  ", first="")
    ]
    hints = []
    if not verbose:
        hints.append("--verbose shows every check's evidence; --format markdown makes a ticket.")
    if report.redactions:
        hints.append(f"Redacted before printing: {', '.join(report.redactions)}.")
    for hint in hints:
        lines += [paint(line, "dim") for line in _wrap(hint, width, "")]
    return "\n".join(line.rstrip() for line in lines) + "\n"
