"""Estimator accuracy on recurrent and hybrid models (Mamba-1, Mamba-2, gated delta net), on a real GPU.

    python benchmarks/hybrid_accuracy.py --out results/hybrid          # on an H100/H200, ≈ 2–3 min
    python benchmarks/hybrid_accuracy.py --cpu-smoke --out /tmp/hybrid  # tiny shapes on the CPU

Held-out set (no change to the estimator is made from its numbers): real-shaped, layer-reduced models of
public checkpoints (full width, real vocabulary, 4–6 layers with at least one recurrent and, for hybrids,
one attention layer; random weights) built from transformers' own config classes, on the GPU, in bf16,
sdpa. T random tokens are prefilled in chunks of C through `DynamicCache(config)` with
`logits_to_keep=1`, the cache passed under the keyword this model's forward takes, and compared with
`doctor.memory`'s estimate computed in the same process by the same transformers:

- KV: bytes of every storage the cache holds afterwards (K/V and the recurrent states) vs `kv_bytes`;
- peak: `torch.cuda.max_memory_allocated()` during the prefill, from before the model was built, vs
  weights + KV + activation peak (the per-GPU overhead terms are not part of this comparison);
- a case the GPU cannot run (out of memory) must be predicted as not fitting the card.

The path the recurrent layers take (kernel packages or transformers' reference PyTorch code, whichever
this environment has) is recorded per case: the estimate must follow whichever runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GIB = 1 << 30
_BF16 = {"torch_dtype": "bfloat16", "tie_word_embeddings": False}

# state-spaces/mamba-2.8b-hf (Mamba-1), 64 → 4 layers
MAMBA_2_8B = {
    "model_type": "mamba",
    "hidden_size": 2560,
    "num_hidden_layers": 4,
    "state_size": 16,
    "expand": 2,
    "conv_kernel": 4,
    "time_step_rank": 160,
    "vocab_size": 50280,
    **_BF16,
}
# ai21labs Jamba-Mini (Mamba-1 + attention + MoE), 32 → 4 layers: mamba, mamba+MoE, attention, mamba+MoE
JAMBA_MINI = {
    "model_type": "jamba",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 4,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_experts": 16,
    "num_experts_per_tok": 2,
    "expert_layer_period": 2,
    "expert_layer_offset": 1,
    "attn_layer_period": 4,
    "attn_layer_offset": 2,
    "mamba_d_state": 16,
    "mamba_d_conv": 4,
    "mamba_expand": 2,
    "mamba_dt_rank": 256,
    "vocab_size": 65536,
    "max_position_embeddings": 262144,
    **_BF16,
}
# mistralai Mamba-Codestral-7B (Mamba-2), 64 → 4 layers
CODESTRAL_MAMBA2 = {
    "model_type": "mamba2",
    "hidden_size": 4096,
    "num_hidden_layers": 4,
    "num_heads": 128,
    "head_dim": 64,
    "expand": 2,
    "n_groups": 8,
    "state_size": 128,
    "chunk_size": 256,
    "conv_kernel": 4,
    "vocab_size": 32768,
    **_BF16,
}
# NVIDIA Nemotron-3-Nano-30B-A3B shape (Mamba-2 + attention + MoE), 52 → 6 layers
NEMOTRON_H_MOE = {
    "model_type": "nemotron_h",
    "hidden_size": 2688,
    "num_hidden_layers": 6,
    "layers_block_type": ["mamba", "moe", "attention", "moe", "mamba", "moe"],
    "num_attention_heads": 32,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "mamba_num_heads": 64,
    "mamba_head_dim": 64,
    "ssm_state_size": 128,
    "n_groups": 8,
    "chunk_size": 128,
    "conv_kernel": 4,
    "n_routed_experts": 128,
    "num_experts_per_tok": 6,
    "moe_intermediate_size": 1856,
    "moe_shared_expert_intermediate_size": 3712,
    "intermediate_size": 1856,
    "vocab_size": 131072,
    "max_position_embeddings": 262144,
    **_BF16,
}
# ibm-granite granite-4.0-h-small shape (Mamba-2 + attention + MoE), 40 → 4 layers
GRANITE4_H = {
    "model_type": "granitemoehybrid",
    "hidden_size": 4096,
    "intermediate_size": 896,
    "shared_intermediate_size": 8192,
    "num_hidden_layers": 4,
    "layer_types": ["mamba", "mamba", "attention", "mamba"],
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_local_experts": 72,
    "num_experts_per_tok": 10,
    "mamba_n_heads": 128,
    "mamba_d_head": 64,
    "mamba_n_groups": 1,
    "mamba_d_state": 128,
    "mamba_d_conv": 4,
    "mamba_expand": 2,
    "mamba_chunk_size": 256,
    "vocab_size": 100352,
    "max_position_embeddings": 131072,
    **_BF16,
}
# Qwen/Qwen3-Next-80B-A3B (gated delta net + gated attention + 512-expert MoE), 48 → 4 layers
QWEN3_NEXT = {
    "model_type": "qwen3_next",
    "hidden_size": 2048,
    "intermediate_size": 5120,
    "num_hidden_layers": 4,
    "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"],
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "head_dim": 256,
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 32,
    "num_experts": 512,
    "num_experts_per_tok": 10,
    "moe_intermediate_size": 512,
    "shared_expert_intermediate_size": 512,
    "vocab_size": 151936,
    "max_position_embeddings": 262144,
    **_BF16,
}

# (context, chunk): one-shot and chunked prefills. Each case also runs the shortest one-shot prefill (a
# power of two up to 256k) the estimate says does not fit this card: it must run out of memory.
SHORT = [(2048, 2048), (8192, 8192), (32768, 8192)]
MAMBA1 = [(2048, 2048), (8192, 8192), (16384, 4096)]  # a reference Mamba-1 scan steps token by token
OOM_PROBES = tuple(1 << k for k in range(14, 19))


def cases(smoke: bool) -> list[dict[str, Any]]:
    if smoke:

        def tiny(cfg: dict[str, Any], **over: Any) -> dict[str, Any]:
            return {**cfg, "vocab_size": 1000, **over}

        return [
            {
                "name": "mamba-tiny",
                "family": "Mamba-1",
                "config": tiny(MAMBA_2_8B, hidden_size=128, num_hidden_layers=2, time_step_rank=8),
                "prefill": [(512, 512), (1024, 256)],
            },
            {
                "name": "jamba-tiny",
                "family": "Mamba-1 + attention + MoE",
                "config": tiny(
                    JAMBA_MINI,
                    hidden_size=128,
                    intermediate_size=256,
                    num_attention_heads=4,
                    num_key_value_heads=2,
                    num_experts=4,
                    mamba_dt_rank=8,
                ),
                "prefill": [(512, 256)],
            },
            {
                "name": "mamba2-tiny",
                "family": "Mamba-2",
                "config": tiny(
                    CODESTRAL_MAMBA2, hidden_size=128, num_heads=8, head_dim=32, n_groups=2, state_size=16
                ),
                "prefill": [(600, 600), (1024, 256)],
            },
            {
                "name": "nemotronh-tiny",
                "family": "Mamba-2 + attention + MoE",
                "config": tiny(
                    NEMOTRON_H_MOE,
                    hidden_size=128,
                    num_attention_heads=4,
                    head_dim=32,
                    mamba_num_heads=8,
                    mamba_head_dim=32,
                    ssm_state_size=16,
                    n_groups=2,
                    n_routed_experts=8,
                    num_experts_per_tok=2,
                    moe_intermediate_size=64,
                    moe_shared_expert_intermediate_size=64,
                    intermediate_size=64,
                ),
                "prefill": [(512, 256)],
            },
            {
                "name": "qwen3next-tiny",
                "family": "gated delta net + attention + MoE",
                "config": tiny(
                    QWEN3_NEXT,
                    hidden_size=128,
                    head_dim=32,
                    num_attention_heads=4,
                    linear_key_head_dim=32,
                    linear_value_head_dim=32,
                    linear_num_key_heads=2,
                    linear_num_value_heads=4,
                    num_experts=8,
                    num_experts_per_tok=2,
                    moe_intermediate_size=64,
                    shared_expert_intermediate_size=64,
                ),
                "prefill": [(512, 512), (1024, 256)],
            },
        ]
    return [
        {
            "name": "mamba2.8B-4L",
            "family": "Mamba-1",
            "config": MAMBA_2_8B,
            "prefill": MAMBA1,
        },
        {
            "name": "jamba-mini-4L",
            "family": "Mamba-1 + attention + MoE",
            "config": JAMBA_MINI,
            "prefill": MAMBA1,
        },
        {
            "name": "codestral-mamba2-4L",
            "family": "Mamba-2",
            "config": CODESTRAL_MAMBA2,
            "prefill": SHORT,
        },
        {
            "name": "nemotron3-nano-6L",
            "family": "Mamba-2 + attention + MoE",
            "config": NEMOTRON_H_MOE,
            "prefill": SHORT,
        },
        {
            "name": "granite4-h-small-4L",
            "family": "Mamba-2 + attention + MoE",
            "config": GRANITE4_H,
            "prefill": SHORT,
        },
        {
            "name": "qwen3next-80B-4L",
            "family": "gated delta net + attention + MoE",
            "config": QWEN3_NEXT,
            "prefill": SHORT,
        },
    ]


def _sizing(config: dict[str, Any]) -> dict[str, Any]:
    from doctor.memory import Settings, sizing_args
    from doctor.memory.skeleton import size_model

    return size_model(sizing_args(Settings(context=8192, attn="sdpa"), config, None))


def _estimate(sizing: dict[str, Any], context: int, chunk: int, gpu: str, capacity: int) -> dict[str, Any]:
    from doctor.memory import Settings, compute_estimate
    from doctor.memory.gpus import GpuSpec

    s = Settings(context=context, prefill_chunk=chunk, attn="sdpa")
    return compute_estimate(sizing, s, [GpuSpec(0, gpu, capacity, "bench")]).to_dict()


def _cache_bytes(cache: Any) -> int:
    """Every storage the cache holds (K/V and recurrent states), each once."""
    from doctor.memory.trace import cache_tensors

    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in cache_tensors(cache)}
    return int(sum(storages.values()))


def _prefill(torch: Any, transformers: Any, model: Any, context: int, chunk: int, device: str) -> int:
    """Chunked prefill as niah runs it; returns the bytes the cache holds at the end."""
    from doctor.memory.trace import _cache_keyword

    cache = transformers.DynamicCache(config=model.config)
    ids = torch.randint(0, int(model.config.vocab_size), (1, context), device=device)
    keyword = _cache_keyword(model)
    with torch.no_grad():
        for start in range(0, context, chunk):
            model(
                input_ids=ids[:, start : start + chunk], use_cache=True, logits_to_keep=1, **{keyword: cache}
            )
    kv = _cache_bytes(cache)
    del cache, ids
    return kv


def _build(torch: Any, transformers: Any, config: Any, device: str) -> Any:
    """bf16 on the device, sdpa where the class accepts it (pure Mamba models have no attention and refuse
    it: their default is what runs, and what the estimate traces)."""
    import copy

    with torch.device(device):
        try:  # on a copy: a refused implementation stays recorded in the config it was asked on
            return transformers.AutoModelForCausalLM.from_config(
                copy.deepcopy(config), dtype=torch.bfloat16, attn_implementation="sdpa"
            ).eval()
        except ValueError:
            return transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()


def _pct(est: float, meas: float | None) -> float | None:
    return round(100 * (est / meas - 1), 2) if meas else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    cuda = not args.cpu_smoke
    device = "cuda" if cuda else "cpu"
    gpu = torch.cuda.get_device_name(0) if cuda else "cpu"
    capacity = torch.cuda.mem_get_info()[1] if cuda else 80 * GIB
    meta: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "gpu": gpu,
        "capacity_bytes": capacity,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "kernel_packages": {
            name: _installed(name) for name in ("mamba_ssm", "causal_conv1d", "fla", "kernels")
        },
        "use_hub_kernels": os.environ.get("USE_HUB_KERNELS"),
    }
    rows: list[dict[str, Any]] = []
    surveys: list[dict[str, Any]] = []
    deadline = time.time() + args.budget_s
    for case in cases(args.cpu_smoke):
        if args.only and case["name"] not in args.only:
            continue
        if time.time() > deadline:
            rows.append({"case": case["name"], "error": "skipped: time budget"})
            continue
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated() if cuda else 0
        t0 = time.time()
        try:
            sizing = _sizing(case["config"])
            t_size = time.time() - t0
            config = transformers.AutoConfig.for_model(
                **{k: v for k, v in case["config"].items() if k != "torch_dtype"}
            )
            model = _build(torch, transformers, config, device)
        except Exception as exc:  # noqa: BLE001 - report the case, keep going
            rows.append({"case": case["name"], "error": f"{type(exc).__name__}: {exc}"[:400]})
            print(rows[-1], flush=True)
            continue
        weights = torch.cuda.memory_allocated() - base if cuda else None
        trace = sizing.get("trace") or {}
        print(
            f"[{case['name']}] sized in {t_size:.1f}s, built in {time.time() - t0 - t_size:.1f}s; "
            f"{trace.get('activations_error') or trace.get('kv_error') or 'traced'}",
            flush=True,
        )
        for context, chunk in [*case["prefill"], *_first_not_fitting(sizing, gpu, capacity, cuda)]:
            est = _estimate(sizing, context, chunk, gpu, capacity)
            row: dict[str, Any] = {
                "case": case["name"],
                "family": case["family"],
                "context": context,
                "chunk": chunk,
                "method": est["method"],
                "confidence": est["confidence"],
                "recurrent_path": est["recurrent_path"],
                "est_weights": est["weights_bytes"],
                "meas_weights": weights,
                "est_kv": est["kv_bytes"],
                "est_act": est["activation_peak_bytes"],
                "est_peak": est["weights_bytes"] + est["kv_bytes"] + est["activation_peak_bytes"],
                "est_fits": est["fits"],
            }
            t1 = time.time()
            try:
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                row["meas_kv"] = _prefill(torch, transformers, model, context, chunk, device)
                if cuda:
                    torch.cuda.synchronize()
                    row["meas_peak"] = torch.cuda.max_memory_allocated() - base
            except torch.OutOfMemoryError as exc:
                row["error"] = f"OutOfMemoryError: {str(exc).splitlines()[0]}"[:300]
                row["oom"] = True
            except Exception as exc:  # noqa: BLE001 - a bug is a result row
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            row["seconds"] = round(time.time() - t1, 2)
            row["err_weights_pct"] = _pct(row["est_weights"], row.get("meas_weights"))
            row["err_kv_pct"] = _pct(row["est_kv"], row.get("meas_kv"))
            row["err_peak_pct"] = _pct(row["est_peak"], row.get("meas_peak"))
            if row.get("meas_peak"):
                row["err_peak_gib"] = round((row["est_peak"] - row["meas_peak"]) / GIB, 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
            _write(args.out, {"meta": meta, "rows": rows})
            if cuda:
                torch.cuda.empty_cache()
        if cuda and not args.no_op_survey:
            surveys.append(_op_survey(torch, transformers, model, case["name"], sizing))
        del model
        gc.collect()
    return {"meta": meta, "rows": rows, "op_survey": surveys}


def _op_survey(
    torch: Any, transformers: Any, model: Any, name: str, sizing: dict[str, Any]
) -> dict[str, Any]:
    """What the ops the trace could not vouch for (outside KNOWN_OPS: the recurrent layers' depthwise
    convolution, padding, triangular solve) hold on CUDA beyond their outputs, over one 2,048-token
    prefill in two chunks (benchmarks/cuda_op_transients.py's measurement)."""
    from benchmarks.cuda_op_transients import _survey_mode

    wanted = set((sizing.get("trace") or {}).get("activations", {}).get("unmodelled_ops") or [])
    worst: dict[str, dict[str, Any]] = {}
    try:
        with _survey_mode(torch, worst):
            _prefill(torch, transformers, model, 2048, 1024, "cuda")
    except Exception as exc:  # noqa: BLE001 - a result, not a crash
        return {"case": name, "error": f"{type(exc).__name__}: {exc}"[:300]}
    torch.cuda.empty_cache()
    return {"case": name, "ops": {op: worst[op] for op in sorted(wanted) if op in worst}}


def _first_not_fitting(sizing: dict[str, Any], gpu: str, capacity: int, cuda: bool) -> list[tuple[int, int]]:
    """The shortest one-shot prefill in OOM_PROBES the estimate says does not fit (none on the CPU)."""
    for tokens in OOM_PROBES if cuda else ():
        if _estimate(sizing, tokens, tokens, gpu, capacity)["fits"] is False:
            return [(tokens, tokens)]
    return []


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _write(folder: str | None, result: dict[str, Any]) -> None:
    if not folder:
        return
    os.makedirs(folder, exist_ok=True)
    version = result["meta"]["transformers"]
    with open(os.path.join(folder, f"hybrid_accuracy_tf{version}.json"), "w") as fh:
        json.dump(result, fh, indent=1)


def verdict(row: dict[str, Any]) -> str:
    """Against the targets: total within ±5 % or ±0.5 GiB and never under by more than 3 %; a run that
    ran out of memory predicted as not fitting."""
    if row.get("oom"):
        return "ok (OOM predicted)" if row.get("est_fits") is False else "MISSED OOM"
    if row.get("meas_peak") is None:
        return "—"
    err, gib = row["err_peak_pct"], abs(row.get("err_peak_gib") or 0)
    if err < -3 or (abs(err) > 5 and gib > 0.5):
        return "OUTSIDE"
    return "ok"


def table(result: dict[str, Any]) -> str:
    g = lambda v: f"{v / GIB:.3f}" if isinstance(v, (int, float)) else "—"  # noqa: E731
    p = lambda v: "—" if v is None else f"{v:+.2f}%"  # noqa: E731
    lines = [
        "| case | family | T / chunk | KV est / meas (GiB) | err | peak est / meas (GiB) | err | fits (est) | "
        "verdict | recurrent path |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        if "context" not in r:
            lines.append(f"| {r['case']} | | | error: {r.get('error')} | | | | | | |")
            continue
        lines.append(
            f"| {r['case']} | {r['family']} | {r['context']} / {r['chunk']} | {g(r['est_kv'])} / "
            f"{g(r.get('meas_kv'))} | {p(r.get('err_kv_pct'))} | {g(r['est_peak'])} / {g(r.get('meas_peak'))} | "
            f"{p(r.get('err_peak_pct'))} | {r.get('est_fits')} | {verdict(r)} | {r.get('recurrent_path')} |"
            + (f" {r['error'][:80]}" if r.get("error") else "")
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="folder for the JSON result")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (no measurement)")
    parser.add_argument("--only", nargs="*", help="case names to run")
    parser.add_argument("--no-op-survey", action="store_true", help="skip the per-op CUDA transient survey")
    parser.add_argument("--budget-s", type=float, default=170.0, help="start no new case after this long")
    args = parser.parse_args()
    result = run(args)
    result["table"] = table(result)
    print(json.dumps(result["meta"]))
    print(result["table"])
    for survey in result.get("op_survey") or []:
        for op, e in (survey.get("ops") or {}).items():
            print(
                f"op survey {survey['case']}: {op} held {e['transient'] / (1 << 20):.1f} MiB beyond its "
                f"{e['output'] / (1 << 20):.1f} MiB output ({e['calls']} calls)"
            )
    _write(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
