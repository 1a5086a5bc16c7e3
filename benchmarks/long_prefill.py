"""Long prefill at the card's limit: exactness, speed and memory of each prefill path, in one process.

Paths (the `--attn` / `--experts` a plan can resolve to, on one loaded model):
- `today`:  transformers' sdpa under a DynamicCache (mask + repeated K/V) and Llama 4's every-expert MoE;
- `routed`: the same attention, with the routed experts (doctor/runtime/experts.py);
- `lean`:   niah_lean attention (doctor/runtime/attention.py), its preallocated KV cache, routed experts.

Subcommands (each prints a table and writes JSON under --out):
- `exactness`: tiny Llama 4 (chunked + NoPE layers), Mistral (sliding window) and Gemma 3 (mixed) models in
  bf16 on the GPU: max |Δlogit| of the lean path, chunked, against transformers' eager forward one-shot,
  and whether greedy tokens agree; plus the routed experts against transformers' MoE at Scout width.
- `speed MODEL_DIR`: the Scout-shaped checkpoint of benchmarks/one_plan.py, bnb-4bit on the fly as
  `niah run` loads it. For each path: the prefill seconds of a fresh prompt at each --lengths, either run
  in full (`--full`), or from chunk timings sampled along the prompt: a cache filled with random K/V to
  P tokens, one chunk timed there, and the seconds per chunk fitted as a + b·P (the attention of a chunk
  grows linearly with its position) and summed over the prompt's chunks. The useful FLOPs of the prompt
  over the card's measured bf16 GEMM rate give the ratio to the card's limit. Also the doctor's predicted
  seconds (the plan's time model) for each.
- `moe`: a Maverick-shaped model (1 dense + 1 MoE layer, 128 experts) built on the GPU: the largest prefill
  chunk that runs on this card, and the seconds per 32k tokens, for transformers' MoE and the routed one.

    python benchmarks/long_prefill.py exactness --out $OUT/exact
    python benchmarks/long_prefill.py speed /dev/shm/scout4 --out $OUT/speed --lengths 1M,2M --full lean
    python benchmarks/long_prefill.py moe --out $OUT/moe
    python benchmarks/long_prefill.py exactness --out /tmp/exact --tokens 512          # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GIB = 1 << 30
PATHS = ("today", "routed", "lean")


def parse_tokens(text: str) -> int:
    from run_plan.spec import parse_token_count

    return parse_token_count(text, what="length")


def _write(out: Path, name: str, data: Any) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(data, indent=2, default=str))


def _device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / GIB, 2) if torch.cuda.is_available() else None


def _versions() -> dict[str, Any]:
    from importlib import metadata

    import torch

    out: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    for name in ("torch", "transformers", "bitsandbytes", "accelerate"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# ---------------------------------------------------------------- exactness


def _tiny_configs() -> dict[str, Any]:
    import transformers

    base = {
        "vocab_size": 4096,
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "max_position_embeddings": 65536,
    }
    return {
        "llama4-chunked-nope": transformers.AutoConfig.for_model(
            "llama4_text",
            **base,
            intermediate_size_mlp=512,
            num_local_experts=4,
            num_experts_per_tok=1,
            attention_chunk_size=1024,
            no_rope_layers=[1, 1, 1, 0],
            floor_scale=1024,
        ),
        "mistral-sliding": transformers.AutoConfig.for_model("mistral", **base, sliding_window=1024),
        "gemma3-mixed": transformers.AutoConfig.for_model(
            "gemma3_text",
            **base,
            sliding_window=512,
            layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
        ),
    }


def exactness(out: Path, tokens: int, chunk: int) -> dict[str, Any]:
    import torch
    import transformers

    from doctor.runtime import attention

    attention.register()
    device = _device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for name, config in _tiny_configs().items():
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(
            config, attn_implementation="eager", dtype=dtype
        )
        model = model.to(device).eval()
        ids = torch.randint(3, config.vocab_size, (1, tokens), device=device)
        with torch.inference_mode():
            truth = None
            if dtype != torch.float32:  # the fp32 forward is the truth every bf16 path is an approximation of
                truth = model.float()(input_ids=ids).logits[0].float()
                model = model.to(dtype)
            eager = model(input_ids=ids).logits[0].float()
            model.set_attn_implementation("sdpa")
            sdpa = _chunked_logits(model, ids, chunk, None)
            model.set_attn_implementation(attention.LEAN_ATTENTION)
            lean = _chunked_logits(model, ids, chunk, tokens)
        reference = truth if truth is not None else eager
        spread = float(reference.max() - reference.min())
        row = {
            "model": name,
            "tokens": tokens,
            "chunk": chunk,
            "dtype": str(dtype).replace("torch.", ""),
            "logit_range": round(spread, 3),
        }
        for label, logits in (("eager one-shot", eager), ("sdpa chunked", sdpa), ("lean chunked", lean)):
            row[f"{label}: max |dlogit| vs {'fp32' if truth is not None else 'eager'}"] = round(
                float((logits - reference).abs().max()), 5
            )
            row[f"{label}: argmax = reference"] = round(
                float((logits.argmax(-1) == reference.argmax(-1)).float().mean()), 5
            )
        row["lean vs eager: max |dlogit|"] = round(float((lean - eager).abs().max()), 5)
        rows.append(row)
        del model
    rows.append(_routed_vs_transformers(device, dtype))
    from doctor.runtime import experts

    result = {
        "versions": _versions(),
        "rows": rows,
        # what the runtime found out about this torch build (both True on a healthy Hopper setup)
        "flash_causal_bottom_right": dict(attention._BOTTOM_RIGHT),
        "grouped_gemm_in_use": experts.grouped_gemm_in_use(device),
    }
    _write(out, "exactness.json", result)
    print(
        f"\nexactness on {result['versions']['gpu']}: flash bottom-right {result['flash_causal_bottom_right']}, "
        f"grouped GEMM {result['grouped_gemm_in_use']}"
    )
    for r in rows:
        print("  " + ", ".join(f"{k}={v}" for k, v in r.items()))
    return result


def _chunked_logits(model: Any, ids: Any, chunk: int, capacity: int | None) -> Any:
    """Every position's logits from a chunked prefill (the lean path's preallocated cache with a capacity)."""
    import torch

    from doctor.runtime import attention
    from niah_run import prefill as pf

    cache = pf.new_cache(model, capacity)
    sig = pf.inspect_forward(model)
    pieces = []
    for a, b in pf.chunk_bounds(0, ids.shape[-1], chunk):
        with attention.query_start(a, b - a):
            got = model(
                input_ids=ids[:, a:b],
                position_ids=torch.arange(a, b, device=ids.device)[None],
                **{sig.cache_kw: cache},
            )
        pieces.append(got.logits[0].float())
    return torch.cat(pieces)


def _routed_vs_transformers(device: Any, dtype: Any) -> dict[str, Any]:
    """One Scout-width MoE layer (16 experts, hidden 5120, expert width 8192; 4 experts on the CPU)."""
    import torch
    from transformers import Llama4TextConfig
    from transformers.models.llama4.modeling_llama4 import Llama4TextMoe

    from doctor.runtime.experts import routed_moe_class

    on_gpu = device.type == "cuda"
    config = Llama4TextConfig(
        hidden_size=5120 if on_gpu else 256,
        intermediate_size=8192 if on_gpu else 512,
        num_local_experts=16 if on_gpu else 4,
        num_experts_per_tok=1,
    )
    torch.manual_seed(0)
    with torch.device(device):
        moe = Llama4TextMoe(config).to(dtype)
    with torch.no_grad():
        for parameter in moe.parameters():
            parameter.normal_(0.0, 0.02)
    tokens = 8192 if on_gpu else 256
    x = torch.randn(tokens, config.hidden_size, device=device, dtype=dtype)
    with torch.inference_mode():
        reference, seconds_all = _timed(lambda: moe(x)[0])
        moe.__class__ = routed_moe_class()
        routed, seconds_routed = _timed(lambda: moe(x)[0])
    scale = float(reference.abs().max())
    return {
        "model": f"MoE layer, {config.num_local_experts} experts, hidden {config.hidden_size}",
        "tokens": tokens,
        "max_abs_diff_over_max": round(float((routed - reference).abs().max()) / scale, 6),
        "seconds_all_experts": round(seconds_all, 4),
        "seconds_routed": round(seconds_routed, 4),
    }


def _timed(work: Callable[[], Any]) -> tuple[Any, float]:
    work()
    _sync()
    started = time.perf_counter()
    result = work()
    _sync()
    return result, time.perf_counter() - started


# ---------------------------------------------------------------- speed


@contextmanager
def _path(backend: Any, name: str) -> Iterator[None]:
    """Put one prefill path on the loaded model for the block."""
    from transformers.models.llama4.modeling_llama4 import Llama4TextMoe

    from doctor.runtime import attention
    from doctor.runtime.experts import route_llama4_experts, routed_moe_class

    model = backend.model
    attention.register()
    model.set_attn_implementation(attention.LEAN_ATTENTION if name == "lean" else "sdpa")
    routed = routed_moe_class()
    for module in model.modules():
        if type(module) in (Llama4TextMoe, routed):
            module.__class__ = Llama4TextMoe
    if name != "today":
        route_llama4_experts(model)
    backend.preallocate_kv = name == "lean"
    try:
        yield
    finally:
        backend.preallocate_kv = False


def _synthetic_cache(model: Any, lean: bool, held: int, capacity: int) -> Any:
    """A cache that has seen `held` tokens, filled with random K/V (a kernel's speed does not depend on
    the values): full layers hold all of them, windowed layers their last window - 1."""
    import torch

    from niah_run import prefill as pf

    cache = pf.new_cache(model, capacity if lean else None)
    config = model.config
    kv_heads = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    device = model.get_input_embeddings().weight.device
    for layer in cache.layers:
        window = getattr(layer, "sliding_window", None)
        n = min(held, int(window) - 1) if window else held
        if n <= 0:
            continue
        keys = torch.randn(1, kv_heads, n, head_dim, device=device, dtype=model.dtype)
        layer.update(keys, torch.randn_like(keys))
        if window:
            layer.cumulative_length = held
        del keys
    return cache


def sampled_seconds(backend: Any, name: str, tokens: int, chunk: int, points: int) -> dict[str, Any]:
    """Seconds per chunk at `points` positions along the prompt, fitted as a + b·P and summed."""
    import torch

    from niah_run import prefill as pf

    model = backend.model
    sig = pf.inspect_forward(model)
    device = model.get_input_embeddings().weight.device
    vocab = min(int(model.config.vocab_size), 49152)
    ids = torch.randint(3, vocab, (1, chunk), device=device)
    positions = sorted({int(tokens * k / points) // chunk * chunk for k in range(points)})
    positions = [p for p in positions if p + chunk <= tokens] or [0]
    timings = []
    with torch.inference_mode():
        warm = _synthetic_cache(model, name == "lean", 0, 2 * chunk)
        pf.forward_step(model, sig, ids, 0, warm)
        del warm
        for at in positions:
            cache = _synthetic_cache(model, name == "lean", at, at + chunk)
            _reset_peak()
            _sync()
            started = time.perf_counter()
            pf.forward_step(model, sig, ids, at, cache)
            _sync()
            timings.append((at, time.perf_counter() - started, _peak_gib()))
            del cache
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    xs = [float(at) for at, _, _ in timings]
    ys = [s for _, s, _ in timings]
    slope, intercept = _fit_line(xs, ys)
    starts = range(0, tokens, chunk)
    total = sum(intercept + slope * a for a in starts)
    return {
        "path": name,
        "tokens": tokens,
        "chunk": chunk,
        "method": f"sampled at {len(timings)} positions",
        "seconds": round(total, 1),
        "samples": [{"position": at, "seconds": round(s, 4), "peak_gib": m} for at, s, m in timings],
    }


def _fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return 0.0, ys[0] if ys else 0.0
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var if var else 0.0
    return slope, mean_y - slope * mean_x


def full_seconds(backend: Any, name: str, tokens: int, chunk: int) -> dict[str, Any]:
    """One real fresh prefill of `tokens` random ids, through the backend niah runs."""
    import torch

    vocab = min(int(backend.model.config.vocab_size), 49152)
    ids = torch.randint(3, vocab, (tokens,)).tolist()
    backend.prefill_chunk = chunk
    _reset_peak()
    generation = backend.generate(ids, max_new_tokens=2)
    backend._drop_cache()
    backend._free()
    return {
        "path": name,
        "tokens": tokens,
        "chunk": chunk,
        "method": "full prefill",
        "seconds": round(generation.prefill_seconds, 1),
        "peak_gib": _peak_gib(),
    }


def useful_flops(config: Any, tokens: int, active_params: float) -> float:
    """Causal attention of the global layers + the chunked layers' chunks + 2 FLOP per active weight."""
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", config.hidden_size // heads))
    chunk = int(getattr(config, "attention_chunk_size", 0) or tokens)
    flops = 2.0 * active_params * tokens
    for layer_type in config.layer_types:
        if layer_type == "chunked_attention":
            full, rest = divmod(tokens, chunk)
            pairs = full * chunk * (chunk + 1) // 2 + rest * (rest + 1) // 2
        else:
            pairs = tokens * (tokens + 1) // 2
        flops += 4.0 * heads * head_dim * pairs
    return flops


def speed(
    model_dir: Path,
    out: Path,
    lengths: list[int],
    full: set[str],
    chunks: dict[str, int],
    points: int,
    order: list[str],
    also_sampled: set[str],
) -> dict[str, Any]:
    import dataclasses

    from doctor.api import judge
    from doctor.memory.timing import active_linear_params
    from niah_run.backends.loading import load_backend
    from run_plan.spec import RunSpec

    spec = RunSpec(model=str(model_dir), quant="bnb-4bit", lengths=tuple(lengths), attn="niah_lean")
    started = time.monotonic()
    judged = judge(spec, only=("memory",))
    plan = judged.plan
    print(
        f"doctor: {judged.verdict}; longest {plan.max_context_tokens}; chunk {plan.spec.prefill_chunk}",
        flush=True,
    )
    rates = judged.report.facts.get("rates-live") if hasattr(judged.report, "facts") else None
    print(f"rates: {rates}", flush=True)
    backend = load_backend(dataclasses.replace(plan.spec, experts="routed"))
    print(f"loaded in {time.monotonic() - started:.0f} s (with the doctor)", flush=True)
    sizing = _sizing_of(judged)
    matmul = float((rates or {}).get("matmul") or 0) or None
    active = active_linear_params(sizing)  # useful work: the routed experts only, whatever a path runs
    rows: list[dict[str, Any]] = []
    for name in order:
        with _path(backend, name):
            for tokens in lengths:
                chunk = chunks[name]
                methods = (["full"] if name in full else []) + (
                    ["sampled"] if name not in full or name in also_sampled else []
                )
                for method in methods:
                    row = (
                        full_seconds(backend, name, tokens, chunk)
                        if method == "full"
                        else sampled_seconds(backend, name, tokens, chunk, points)
                    )
                    limit = useful_flops(backend.model.config, tokens, active) / matmul if matmul else None
                    row["card_limit_seconds"] = round(limit, 1) if limit else None
                    row["fraction_of_card"] = (
                        round(limit / row["seconds"], 3) if limit and row["seconds"] else None
                    )
                    row["predicted_seconds"] = _predicted(sizing, name, tokens, chunk, rates)
                    rows.append(row)
                    print("  " + json.dumps(row), flush=True)
                    _write(out, "speed.json", {"versions": _versions(), "rates": rates, "rows": rows})
    result = {"versions": _versions(), "rates": rates, "plan_chunk": plan.spec.prefill_chunk, "rows": rows}
    _write(out, "speed.json", result)
    backend.close()
    return result


def _predicted(sizing: dict[str, Any], name: str, tokens: int, chunk: int, rates: Any) -> float | None:
    """The doctor's time plan for this path (doctor.memory.timing), at the rates the live probe measured."""
    from doctor.memory.gpus import parse_gpus
    from doctor.memory.timing import prefill_time_model

    if not sizing:
        return None
    attn = "niah_lean" if name == "lean" else "sdpa"
    trace = {**(sizing.get("trace") or {}), "attn_implementation": attn}
    moe = {**(sizing.get("moe") or {}), "all_tokens_to_all_experts": name == "today"}
    measured = rates if isinstance(rates, dict) else None
    model = prefill_time_model(
        {**sizing, "trace": trace, "moe": moe}, attn, "bnb-4bit", parse_gpus("1xH100-80GB"), measured
    )
    return round(model.seconds(0, tokens, chunk), 1) if model else None


def _sizing_of(judged: Any) -> dict[str, Any]:
    for check in judged.report.checks:
        if check.id == "memory-fit":
            break
    facts = judged.report.facts.get("memory") if hasattr(judged.report, "facts") else None
    return dict((facts or {}).get("sizing") or {}) if isinstance(facts, dict) else {}


# ---------------------------------------------------------------- many-expert MoE


def moe(out: Path, experts: int, tokens: int, tiny: bool) -> dict[str, Any]:
    """Maverick-shaped 2 layers on the GPU: the largest chunk that runs, and seconds per `tokens`."""
    import torch
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    from doctor.runtime.experts import route_llama4_experts
    from niah_run.backends.hf import HFBackend

    shape = dict(
        hidden_size=5120,
        num_attention_heads=40,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=8192,
        intermediate_size_mlp=16384,
        vocab_size=202048,
    )
    if tiny:
        shape = dict(
            hidden_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=64,
            intermediate_size_mlp=128,
            vocab_size=1000,
        )
    config = Llama4TextConfig(
        num_hidden_layers=2,
        num_local_experts=experts,
        num_experts_per_tok=1,
        interleave_moe_layer_step=2,
        no_rope_layers=[1, 1],
        attention_chunk_size=8192,
        max_position_embeddings=1 << 20,
        **shape,
    )
    device = _device()
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = Llama4ForCausalLM(config).eval()
    torch.set_default_dtype(previous)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(
        f"Maverick-shaped 2L: {weights / GIB:.1f} GiB of bf16 weights, MoE layers {config.moe_layers}",
        flush=True,
    )
    rows = []
    for name in ("today", "routed"):
        if name == "routed":
            route_llama4_experts(model)
        backend = HFBackend(model, None, prefill_chunk=None)
        ids = torch.randint(3, 1000, (tokens,)).tolist()
        for chunk in (512, 1024, 2048, 4096, 8192, 16384, 32768):
            if chunk > tokens:
                break
            backend.prefill_chunk = chunk
            _reset_peak()
            try:
                generation = backend.generate(ids, max_new_tokens=1)
            except Exception as error:  # noqa: BLE001 - BackendOOM: the largest chunk is the one before
                rows.append({"path": name, "chunk": chunk, "status": type(error).__name__})
                print("  " + json.dumps(rows[-1]), flush=True)
                break
            rows.append(
                {
                    "path": name,
                    "chunk": chunk,
                    "status": "ok",
                    "seconds": round(generation.prefill_seconds, 2),
                    "peak_gib": _peak_gib(),
                }
            )
            print("  " + json.dumps(rows[-1]), flush=True)
        for row in rows:
            if row["path"] == name:  # what the doctor predicted for the same run, fitting or not
                row["doctor"] = _doctor_peak(config, tokens, row["chunk"], name)
        backend._drop_cache()
        backend._free()
    result = {
        "versions": _versions(),
        "tokens": tokens,
        "weights_gib": round(weights / GIB, 2),
        "experts": experts,
        "rows": rows,
    }
    _write(out, "moe.json", result)
    return result


_MOE_SIZINGS: dict[str, Any] = {}


def _doctor_peak(config: Any, tokens: int, chunk: int, path: str) -> dict[str, Any]:
    """The doctor's predicted allocator peak and verdict for this run on this card (bf16, no quantization)."""
    import dataclasses

    import torch

    from doctor.memory.estimate import compute_estimate, settings_for, sizing_args
    from doctor.memory.gpus import GpuSpec
    from doctor.probes.memory import size_weights
    from run_plan.spec import RunSpec

    raw = {**config.to_dict(), "architectures": ["Llama4ForCausalLM"]}
    experts = "routed" if path == "routed" else "transformers"
    target = RunSpec(context=tokens, dtype="bfloat16", attn="sdpa", experts=experts, prefill_chunk=chunk)
    settings = settings_for(target, raw, None)
    if experts not in _MOE_SIZINGS:
        _MOE_SIZINGS[experts] = size_weights(sizing_args(settings, raw, None))
    props = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None
    gpu = GpuSpec(
        0, props.name if props else "cpu", int(props.total_memory) if props else 80 << 30, "bench", (9, 0)
    )
    estimate = compute_estimate(
        _MOE_SIZINGS[experts], dataclasses.replace(settings, prefill_chunk=chunk), [gpu]
    )
    return {
        "predicted_peak_gib": round(estimate.per_gpu[0]["predicted_peak_bytes"] / GIB, 2),
        "fits": estimate.fits,
        "method": estimate.method,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("exactness")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--tokens", type=parse_tokens, default=8192)
    e.add_argument("--chunk", type=int, default=1000)
    s = sub.add_parser("speed")
    s.add_argument("model_dir", type=Path)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--lengths", default="1M,2M")
    s.add_argument("--full", default="lean", help="paths whose prefill runs in full (others are sampled)")
    s.add_argument("--chunks", default="today=1024,routed=1024,lean=8192")
    s.add_argument("--points", type=int, default=5)
    s.add_argument("--order", default="lean,today,routed")
    s.add_argument("--also-sample", default="", help="full-prefill paths also timed by sampling (checks it)")
    m = sub.add_parser("moe")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--experts", type=int, default=128)
    m.add_argument("--tokens", type=parse_tokens, default=32768)
    m.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "exactness":
        exactness(args.out, args.tokens, args.chunk)
    elif args.command == "speed":
        chunks = {k: int(v) for k, v in (pair.split("=") for pair in args.chunks.split(","))}
        speed(
            args.model_dir,
            args.out,
            [parse_tokens(t) for t in args.lengths.split(",")],
            set(args.full.split(",")) if args.full else set(),
            chunks,
            args.points,
            args.order.split(","),
            set(args.also_sample.split(",")) if args.also_sample else set(),
        )
    else:
        moe(args.out, args.experts, args.tokens, args.tiny)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
