"""Multi-GPU check (issue 5): a Scout-shaped model too large for one card, swept across several GPUs.

What it does, in order:
1. Builds a Scout-shaped Llama 4 TEXT model (Llama4ForCausalLM from a Llama4TextConfig with Scout's
   per-layer shapes, 3 chunked : 1 global layers) with `--layers` decoder layers, on the meta device.
2. Places it exactly as `niah run --device-map auto --max-memory ...` would: transformers'
   `_get_device_map("auto", max_memory)` (balanced memory + accelerate's infer_auto_device_map), falling
   back to accelerate's own get_balanced_memory + infer_auto_device_map.
3. Materializes every parameter directly on its device with random bf16 values (randn × 0.02, norms 1)
   and dispatches the model with accelerate.dispatch_model. No download, no checkpoint on disk.
4. Makes a tokenizer offline: a byte-level BPE trained on the generated haystack, with a chat template.
5. Runs a sweep THROUGH OUR RUNNER (niah_run.sweep.Sweep with niah_run.backends.hf.HFBackend wrapping the
   model), one case per length × `--depths`, each with a time guard; an OOM is recorded per case.
6. Asks the doctor's estimator (doctor.memory.estimate_for, in-process, same --gpus/--max-memory) for
   the per-GPU figures and prints: GPU, name, estimate needed, estimated tensors, measured peak, error.

Random weights: needle accuracy is meaningless here; placement and memory are what is measured.

GPU (lead, 2 GPUs):   python3 benchmarks/multi_gpu_sweep.py --out $OUT/multi-gpu
CPU smoke (anywhere): python3 benchmarks/multi_gpu_sweep.py --tiny --device cpu --out /tmp/mg
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GIB = 1 << 30
STARTED = time.monotonic()
MODEL_NAME = "scout-shaped-random"
SPECIAL = ("<|begin|>", "<|end|>", "<|user|>", "<|assistant|>", "<|pad|>")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


# ------------------------------------------------------------------------------------------- model


def scout_text_config(layers: int, tiny: bool, vocab_size: int) -> Any:
    """Scout's text shapes: every 4th layer global (NoPE), the others chunked."""
    from transformers import Llama4TextConfig

    shape: dict[str, Any] = {
        "hidden_size": 5120,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "num_local_experts": 16,
        "intermediate_size": 8192,
        "intermediate_size_mlp": 16384,
        "attention_chunk_size": 8192,
        "vocab_size": 202048,
        "max_position_embeddings": 10485760,
    }
    if tiny:
        shape = {
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "num_local_experts": 4,
            "intermediate_size": 64,
            "intermediate_size_mlp": 128,
            "attention_chunk_size": 128,
            "vocab_size": vocab_size,
            "max_position_embeddings": 65536,
        }
    return Llama4TextConfig(
        **shape,
        num_hidden_layers=layers,
        num_experts_per_tok=1,
        interleave_moe_layer_step=1,
        no_rope_layers=[0 if (i + 1) % 4 == 0 else 1 for i in range(layers)],  # 1 = RoPE + chunked
        rope_theta=500000.0,
        tie_word_embeddings=False,
        dtype="bfloat16",
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=4,
    )


def plan_device_map(model: Any, max_memory: dict[Any, Any]) -> tuple[dict[str, Any], str]:
    """The device map `from_pretrained(device_map="auto", max_memory=...)` computes for this model."""
    try:
        from transformers.integrations.accelerate import _get_device_map

        return dict(_get_device_map(model, "auto", dict(max_memory), None)), "transformers._get_device_map"
    except (ImportError, TypeError) as exc:  # another transformers: do what it does, with accelerate
        from accelerate.utils import get_balanced_memory, infer_auto_device_map

        balanced = get_balanced_memory(
            model, max_memory=dict(max_memory), no_split_module_classes=model._no_split_modules
        )
        device_map = infer_auto_device_map(
            model, max_memory=balanced, no_split_module_classes=model._no_split_modules
        )
        return dict(device_map), f"accelerate infer_auto_device_map ({type(exc).__name__})"


def device_of(name: str, device_map: dict[str, Any]) -> Any:
    """The device of a parameter: the longest device_map prefix that contains it."""
    best, where = -1, None
    for prefix, device in device_map.items():
        contains = prefix == "" or name == prefix or name.startswith(prefix + ".")
        if contains and len(prefix) > best:
            best, where = len(prefix), device
    if where is None:
        raise KeyError(f"{name} is in no device_map entry")
    return where


def torch_device(device: Any, cpu_only: bool) -> str:
    if cpu_only or device in ("cpu", "disk"):
        return "cpu"
    return f"cuda:{device}" if isinstance(device, int) else str(device)


def meta_model(config: Any) -> Any:
    """The model on the meta device in bf16, as from_pretrained(dtype=bfloat16) builds it (bf16 is the
    default dtype during construction; the planner sizes by it). Built under torch.device("meta"):
    accelerate's init_empty_weights initializes every Linear on the CPU first (98 s for 20 Scout layers).
    The only buffers (rotary inv_freq) are then rebuilt for real on the CPU; dispatch_model moves them."""
    import torch
    from transformers import Llama4ForCausalLM

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            model = Llama4ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    left = [name for name, buffer in model.named_buffers() if buffer.is_meta]
    if left:
        raise RuntimeError(f"buffers left on the meta device: {left[:3]}")
    return model


def build_model(config: Any, max_memory: dict[Any, Any], cpu_only: bool) -> tuple[Any, dict[str, Any]]:
    """Meta skeleton → planned map → random bf16 parameters on their devices → dispatch_model."""
    import torch
    from accelerate import dispatch_model
    from accelerate.utils import set_module_tensor_to_device

    model = meta_model(config)
    planned, planner = plan_device_map(model, max_memory)
    if any(d in ("cpu", "disk") for d in planned.values()) and not cpu_only:
        raise RuntimeError(
            f"the planned map offloads to cpu/disk: {sorted(set(map(str, planned.values())))}; "
            "lower --layers or raise --max-memory"
        )
    started = time.monotonic()
    for seed, (name, param) in enumerate(list(model.named_parameters())):
        device = torch_device(device_of(name, planned), cpu_only)
        torch.manual_seed(seed)
        if param.dim() == 1 and "norm" in name:
            value = torch.ones(param.shape, dtype=torch.bfloat16, device=device)
        else:
            value = torch.randn(param.shape, dtype=torch.bfloat16, device=device).mul_(0.02)
        set_module_tensor_to_device(model, name, device, value=value)
        del value
    actual = {k: ("cpu" if cpu_only else v) for k, v in planned.items()}
    model = dispatch_model(model, device_map=actual, force_hooks=cpu_only)  # hooks move activations
    model.hf_device_map = actual  # what from_pretrained(device_map=...) leaves on the model
    model.eval()
    weights_by_device: dict[str, int] = {}
    for param in model.parameters():
        key = str(param.device)
        weights_by_device[key] = weights_by_device.get(key, 0) + param.numel() * param.element_size()
    return model, {
        "planned_device_map": {k: str(v) for k, v in planned.items()},
        "planner": planner,
        "materialize_seconds": round(time.monotonic() - started, 1),
        "weights_bytes_by_device": weights_by_device,
    }


# --------------------------------------------------------------------------------------- tokenizer


def build_tokenizer(vocab_size: int, seed: int) -> Any:
    """Byte-level BPE trained on the generated haystack (exact round trips, no [UNK]), chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from niah_run.haystack import load_haystack
    from niah_run.prompt import INTRO, OUTRO, SENTINEL

    text = load_haystack("generated", seed, 400_000).text
    corpus = [text[i : i + 2000] for i in range(0, len(text), 2000)]
    corpus += [INTRO, OUTRO, SENTINEL, "What is the passkey? The passkey is 1234567890."]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        chat_template=CHAT_TEMPLATE,
    )


# ------------------------------------------------------------------------------------------ runner


class SharedBackend:
    """HFBackend for several Sweep cases: close() is deferred, reserved peaks are added to each trial,
    and a trial is refused once the time budget is spent (recorded as an error, not a hang)."""

    def __init__(self, inner: Any, deadline: float) -> None:
        self.inner = inner
        self.name = inner.name
        self.deadline = deadline

    @property
    def tokenizer(self) -> Any:
        return self.inner.tokenizer

    @property
    def model(self) -> Any:
        return self.inner.model

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def generate(
        self, input_ids: list[int], *, max_new_tokens: int, reusable_prefix_len: int = 0, **hints: Any
    ) -> Any:
        import dataclasses

        import torch

        if time.monotonic() > self.deadline:
            raise TimeoutError("time budget spent before this trial")
        generation = self.inner.generate(
            input_ids, max_new_tokens=max_new_tokens, reusable_prefix_len=reusable_prefix_len
        )
        if torch.cuda.is_available():  # HFBackend reset all peak stats at the start of this trial
            memory = dict(generation.memory)
            memory["per_gpu_peak_reserved_bytes"] = {
                f"cuda:{i}": torch.cuda.max_memory_reserved(i) for i in range(torch.cuda.device_count())
            }
            generation = dataclasses.replace(generation, memory=memory)
        return generation

    def close(self) -> None:  # the model outlives each case; closed once at the end
        pass


def run_case(
    backend: SharedBackend, length: int, depths: tuple[float, ...], args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """One length × depths through niah_run's Sweep; returns its rows and per-GPU peaks."""
    from niah_run.results import RESULTS_FILE, read_trial_rows
    from niah_run.sweep import RunFolder, Sweep, finish
    from run_plan.spec import RunSpec

    run_dir = out / "runs" / f"len-{length}"
    spec = RunSpec(
        model=MODEL_NAME,
        dtype="bfloat16",
        attn="sdpa",
        device_map="auto",
        max_memory=args.max_memory,
        lengths=(length,),
        depths=depths,
        trials=1,
        max_new_tokens=args.max_new_tokens,
        prefill_chunk=args.prefill_chunk,
        seed=args.seed,
    )
    started = time.monotonic()
    counts = Sweep(
        spec,
        RunFolder(run_dir, skip_preflight=True, quiet=True),
        argv=("multi_gpu_sweep", str(length)),
        backend_factory=lambda _: backend,
    ).run()
    finish(run_dir, title=f"{MODEL_NAME} · multi-GPU")
    rows = read_trial_rows(run_dir / RESULTS_FILE)
    peaks: dict[str, int] = {}
    reserved: dict[str, int] = {}
    for row in rows:
        memory = row.memory or {}
        for source, target in (("per_gpu_peak_bytes", peaks), ("per_gpu_peak_reserved_bytes", reserved)):
            for device, value in (memory.get(source) or {}).items():
                target[device] = max(target.get(device, 0), int(value))
        for device, figures in (memory.get("at_failure") or {}).items():  # an OOM row
            peaks[device] = max(peaks.get(device, 0), int(figures.get("peak_bytes", 0)))
    return {
        "length": length,
        "counts": counts,
        "seconds": round(time.monotonic() - started, 1),
        "statuses": [r.status for r in rows],
        "errors": [r.error for r in rows if r.error],
        "prefill_seconds": [r.prefill_seconds for r in rows],
        "peak_allocated_bytes": peaks,
        "peak_reserved_bytes": reserved,
        "run_dir": str(run_dir),
    }


# ---------------------------------------------------------------------------------------- estimate


def doctor_gpus(args: argparse.Namespace) -> list[Any]:
    """The GPUs the doctor sizes for: --gpus, else what NVML (the doctor's default path) sees."""
    from doctor.memory.gpus import GpuSpec, gpus_from_nvml, parse_gpus
    from doctor.memory.placement import DRIVER_RESERVED

    if args.gpus:
        return parse_gpus(args.gpus)
    try:
        from doctor.probes import load_probes
        from run_plan.spec import RunSpec

        gpus = gpus_from_nvml(load_probes()["nvml"](RunSpec()))
    except Exception:  # noqa: BLE001 - no NVML here: ask torch
        gpus = []
    if gpus:
        return gpus
    import torch

    return [
        GpuSpec(
            i,
            torch.cuda.get_device_name(i),
            torch.cuda.get_device_properties(i).total_memory + DRIVER_RESERVED,
            "torch",
        )
        for i in range(torch.cuda.device_count())
    ]


def doctor_estimate(
    config_dict: dict[str, Any],
    sizing: dict[str, Any],
    gpus: list[Any],
    length: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    from doctor.memory import estimate_for
    from run_plan.spec import RunSpec

    target = RunSpec(
        model=MODEL_NAME,
        context=length,
        dtype="bfloat16",
        attn="sdpa",
        prefill_chunk=args.prefill_chunk,
        gpus=args.gpus,
        max_memory=args.max_memory,
        device_map="auto",
    )
    resolution = SimpleNamespace(config=config_dict, quantization_config=None)
    return estimate_for(target, resolution, gpus=gpus, sizing=sizing).to_dict()


def doctor_layers_per_gpu(
    sizing: dict[str, Any], estimate: dict[str, Any], args: argparse.Namespace, gpus: list[Any]
) -> dict[str, str]:
    """Decoder layers per GPU as the doctor places them (the placement its estimate uses)."""
    from doctor.memory.estimate import gpu_budgets
    from doctor.memory.placement import place_like_transformers
    from niah_run.backends.hf import _ranges

    user = dict(gpu_budgets(args.max_memory))
    blocks = sizing["blocks"]
    placement = place_like_transformers(
        sizing, [(g.index, g.capacity_bytes) for g in gpus], user or None, "none"
    )
    out: dict[str, list[int]] = {}
    for block, gpu in zip(blocks, placement):
        match = re.search(r"\.(\d+)$", block["name"])
        if match and block.get("class") in (sizing.get("no_split_modules") or []):
            out.setdefault("cpu" if gpu < 0 else f"cuda:{gpus[gpu].index}", []).append(int(match.group(1)))
    return {k: _ranges(v) for k, v in out.items()}


# ------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default 20; --tiny 4)")
    parser.add_argument("--max-memory", default=None, help="as niah run takes it (default 0=70GiB,1=70GiB)")
    parser.add_argument("--gpus", default=None, help="the doctor's --gpus (default: what NVML sees)")
    parser.add_argument(
        "--lengths", default=None, help="comma list (default 8k,32k,128k; --tiny 256,512,1024)"
    )
    parser.add_argument("--depths", default="25,75")
    parser.add_argument("--prefill-chunk", type=int, default=None, help="default 4096 (--tiny 128)")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-s", type=float, default=450.0, help="stop starting cases after this")
    parser.add_argument("--hard-limit-s", type=float, default=530.0, help="write what we have and exit")
    parser.add_argument("--tiny", action="store_true", help="tiny widths (CPU smoke test of every code path)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument(
        "--out", default=os.environ.get("OUT") and os.path.join(os.environ["OUT"], "multi-gpu")
    )
    args = parser.parse_args(argv)
    args.layers = args.layers or (4 if args.tiny else 20)
    args.prefill_chunk = args.prefill_chunk or (128 if args.tiny else 4096)
    from run_plan.spec import parse_token_count

    args.lengths = tuple(
        parse_token_count(x.strip())
        for x in (args.lengths or ("256,512,1024" if args.tiny else "8k,32k,128k")).split(",")
    )
    args.depths = tuple(float(x) for x in args.depths.split(","))
    args.out = Path(args.out or "/tmp/multi-gpu-sweep")
    if args.device == "cpu" and not args.gpus:
        args.gpus = "2x1GiB"  # pretend GPUs for the estimate and the planned map; tensors stay on CPU
    return args


def fmt_gib(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value / GIB:.2f}" if value >= GIB // 10 else f"{value / (1 << 20):.1f}M"  # --tiny: MiB


def comparison(case: dict[str, Any], estimate: dict[str, Any], overhead: int) -> list[dict[str, Any]]:
    rows = []
    for gpu in estimate["per_gpu"]:
        key = f"cuda:{gpu['index']}"
        measured = case["peak_allocated_bytes"].get(key)
        tensors = gpu["needed_bytes"] - overhead  # weights + KV + activations: what torch allocates
        rows.append(
            {
                "length": case["length"],
                "gpu": gpu["index"],
                "name": gpu["name"],
                "capacity_bytes": gpu["capacity_bytes"],
                "estimate_needed_bytes": gpu["needed_bytes"],
                "estimate_tensors_bytes": tensors,
                "estimate_weights_bytes": gpu.get("weights_bytes"),
                "measured_peak_allocated_bytes": measured,
                "measured_peak_reserved_bytes": case["peak_reserved_bytes"].get(key),
                "error_percent": None
                if not measured or not tensors
                else round(100 * (measured - tensors) / tensors, 1),
                "within_estimate": None if measured is None else measured <= gpu["needed_bytes"],
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'len':>7} {'gpu':>3} {'name':<24} {'est need GiB':>12} {'est tensors':>11} {'peak alloc':>10} "
        f"{'peak rsvd':>9} {'error %':>8} {'within':>6}"
    )
    print(header)
    for r in rows:
        err = "—" if r["error_percent"] is None else f"{r['error_percent']:+.1f}"
        print(
            f"{r['length']:>7} {r['gpu']:>3} {r['name']!s:<24.24} {fmt_gib(r['estimate_needed_bytes']):>12} "
            f"{fmt_gib(r['estimate_tensors_bytes']):>11} {fmt_gib(r['measured_peak_allocated_bytes']):>10} "
            f"{fmt_gib(r['measured_peak_reserved_bytes']):>9} {err:>8} {r['within_estimate']!s:>6}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result_path = args.out / "multi_gpu_sweep.json"
    doc: dict[str, Any] = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "cases": [],
        "comparison": [],
        "status": "started",
    }

    return run_under_hard_limit(
        doc, result_path, args.hard_limit_s, STARTED, lambda save: _sweep(args, doc, save, result_path)
    )


def run_under_hard_limit(
    doc: dict[str, Any],
    result_path: Path,
    hard_limit_s: float,
    started: float,
    body: Callable[[Callable[[], None]], int],
) -> int:
    """Run `body(save)`; past `hard_limit_s` save what `doc` holds and exit 3, so a stuck kernel or a slow
    case never eats the device session and the partial results still come back. Shared by the GPU
    benchmarks that write one JSON document as they go."""

    def save() -> None:
        doc["elapsed_seconds"] = round(time.monotonic() - started, 1)
        result_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")

    def watchdog() -> None:
        doc["status"] = f"killed by --hard-limit-s {hard_limit_s}"
        save()
        print(f"hard limit reached; partial results in {result_path}", flush=True)
        os._exit(3)

    timer = threading.Timer(hard_limit_s, watchdog)
    timer.daemon = True
    timer.start()
    try:
        return body(save)
    finally:
        timer.cancel()  # also when a step raised: the watchdog must not fire later in the caller


def _sweep(args: argparse.Namespace, doc: dict[str, Any], save: Any, result_path: Path) -> int:
    import torch

    from doctor.memory import Settings, sizing_args
    from doctor.memory.estimate import OVERHEAD_PER_GPU
    from doctor.probes.memory import size_weights
    from niah_run.backends.hf import HFBackend, layers_per_device

    cpu_only = args.device == "cpu"
    if not cpu_only and torch.cuda.device_count() < 2:
        print(f"warning: {torch.cuda.device_count()} GPU(s) visible; the check wants 2", flush=True)
    tokenizer = build_tokenizer(1000 if args.tiny else 16000, args.seed)
    config = scout_text_config(args.layers, args.tiny, len(tokenizer))
    config_dict = config.to_dict()
    gpus = doctor_gpus(args)
    # the doctor sizes the model in a child process while we build it (same config dict)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    sizing_future = pool.submit(
        size_weights, sizing_args(Settings(context=max(args.lengths)), config_dict, None)
    )

    from run_plan.sizes import parse_max_memory

    max_memory = (
        parse_max_memory(args.max_memory or "0=70GiB,1=70GiB")
        if not (args.tiny and not args.max_memory)
        else None
    )
    if max_memory is None:  # tiny: budgets that force a split over 2 (pretend) GPUs
        total = sum(p.numel() * p.element_size() for p in meta_model(config).parameters())
        args.max_memory = f"0={int(total * 0.7)},1={int(total * 0.7)}"
        max_memory = parse_max_memory(args.max_memory)
    else:
        args.max_memory = args.max_memory or "0=70GiB,1=70GiB"
    doc["args"]["max_memory"] = args.max_memory

    model, build_facts = build_model(config, max_memory, cpu_only)
    doc["build"] = build_facts
    doc["placement_actual"] = layers_per_device(
        build_facts["planned_device_map"]
        and {k: (int(v) if v.isdigit() else v) for k, v in build_facts["planned_device_map"].items()}
    )
    if torch.cuda.is_available():
        doc["allocated_after_load_bytes"] = {
            f"cuda:{i}": torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count())
        }
    print(
        f"model: {args.layers} layers, weights by device (GiB): "
        f"{ {k: round(v / GIB, 2) for k, v in build_facts['weights_bytes_by_device'].items()} }; "
        f"placement: {doc['placement_actual']}",
        flush=True,
    )
    backend = HFBackend(
        model,
        tokenizer,
        prefill_chunk=args.prefill_chunk,
        facts={"model": MODEL_NAME, "source": "random-init", "layers": args.layers},
    )
    shared = SharedBackend(backend, deadline=STARTED + args.hard_limit_s - 20)
    sizing = sizing_future.result(timeout=300)
    doc["sizing_method"] = sizing.get("method")
    save()

    previous: tuple[int, float] | None = None
    for length in args.lengths:
        elapsed = time.monotonic() - STARTED
        if previous is not None:  # prefill grows a bit faster than linearly (attention): project ×1.3
            projected = previous[1] * (length / previous[0]) * 1.3
            if elapsed + projected > args.budget_s:
                doc["cases"].append(
                    {
                        "length": length,
                        "skipped": f"time guard: ~{projected:.0f}s projected, "
                        f"{args.budget_s - elapsed:.0f}s left",
                    }
                )
                print(f"{length}: skipped by the time guard", flush=True)
                save()
                continue
        try:
            case = run_case(shared, length, args.depths, args, args.out)
        except torch.OutOfMemoryError as exc:  # outside a trial (haystack, cache set-up): record, go on
            case = {
                "length": length,
                "error": f"OutOfMemoryError: {str(exc).splitlines()[0]}",
                "peak_allocated_bytes": {},
                "peak_reserved_bytes": {},
            }
            torch.cuda.empty_cache()
        except Exception as exc:  # noqa: BLE001 - one broken case is recorded; the others still run
            case = {
                "length": length,
                "error": f"{type(exc).__name__}: {exc}",
                "peak_allocated_bytes": {},
                "peak_reserved_bytes": {},
            }
        estimate = doctor_estimate(config_dict, sizing, gpus, length, args)
        case["estimate"] = {
            k: estimate[k]
            for k in (
                "per_gpu",
                "fits",
                "prefill_chunk",
                "kv_bytes",
                "activation_peak_bytes",
                "weights_bytes",
                "max_context_tokens",
            )
        }
        case["doctor_layers_per_gpu"] = doctor_layers_per_gpu(sizing, estimate, args, gpus)
        doc["cases"].append(case)
        doc["comparison"] += comparison(case, estimate, OVERHEAD_PER_GPU)
        if case.get("seconds"):
            previous = (length, case["seconds"])
        print(
            f"{length}: {case.get('statuses') or case.get('error')} in {case.get('seconds', 0)}s; "
            f"doctor layers/GPU {case['doctor_layers_per_gpu']}",
            flush=True,
        )
        save()

    actual = {k: v["layers"] for k, v in (doc["placement_actual"] or {}).items()}
    doctor = doc["cases"][0].get("doctor_layers_per_gpu") if doc["cases"] else None
    doc["placement_matches_doctor"] = actual == doctor  # CPU mode: the planned map over pretend GPUs
    doc["status"] = "done"
    shared.inner.close()
    save()
    print(f"\nplacement (accelerate): {actual}\nplacement (doctor):     {doctor}")
    print_table(doc["comparison"])
    print(f"\nwrote {result_path} in {time.monotonic() - STARTED:.0f}s")
    failed = [c for c in doc["cases"] if c.get("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
