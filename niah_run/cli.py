"""`niah`: run and report needle-in-a-haystack sweeps.

Importing this module must stay light (no torch/transformers/matplotlib): everything heavy is
imported inside the commands. stdout carries the summary table; progress and notes go to stderr.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from doctor import __version__
from doctor.boundary import debug_option, exit_with
from run_plan.errors import UsageError
from run_plan.options import NIAH, click_options, config_file_option

if TYPE_CHECKING:
    from run_plan.resolved import ResolvedPlan

# More GPUs than any machine or cluster holds is a typo (and GPU-seconds stay a finite number).
MAX_GPU_COUNT = 1 << 20


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="niah")
def niah_command() -> None:
    """Needle-in-a-haystack sweeps on local models, exact to the token."""


@niah_command.command("run")
@config_file_option()
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(dir_okay=False),
    help="Execute a plan written by `doctor --plan-out FILE`, verbatim (no other plan flags).",
)
@click_options(NIAH)
@click.option("--out", help="Run directory. [default: niah-runs/<model>-<time>]")
@click.option(
    "--resume",
    is_flag=True,
    default=False,
    help="Continue the run in --out: skip done trials, retry errors/OOM. Refused if the plan changed "
    "what a trial computes.",
)
@click.option("--skip-preflight", is_flag=True, default=False, help="Do not run the doctor first (recorded).")
@click.option("-q", "--quiet", is_flag=True, help="One line per trial; no config dump, no progress bars.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def run_command(
    config_path: str | None,
    plan_path: str | None,
    out: str | None,
    resume: bool,
    skip_preflight: bool,
    quiet: bool,
    debug: bool,
    **flags: object,
) -> int:
    """Run a sweep: lengths × depths × trials, exact prompts, resumable results, heatmap.

    \b
    The doctor judges the plan first (in-process) and the sweep executes that same plan.
    Outputs in the run directory: config.json (the plan), preflight.json/.md, results.jsonl,
    summary.json, summary.md, heatmap.png. Exit codes: 0 done, 1 preflight failed or trials errored,
    2 usage, 130 Ctrl-C.

    \b
    Examples:
      niah run --config examples/run.toml --out runs/cpu-demo
      niah run --model DIR --quant bnb-4bit --lengths 8k,128k,1M --max-memory 0=79GiB
      doctor --model DIR --context 1M --plan-out plan.json && niah run --plan plan.json
    """
    from niah_run import run_folder
    from niah_run.config import read_saved_doc, render_config, resolve_spec
    from niah_run.progress import echo_err
    from niah_run.sweep import RunFolder, Sweep, finish

    if quiet:  # one line per trial: no download or weight-loading bars from the libraries either
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    plan = None
    if plan_path:
        plan = _read_plan(plan_path, config_path, flags)
        spec = plan.spec
    else:
        saved = read_saved_doc(Path(out).expanduser()) if resume and out else None
        spec = resolve_spec(dict(flags), config_path, saved)
    run_dir = Path(out).expanduser() if out else run_folder.default_out_dir(spec.model or "model")
    run_folder.prepare(run_dir, resume=resume)
    folder = RunFolder(run_dir, resume=resume, skip_preflight=skip_preflight, quiet=quiet)
    sweep = Sweep(spec, folder, plan=plan, argv=("niah", *sys.argv[1:]))
    # Said once the run is accepted: a refused --resume or a failed check prints only its own error.
    sweep.on_start = lambda: echo_err(
        f"niah run: {render_config(spec)} (plan saved to {run_dir / 'config.json'})"
    )
    counts = None
    try:
        counts = sweep.run()
    finally:
        # The summary is rewritten when this invocation ran trials (or found all done); a run stopped
        # before its first trial leaves the folder as it found it and says nothing about it.
        if (run_dir / "results.jsonl").exists() and (counts is not None or sweep.trials_started):
            try:
                finish(run_dir, title=f"{spec.model} · {spec.needle_kind}")
                if counts is None:
                    echo_err(f"partial results saved in {run_dir} (resume with --resume --out {run_dir})")
            except Exception as exc:  # noqa: BLE001 - the summary must never hide the run's own outcome
                echo_err(f"could not write the summary: {type(exc).__name__}: {exc}")
        else:
            run_folder.unlock(run_dir)
    from niah_run.summary import SUMMARY_MD

    click.echo((run_dir / SUMMARY_MD).read_text(encoding="utf-8"), nl=False)
    echo_err(
        f"run directory: {run_dir} ({counts['ran']} ran, {counts['already_done']} done earlier, "
        f"{counts['oom']} OOM, {counts['skipped']} skipped, {counts['errors']} errors)"
    )
    return 1 if counts["errors"] else 0


def _read_plan(plan_path: str, config_path: str | None, flags: dict[str, object]) -> ResolvedPlan:
    """A plan file runs verbatim: any other plan setting on the command line is refused, not merged."""
    from run_plan.resolved import ResolvedPlan

    given = sorted(k for k, v in flags.items() if v is not None and v != ())
    if config_path or given:
        names = ", ".join(["--config"] * bool(config_path) + ["--" + k.replace("_", "-") for k in given])
        raise UsageError(
            f"--plan runs the plan as written; {names} would change it",
            hint="Change the plan with `doctor ... --plan-out FILE`, or drop --plan.",
        )
    return ResolvedPlan.read(Path(plan_path).expanduser())


@niah_command.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--price-per-gpu-hour",
    type=float,
    default=None,
    help="Price of one GPU-hour: adds the cost per cell and in total. [default: from config.json, else none]",
)
@click.option(
    "--effective-threshold",
    type=float,
    default=None,
    help="Wilson lower bound a length must reach to count as effective. [default: 0.85]",
)
@click.option(
    "--gpu-count",
    type=click.IntRange(min=0, max=MAX_GPU_COUNT),
    default=None,
    help="GPUs that served the run, for GPU-seconds (a server run cannot tell). [default: from config.json]",
)
@debug_option()
def report_command(
    run_dir: str, price_per_gpu_hour: float | None, effective_threshold: float | None, gpu_count: int | None
) -> int:
    """Re-render summary.json, summary.md and heatmap.png from RUN_DIR/results.jsonl."""
    from niah_run.heatmap import HEATMAP_PNG, render_heatmap
    from niah_run.summary import write_summary
    from run_plan.options import check_value

    # the same rules as `niah run`'s flags of the same names (a positive, finite price; 0 < threshold < 1)
    price_per_gpu_hour = check_value("price_per_gpu_hour", price_per_gpu_hour, "the command line")
    effective_threshold = check_value("effective_threshold", effective_threshold, "the command line")
    path = Path(run_dir)
    if not (path / "results.jsonl").is_file():
        raise UsageError(f"{path} has no results.jsonl", hint="Give the --out folder of a `niah run`.")
    title = path.name
    try:
        import json

        from run_plan.safe_files import read_text_file

        config = json.loads(read_text_file(path / "config.json"))["config"]
        title = f"{config['model']} · {config['needle_kind']}"
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # a title is only a courtesy
        pass
    from niah_run import run_folder

    run_folder.refuse_planted_symlinks(path)  # a received folder may hold summary.json -> ~/.bashrc
    with run_folder.warnings_as_lines():  # malformed rows: one `warning:` line each, skipped
        summary = write_summary(
            path, price_per_gpu_hour=price_per_gpu_hour, threshold=effective_threshold, gpu_count=gpu_count
        )
    if summary["cells"]:
        render_heatmap(summary, path / HEATMAP_PNG, title=title)
    click.echo((path / "summary.md").read_text(encoding="utf-8"), nl=False)
    return 0


@niah_command.command("compare")
@click.argument("run_a", type=click.Path(file_okay=False))
@click.argument("run_b", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0, max=1),
    default=0.05,
    show_default=True,
    help="Share of matched trials whose scores may disagree before the runs count as divergent.",
)
@debug_option()
def compare_command(run_a: str, run_b: str, fmt: str, tolerance: float) -> int:
    """Do two runs agree? Match trials by prompt hash (input_ids_sha256), compare outputs and scores.

    \b
    Exit codes: 0 identical or only greedy noise, 1 divergent, 2 no shared prompt / not a run directory.
    """
    import json

    from niah_run.compare import compare_runs, exit_code, render_text

    result = compare_runs(Path(run_a), Path(run_b), tolerance=tolerance)
    if fmt == "json":
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(render_text(result), nl=False)
    return exit_code(result)


def _register_serve() -> None:
    # niah_run.serve imports starlette/uvicorn only inside the command, so this stays light.
    from niah_run.serve import serve_command

    niah_command.add_command(serve_command, "serve")


_register_serve()
main = exit_with(niah_command, "niah")
