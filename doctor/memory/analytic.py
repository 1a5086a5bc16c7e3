"""Fallback when transformers is missing, too old, or does not know the architecture: count a
Llama-shaped decoder from config.json alone. Lower confidence: it cannot see which modules the real
class makes (it assumes fused 3-D experts stay at the load dtype on the fly, as in transformers 5.x).
Same result shape as `doctor.memory.skeleton.size_model`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from doctor.memory.storage import bytes_4bit, bytes_int8, dtype_bytes
from doctor.model_config import text_config_of


def _moe_layers(cfg: Mapping[str, Any], n_layers: int) -> list[bool]:
    experts = cfg.get("num_local_experts") or cfg.get("num_experts") or 0
    if not experts:
        return [False] * n_layers
    if isinstance(cfg.get("moe_layers"), list):
        chosen = set(cfg["moe_layers"])
        return [i in chosen for i in range(n_layers)]
    step = int(cfg.get("interleave_moe_layer_step") or cfg.get("decoder_sparse_step") or 1)
    return [(i + 1) % step == 0 for i in range(n_layers)]


def size_analytic(args: dict[str, Any]) -> dict[str, Any]:
    cfg = text_config_of(args["config"])
    quant = args.get("quant", "none")
    dq = bool(args.get("double_quant", True))
    prequantized = bool(args.get("prequantized"))
    dtype_name = (
        args.get("dtype")
        if args.get("dtype") not in (None, "auto")
        else (cfg.get("torch_dtype") or cfg.get("dtype") or args["config"].get("torch_dtype") or "bfloat16")
    )
    b = dtype_bytes(dtype_name)
    h = int(cfg.get("hidden_size", 0))
    heads = int(cfg.get("num_attention_heads") or 1)
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    hd = int(cfg.get("head_dim") or h // heads)
    n_layers = int(cfg.get("num_hidden_layers") or 0)
    vocab = int(cfg.get("vocab_size") or 0)
    inter = int(cfg.get("intermediate_size") or 4 * h)
    dense_inter = int(cfg.get("intermediate_size_mlp") or inter)
    expert_inter = int(cfg.get("moe_intermediate_size") or inter)
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
    tied = bool(cfg.get("tie_word_embeddings", args["config"].get("tie_word_embeddings", False)))
    shared_expert = cfg.get("model_type") in ("llama4_text",) or bool(
        cfg.get("shared_expert_intermediate_size")
    )

    totals = {
        "quantized_params": 0,
        "quantized_bytes": 0,
        "unquantized_params": 0,
        "unquantized_bytes": 0,
        "largest_quantized_linear": 0,
        "largest_quantized_out": 0,
    }
    groups: dict[str, dict[str, Any]] = {}

    def linear(name: str, n_in: int, n_out: int, quantizable: bool = True) -> int:
        n = n_in * n_out
        if quant != "none" and quantizable:
            size = bytes_int8(n_in, n_out) if quant == "bnb-8bit" else bytes_4bit(n, dq)
            totals["quantized_params"] += n
            totals["quantized_bytes"] += size
            if n > totals["largest_quantized_linear"]:
                totals["largest_quantized_linear"], totals["largest_quantized_out"] = n, n_out
            return size
        return plain(name, n, fused=False)

    def plain(name: str, n: int, fused: bool) -> int:
        totals["unquantized_params"] += n
        totals["unquantized_bytes"] += n * b
        g = groups.setdefault(
            name,
            {"module": name, "class": "?", "params": 0, "bytes": 0, "dtype": dtype_name, "fused_3d": fused},
        )
        g["params"] += n
        g["bytes"] += n * b
        return n * b

    blocks: list[dict[str, Any]] = [
        {
            "name": "model.embed_tokens",
            "class": "Embedding",
            "bytes": plain("model.embed_tokens", vocab * h, False),
            "moe": False,
        }
    ]
    expert_params = linear_params = 0
    for is_moe in _moe_layers(cfg, n_layers):
        size = (
            linear("attn", h, heads * hd)
            + 2 * linear("attn", h, kv_heads * hd)
            + linear("attn", heads * hd, h)
        )
        linear_params += h * (heads + 2 * kv_heads) * hd + heads * hd * h
        size += plain("model.layers.*.norms", 2 * h, False)
        if is_moe:
            n_exp = experts * 3 * h * expert_inter
            expert_params += n_exp
            if prequantized and cfg.get("model_type") == "llama4_text" and quant != "none":
                size += sum(linear("experts", h, expert_inter) for _ in range(2 * experts))
                size += sum(linear("experts", expert_inter, h) for _ in range(experts))
            else:
                size += plain("model.layers.*.mlp.experts", n_exp, True)
            size += plain("model.layers.*.mlp.router", h * experts, False)
            if shared_expert:
                size += 2 * linear("shared", h, expert_inter) + linear("shared", expert_inter, h)
                linear_params += 3 * h * expert_inter
        else:
            size += 2 * linear("mlp", h, dense_inter) + linear("mlp", dense_inter, h)
            linear_params += 3 * h * dense_inter
        blocks.append(
            {"name": f"model.layers.{len(blocks) - 1}", "class": "DecoderLayer", "bytes": size, "moe": is_moe}
        )
    blocks.append(
        {"name": "model.norm", "class": "RMSNorm", "bytes": plain("model.norm", h, False), "moe": False}
    )
    if not tied:
        blocks.append(
            {"name": "lm_head", "class": "Linear", "bytes": plain("lm_head", vocab * h, False), "moe": False}
        )
    weights = sum(bl["bytes"] for bl in blocks)
    return {
        "method": "analytic",
        "model_class": f"{cfg.get('model_type', '?')} (analytic Llama-shaped count)",
        "sized": "causal LM (analytic)",
        "dtype": dtype_name,
        "double_quant": dq,
        "quantizer": {"mode": "analytic", "modules_to_not_convert": ["lm_head"]},
        "weights_bytes": weights,
        **totals,
        "buffer_bytes": 0,
        "embedding_params": vocab * h,
        "lm_head_params": 0 if tied else vocab * h,
        "expert_params": expert_params,
        "linear_params": linear_params,
        "unquantized_modules": sorted(groups.values(), key=lambda g: -g["bytes"])[:12],
        "blocks": blocks,
        "no_split_modules": ["DecoderLayer"],
        "kv_layout": {"source": "analytic: every layer full", "layers": None},
        "moe": (
            {
                "moe_class": "?",
                "experts_class": "?",
                "num_experts": experts,
                "all_tokens_to_all_experts": cfg.get("model_type") == "llama4_text",
            }
            if experts
            else {}
        ),
        "text_config": dict(cfg),
        "config_fields_dropped": [],
        "versions": {},
    }
