"""`niah`: run and report needle-in-a-haystack sweeps.

Importing this module must stay light (no torch/transformers/matplotlib): everything heavy is
imported inside the commands. stdout carries the summary table; progress and notes go to stderr.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from doctor import __version__
from doctor.boundary import exit_with
from doctor.errors import UsageError
from doctor.target import ATTN_CHOICES, DTYPE_CHOICES, QUANT_CHOICES


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="niah")
def niah_command() -> None:
    """Needle-in-a-haystack sweeps on local models, exact to the token."""


@niah_command.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="A TOML file with run settings (flags win over it).")
@click.option("--model", help="Hub id, local folder, or 'demo' (SmolLM2-135M-Instruct, CPU-friendly). [default: demo]")
@click.option("--gguf-file", help="GGUF file name inside the --model folder/repo.")
@click.option("--quant", type=click.Choice(QUANT_CHOICES), help="Load-time quantization. [default: none]")
@click.option("--dtype", type=click.Choice(DTYPE_CHOICES), help="Weights dtype. [default: auto]")
@click.option("--device-map", help="auto, balanced, sequential, cpu or cuda:0.")
@click.option("--max-memory", help="As accelerate takes it: 0=70GiB,1=70GiB,cpu=200GiB.")
@click.option("--attn", type=click.Choice(ATTN_CHOICES), help="Attention implementation. [default: sdpa]")
@click.option("--lengths", help="Context lengths in the model's tokens: 1024,2048 or 1k,2k (k = 1024). "
                                "[default: 1024,2048]")
@click.option("--depths", help="Needle depths in percent of the haystack. [default: 0,25,50,75,100]")
@click.option("--trials", type=int, help="Trials (seeds) per cell. [default: 1]")
@click.option("--needle-kind", type=click.Choice(["passkey", "uuid", "word", "multikey", "multivalue"]),
              help="What is hidden. [default: passkey]")
@click.option("--controls", type=int, help="No-needle control trials per length. [default: 0]")
@click.option("--haystack", help="'generated' (seeded prose) or a text file / folder of UTF-8 text files. "
                                 "[default: generated]")
@click.option("--prefill-chunk", help="Tokens per prefill chunk (e.g. 8192 or 8k). [default: the backend's]")
@click.option("--max-new-tokens", type=int, help="Generated tokens per trial. [default: 32]")
@click.option("--seed", type=int, help="Run seed (haystack, needle values, windows). [default: 0]")
@click.option("--out", help="Run directory. [default: niah-runs/<model>-<time>]")
@click.option("--resume", is_flag=True, default=None, help="Continue the run in --out: skip done trials, retry errors/OOM.")
@click.option("--skip-preflight", is_flag=True, default=None, help="Do not run the doctor first (recorded).")
@click.option("--trust-remote-code", is_flag=True, default=None, help="Allow the model's own Python code.")
@click.option("--revision", help="Hub revision (branch, tag or commit) of --model.")
@click.option("--online", is_flag=True, default=None, help="Allow downloads from the hub while loading.")
@click.option("--allow-pickle", is_flag=True, default=None, help="Allow .bin (pickle) checkpoints; off by default.")
@click.option("--backend", type=click.Choice(["transformers", "openai"]),
              help="Local transformers model, or an OpenAI-compatible server. [default: transformers]")
@click.option("--base-url", help="openai backend: http://HOST:8000 (API key from $OPENAI_API_KEY).")
@click.option("--tokenizer", help="openai backend: hub id, folder or 'demo'. [default: --model]")
@click.option("--concurrency", type=int, help="openai backend: requests in flight. [default: 1]")
@click.option("--request-timeout", type=int, help="openai backend: seconds per request. [default: 1800]")
@click.option("--retries", type=int, help="openai backend: retries with backoff. [default: 3]")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def run_command(config_path: str | None, quiet: bool, debug: bool, **flags: object) -> int:
    """Run a sweep: lengths × depths × trials, exact prompts, resumable results, heatmap.

    \b
    Outputs in the run directory: config.json, preflight.json/.md, results.jsonl, summary.json,
    summary.md, heatmap.png. Exit codes: 0 done, 1 preflight failed or trials errored, 2 usage, 130 Ctrl-C.
    """
    from niah_run.config import render_config, resolve_config
    from niah_run.sweep import Sweep, default_out_dir, echo_err, finish, prepare_run_dir

    config = resolve_config(dict(flags), config_path)
    out = Path(config.out).expanduser() if config.out else default_out_dir(config.model)
    config = dataclasses.replace(config, out=str(out))
    prepare_run_dir(out, resume=config.resume)
    echo_err("niah run: resolved config (saved to config.json)\n" + render_config(config))
    sweep = Sweep(config, out, argv=("niah", *sys.argv[1:]), quiet=quiet)
    counts = None
    try:
        counts = sweep.run()
    finally:
        if (out / "results.jsonl").exists():
            try:
                finish(out, title=f"{config.model} · {config.needle_kind}")
                if counts is None:
                    echo_err(f"partial results saved in {out} (resume with --resume --out {out})")
            except Exception as exc:  # noqa: BLE001 - the summary must never hide the run's own outcome
                echo_err(f"could not write the summary: {type(exc).__name__}: {exc}")
    from niah_run.summary import SUMMARY_MD

    click.echo((out / SUMMARY_MD).read_text(encoding="utf-8"), nl=False)
    echo_err(f"run directory: {out} ({counts['ran']} ran, {counts['already_done']} done earlier, "
             f"{counts['oom']} OOM, {counts['skipped']} skipped, {counts['errors']} errors)")
    return 1 if counts["errors"] else 0


@niah_command.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False))
def report_command(run_dir: str) -> int:
    """Re-render summary.json, summary.md and heatmap.png from RUN_DIR/results.jsonl."""
    from niah_run.sweep import finish

    path = Path(run_dir)
    if not (path / "results.jsonl").is_file():
        raise UsageError(f"{path} has no results.jsonl", hint="Give the --out folder of a `niah run`.")
    title = path.name
    try:
        import json

        config = json.loads((path / "config.json").read_text(encoding="utf-8"))["config"]
        title = f"{config['model']} · {config['needle_kind']}"
    except (OSError, ValueError, KeyError):
        pass
    finish(path, title=title)
    click.echo((path / "summary.md").read_text(encoding="utf-8"), nl=False)
    return 0


def _register_serve() -> None:
    # niah_run.serve imports starlette/uvicorn only inside the command, so this stays light.
    from niah_run.serve import serve_command

    niah_command.add_command(serve_command, "serve")


_register_serve()
main = exit_with(niah_command, "niah")
