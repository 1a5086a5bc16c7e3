"""Estimator accuracy on a real GPU: real-shaped random-weight models, loaded as niah loads them,
prefilled at several lengths, compared with `doctor.memory`'s estimate for the same config.

    python benchmarks/estimator_accuracy.py --out results.json            # on an H100/H200
    python benchmarks/estimator_accuracy.py --device cpu --tiny           # smoke test, no GPU

Each case: build the model (full width, real vocab, few layers), save it with save_pretrained under
/tmp, load it with from_pretrained (bf16, and bnb nf4 + double quant on the fly), then prefill T tokens
(chunked by C with a DynamicCache(config), logits_to_keep=1) and read torch.cuda.max_memory_allocated.
"Pre-quantized" Llama 4 is built in place: the meta model prepared by transformers' quantizer with
pre_quantized=True (un-fused SequentialLlama4TextExperts of Linear4bit), weights quantized by
Params4bit.to("cuda") — the layout a bnb-community checkpoint loads into.
Targets: weights within 2 %, peak within 10 %.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GIB = 1 << 30


def _cases(tiny: bool) -> list[dict[str, Any]]:
    if tiny:
        return [
            {"name": "llama4-tiny", "config": {"model_type": "llama4_text", "hidden_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "intermediate_size": 128,
             "intermediate_size_mlp": 256, "num_local_experts": 4, "num_experts_per_tok": 1, "vocab_size": 1000,
             "attention_chunk_size": 64, "no_rope_layers": [1, 0], "interleave_moe_layer_step": 1,
             "max_position_embeddings": 4096, "torch_dtype": "bfloat16"},
             "modes": ["bf16", "nf4-dq", "nf4-dq-prequantized"], "prefill": [(128, 128), (256, 64)]},
            {"name": "mistral-tiny", "config": {"model_type": "mistral", "hidden_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 512, "vocab_size": 1000,
             "sliding_window": 64, "max_position_embeddings": 4096, "torch_dtype": "bfloat16"},
             "modes": ["bf16"], "prefill": [(256, 64)]},
        ]
    scout = {"model_type": "llama4_text", "hidden_size": 5120, "num_hidden_layers": 2, "num_attention_heads": 40,
             "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 8192, "intermediate_size_mlp": 16384,
             "num_local_experts": 16, "num_experts_per_tok": 1, "vocab_size": 202048, "attention_chunk_size": 8192,
             "no_rope_layers": [1, 0], "interleave_moe_layer_step": 1, "use_qk_norm": True,
             "max_position_embeddings": 10485760, "rope_theta": 500000.0, "torch_dtype": "bfloat16",
             "tie_word_embeddings": False}
    llama = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 4, "num_attention_heads": 32,
             "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
             "max_position_embeddings": 131072, "rope_theta": 500000.0, "torch_dtype": "bfloat16",
             "tie_word_embeddings": False}
    mistral = {"model_type": "mistral", "hidden_size": 4096, "num_hidden_layers": 4, "num_attention_heads": 32,
               "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 32000, "sliding_window": 4096,
               "max_position_embeddings": 32768, "torch_dtype": "bfloat16", "tie_word_embeddings": False}
    mixtral = {"model_type": "mixtral", "hidden_size": 4096, "num_hidden_layers": 2, "num_attention_heads": 32,
               "num_key_value_heads": 8, "intermediate_size": 14336, "num_local_experts": 8, "num_experts_per_tok": 2,
               "vocab_size": 32000, "max_position_embeddings": 32768, "rope_theta": 1e6, "torch_dtype": "bfloat16",
               "tie_word_embeddings": False}
    gemma3 = {"model_type": "gemma3_text", "hidden_size": 1152, "num_hidden_layers": 6, "num_attention_heads": 4,
              "num_key_value_heads": 1, "head_dim": 256, "intermediate_size": 6912, "vocab_size": 262144,
              "sliding_window": 512, "max_position_embeddings": 32768, "torch_dtype": "bfloat16",
              "tie_word_embeddings": True}
    qwen3_moe = {"model_type": "qwen3_moe", "hidden_size": 2048, "num_hidden_layers": 2, "num_attention_heads": 32,
                 "num_key_value_heads": 4, "head_dim": 128, "intermediate_size": 6144, "moe_intermediate_size": 768,
                 "num_experts": 128, "num_experts_per_tok": 8, "vocab_size": 151936, "decoder_sparse_step": 1,
                 "max_position_embeddings": 40960, "torch_dtype": "bfloat16", "tie_word_embeddings": False}
    extra = [
        {"name": "llama3-8B-4L-eager", "config": llama, "attn": "eager", "modes": ["bf16"],
         "prefill": [(4096, 4096), (8192, 4096)]},
        {"name": "llama3-8B-4L-int8", "config": llama, "modes": ["int8"], "prefill": [(8192, 8192)]},
        {"name": "gemma3-sw512-6L", "config": gemma3, "modes": ["bf16", "nf4-dq"], "prefill": [(8192, 8192), (16384, 4096)]},
        {"name": "qwen3moe-2L", "config": qwen3_moe, "modes": ["bf16", "nf4-dq"], "prefill": [(8192, 8192), (16384, 8192)]},
    ]
    return extra if os.environ.get("ESTIMATOR_EXTRA_ONLY") else [
        {"name": "scout-2L", "config": scout, "modes": ["bf16", "nf4-dq", "nf4-dq-prequantized"],
         "prefill": [(4096, 4096), (16384, 8192), (32768, 8192), (65536, 8192)]},
        {"name": "llama3-8B-4L", "config": llama, "modes": ["bf16", "nf4-dq"], "prefill": [(8192, 8192), (32768, 8192)]},
        {"name": "mistral-sw4096-4L", "config": mistral, "modes": ["bf16"], "prefill": [(4096, 4096), (16384, 4096)]},
        {"name": "mixtral-2L", "config": mixtral, "modes": ["bf16", "nf4-dq"], "prefill": [(8192, 8192), (16384, 8192)]},
        *extra,
    ]


def _quant(mode: str) -> str:
    return {"bf16": "none", "int8": "bnb-8bit"}.get(mode, "bnb-4bit")


def _estimate(config: dict[str, Any], mode: str, context: int, chunk: int, gpu_name: str, capacity: int,
              attn: str = "sdpa") -> dict:
    from doctor.memory import Settings, compute_estimate, sizing_args
    from doctor.memory.gpus import GpuSpec
    from doctor.memory.skeleton import size_model

    s = Settings(context=context, quant=_quant(mode), prequantized=mode.endswith("prequantized"), prefill_chunk=chunk,
                 attn=attn)
    sizing = size_model(sizing_args(s, config, None))
    e = compute_estimate(sizing, s, [GpuSpec(0, gpu_name, capacity, "bench")])
    return e.to_dict()


def _bnb(torch: Any, transformers: Any) -> Any:
    return transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                           bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)


def _build_prequantized(torch: Any, transformers: Any, config: Any, src: Any, device: str) -> Any:
    """The pre-quantized Llama 4 layout: quantizer(pre_quantized=True) on a meta model, then every weight
    copied from `src` (un-fusing the experts) and Linear4bit weights quantized by Params4bit.to(device)."""
    import bitsandbytes as bnb
    from transformers.quantizers.auto import AutoHfQuantizer

    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    quantizer = AutoHfQuantizer.from_config(_bnb(torch, transformers), pre_quantized=True)
    quantizer.preprocess_model(model, device_map=None, keep_in_fp32_modules=[], dtype=torch.bfloat16)
    source = dict(src.named_parameters())
    inter = config.intermediate_size
    for name, module in list(model.named_modules()):
        for p_name, _ in list(module.named_parameters(recurse=False)):
            full = f"{name}.{p_name}"
            if ".experts." in full:  # model.layers.L.feed_forward.experts.E.gate_proj.weight
                prefix, rest = full.split(".experts.")
                e, proj = int(rest.split(".")[0]), rest.split(".")[1]
                if proj == "down_proj":
                    value = source[f"{prefix}.experts.down_proj"][e].t()
                else:
                    gate_up = source[f"{prefix}.experts.gate_up_proj"][e]
                    value = (gate_up[:, :inter] if proj == "gate_proj" else gate_up[:, inter:]).t()
            else:
                value = source[full]
            value = value.detach().to("cpu").contiguous()
            if type(module).__name__ == "Linear4bit" and p_name == "weight":
                new = bnb.nn.Params4bit(value, requires_grad=False, quant_type="nf4", compress_statistics=True,
                                        blocksize=64).to(device)
            else:
                new = torch.nn.Parameter(value.to(device), requires_grad=False)
            setattr(module, p_name, new)
            del value
    for name, buf in list(model.named_buffers()):
        mod_name, _, b_name = name.rpartition(".")
        module = model.get_submodule(mod_name)
        src_buf = dict(src.named_buffers()).get(name)
        module._buffers[b_name] = (src_buf.to(device) if src_buf is not None
                                   else torch.zeros(buf.shape, dtype=buf.dtype, device=device))
    return model.eval()


def _prefill(torch: Any, transformers: Any, model: Any, context: int, chunk: int, device: str, vocab: int) -> None:
    cache = transformers.DynamicCache(config=model.config)
    ids = torch.randint(0, vocab, (1, context), device=device)
    with torch.no_grad():
        for start in range(0, context, chunk):
            model(input_ids=ids[:, start:start + chunk], past_key_values=cache, use_cache=True, logits_to_keep=1)
    del cache, ids


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    device = args.device
    cuda = device == "cuda"
    gpu_name = torch.cuda.get_device_name(0) if cuda else "cpu"
    capacity = torch.cuda.mem_get_info()[1] if cuda else 80 * GIB
    rows: list[dict[str, Any]] = []
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "gpu": gpu_name,
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}
    try:
        import bitsandbytes

        meta["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        meta["bitsandbytes"] = None
    if cuda:
        torch.zeros(1, device="cuda")
        free, total = torch.cuda.mem_get_info()
        meta["context_after_init_bytes"] = total - free - torch.cuda.memory_reserved()
    for case in _cases(args.tiny):
        if args.only and case["name"] not in args.only:
            continue
        cfg_dict = case["config"]
        config = transformers.AutoConfig.for_model(**cfg_dict)
        path = os.path.join(args.workdir, case["name"])
        t0 = time.time()
        with torch.device(device):
            src = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        src.save_pretrained(path)
        src = src.to("cpu")  # keep the GPU clean for the measured loads
        print(f"[{case['name']}] built+saved in {time.time() - t0:.1f}s", flush=True)
        for mode in case["modes"]:
            if (mode != "bf16" and meta["bitsandbytes"] is None) or (mode == "int8" and not cuda):
                continue
            src_cpu = src
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
                base = torch.cuda.memory_allocated()
            t0 = time.time()
            try:
                if mode.endswith("prequantized"):
                    model = _build_prequantized(torch, transformers, config, src_cpu, device)
                else:
                    kwargs: dict[str, Any] = {"attn_implementation": case.get("attn", "sdpa")}
                    if mode == "int8":
                        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(load_in_8bit=True)
                    elif mode != "bf16":
                        kwargs["quantization_config"] = _bnb(torch, transformers)
                    model = transformers.AutoModelForCausalLM.from_pretrained(
                        path, dtype=torch.bfloat16, device_map={"": 0} if cuda else None, **kwargs).eval()
            except Exception as exc:  # noqa: BLE001 - report the case, keep going
                rows.append({"case": case["name"], "mode": mode, "error": f"{type(exc).__name__}: {exc}"[:300]})
                print(rows[-1], flush=True)
                continue
            weights = (torch.cuda.memory_allocated() - base) if cuda else None
            print(f"[{case['name']}/{mode}] loaded in {time.time() - t0:.1f}s", flush=True)
            for context, chunk in case["prefill"]:
                est = _estimate(cfg_dict, mode, context, chunk, gpu_name, capacity, case.get("attn", "sdpa"))
                row = {"case": case["name"], "mode": mode, "attn": case.get("attn", "sdpa"), "context": context, "chunk": chunk,
                       "est_weights": est["weights_bytes"], "meas_weights": weights,
                       "est_kv": est["kv_bytes"], "est_act": est["activation_peak_bytes"],
                       "est_peak": est["weights_bytes"] + est["kv_bytes"] + est["activation_peak_bytes"]}
                try:
                    if cuda:
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                    _prefill(torch, transformers, model, context, chunk, device, cfg_dict["vocab_size"])
                    if cuda:
                        torch.cuda.synchronize()
                        row["meas_peak"] = torch.cuda.max_memory_allocated() - base
                        free, total = torch.cuda.mem_get_info()
                        row["non_torch_bytes"] = total - free - torch.cuda.memory_reserved()
                        row["reserved_bytes"] = torch.cuda.memory_reserved()
                except Exception as exc:  # noqa: BLE001 - an OOM or bug is a result row
                    row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                if row.get("meas_weights"):
                    row["err_weights_pct"] = round(100 * (row["est_weights"] / row["meas_weights"] - 1), 2)
                if row.get("meas_peak"):
                    row["err_peak_pct"] = round(100 * (row["est_peak"] / row["meas_peak"] - 1), 2)
                    above = row["meas_peak"] - row["meas_weights"]
                    row["meas_above_weights"] = above
                    row["est_above_weights"] = est["kv_bytes"] + est["activation_peak_bytes"]
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.out:  # partial results survive a timeout
                    with open(args.out, "w") as fh:
                        json.dump({"meta": meta, "rows": rows}, fh, indent=1)
                if cuda:
                    torch.cuda.empty_cache()
            del model
            gc.collect()
        del src
        gc.collect()
        shutil.rmtree(path, ignore_errors=True)
    return {"meta": meta, "rows": rows}


def _table(result: dict[str, Any]) -> str:
    lines = ["| case | mode | T / chunk | weights est / meas (GiB) | err | peak est / meas (GiB) | err | above-weights est / meas (GiB) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        if "context" not in r:
            lines.append(f"| {r['case']} | {r['mode']} | — | error: {r.get('error')} | | | | |")
            continue
        g = lambda v: f"{v / GIB:.3f}" if isinstance(v, (int, float)) else "—"
        lines.append(f"| {r['case']} | {r['mode']} | {r['context']} / {r['chunk']} | {g(r['est_weights'])} / "
                     f"{g(r.get('meas_weights'))} | {r.get('err_weights_pct', '—')}% | {g(r['est_peak'])} / "
                     f"{g(r.get('meas_peak'))} | {r.get('err_peak_pct', '—')}% | {g(r.get('est_above_weights'))} / "
                     f"{g(r.get('meas_above_weights'))} |" + (f" error: {r['error']}" if r.get("error") else ""))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="small shapes (CPU smoke test)")
    parser.add_argument("--only", nargs="*", help="case names to run")
    parser.add_argument("--workdir", default="/tmp/estimator-accuracy")
    parser.add_argument("--out", default=None, help="write the JSON result here")
    args = parser.parse_args()
    result = run(args)
    table = _table(result)
    print(json.dumps(result["meta"]))
    print(table)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({**result, "table": table}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
