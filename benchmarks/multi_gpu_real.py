"""Issue 16: a real saved checkpoint across 2 GPUs — placement and per-GPU peaks as the doctor predicts.

What it does, in order (each step timed, everything written to OUT/multi_gpu_real.json as it goes):
1. save: a Scout-shaped Llama 4 text model (Llama4ForCausalLM with Scout's per-layer shapes, 3 chunked : 1
   global layers, `--layers` 20) with random bf16 weights materialized on the GPUs, written with
   `save_pretrained`, plus an offline byte-level tokenizer → OUT/checkpoint.
2. doctor, the issue's command verbatim: `doctor --model DIR --quant bnb-4bit --device-map auto --max-memory
   0=60GiB,1=60GiB --context 128k --format json`: verdict, memory-fit, the doctor's longest context.
3. plan: the same settings from a TOML (`--lengths` 8k,128k + the longest context, one depth, one trial) →
   `doctor --config run.toml --plan-out plan.json`.
4. run: `niah run --plan plan.json` — the real `from_pretrained(device_map="auto", max_memory=...)`, the
   allocator capped to the budgets; config.json records `model.hf_device_map`, every results row the
   plan's predicted and the measured peak per GPU.
5. compare: `model.hf_device_map` with the doctor's placement (module by module and layers per GPU), and
   each GPU's measured peak with the prediction, per length. Prints a markdown table for docs/benchmarks.md.

GPU (2 GPUs):  python3 benchmarks/multi_gpu_real.py --out $OUT/multi-gpu-real
CPU smoke:     python3 benchmarks/multi_gpu_real.py --tiny --device cpu --out /tmp/mgr
  (tiny widths, 2 pretend GPUs for the doctor; transformers' planned map stands in for hf_device_map,
  and `niah run` runs on the CPU without the plan — every code path but the GPU load.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GIB = 1 << 30
STARTED = time.monotonic()
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default 20; --tiny 4)")
    parser.add_argument("--quant", default=None, help="default bnb-4bit (--tiny: none, bnb needs CUDA)")
    parser.add_argument(
        "--max-memory", default=None, help="default 0=60GiB,1=60GiB (--tiny: 70%% of the model each)"
    )
    parser.add_argument("--context", default=None, help="the doctor's --context (default 128k; --tiny 1k)")
    parser.add_argument("--lengths", default=None, help="measured lengths (default 8k,128k; --tiny 256,512)")
    parser.add_argument(
        "--no-longest", action="store_true", help="do not also run the doctor's longest context"
    )
    parser.add_argument(
        "--longest-cap", default="512k", help="run the longest context only up to this many tokens"
    )
    parser.add_argument("--gpus", default=None, help="the doctor's --gpus (default: NVML; --tiny 2x1GiB)")
    parser.add_argument("--checkpoint", default=None, help="reuse this saved checkpoint instead of step 1")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny widths: a CPU smoke test of every code path"
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--hard-limit-s", type=float, default=570.0, help="write what we have and exit")
    parser.add_argument("--step-timeout-s", type=float, default=420.0, help="per doctor / niah subprocess")
    parser.add_argument(
        "--out", default=os.environ.get("OUT") and os.path.join(os.environ["OUT"], "multi-gpu-real")
    )
    args = parser.parse_args(argv)
    args.layers = args.layers or (4 if args.tiny else 20)
    args.quant = args.quant or ("none" if args.tiny else "bnb-4bit")
    args.context = args.context or ("1k" if args.tiny else "128k")
    args.lengths = args.lengths or ("256,512" if args.tiny else "8k,128k")
    args.out = Path(args.out or "/tmp/multi-gpu-real")
    if args.device == "cpu" and not args.gpus:
        args.gpus = "2x1GiB"
    return args


# ------------------------------------------------------------------------------------- 1. checkpoint


def save_checkpoint(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Random Scout-shaped weights → save_pretrained (the sweep benchmark's model and tokenizer)."""
    import gc

    import torch
    from multi_gpu_sweep import build_model, build_tokenizer, meta_model, scout_text_config

    tokenizer = build_tokenizer(1000 if args.tiny else 16000, 0)
    config = scout_text_config(args.layers, args.tiny, len(tokenizer))
    cpu_only = args.device == "cpu"
    if cpu_only:
        total = sum(p.numel() * p.element_size() for p in meta_model(config).parameters())
        budgets: dict[Any, Any] = {0: total, 1: total}
    else:  # spread the bf16 weights over every visible GPU just to write them; the run plans its own map
        budgets = {i: int(torch.cuda.mem_get_info(i)[0] * 0.9) for i in range(torch.cuda.device_count())}
    started = time.monotonic()
    model, facts = build_model(config, budgets, cpu_only)
    model.save_pretrained(folder, max_shard_size="5GB")
    tokenizer.save_pretrained(folder)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    files = sorted(folder.glob("*.safetensors"))
    return {
        "folder": str(folder),
        "layers": args.layers,
        "weights_bytes_bf16": weights,
        "safetensors_files": len(files),
        "safetensors_bytes": sum(f.stat().st_size for f in files),
        "seconds": round(time.monotonic() - started, 1),
        "materialize": facts.get("materialize_seconds"),
    }


def tiny_max_memory(folder: Path) -> str:
    """--tiny: budgets that split the model over the two pretend GPUs (70 % of the bf16 weights each)."""
    total = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    return f"0={int(total * 0.7)},1={int(total * 0.7)}"


# ----------------------------------------------------------------------------------- 2-4. the tools


def run_tool(argv: list[str], timeout: float, log: Path) -> dict[str, Any]:
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = 124, exc.stdout or "", f"timed out after {timeout:.0f}s\n{exc.stderr or ''}"
    log.write_text(f"$ {shlex.join(argv)}\nrc={rc}\n--- stdout\n{out}\n--- stderr\n{err}\n")
    return {
        "argv": shlex.join(argv),
        "rc": rc,
        "seconds": round(time.monotonic() - started, 1),
        "stdout": out,
        "stderr_tail": (err or "")[-2000:],
    }


def doctor_report(result: dict[str, Any]) -> dict[str, Any]:
    """The facts we compare from `doctor --format json`."""
    try:
        doc = json.loads(result["stdout"])
    except (json.JSONDecodeError, TypeError):
        return {"error": f"no JSON from the doctor (rc {result['rc']}): {result['stderr_tail'][-300:]}"}
    checks = {c["id"]: c for c in doc.get("checks", [])}
    fit = checks.get("memory-fit") or {}
    estimate = doc.get("estimate") or {}
    plan = doc.get("plan") or {}
    return {
        "verdict": (doc.get("summary") or {}).get("verdict"),
        "exit_code": result["rc"],
        "memory_fit": {"status": fit.get("status"), "summary": fit.get("summary")},
        "max_context_tokens": plan.get("max_context_tokens", estimate.get("max_context_tokens")),
        "prefill_chunk": estimate.get("prefill_chunk"),
        "estimate_method": estimate.get("method"),
        "per_gpu": estimate.get("per_gpu"),
        "plan_lengths": plan.get("lengths"),
        "failing_checks": [i for i, c in checks.items() if c.get("status") == "fail"],
    }


def write_toml(path: Path, settings: dict[str, Any]) -> None:
    lines = []
    for key, value in settings.items():
        if value is None:
            continue
        lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------- 5. comparison


def layers_by_device(device_map: dict[str, Any] | None) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for name, device in (device_map or {}).items():
        match = _LAYER.search(name)
        if match:
            out.setdefault(_device_key(device), []).append(int(match.group(1)))
    return {k: sorted(v) for k, v in sorted(out.items())}


def _device_key(device: Any) -> str:
    text = str(device)
    return f"cuda:{text}" if text.isdigit() else text


def normalized(device_map: dict[str, Any] | None) -> dict[str, str]:
    return {name: _device_key(device) for name, device in (device_map or {}).items()}


def doctor_placement(folder: Path, args: argparse.Namespace, gpus: list[Any]) -> dict[str, Any]:
    """The doctor's placement of this checkpoint: its sizing (the meta-skeleton child), then transformers'
    rules replayed over the module inventory (exact) or over the blocks (fallback)."""
    from doctor.memory.estimate import Settings, gpu_budgets, sizing_args
    from doctor.memory.placement import CPU, place_like_transformers, transformers_device_map
    from doctor.probes.memory import size_weights

    config = json.loads((folder / "config.json").read_text())
    settings = Settings(context=8192, quant=args.quant, dtype="bfloat16")
    sizing = size_weights(sizing_args(settings, config, None))
    user = dict(gpu_budgets(args.max_memory)) or None
    out: dict[str, Any] = {
        "sizing_method": sizing.get("method"),
        "has_inventory": bool(sizing.get("placement_tree")),
    }
    if sizing.get("placement_tree"):
        from doctor.memory.placement import free_at_load

        gpu_free = None if user else {g.index: free_at_load(g.capacity_bytes) for g in gpus}
        out["device_map"] = transformers_device_map(sizing["placement_tree"], user, gpu_free=gpu_free)
    per_block = place_like_transformers(sizing, [(g.index, g.capacity_bytes) for g in gpus], user, args.quant)
    layers: dict[str, list[int]] = {}
    for block, gpu in zip(sizing.get("blocks") or [], per_block):
        match = _LAYER.search(block["name"])
        if match and block.get("class") in (sizing.get("no_split_modules") or []):
            layers.setdefault("cpu/disk" if gpu == CPU else f"cuda:{gpus[gpu].index}", []).append(
                int(match.group(1))
            )
    out["layers_by_device"] = {k: sorted(v) for k, v in sorted(layers.items())}
    return out


def planned_map_on_cpu(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """--device cpu: what from_pretrained(device_map="auto", max_memory=...) would compute on the GPUs we
    pretend to have — transformers' own _get_device_map on the checkpoint's model built on meta."""
    import torch
    import transformers
    from transformers.integrations.accelerate import _get_device_map
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
    from transformers.utils.generic import ContextManagers

    from run_plan.sizes import parse_max_memory

    config = transformers.AutoConfig.from_pretrained(folder)
    cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    with ContextManagers(cls.get_init_context(torch.bfloat16, False, False, False)), torch.device("meta"):
        model = cls(config)
    return dict(_get_device_map(model, "auto", parse_max_memory(args.max_memory), None))


def peaks_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = []
    for row in rows:
        measured = ((row.get("memory") or {}).get("per_gpu_peak_bytes")) or {}
        predicted = row.get("predicted_peak_bytes") or {}
        for device in sorted(set(measured) | set(predicted)):
            m, p = measured.get(device), predicted.get(device)
            table.append(
                {
                    "length": row.get("context_tokens"),
                    "status": row.get("status"),
                    "device": device,
                    "predicted_peak_bytes": p,
                    "measured_peak_bytes": m,
                    "ratio": round(m / p, 3) if m and p else None,
                    "within_prediction": None if m is None or p is None else m <= p * 1.02,
                }
            )
    return table


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        "| length | GPU | predicted peak GiB | measured peak GiB | measured / predicted | status |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in doc.get("peaks") or []:
        p = "—" if r["predicted_peak_bytes"] is None else f"{r['predicted_peak_bytes'] / GIB:.2f}"
        m = "—" if r["measured_peak_bytes"] is None else f"{r['measured_peak_bytes'] / GIB:.2f}"
        lines.append(f"| {r['length']} | {r['device']} | {p} | {m} | {r['ratio'] or '—'} | {r['status']} |")
    placement = doc.get("placement") or {}
    lines += ["", "| device | layers (hf_device_map) | layers (doctor) |", "| --- | --- | --- |"]
    actual, doctor = placement.get("actual_layers") or {}, placement.get("doctor_layers") or {}
    for device in sorted(set(actual) | set(doctor)):
        lines.append(f"| {device} | {_ranges(actual.get(device, []))} | {_ranges(doctor.get(device, []))} |")
    return "\n".join(lines)


def _ranges(indices: list[int]) -> str:
    from niah_run.backends.hf import _ranges as ranges

    return ranges(indices) or "—"


# ------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result_path = args.out / "multi_gpu_real.json"
    doc: dict[str, Any] = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "status": "started",
        "steps": {},
    }

    from multi_gpu_sweep import run_under_hard_limit  # a sibling script (its folder is on sys.path)

    return run_under_hard_limit(
        doc, result_path, args.hard_limit_s, STARTED, lambda save: _run(args, doc, save)
    )


def _run(args: argparse.Namespace, doc: dict[str, Any], save: Any) -> int:
    from multi_gpu_sweep import doctor_gpus

    from run_plan.spec import parse_token_count

    python = sys.executable
    folder = Path(args.checkpoint) if args.checkpoint else args.out / "checkpoint"
    if not args.checkpoint:
        folder.mkdir(parents=True, exist_ok=True)
        doc["steps"]["save"] = save_checkpoint(args, folder)
        print(f"saved {folder}: {doc['steps']['save']}", flush=True)
        save()
    if args.max_memory is None:
        args.max_memory = tiny_max_memory(folder) if args.tiny else "0=60GiB,1=60GiB"
        doc["args"]["max_memory"] = args.max_memory
    gpu_flag = ["--gpus", args.gpus] if args.gpus else []

    # 2. the doctor command
    first = run_tool(
        [
            python,
            "-m",
            "doctor",
            "--model",
            str(folder),
            "--quant",
            args.quant,
            "--device-map",
            "auto",
            "--max-memory",
            args.max_memory,
            "--context",
            args.context,
            *gpu_flag,
            "--format",
            "json",
        ],
        args.step_timeout_s,
        args.out / "doctor.log",
    )
    doc["steps"]["doctor"] = {**{k: v for k, v in first.items() if k != "stdout"}, **doctor_report(first)}
    print(
        f"doctor: {doc['steps']['doctor'].get('verdict')}; memory-fit "
        f"{doc['steps']['doctor'].get('memory_fit')}; longest {doc['steps']['doctor'].get('max_context_tokens')}",
        flush=True,
    )
    save()

    # 3. the plan for the measured lengths (+ the doctor's longest context)
    lengths = [parse_token_count(x.strip()) for x in args.lengths.split(",")]
    longest = doc["steps"]["doctor"].get("max_context_tokens") or 0
    if not args.no_longest and longest and longest not in lengths:
        lengths.append(min(int(longest), parse_token_count(args.longest_cap)))
    toml = args.out / "run.toml"
    write_toml(
        toml,
        {
            "model": str(folder),
            "quant": args.quant,
            "device_map": "auto",
            "max_memory": args.max_memory,
            "gpus": args.gpus,
            "attn": "sdpa",
            "lengths": lengths,
            "depths": [50],
            "trials": 1,
            "max_new_tokens": 4,
        },
    )
    plan_path = args.out / "plan.json"
    second = run_tool(
        [
            python,
            "-m",
            "doctor",
            "--config",
            str(toml),
            "--format",
            "json",
            "--plan-out",
            str(plan_path),
            "--no-live",
        ],
        args.step_timeout_s,
        args.out / "doctor-plan.log",
    )
    doc["steps"]["plan"] = {
        **{k: v for k, v in second.items() if k != "stdout"},
        **doctor_report(second),
        "lengths": lengths,
        "written": plan_path.is_file(),
    }
    save()

    # the doctor's own placement (same code as its estimate)
    gpus = doctor_gpus(args)
    doc["doctor_placement"] = doctor_placement(folder, args, gpus)
    save()

    # 4. niah run: the plan verbatim on the GPUs; on the CPU the same sweep without the GPU plan
    run_dir = args.out / "run"
    if args.device == "cpu":
        niah = [
            python,
            "-m",
            "niah_run",
            "run",
            "--model",
            str(folder),
            "--device-map",
            "cpu",
            "--lengths",
            ",".join(map(str, lengths[:2])),
            "--depths",
            "50",
            "--max-new-tokens",
            "4",
            "--skip-preflight",
            "--out",
            str(run_dir),
        ]
    else:
        niah = [python, "-m", "niah_run", "run", "--plan", str(plan_path), "--out", str(run_dir)]
    ran = run_tool(
        niah, max(60.0, args.hard_limit_s - (time.monotonic() - STARTED) - 20), args.out / "niah.log"
    )
    doc["steps"]["niah_run"] = {k: v for k, v in ran.items() if k != "stdout"}
    saved = _read_json(run_dir / "config.json") or {}
    from niah_run.results import RESULTS_FILE, read_rows

    rows = read_rows(run_dir / RESULTS_FILE)  # the well-formed rows, as their JSON
    actual_map = (saved.get("backend") or {}).get("device_map")
    if args.device == "cpu":  # no GPUs to load onto: transformers' planned map stands in for hf_device_map
        actual_map = planned_map_on_cpu(folder, args)
        doc["steps"]["niah_run"]["note"] = (
            "CPU: hf_device_map replaced by transformers' _get_device_map on meta"
        )

    # 5. compare
    doctor_map = doc["doctor_placement"].get("device_map")
    actual_layers = layers_by_device(actual_map if isinstance(actual_map, dict) else None)
    doctor_layers = doc["doctor_placement"]["layers_by_device"]
    doc["placement"] = {
        "actual_device_map": normalized(actual_map) if isinstance(actual_map, dict) else actual_map,
        "doctor_device_map": normalized(doctor_map) if doctor_map else None,
        "device_maps_equal": (normalized(actual_map) == normalized(doctor_map))
        if isinstance(actual_map, dict) and doctor_map
        else None,
        "actual_layers": actual_layers,
        "doctor_layers": doctor_layers,
        "layers_equal": actual_layers == doctor_layers if actual_layers else None,
    }
    doc["peaks"] = peaks_table(rows)
    doc["rows"] = [
        {
            k: r.get(k)
            for k in (
                "context_tokens",
                "depth_percent",
                "status",
                "error",
                "predicted_peak_bytes",
                "exceeded_prediction",
                "memory",
                "prefill_seconds",
            )
        }
        for r in rows
    ]
    doc["status"] = "done"
    doc["markdown"] = markdown(doc)
    save()
    print(doc["markdown"])
    print(
        f"\nplacement equal: map {doc['placement']['device_maps_equal']}, layers {doc['placement']['layers_equal']}"
        f"\nwrote {args.out / 'multi_gpu_real.json'} in {time.monotonic() - STARTED:.0f}s"
    )
    ok = doc["placement"]["layers_equal"] is not False and all(
        r["within_prediction"] is not False for r in doc["peaks"]
    )
    return 0 if ok and ran["rc"] in (0, 1) else 1


def _read_text(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


if __name__ == "__main__":
    sys.exit(main())
