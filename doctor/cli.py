"""`doctor`: check the machine and the planned run, print a report, exit 0/1/2/3.

stdout carries only the report (so `--format json > report.json` always parses);
progress and hints go to stderr. Importing this module must not import torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from doctor import __version__
from doctor.boundary import exit_with
from doctor.errors import UsageError
from doctor.target import ATTN_CHOICES, DTYPE_CHOICES, QUANT_CHOICES, Target, parse_token_count


def _tokens(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    # UsageError (not click.BadParameter): the boundary prints one "error:" line plus a hint, no usage block.
    return parse_token_count(value, what=f"--{param.name.replace('_', '-')}")


def _max_memory(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Reject what accelerate would reject, before any work (doctor.sizes replicates its rules)."""
    if value is not None:
        from doctor.sizes import parse_max_memory

        parse_max_memory(value)  # raises UsageError: one line naming the bad key, exit 2
    return value


def target_options(fn):  # noqa: ANN001, ANN201 - a stack of click decorators
    """Flags that describe the planned run; `niah run` reuses the same names."""
    options = [
        click.option("--model", help="Hub id, local folder, or 'demo' (SmolLM2-135M-Instruct)."),
        click.option("--context", callback=_tokens, help="Longest input the run will feed (e.g. 131072, 128k, 1M)."),
        click.option("--quant", type=click.Choice(QUANT_CHOICES), default="none", show_default=True),
        click.option("--bnb-4bit-type", type=click.Choice(["nf4", "fp4"]), default="nf4", show_default=True),
        click.option("--no-double-quant", is_flag=True, help="4-bit without double quantization of the scales."),
        click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="auto", show_default=True),
        click.option("--prequantized/--not-prequantized", default=None,
                     help="Checkpoint is already bnb-quantized (default: detect from its config)."),
        click.option("--gpus", help="GPUs to plan for, e.g. 1xH100-80GB or 2x80GiB (default: what NVML sees)."),
        click.option("--attn", type=click.Choice(ATTN_CHOICES), default="sdpa", show_default=True),
        click.option("--prefill-chunk", callback=_tokens, help="Tokens per prefill chunk (default: what niah picks)."),
        click.option("--kv-dtype", type=click.Choice(["auto", "bfloat16", "float16", "float32", "float8_e4m3fn"]),
                     default="auto", show_default=True),
        click.option("--max-memory", callback=_max_memory, help="As accelerate takes it: 0=70GiB,1=70GiB,cpu=200GiB."),
        click.option("--device-map", help="auto, balanced, sequential, or a single device like cuda:0."),
        click.option("--script", "scripts", multiple=True, type=click.Path(),
                     help="A file the run executes; its git freshness is checked. Repeatable."),
        click.option("--fetch", is_flag=True, help="git fetch the upstream before comparing (network)."),
        click.option("--online", is_flag=True, help="Allow network calls (hub lookups). Default: offline."),
        click.option("--trust-remote-code", is_flag=True, help="Allow the model's own Python code (off by default)."),
        click.option("--live/--no-live", default=None,
                     help="Import torch/bitsandbytes/triton in child processes and test the GPU "
                          "(default: only when an NVIDIA GPU is visible)."),
        click.option("--base-url", help="OpenAI-compatible server (vLLM, SGLang, niah serve) serving --model; "
                                        "checks it answers and takes --context. Contacts only that server."),
        click.option("--timeout", "probe_timeout_s", type=float, default=60.0, show_default=True,
                     help="Seconds before a hung probe child is killed."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def target_from_options(opts: dict) -> Target:
    return Target(
        model=opts.get("model"), context=opts.get("context"), quant=opts.get("quant", "none"),
        bnb_4bit_type=opts.get("bnb_4bit_type", "nf4"), double_quant=not opts.get("no_double_quant", False),
        dtype=opts.get("dtype", "auto"), prequantized=opts.get("prequantized"), gpus=opts.get("gpus"),
        attn=opts.get("attn", "sdpa"), prefill_chunk=opts.get("prefill_chunk"),
        kv_dtype=None if opts.get("kv_dtype") in (None, "auto") else opts["kv_dtype"],
        max_memory=opts.get("max_memory"), device_map=opts.get("device_map"),
        scripts=tuple(opts.get("scripts") or ()), fetch=bool(opts.get("fetch")), online=bool(opts.get("online")),
        trust_remote_code=bool(opts.get("trust_remote_code")), live=opts.get("live"),
        probe_timeout_s=float(opts.get("probe_timeout_s") or 60.0), base_url=opts.get("base_url") or None,
    )


def _render(report, fmt: str, *, verbose: bool, strict: bool, color: bool | None) -> str:  # noqa: ANN001
    if fmt == "json":
        from doctor.report.render_json import render_json

        return render_json(report)
    if fmt == "markdown":
        from doctor.report.render_markdown import render_markdown

        return render_markdown(report, strict=strict)
    from doctor.report.render_text import render_text

    return render_text(report, verbose=verbose, strict=strict, color=color)


def _list_checks() -> str:
    from doctor.registry import load_checks

    rows = [f"{s.id:<32} {s.section:<14} {s.title}" for s in load_checks()]
    return "\n".join([f"{'id':<32} {'section':<14} title", *rows]) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@target_options
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the report to FILE instead of stdout.")
@click.option("--strict", is_flag=True, help="Warnings and errors fail too (exit 1).")
@click.option("--only", multiple=True, help="Run only these check ids or sections. Repeatable or comma-separated.")
@click.option("--skip", multiple=True, help="Skip these check ids or sections. Repeatable or comma-separated.")
@click.option("--list", "list_only", is_flag=True, help="List the checks and exit.")
@click.option("-v", "--verbose", is_flag=True, help="Show evidence for passing checks too.")
@click.option("--color/--no-color", default=None, help="Colour the text report (default: when stdout is a terminal).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(__version__, prog_name="niah-doctor")
def doctor_command(fmt: str, output: str | None, strict: bool, only: tuple[str, ...], skip: tuple[str, ...],
                   list_only: bool, verbose: bool, color: bool | None, debug: bool, **target_opts: object) -> int:
    """Check this machine and the planned long-context run; say what will fail, why, and the fix.

    \b
    Exit codes: 0 no failures (warnings allowed), 1 a check failed, 2 usage error, 3 the doctor broke.
    """
    if list_only:
        click.echo(_list_checks(), nl=False)
        return 0
    target = target_from_options(target_opts)
    report = run_doctor(target, only=_split(only), skip=_split(skip), debug=debug)
    if color is None:
        color = output is None and sys.stdout.isatty()
    text = _render(report, fmt, verbose=verbose, strict=strict, color=color)
    if output:
        _write_report(Path(output), text)
        click.echo(f"report written to {output}: {report.verdict(strict=strict)}", err=True)
    else:
        click.echo(text, nl=False)
    return int(report.exit_code(strict=strict))


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


def run_doctor(target: Target, *, only: tuple[str, ...] = (), skip: tuple[str, ...] = (), debug: bool = False,
               argv: tuple[str, ...] | None = None):  # noqa: ANN201 - returns doctor.report.Report
    """Run the selected checks for `target` and return the redacted Report (used by `niah run` too)."""
    from doctor.context import DoctorContext
    from doctor.registry import load_checks, select
    from doctor.runner import build_report

    specs = select(load_checks(), only, skip)
    ctx = DoctorContext(target)
    return build_report(specs, ctx, argv or ("doctor", *sys.argv[1:]), debug=debug)


main = exit_with(doctor_command, "doctor")
