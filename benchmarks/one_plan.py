"""One plan, judged and executed: the doctor's longest context for a budget runs, 10 % more is skipped.

1. `build DIR`: a Scout-shaped Llama 4 text model (hidden 5120, 40/8 heads, 16 fused experts, vocab
   202048) with 4 decoder layers (3 chunked-attention layers + 1 global NoPE layer, as in every group of
   4 of the real model), random bf16 weights, saved with save_pretrained beside a small chat tokenizer.
2. `show DIR`: `doctor --model DIR --quant bnb-4bit --max-memory 0=BUDGET --context C --plan-out`, read
   the plan's longest context L, then `niah run` with the same flags at lengths SHORT, L and 1.1 × L.
   The run caps torch's allocator to BUDGET (so a bigger card behaves as a card of that size), every
   row records the plan's predicted peak and the measured one, and 1.1 × L must be skipped before any
   prefill. Prints one table and writes it as JSON.

    python benchmarks/one_plan.py build /tmp/scout4 --tokenizer TOKENIZER_DIR
    python benchmarks/one_plan.py show /tmp/scout4 --budget 79GiB --out $OUT/one_plan
    python benchmarks/one_plan.py build /tmp/tiny --tiny --tokenizer DIR && \\
        python benchmarks/one_plan.py show /tmp/tiny --tiny --out /tmp/one_plan   # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: its sibling benchmarks import
from niah_reach import SCOUT_TEXT as REACH_SCOUT_TEXT  # noqa: E402
from niah_reach import TINY_TEXT as REACH_TINY_TEXT  # noqa: E402

if TYPE_CHECKING:
    from niah_run.rows import TrialRow

REPO = Path(__file__).resolve().parents[1]
GIB = 1 << 30
# The Scout geometry of benchmarks/niah_reach.py, less what this show leaves to the tokenizer (special
# token ids) and attn_temperature_tuning (off in the run docs/benchmarks.md reports); the tiny model's
# vocabulary is the chat tokenizer's, so every token id it emits is valid.
_NOT_HERE = ("attn_temperature_tuning", "bos_token_id", "eos_token_id", "pad_token_id")
SCOUT_TEXT: dict[str, Any] = {k: v for k, v in REACH_SCOUT_TEXT.items() if k not in _NOT_HERE}
TINY_TEXT: dict[str, Any] = {
    **{k: v for k, v in REACH_TINY_TEXT.items() if k not in _NOT_HERE},
    "vocab_size": 49152,
}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)


def special_token_ids(tokenizer: Path) -> dict[str, int]:
    """The chat tokenizer's own special ids for the config (the small model's), or none to set."""
    token_ids = json.loads((tokenizer / "tokenizer_config.json").read_text()).get("added_tokens_decoder", {})
    return {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2} if token_ids else {}


def copy_tokenizer(tokenizer: Path, folder: Path) -> None:
    for name in TOKENIZER_FILES:
        if (tokenizer / name).is_file():
            shutil.copy(tokenizer / name, folder / name)


def build(folder: Path, tokenizer: Path, tiny: bool, max_positions: int | None = None) -> None:
    import torch
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    special = special_token_ids(tokenizer)
    shape = dict(TINY_TEXT if tiny else SCOUT_TEXT)
    if max_positions:  # a memory limit above Scout's 10M positions needs a model that admits more
        shape["max_position_embeddings"] = max_positions
    config = Llama4TextConfig(num_hidden_layers=4, no_rope_layers=[1, 1, 1, 0], **shape, **special)
    config.architectures = ["Llama4ForCausalLM"]
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_default_dtype(torch.float32 if tiny else torch.bfloat16)
    with torch.device(device):
        model = Llama4ForCausalLM(config)
    started = time.monotonic()
    model.save_pretrained(folder, safe_serialization=True)
    copy_tokenizer(tokenizer, folder)
    print(
        f"saved {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B params to {folder} "
        f"in {time.monotonic() - started:.0f} s",
        flush=True,
    )


def _run(args: list[str], log: Path) -> subprocess.CompletedProcess[str]:
    """Run a CLI with its output streamed into `log` (a killed run still leaves what it printed)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    started = time.monotonic()
    with log.open("w") as handle:
        handle.write(f"$ {' '.join(args)}\n")
        handle.flush()
        proc = subprocess.run(
            [sys.executable, *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=REPO,
            check=False,
        )
        handle.write(f"\nexit {proc.returncode} in {time.monotonic() - started:.0f} s\n")
    print(f"{' '.join(args[:3])} … exit {proc.returncode} ({time.monotonic() - started:.0f} s)", flush=True)
    return proc


def show(
    folder: Path, out: Path, budget: str, tiny: bool, short: int, ask: str, run: list[int] | None = None
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    plan_flags = [
        "--model",
        str(folder),
        "--max-memory",
        f"0={budget}",
        "--max-new-tokens",
        "4",
        "--depths",
        "50",
    ]
    if not tiny:
        plan_flags += ["--quant", "bnb-4bit"]
    doctor_flags = [f for f in plan_flags if f not in ("--max-new-tokens", "4", "--depths", "50")]
    gpus = ["--gpus", "1x80GiB"] if tiny else []
    proc = _run(
        [
            "-m",
            "doctor",
            *doctor_flags,
            *gpus,
            "--context",
            ask,
            "--format",
            "json",
            "--plan-out",
            str(out / "plan.json"),
            "-o",
            str(out / "doctor.json"),
        ],
        out / "doctor.log",
    )
    plan = json.loads((out / "plan.json").read_text())
    longest = int(plan["max_context_tokens"] or 0)
    above = int(longest * 1.1)
    # On a CPU (the smoke test) the longest context is far too slow to prefill: check the mechanics only.
    lengths = [short, 2 * short] if tiny else sorted({short, longest, above})
    if run:  # the longest is too long to prefill in one call: run these, and still the one 10 % above
        lengths = sorted({*run, above})
    print(
        f"doctor: exit {proc.returncode}; longest context for {budget}: {longest:,} "
        f"(chunk {plan['spec']['prefill_chunk']}); running {lengths}",
        flush=True,
    )
    run_dir = out / "run"
    _run(
        [
            "-m",
            "niah_run",
            "run",
            *plan_flags,
            "--lengths",
            ",".join(map(str, lengths)),
            "--out",
            str(run_dir),
            "-q",
            *(["--skip-preflight"] if tiny else []),
        ],
        out / "niah.log",
    )
    return table(out)


def table(out: Path) -> dict[str, Any]:
    """The predicted-vs-measured table of a `show` folder (also after a resumed run)."""
    plan = json.loads((out / "plan.json").read_text())
    run_dir = out / "run"
    from niah_run.results import RESULTS_FILE, read_trial_rows

    rows = read_trial_rows(run_dir / RESULTS_FILE)
    config = json.loads((run_dir / "config.json").read_text())
    budget = (plan["spec"].get("max_memory") or "").partition("=")[2]
    result = {
        "budget": budget,
        "doctor_longest_context": plan["max_context_tokens"],
        "plan_chunk": config.get("plan", {}).get("spec", {}).get("prefill_chunk"),
        "rows": [_row(r) for r in rows],
        "load": config.get("backend", {}),
        "gpu": _gpu_name(),
    }
    (out / "one_plan.json").write_text(json.dumps(result, indent=2))
    _print(result)
    return result


def _row(r: TrialRow) -> dict[str, Any]:
    predicted = (r.predicted_peak_bytes or {}).get("cuda:0")
    measured = ((r.memory or {}).get("per_gpu_peak_bytes") or {}).get("cuda:0")
    return {
        "tokens": r.context_tokens,
        "status": r.status,
        "skip_reason": r.skip_reason,
        "predicted_gib": round(predicted / GIB, 2) if predicted else None,
        "measured_gib": round(measured / GIB, 2) if measured else None,
        "measured_over_predicted": round(measured / predicted, 4) if predicted and measured else None,
        "exceeded_prediction": r.exceeded_prediction,
        "prefill_seconds": r.prefill_seconds,
        "predicted_prefill_seconds": r.predicted_prefill_seconds,
        "reused_prefix_tokens": r.reused_prefix_tokens,
    }


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        return None


def _print(result: dict[str, Any]) -> None:
    print(
        f"\nbudget {result['budget']} · doctor's longest context {result['doctor_longest_context']:,} "
        f"· chunk {result['plan_chunk']} · {result['gpu']}"
    )
    print(
        f"{'tokens':>10} {'status':>8} {'predicted GiB':>14} {'measured GiB':>13} {'meas/pred':>10} {'prefill s':>10}"
    )
    for r in result["rows"]:
        status = r["status"] + (f" ({r['skip_reason']})" if r["skip_reason"] else "")
        print(
            f"{r['tokens']:>10,} {status:>8} {r['predicted_gib'] or '-':>14} {r['measured_gib'] or '-':>13} "
            f"{r['measured_over_predicted'] or '-':>10} {r['prefill_seconds'] or '-':>10}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("folder", type=Path)
    b.add_argument("--tokenizer", type=Path, required=True)
    b.add_argument("--tiny", action="store_true")
    b.add_argument("--max-positions", type=int, help="max_position_embeddings (default: Scout's 10,485,760)")
    s = sub.add_parser("show")
    s.add_argument("folder", type=Path)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--budget", default="79GiB")
    s.add_argument("--short", type=int, default=8192)
    s.add_argument("--ask", default="1900k", help="the --context the doctor is first asked about")
    s.add_argument("--tiny", action="store_true")
    s.add_argument(
        "--run", help="lengths to run instead of SHORT and the longest (e.g. 3M), plus 10 %% above"
    )
    t = sub.add_parser("table")
    t.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.folder, args.tokenizer, args.tiny, args.max_positions)
    elif args.command == "table":
        table(args.out)
    else:
        from run_plan.spec import parse_token_count

        run = [parse_token_count(x, what="length") for x in args.run.split(",")] if args.run else None
        show(args.folder, args.out, args.budget, args.tiny, args.short, args.ask, run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
