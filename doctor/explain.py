"""`doctor explain CHECK_ID`: one check of a report in full — cause, every piece of evidence, every fix.

The default text report shows each problem in two lines; this is where the rest is. It reads the last
report this machine's `doctor` printed (kept in the tool cache: `last-report.json`, already redacted
like every output), or a saved `--format json` report given with `--report`.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import click

from doctor.boundary import debug_option
from doctor.report.load import read_report
from doctor.report.model import Report
from run_plan.errors import UsageError
from run_plan.safe_files import tool_cache_dir, write_atomic_text

LAST_REPORT = "last-report.json"


def last_report_path() -> Path:
    return tool_cache_dir(LAST_REPORT)


def remember_report(json_text: str) -> None:
    """Keep the report for a later `doctor explain`; a cache that cannot be written costs only that."""
    path = last_report_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic_text(path, json_text)
    except OSError:
        pass


def _load(report_path: str | None) -> tuple[Report, str]:
    if report_path:
        return read_report(Path(report_path)), report_path
    path = last_report_path()
    if not path.is_file():
        raise UsageError(
            "no report to explain yet: this machine's doctor has not printed one",
            hint="Run the doctor first (e.g. doctor --model ORG/NAME --context 128k), or give --report FILE.json.",
        )
    return read_report(path), "the last report"


_SHOWN = 60  # characters of an unknown id echoed back: an id is a few words, anything longer is pasted text


def _unknown(check_id: str, report: Report, where: str) -> UsageError:
    from doctor.registry import load_checks

    known = [spec.id for spec in load_checks()]
    if check_id in known:
        return UsageError(
            f"{where} ({report.tool.command_line}) did not run {check_id}",
            hint=f"Run the doctor with the check included, e.g. doctor --only {check_id} [the same flags].",
        )
    # ids are lower-case words joined by dashes: ATTN_MODEL_SUPPORT still finds attn-model-support
    close = difflib.get_close_matches(check_id.strip().lower().replace("_", "-"), known, n=1)
    return UsageError(
        f"no check named {check_id[:_SHOWN]!r}" + ("…" if len(check_id) > _SHOWN else ""),
        hint=f"Did you mean {close[0]}? (doctor --list shows every id)"
        if close
        else "doctor --list shows every id.",
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.argument("check_id")
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    help="A saved `doctor --format json` report. [default: the last report doctor printed here]",
)
@click.option("--color/--no-color", default=None, help="Colour (default: when stdout is a terminal).")
@debug_option()
def explain_command(check_id: str, report_path: str | None, color: bool | None) -> int:
    """Show one check in full: its cause, every piece of evidence (and how to see it yourself), every fix.

    \b
    Examples:
      doctor --model meta-llama/Llama-4-Scout-17B-16E-Instruct --quant bnb-4bit --context 128k
      doctor explain memory-fit                  # the memory-fit check of that report
      doctor explain gpu-busy --report b.json    # a report saved with --format json
    """
    import sys

    from doctor.report.render_text import render_check

    report, where = _load(report_path)
    if not any(c.id == check_id for c in report.checks):
        raise _unknown(check_id, report, where)
    if color is None:
        color = sys.stdout.isatty()
    click.echo(
        render_check(report, check_id, color=color, source=f"{where}: {report.tool.command_line}"), nl=False
    )
    return 0
