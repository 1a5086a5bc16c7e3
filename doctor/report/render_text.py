"""Default human output: a status table, then cause, evidence and fix for every non-pass check.

rich is used here and in the CLIs only; the model stays stdlib-only.
"""

from __future__ import annotations

import io
import json
import os

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from doctor.report.model import CheckResult, Report, Status, to_jsonable

_STYLE = {Status.PASS: "green", Status.WARN: "yellow", Status.FAIL: "bold red",
          Status.SKIP: "dim", Status.ERROR: "magenta"}
_GLYPH = {Status.PASS: "✓", Status.WARN: "!", Status.FAIL: "✗", Status.SKIP: "-", Status.ERROR: "?"}


def _make_console(file: io.TextIOBase, color: bool | None, width: int | None) -> Console:
    no_color = color is False or (color is None and bool(os.environ.get("NO_COLOR")))
    return Console(file=file, no_color=no_color, force_terminal=color if color else None,
                   width=width or 110, highlight=False, soft_wrap=False)


def _details(console: Console, check: CheckResult) -> None:
    style = _STYLE[check.status]
    console.print(f"[{style}]{check.status.value.upper()}[/] [bold]{check.id}[/] — {escape(check.title)}")
    console.print(f"  {escape(check.summary)}")
    if check.error:
        console.print(f"  [magenta]error:[/] {escape(check.error)}")
    for ev in check.evidence:
        value = ev.value if isinstance(ev.value, str) else json.dumps(to_jsonable(ev.value))
        how = f"  [dim](see: {escape(ev.how)})[/]" if ev.how else ""
        console.print(f"  [dim]evidence:[/] {escape(ev.key)} = {escape(str(value))} [dim]\\[{ev.source}][/]{how}")
    if check.fix:
        console.print(f"  [cyan]fix:[/] {escape(check.fix.summary)}")
        for cmd in check.fix.commands:
            console.print(f"    [bold]$ {escape(cmd)}[/]")
        if check.fix.link:
            console.print(f"    [dim]{escape(check.fix.link)}[/]")
    console.print()


def render_text(report: Report, *, verbose: bool = False, strict: bool = False,
                color: bool | None = False, width: int | None = None) -> str:
    buf = io.StringIO()
    console = _make_console(buf, color, width)
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("", width=1)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("summary", overflow="fold")
    section = None
    for check in report.checks:
        if check.section != section:
            section = check.section
            table.add_row("", f"[bold underline]{escape(section)}[/]", "", "")
        style = _STYLE[check.status]
        table.add_row(f"[{style}]{_GLYPH[check.status]}[/]", check.id, f"[{style}]{check.status.value}[/]",
                      escape(check.summary))
    console.print(f"[bold]{report.tool.name} {report.tool.version}[/]  {escape(report.created_at)}")
    console.print(table)
    console.print()
    shown = [c for c in report.checks if verbose or c.status != Status.PASS]
    if shown:
        for check in shown:
            _details(console, check)
    verdict_style = "green" if report.exit_code(strict=strict) == 0 else "bold red"
    console.print(f"[{verdict_style}]{escape(report.verdict(strict=strict))}[/]")
    if not verbose and len(shown) < len(report.checks):
        console.print("[dim]Passing checks are summarized; run with --verbose for their evidence, "
                      "--format markdown for a ticket.[/]")
    if report.redactions:
        console.print(f"[dim]Redacted before printing: {', '.join(report.redactions)}[/]")
    return buf.getvalue()
