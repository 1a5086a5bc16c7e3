"""How long a prompt our runner can prefill on one GPU: a Scout-shaped Llama 4 text model.

Model: Llama 4 Scout's text geometry (hidden 5120, 40 query / 8 KV heads of 128, 16 experts with
intermediate 8192, dense MLP 16384, attention chunk 8192, vocab 202048) but only 4 decoder layers:
3 chunked-attention RoPE layers and 1 global NoPE layer, as in every group of 4 of the real model.
Random bf16 weights built directly on the GPU (about 20.3 GiB). Per-layer transients do not grow with
depth (layers run one after another), so the peak of 4 layers is the peak of 48 minus 44 layers of
weights and KV: the reach measured here is the reach of the real model's activations.

Cases (each in its own try/except: one OOM never ends the run):
- plain-forward:  model(input_ids) in one shot (what a hand-written harness does; full logits);
- plain-generate: model.generate(max_new_tokens=1) (one-shot prefill, last-position logits);
- ours-<attn>-<chunk>: niah_run's HFBackend (chunked prefill into a DynamicCache, logits_to_keep=1,
  then 2 greedy tokens), the code `niah run` uses.
For each: peak GPU memory (torch.cuda.max_memory_allocated), prefill seconds, tokens/s, and the
doctor's prediction when its estimator is importable.

    python benchmarks/niah_reach.py --tiny                       # CPU smoke test, seconds
    python benchmarks/niah_reach.py --attn sdpa --chunks 4096 --lengths 32k,128k,512k,1M \\
        --baseline-lengths 32k,64k --out $OUT/reach_sdpa.json
    python benchmarks/niah_reach.py --attn flex_attention --chunks 8192 --lengths 32k,128k,512k,1M,2M

A call on the lent GPU machine may last 600 s: --time-budget-s skips a case whose predicted
duration would overrun the budget (recorded as "skipped_time"), instead of being killed mid-table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

GIB = 1 << 30

SCOUT_TEXT: dict[str, Any] = {
    "hidden_size": 5120,
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "num_local_experts": 16,
    "num_experts_per_tok": 1,
    "intermediate_size": 8192,
    "intermediate_size_mlp": 16384,
    "attention_chunk_size": 8192,
    "vocab_size": 202048,
    "rms_norm_eps": 1e-5,
    "use_qk_norm": True,
    "interleave_moe_layer_step": 1,
    "attn_temperature_tuning": True,
    "floor_scale": 8192,
    "attn_scale": 0.1,
    "max_position_embeddings": 10485760,
    "bos_token_id": 200000,
    "eos_token_id": [200001, 200007, 200008],
    "pad_token_id": 200018,
}
TINY_TEXT: dict[str, Any] = {
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_local_experts": 4,
    "num_experts_per_tok": 1,
    "intermediate_size": 64,
    "intermediate_size_mlp": 128,
    "attention_chunk_size": 64,
    "vocab_size": 1000,
    "max_position_embeddings": 65536,
    "floor_scale": 64,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}


def parse_tokens(text: str) -> int:
    from run_plan.spec import parse_token_count

    return parse_token_count(text, what="length")


def register_flex_gqa() -> None:
    """`--attn flex_gqa`: flex_attention with native GQA (enable_gqa=True), no repeat_kv.

    Why: transformers' flex path repeats K/V to all query heads when the head count is not a power
    of two (Scout: 40 query heads). The repeated K of the global layer then has 40*128*T elements,
    over 2^31 beyond ~419k tokens, and Inductor's flex kernel fails to compile there (seen with
    torch 2.11 / transformers 5.17). With 8 KV heads the tensor stays under 2^31 up to ~2.09M tokens."""
    import torch
    from torch.nn.attention.flex_attention import flex_attention
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import flex_attention_mask

    compiled: dict[str, Any] = {}

    def flex_gqa_forward(
        module: Any,
        query: Any,
        key: Any,
        value: Any,
        attention_mask: Any,
        scaling: float | None = None,
        **kwargs: Any,
    ) -> tuple[Any, None]:
        if query.device.type == "cuda":
            fn = compiled.setdefault("fn", torch.compile(flex_attention))
        else:
            fn = flex_attention  # eager reference path: CPU smoke tests only
        out = fn(query, key, value, block_mask=attention_mask, enable_gqa=True, scale=scaling)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("flex_gqa", flex_gqa_forward)
    AttentionMaskInterface.register("flex_gqa", flex_attention_mask)


def model_config(tiny: bool, attn: str) -> Any:
    from transformers import Llama4TextConfig

    shape = TINY_TEXT if tiny else SCOUT_TEXT
    return Llama4TextConfig(
        num_hidden_layers=4, no_rope_layers=[1, 1, 1, 0], attn_implementation=attn, **shape
    )


def build_model(tiny: bool, attn: str, device: Any) -> Any:
    import torch
    from transformers import Llama4ForCausalLM

    if attn == "flex_gqa":
        register_flex_gqa()
    config = model_config(tiny, attn)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32 if tiny else torch.bfloat16)
    try:
        with torch.device(device):
            model = Llama4ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


_SIZING: dict[str, Any] = {}  # the weight inventory is per model, not per case: size it once


def doctor_prediction(
    config: Any, tokens: int, attn: str, chunk: int | None, gpus: str = "1xH100-80GB"
) -> dict[str, Any]:
    """The doctor's estimate for this case (doctor.memory.estimate_for), or why there is none.

    `predicted_alloc_gib` (weights + KV + prefill activations) is what torch.cuda.max_memory_allocated
    measures; `predicted_total_gib` adds the per-GPU overhead (CUDA context, allocator slack) that
    the fit verdict uses."""
    from types import SimpleNamespace

    try:
        from doctor.memory import estimate_for, settings_for, sizing_args
        from doctor.memory.gpus import parse_gpus
        from doctor.probes.memory import size_weights
        from run_plan.spec import RunSpec
    except Exception as error:  # noqa: BLE001 - the estimator may not exist in this checkout
        return {"status": "n/a", "reason": f"doctor.memory estimator not importable ({error})"}
    # flex_gqa is this benchmark's own variant; the doctor knows only transformers' names
    doctor_attn = "flex_attention" if attn == "flex_gqa" else attn
    try:
        raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        target = RunSpec(
            context=tokens, attn=doctor_attn, prefill_chunk=chunk or tokens, dtype="bfloat16", gpus=gpus
        )
        resolution = SimpleNamespace(config=raw, quantization_config=None)
        if "sizing" not in _SIZING:
            settings = settings_for(target, raw, None)
            _SIZING["sizing"] = size_weights(sizing_args(settings, raw, None))
        estimate = estimate_for(target, resolution, gpus=parse_gpus(gpus), sizing=_SIZING["sizing"])
    except Exception as error:  # noqa: BLE001 - an API mismatch must not end the benchmark
        return {"status": "n/a", "reason": f"estimate_for failed: {type(error).__name__}: {error}"}
    alloc = estimate.weights_bytes + estimate.kv_bytes + estimate.activation_peak_bytes
    return {
        "status": "ok",
        "gpus": gpus,
        "attn_as": doctor_attn,
        "chunk": estimate.prefill_chunk,
        "predicted_alloc_gib": round(alloc / GIB, 2),
        "predicted_total_gib": round(estimate.total_bytes / GIB, 2),
        "fits": estimate.fits,
        "max_context_tokens": estimate.max_context_tokens,
        "method": estimate.method,
        "confidence": estimate.confidence,
    }


def add_predictions(paths: list[str]) -> None:
    """Fill the doctor's predictions into result files measured earlier (CPU only, no GPU needed)."""
    for path in paths:
        data = json.loads(Path(path).read_text())
        config = model_config(tiny=bool(data["facts"].get("tiny")), attn=data["facts"]["attn"])
        for row in data["rows"]:
            attn = data["facts"]["attn"]
            chunk = row.get("chunk") or row["tokens"]
            row["prediction"] = doctor_prediction(config, row["tokens"], attn, chunk)
        Path(path).write_text(json.dumps(data, indent=2))
        print_table(data["rows"], data["facts"])


def gpu_facts() -> dict[str, Any]:
    import torch
    import transformers

    facts: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(card=props.name, card_total_bytes=props.total_memory)
        try:
            facts["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            ).stdout.strip()
        except Exception as error:  # noqa: BLE001
            facts["nvidia_smi"] = f"unavailable: {error}"
    else:
        facts["card"] = "cpu"
    return facts


class Meter:
    """Peak memory and wall time of one case, synchronised around the region."""

    def __init__(self, device: Any) -> None:
        self.cuda = getattr(device, "type", str(device)) == "cuda"

    def __enter__(self) -> Meter:  # noqa: PYI034 - final class, a benchmark helper
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.peak = None
        self.seconds = time.perf_counter() - self.t0


def run_case(kind: str, model: Any, tokens: int, chunk: int | None, device: Any) -> dict[str, Any]:
    import torch

    from niah_run.backends.base import BackendOOM
    from niah_run.backends.hf import HFBackend, is_oom

    generator = torch.Generator().manual_seed(tokens)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, tokens), generator=generator)
    row: dict[str, Any] = {"case": kind, "tokens": tokens, "chunk": chunk}
    failure = None
    backend = None
    try:
        with Meter(device) as meter:
            if kind == "plain-forward":
                with torch.inference_mode():
                    out = model(input_ids=ids.to(device), use_cache=True)
                    del out
                row["prefill_s"] = None
            elif kind == "plain-generate":
                with torch.inference_mode():
                    out = model.generate(ids.to(device), max_new_tokens=1, do_sample=False)
                    del out
                row["prefill_s"] = None
            else:
                backend = HFBackend(model, None, prefill_chunk=chunk)
                generation = backend.generate(ids[0].tolist(), max_new_tokens=2)
                row["prefill_s"] = round(generation.prefill_seconds, 2)
                row["decode_s"] = round(generation.decode_seconds, 3)
        row["status"] = "ok"
        row["seconds"] = round(meter.seconds, 2)
        row["peak_bytes"] = meter.peak
        row["peak_gib"] = round(meter.peak / GIB, 2) if meter.peak is not None else None
        row["above_weights_gib"] = round((meter.peak - meter.base) / GIB, 2) if meter.peak else None
        measured = row["prefill_s"] or row["seconds"]
        row["prefill_tok_s"] = round(tokens / measured) if measured else None
    except BackendOOM as error:
        row.update(status="oom", detail=str(error)[:300], memory=error.memory)
    except Exception as error:  # noqa: BLE001
        if not is_oom(error):
            row.update(status="error", detail=f"{type(error).__name__}: {str(error)[:300]}")
        else:
            failure = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    if failure is not None:  # outside the except: the traceback's tensors are released
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        row.update(status="oom", detail=failure, peak_gib_at_failure=round(peak / GIB, 2) if peak else None)
    if backend is not None:
        backend._drop_cache()
    del backend
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def predicted_seconds(history: list[dict[str, Any]], kind: str, tokens: int) -> float | None:
    """Rough duration of the next case from the last finished one of the same kind.

    Exponent 1.5: between linear (MoE, chunked layers) and quadratic (the global layer)."""
    done = [r for r in history if r["case"] == kind and r.get("status") == "ok"]
    if not done:
        return None
    last = done[-1]
    return float(last["seconds"]) * (tokens / last["tokens"]) ** 1.5


def print_table(rows: list[dict[str, Any]], facts: dict[str, Any]) -> None:
    cap = f" (allocator capped at {facts['memory_cap_gib']} GiB)" if facts.get("memory_cap_gib") else ""
    print(
        f"\n{facts.get('card')}{cap} | torch {facts['torch']} | transformers {facts['transformers']} | "
        f"{facts['date_utc']} | weights {facts.get('weights_gib')} GiB"
    )
    header = (
        f"{'case':<24} {'tokens':>9} {'status':<12} {'peak GiB':>9} {'+weights':>9} "
        f"{'prefill s':>10} {'tok/s':>8} {'predicted':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        pred = r.get("prediction", {})
        pred_text = pred.get("predicted_alloc_gib", "n/a") if pred.get("status") == "ok" else "n/a"
        print(
            f"{r['case']:<24} {r['tokens']:>9} {r['status']:<12} {r.get('peak_gib', '-')!s:>9} "
            f"{r.get('above_weights_gib', '-')!s:>9} {r.get('prefill_s', r.get('seconds', '-'))!s:>10} "
            f"{r.get('prefill_tok_s', '-')!s:>8} {pred_text!s:>10}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny width on CPU: checks the script itself")
    parser.add_argument("--attn", default="sdpa", choices=("sdpa", "flex_attention", "flex_gqa", "eager"))
    parser.add_argument(
        "--chunks", default="4096", help="prefill chunk sizes for our runner, comma-separated"
    )
    parser.add_argument("--lengths", default="32k,128k,512k,1M", help="prompt lengths for our runner")
    parser.add_argument("--baseline-lengths", default="", help="lengths for plain-forward and plain-generate")
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="CHUNK:LEN,LEN",
        help="more cases for our runner with another chunk size, e.g. 8192:128k",
    )
    parser.add_argument(
        "--cap-gib",
        type=float,
        default=79.1,
        help="cap the allocator at this many GiB (79.1 = what an H100 80GB exposes), "
        "so a bigger card answers the H100 question; 0 = no cap",
    )
    parser.add_argument(
        "--warmup",
        default="",
        help="a short length run first and reported apart (flex_attention compiles on its first call)",
    )
    parser.add_argument(
        "--time-budget-s",
        type=float,
        default=540.0,
        help="skip cases predicted to end after this many seconds from the start",
    )
    parser.add_argument(
        "--predict",
        nargs="+",
        metavar="JSON",
        help="only add the doctor's predictions to earlier result files (CPU)",
    )
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for the JSON result")
    args = parser.parse_args(argv)
    if args.predict:
        add_predictions(args.predict)
        return 0

    import torch

    start = time.perf_counter()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    facts = gpu_facts()
    facts.update(attn=args.attn, tiny=args.tiny)
    if device.type == "cuda" and args.cap_gib > 0:
        total = torch.cuda.get_device_properties(0).total_memory
        if total > args.cap_gib * GIB:
            torch.cuda.set_per_process_memory_fraction(args.cap_gib * GIB / total)
            facts["memory_cap_gib"] = args.cap_gib
    model = build_model(args.tiny, args.attn, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        facts["weights_gib"] = round(torch.cuda.memory_allocated() / GIB, 2)
    else:
        facts["weights_gib"] = round(sum(p.numel() * p.element_size() for p in model.parameters()) / GIB, 4)
    facts["build_s"] = round(time.perf_counter() - start, 1)
    print(f"built model in {facts['build_s']} s, {facts['weights_gib']} GiB on {device}", flush=True)

    chunks = [int(c) for c in args.chunks.split(",") if c]
    plan: list[tuple[str, int, int | None]] = []
    for text in filter(None, args.baseline_lengths.split(",")):
        plan += [("plain-forward", parse_tokens(text), None), ("plain-generate", parse_tokens(text), None)]
    for chunk in chunks:
        plan += [(f"ours-{args.attn}-{chunk}", parse_tokens(t), chunk) for t in args.lengths.split(",") if t]
    for extra in args.extra:
        chunk_text, _, lengths = extra.partition(":")
        plan += [
            (f"ours-{args.attn}-{int(chunk_text)}", parse_tokens(t), int(chunk_text))
            for t in lengths.split(",")
            if t
        ]

    rows: list[dict[str, Any]] = []
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_file = out_dir / f"niah_reach_{args.attn}{'_tiny' if args.tiny else ''}.json"

    if args.warmup and chunks:
        warm = run_case(f"ours-{args.attn}-{chunks[0]}", model, parse_tokens(args.warmup), chunks[0], device)
        warm["case"] = "warmup " + warm["case"]
        rows.append(warm)
        print(json.dumps(warm), flush=True)

    failed_kinds: set[str] = set()
    for kind, tokens, chunk in plan:
        row: dict[str, Any]
        if kind in failed_kinds:  # a longer prompt of a kind that already ran out of memory
            row = {"case": kind, "tokens": tokens, "chunk": chunk, "status": "skipped_after_oom"}
        else:
            guess = predicted_seconds(rows, kind, tokens)
            elapsed = time.perf_counter() - start
            if guess is not None and elapsed + guess > args.time_budget_s:
                row = {
                    "case": kind,
                    "tokens": tokens,
                    "chunk": chunk,
                    "status": "skipped_time",
                    "detail": f"predicted {guess:.0f} s, {args.time_budget_s - elapsed:.0f} s left",
                }
            else:
                row = run_case(kind, model, tokens, chunk, device)
                if row["status"] == "oom":
                    failed_kinds.add(kind)
        row["prediction"] = doctor_prediction(model.config, tokens, args.attn, chunk or tokens)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "prediction"}), flush=True)
        out_file.write_text(json.dumps({"facts": facts, "rows": rows}, indent=2))  # partial results survive

    facts["total_s"] = round(time.perf_counter() - start, 1)
    out_file.write_text(json.dumps({"facts": facts, "rows": rows}, indent=2))
    print_table(rows, facts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
