"""A real CUDA out-of-memory in the middle of a `niah run` sweep: recorded, freed, and the sweep goes on.

A small Llama (random bf16 weights) is built on cuda:0 and wrapped in niah_run's own HFBackend; the sweep is
niah_run.sweep.Sweep, the code `niah run` drives. The allocator is capped with
torch.cuda.set_per_process_memory_fraction halfway between the measured peaks of the second-longest-but-one
and the OOM length, so every trial at `--oom-length` runs out of memory in prefill and the shorter ones fit.

Checks (one PASS/FAIL row each; JSON with every figure goes to --out):
- oom-recorded: every trial at the OOM length has status "oom" with memory figures (at_failure/after_free);
- memory-freed (CUDA): right after each OOM, torch.cuda.memory_allocated() is back within --tolerance-mib of
  the weights-only baseline measured before the sweep, and again after the sweep has closed the backend;
- sweep-continued: after the first OOM the other depths at that length were still attempted (no crash, no
  "error" rows), and the sweep finished with a summary-able results.jsonl of exactly the planned rows;
- shorter-lengths-ok: every trial below the OOM length ran ("ok", tokens generated);
- longer-skipped: every trial above the OOM length at an OOM depth is "skipped" (skip_reason "after_oom");
- still-correct-after-oom: a fresh HFBackend on the same model, after the OOMs and under the same cap,
  regenerates the prompts of the longest length that fitted and gets exactly the recorded tokens.

The sweep orders trials by length, so no trial shorter than the OOM runs *after* it inside one sweep;
still-correct-after-oom is the check that the model and allocator are healthy once an OOM has happened.

    # CPU smoke test (the OOM is simulated: forward raises torch.OutOfMemoryError on long inputs)
    python benchmarks/oom_recovery.py --device cpu --out /tmp/oom_recovery_cpu.json
    # GPU (about 30 s on an H100)
    python benchmarks/oom_recovery.py --device cuda --out $OUT/oom_recovery.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

if TYPE_CHECKING:
    from niah_run.rows import TrialRow

MIB = 1 << 20
DEPTHS = (0.0, 50.0, 100.0)

# cuda: big enough that activations dominate the growth from 4k to 16k tokens, small enough to build in seconds
GPU_MODEL = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 8,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
}
CPU_MODEL = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument(
        "--lengths",
        help="comma-separated, ascending (default: cuda 1024,4096,16384,32768; cpu 256,512,1024,2048)",
    )
    parser.add_argument(
        "--oom-length", type=int, help="the length that must run out of memory (default: the second longest)"
    )
    parser.add_argument(
        "--prefill-chunk", type=int, default=None, help="HFBackend prefill chunk (default: one shot)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--tolerance-mib", type=float, default=8.0)
    parser.add_argument("--out", help="JSON results file (default: print only)")
    return parser.parse_args(argv)


class Recorder:
    """Wraps HFBackend.generate: memory right before/after each call, and the ids/outputs of every trial."""

    def __init__(self, backend: Any, torch: Any, on_cuda: bool) -> None:
        self.backend, self.torch, self.on_cuda = backend, torch, on_cuda
        self.calls: list[dict[str, Any]] = []
        original = backend.generate

        def generate(input_ids: list[int], **kwargs: Any) -> Any:
            from niah_run.backends.base import BackendOOM

            call: dict[str, Any] = {
                "n": len(input_ids),
                "allocated_before": self.allocated(),
                "reusable_prefix_len": kwargs.get("reusable_prefix_len", 0),
            }
            self.calls.append(call)
            try:
                result = original(input_ids, **kwargs)
            except BackendOOM as exc:
                call.update(status="oom", allocated_after_oom=self.allocated(), memory=exc.memory)
                raise
            call.update(
                status="ok",
                ids=list(input_ids),
                output_ids=list(result.output_ids),
                allocated_after=self.allocated(),
            )
            return result

        backend.generate = generate

    def allocated(self) -> int | None:
        return int(self.torch.cuda.memory_allocated(0)) if self.on_cuda else None


def build_model(torch: Any, tokenizer: Any, device: str, max_len: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = GPU_MODEL if device == "cuda" else CPU_MODEL
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_len * 2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
        **shape,
    )
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device("cuda:0" if device == "cuda" else "cpu"):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def simulate_oom_from(torch: Any, model: Any, threshold: int) -> None:
    """CPU smoke path: any forward that holds `threshold`+ positions raises torch.OutOfMemoryError."""
    import functools

    original = model.forward

    @functools.wraps(original)  # keeps the signature HFBackend inspects (cache kwarg name, logits_to_keep)
    def forward(*args: Any, **kwargs: Any) -> Any:
        ids = kwargs.get("input_ids", args[0] if args else None)
        # positions already in the KV cache count too: the sweep reuses the shared prefix between prompts
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        if ids is not None and past + ids.shape[-1] >= threshold:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (simulated at {past + ids.shape[-1]} positions)"
            )
        return original(*args, **kwargs)

    model.forward = forward  # the instance attribute wins over the class method in nn.Module.__call__


def peak_for(torch: Any, backend: Any, length: int, max_new_tokens: int) -> dict[str, int]:
    """Uncapped peak allocated/reserved bytes of one generate at `length` (random ids)."""
    backend._drop_cache()
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(0)
    ids = torch.randint(
        10, len(backend.tokenizer), (length,), generator=torch.Generator().manual_seed(length)
    )
    backend.generate(ids.tolist(), max_new_tokens=max_new_tokens)
    peaks = {
        "peak_allocated": int(torch.cuda.max_memory_allocated(0)),
        "peak_reserved": int(torch.cuda.max_memory_reserved(0)),
    }
    backend._drop_cache()
    gc.collect()
    torch.cuda.empty_cache()
    return peaks


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from niah_run.backends.hf import HFBackend
    from niah_run.results import ResultsStore
    from niah_run.sweep import RunFolder, Sweep, finish
    from run_plan.spec import RunSpec
    from tests.niah.fakes import build_tokenizer  # a byte-level BPE trained on our haystack, no download

    on_cuda = args.device == "cuda"
    if on_cuda and not torch.cuda.is_available():
        raise SystemExit(
            "--device cuda but torch.cuda.is_available() is False (use --device cpu for the smoke test)"
        )
    default = "1024,4096,16384,32768" if on_cuda else "256,512,1024,2048"
    lengths = tuple(int(v) for v in (args.lengths or default).split(","))
    oom_length = args.oom_length or lengths[-2]
    fits = max(n for n in lengths if n < oom_length)
    doc: dict[str, Any] = {
        "benchmark": "oom_recovery",
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "device": args.device,
        "lengths": list(lengths),
        "depths": list(DEPTHS),
        "oom_length": oom_length,
        "prefill_chunk": args.prefill_chunk,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }
    if on_cuda:
        props = torch.cuda.get_device_properties(0)
        doc["gpu"] = {"name": props.name, "total_bytes": int(props.total_memory)}

    started = time.monotonic()
    tokenizer = build_tokenizer()
    model = build_model(torch, tokenizer, args.device, max(lengths))
    backend = HFBackend(model, tokenizer, prefill_chunk=args.prefill_chunk)
    cap = None
    if on_cuda:
        doc["calibration"] = {
            str(n): peak_for(torch, backend, n, args.max_new_tokens) for n in (fits, oom_length)
        }
        low = doc["calibration"][str(fits)]["peak_reserved"]
        high = doc["calibration"][str(oom_length)]["peak_allocated"]
        cap = (low + high) // 2
        doc["cap_bytes"] = cap
        doc["calibration_ok"] = low < cap < high
        torch.cuda.set_per_process_memory_fraction(cap / doc["gpu"]["total_bytes"], 0)
        gc.collect()
        torch.cuda.empty_cache()
        doc["baseline_allocated"] = int(
            torch.cuda.memory_allocated(0)
        )  # weights only: no cache, no activations
    else:
        simulate_oom_from(torch, model, oom_length)
        doc["baseline_allocated"] = None
    recorder = Recorder(backend, torch, on_cuda)

    run_dir = Path(tempfile.mkdtemp(prefix="niah-oom-recovery-"))
    config = RunSpec(
        model="random-llama-oom-recovery",
        lengths=lengths,
        depths=DEPTHS,
        trials=1,
        max_new_tokens=args.max_new_tokens,
    )
    folder = RunFolder(run_dir, skip_preflight=True, quiet=True)
    sweep_error = None
    counts: dict[str, Any] | None = None
    try:
        counts = Sweep(config, folder, backend_factory=lambda _config: backend).run()
        finish(run_dir, title="oom recovery")
    except Exception as exc:  # noqa: BLE001 - a crash of the sweep is exactly what this benchmark reports
        sweep_error = f"{type(exc).__name__}: {exc}"
    doc["run_dir"] = str(run_dir)
    doc["counts"], doc["sweep_error"] = counts, sweep_error
    after_close = recorder.allocated()  # Sweep.run closed the backend: its cache is gone, our model remains
    rows = ResultsStore(run_dir).load_rows(repair=False) if (run_dir / "results.jsonl").exists() else []
    doc["rows"] = [
        {
            "context_tokens": r.context_tokens,
            "depth_percent": r.depth_percent,
            "status": r.status,
            "skip_reason": r.skip_reason,
            "output_tokens": r.output_tokens,
            "memory": r.memory,
            "error": r.error,
        }
        for r in rows
    ]

    # still-correct-after-oom: same model, same cap, a fresh backend; no prefix reuse.
    fresh = HFBackend(model, tokenizer, prefill_chunk=args.prefill_chunk)
    replays = []
    for call in recorder.calls:
        if call["status"] == "ok" and call["n"] == fits:
            again = fresh.generate(call["ids"], max_new_tokens=args.max_new_tokens)
            replays.append(list(again.output_ids) == call["output_ids"])
    fresh.close()
    doc["seconds"] = round(time.monotonic() - started, 1)
    doc["calls"] = [{k: v for k, v in c.items() if k not in ("ids", "output_ids")} for c in recorder.calls]
    doc["checks"] = judge(doc, rows, recorder, replays, after_close, fits, args.tolerance_mib * MIB, on_cuda)
    doc["passed"] = all(c["pass"] for c in doc["checks"] if c["pass"] is not None)
    return doc


def judge(
    doc: dict[str, Any],
    rows: list[TrialRow],
    recorder: Recorder,
    replays: list[bool],
    after_close: int | None,
    fits: int,
    tolerance: float,
    on_cuda: bool,
) -> list[dict[str, Any]]:
    oom_length = doc["oom_length"]
    at_oom = [r for r in rows if r.context_tokens == oom_length and not r.control]
    shorter = [r for r in rows if r.context_tokens < oom_length]
    longer = [r for r in rows if r.context_tokens > oom_length]
    checks: list[dict[str, Any]] = []

    def add(name: str, ok: bool | None, detail: str) -> None:
        checks.append({"check": name, "pass": ok, "detail": detail})

    if on_cuda:
        add(
            "calibration",
            doc["calibration_ok"],
            f"cap {doc['cap_bytes'] / MIB:.0f} MiB between the peaks "
            f"{json.dumps({k: round(v['peak_reserved'] / MIB) for k, v in doc['calibration'].items()})} MiB",
        )
    add(
        "sweep-finished",
        doc["sweep_error"] is None and len(rows) == len(DEPTHS) * len(doc["lengths"]),
        f"{len(rows)} rows, error={doc['sweep_error']}, counts={doc['counts']}",
    )
    figures = [r.memory or {} for r in at_oom]
    memory_ok = all("at_failure" in m and "after_free" in m for m in figures) and (
        not on_cuda or all("cuda:0" in m["after_free"] for m in figures)
    )
    add(
        "oom-recorded",
        bool(at_oom) and all(r.status == "oom" for r in at_oom) and memory_ok,
        f"{[r.status for r in at_oom]} at {oom_length} tokens; memory figures: {memory_ok}",
    )
    ooms = [c for c in recorder.calls if c["status"] == "oom"]
    if on_cuda:
        base = doc["baseline_allocated"]
        drift = [abs(c["allocated_after_oom"] - base) for c in ooms] + [abs((after_close or 0) - base)]
        add(
            "memory-freed",
            bool(ooms) and max(drift) <= tolerance,
            f"baseline {base / MIB:.1f} MiB; after each OOM / after close: "
            f"{[round(c['allocated_after_oom'] / MIB, 1) for c in ooms]} / {(after_close or 0) / MIB:.1f} MiB; "
            f"max drift {max(drift) / MIB:.2f} MiB (tolerance {tolerance / MIB:.0f})",
        )
    else:
        add("memory-freed", None, "CUDA only (skipped on cpu)")
    add(
        "sweep-continued",
        len(ooms) == len(DEPTHS) and not any(r.status == "error" for r in rows),
        f"{len(ooms)} OOM trials attempted one after another (one per depth), "
        f"{sum(r.status == 'error' for r in rows)} error rows",
    )
    add(
        "shorter-lengths-ok",
        bool(shorter) and all(r.status == "ok" and (r.output_tokens or 0) > 0 for r in shorter),
        f"{sum(r.status == 'ok' for r in shorter)}/{len(shorter)} ok below {oom_length}",
    )
    add(
        "longer-skipped",
        bool(longer) and all(r.status == "skipped" and r.skip_reason == "after_oom" for r in longer),
        f"{[(r.context_tokens, r.status, r.skip_reason) for r in longer]}",
    )
    add(
        "still-correct-after-oom",
        bool(replays) and all(replays),
        f"{sum(replays)}/{len(replays)} prompts of {fits} tokens give the recorded tokens on a fresh backend",
    )
    return checks


def print_table(doc: dict[str, Any]) -> None:
    print(
        f"oom_recovery on {doc.get('gpu', {}).get('name', doc['device'])}: lengths {doc['lengths']}, "
        f"OOM expected at {doc['oom_length']} ({doc['seconds']} s)"
    )
    width = max(len(c["check"]) for c in doc["checks"])
    for check in doc["checks"]:
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[check["pass"]]
        print(f"  {check['check']:<{width}}  {verdict}  {check['detail']}")
    print("PASS" if doc["passed"] else "FAIL")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    doc = run(args)
    print_table(doc)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
