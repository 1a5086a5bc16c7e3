"""`doctor`: check the machine and the planned run, print a report, exit 0/1/2/3.

stdout carries only the report (so `--format json > report.json` always parses);
progress and hints go to stderr. Importing this module must not import torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from doctor import __version__
from doctor.boundary import exit_with, run_cli
from doctor.report.model import Report
from run_plan.errors import UsageError
from run_plan.options import (
    DOCTOR,
    Layer,
    build_spec,
    click_options,
    config_file_option,
    flag_layer,
    load_toml,
)
from run_plan.spec import RunSpec


def spec_from_flags(given: dict[str, object], config_path: str | None = None) -> RunSpec:
    """The planned run: what the --script files pass to the libraries < a TOML file < the flags typed."""
    layers = [Layer(config_path, load_toml(Path(config_path).expanduser()), "toml")] if config_path else []
    given_scripts = given.get("scripts") or ()
    scripts = tuple(str(s) for s in given_scripts) if isinstance(given_scripts, (list, tuple)) else ()
    if scripts:  # what the run scripts pass to transformers is the plan too, under TOML and flags
        from doctor.probes.script_reader import script_layer

        layers.insert(0, script_layer(scripts))
    return build_spec([*layers, flag_layer(given)])


def _render(
    report: Report,
    fmt: str,
    *,
    verbose: bool,
    strict: bool,
    color: bool | None,
    facts: bool = False,
) -> str:
    if fmt == "json":
        from doctor.report.render_json import render_json

        return render_json(report)
    if fmt == "markdown":
        from doctor.report.render_markdown import render_markdown

        return render_markdown(report, strict=strict, facts=facts)
    from doctor.report.render_text import render_text

    return render_text(report, verbose=verbose, strict=strict, color=color)


def _list_checks() -> str:
    from doctor.registry import load_checks

    rows = [f"{s.id:<32} {s.section:<14} {s.title}" for s in load_checks()]
    return "\n".join([f"{'id':<32} {'section':<14} title", *rows]) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click_options(DOCTOR)
@config_file_option()
@click.option(
    "--plan-out",
    type=click.Path(dir_okay=False),
    help="Write the resolved plan (every auto decided) to FILE for `niah run --plan FILE`.",
)
@click.option(
    "--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text", show_default=True
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Write the report to FILE instead of stdout."
)
@click.option("--strict", is_flag=True, help="Warnings and errors fail too (exit 1).")
@click.option(
    "--only", multiple=True, help="Run only these check ids or sections. Repeatable or comma-separated."
)
@click.option(
    "--skip", multiple=True, help="Skip these check ids or sections. Repeatable or comma-separated."
)
@click.option("--list", "list_only", is_flag=True, help="List the checks and exit.")
@click.option(
    "-v", "--verbose", is_flag=True, help="Show everything: every check with its evidence, every fix step."
)
@click.option(
    "--facts",
    "with_facts",
    is_flag=True,
    help="Markdown: append the raw probe facts (cut to fit a ticket; JSON always has them all).",
)
@click.option(
    "--color/--no-color", default=None, help="Colour the text report (default: when stdout is a terminal)."
)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(__version__, prog_name="niah-doctor")
def doctor_command(
    fmt: str,
    output: str | None,
    strict: bool,
    only: tuple[str, ...],
    skip: tuple[str, ...],
    list_only: bool,
    verbose: bool,
    color: bool | None,
    debug: bool,
    config_path: str | None,
    plan_out: str | None,
    with_facts: bool = False,
    **target_opts: object,
) -> int:
    """Check this machine and the planned long-context run; say what will fail, why, and the fix.

    \b
    Examples:
      doctor                                   # the machine alone
      doctor --model meta-llama/Llama-4-Scout-17B-16E-Instruct --quant bnb-4bit --context 128k
      doctor --model DIR --max-memory 0=79GiB --lengths 8k,1M --plan-out plan.json   # then: niah run --plan plan.json
      doctor --script run.py                   # what run.py will pass to transformers, and is it committed?
      doctor --format markdown -o report.md    # a report to paste into a ticket

    \b
    Exit codes: 0 no failures (warnings allowed), 1 a check failed, 2 usage error, 3 the doctor broke.
    One check in full (evidence, every fix step), from the last report:  doctor explain CHECK_ID
    Compare two saved reports (a machine where the job works, one where it fails):
      doctor diff works.json fails.json [--format text|markdown|json]
    """
    if list_only:
        click.echo(_list_checks(), nl=False)
        return 0
    from doctor.api import judge

    spec = spec_from_flags(target_opts, config_path)
    if spec.gpus:  # an unreadable --gpus is a usage error (exit 2), not an ERROR row in the memory section
        from doctor.memory.gpus import parse_gpus

        parse_gpus(spec.gpus)
    judgement = judge(spec, only=_split(only), skip=_split(skip), debug=debug)
    report = judgement.report
    if plan_out:
        judgement.plan.write(Path(plan_out))
        click.echo(f"plan written to {plan_out} (run it with: niah run --plan {plan_out})", err=True)
    if color is None:
        color = output is None and sys.stdout.isatty()
    text = _render(report, fmt, verbose=verbose, strict=strict, color=color, facts=with_facts)
    _remember(report, text if fmt == "json" else None)
    if output:
        _write_report(Path(output), text)
        click.echo(f"report written to {output}: {report.verdict(strict=strict)}", err=True)
    else:
        click.echo(text, nl=False)
    return int(report.exit_code(strict=strict))


def _remember(report: Report, json_text: str | None) -> None:
    """Keep this report for `doctor explain CHECK_ID` (the default view shows each problem in two lines)."""
    from doctor.explain import remember_report

    if json_text is None:
        from doctor.report.render_json import render_json

        json_text = render_json(report)
    remember_report(json_text)


def _split(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v.strip() for item in values for v in item.split(",") if v.strip())


def _write_report(path: Path, text: str) -> None:
    if path.is_dir():
        raise UsageError(f"-o {path} is a directory", hint="Give a file name, e.g. -o report.md")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write the report to {path}: {exc.strerror or exc}") from None


_doctor_main = exit_with(doctor_command, "doctor")


def main() -> None:
    """`doctor [flags]` checks this machine; `doctor diff A.json B.json` compares two saved reports."""
    if sys.argv[1:2] == ["diff"]:
        from doctor.diff import diff_command

        sys.exit(run_cli(diff_command, sys.argv[2:], prog_name="doctor diff"))
    if sys.argv[1:2] == ["explain"]:
        from doctor.explain import explain_command

        sys.exit(run_cli(explain_command, sys.argv[2:], prog_name="doctor explain"))
    _doctor_main()
