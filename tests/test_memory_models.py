"""The estimator against the issue's expected verdicts, with the real transformers classes on meta.

These build skeletons in-process (torch/transformers imported here, never by the CLI) and take a few
seconds each, hence `slow`; they run in CI (CPU only)."""

from __future__ import annotations

from typing import Any

import pytest

from doctor.memory import Settings, compute_estimate, embedded_config, sizing_args
from doctor.memory.gpus import parse_gpus

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

GIB = 1 << 30
SCOUT = "meta-llama/Llama-4-Scout-17B-16E-Instruct"
_CACHE: dict[tuple[Any, ...], dict[str, Any]] = {}


def sizing(model: str | dict[str, Any], **settings: Any) -> tuple[dict[str, Any], Settings]:
    from doctor.memory.skeleton import size_model

    config = embedded_config(model) if isinstance(model, str) else model
    s = Settings(**{"context": 8192, **settings})
    key = (
        repr(sorted(config.items())) if isinstance(model, dict) else model,
        s.quant,
        s.prequantized,
        s.double_quant,
        s.dtype,
    )
    if key not in _CACHE:
        _CACHE[key] = size_model(sizing_args(s, config, None))
    return _CACHE[key], s


def test_scout_on_the_fly_4bit_keeps_fused_experts_in_bf16_and_never_fits_one_h100() -> None:
    sz, s = sizing(SCOUT, quant="bnb-4bit")
    assert sz["model_class"] == "Llama4ForCausalLM"
    assert sz["weights_bytes"] / GIB == pytest.approx(188.6, rel=0.03)
    assert any(
        g["fused_3d"] and g["module"].endswith("feed_forward.experts") for g in sz["unquantized_modules"]
    )
    e = compute_estimate(sz, s, parse_gpus("1xH100-80GB"))
    assert not e.fits and e.max_context_tokens == 0
    assert any("feed_forward.experts" in m for m in e.fused_experts_unquantized)
    assert any("pre-quantized" in n for n in e.notes)
    # 188 GiB of weights: transformers' device_map (balanced, bitsandbytes' 0.9 on each budget) spills
    # part of it to the CPU on 3 GPUs; 4 hold it
    assert not compute_estimate(sz, s, parse_gpus("3xH100-80GB")).fits
    assert compute_estimate(sz, s, parse_gpus("4xH100-80GB")).fits


def test_scout_prequantized_nf4_dq_fits_one_h100_at_8k_with_a_1e5_context() -> None:
    sz, s = sizing(SCOUT, quant="bnb-4bit", prequantized=True)
    assert sz["quantizer"]["patched_to"] == ["SequentialLlama4TextExperts"]
    assert sz["weights_bytes"] / GIB == pytest.approx(55.1, rel=0.03)
    e = compute_estimate(sz, s, parse_gpus("1xH100-80GB"))
    assert e.fits
    assert 5e4 <= e.max_context_tokens < 1e6  # order 1e5, not the advertised 1e7
    assert e.to_dict()["per_gpu"][0]["needed_bytes"] <= e.to_dict()["per_gpu"][0]["capacity_bytes"]


def test_scout_10m_tokens_needs_about_481_gib_of_bf16_kv() -> None:
    sz, _ = sizing(SCOUT, quant="bnb-4bit", prequantized=True)
    s = Settings(context=10 * 1024 * 1024, quant="bnb-4bit", prequantized=True, prefill_chunk=8192)
    e = compute_estimate(sz, s, parse_gpus("8xH100-80GB"))
    assert e.kv_bytes / GIB == pytest.approx(481, rel=0.01)
    assert not e.fits


def test_dense_llama_8b_weights_bf16_and_nf4() -> None:
    bf16, _ = sizing("meta-llama/Llama-3.1-8B-Instruct")
    assert bf16["weights_bytes"] / 1e9 == pytest.approx(8.03e9 * 2 / 1e9, rel=0.01)
    nf4, _ = sizing("meta-llama/Llama-3.1-8B-Instruct", quant="bnb-4bit")
    # 6.98B linear params at 0.5159 B + embed and lm_head (2 x 525M) in bf16
    assert nf4["weights_bytes"] / GIB == pytest.approx(5.31, rel=0.03)
    assert "lm_head" in nf4["quantizer"]["modules_to_not_convert"]
    e = compute_estimate(nf4, Settings(context=131072, quant="bnb-4bit"), parse_gpus("1xH100-80GB"))
    assert e.fits and e.max_context_tokens == 131072


def test_mixtral_experts_are_fused_in_transformers_5_and_stay_bf16() -> None:
    sz, s = sizing("mistralai/Mixtral-8x7B-Instruct-v0.1", quant="bnb-4bit")
    fused = [g for g in sz["unquantized_modules"] if g["fused_3d"]]
    if not fused:
        pytest.skip("this transformers keeps Mixtral experts as nn.Linear (4.x)")
    assert fused[0]["params"] == 32 * 8 * 3 * 4096 * 14336
    assert sz["weights_bytes"] / GIB > 80  # not the ~25 GiB a per-parameter 4-bit estimate gives
    assert not compute_estimate(sz, s, parse_gpus("1xH100-80GB")).fits


def test_smollm2_tied_embeddings_counted_once() -> None:
    sz, _ = sizing("HuggingFaceTB/SmolLM2-135M-Instruct")
    params = sz["unquantized_params"] + sz["quantized_params"]
    assert params == pytest.approx(134.5e6, rel=0.01)
    e = compute_estimate(sz, Settings(context=8192), parse_gpus("1x24GB"))
    assert e.fits and e.max_context_tokens == 8192


def test_sliding_window_layers_are_capped_when_transformers_caps_them() -> None:
    config = {
        "model_type": "mistral",
        "hidden_size": 1024,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "intermediate_size": 2048,
        "vocab_size": 1000,
        "sliding_window": 4096,
        "max_position_embeddings": 131072,
        "torch_dtype": "bfloat16",
    }
    sz, _ = sizing(config)
    layers = sz["kv_layout"]["layers"]
    if not layers or layers[0]["kind"] != "window":
        pytest.skip("this transformers' DynamicCache(config) does not cap sliding layers")
    s = Settings(context=65536, prefill_chunk=1024)
    e = compute_estimate(sz, s, parse_gpus("1xH100-80GB"))
    per_token_layer = 2 * 2 * 128 * 2
    assert e.kv_bytes == 4 * per_token_layer * (4095 + 1024)


def test_analytic_fallback_is_close_to_the_skeleton_for_scout() -> None:
    from doctor.memory.analytic import size_analytic

    for pre in (False, True):
        sz, s = sizing(SCOUT, quant="bnb-4bit", prequantized=pre)
        rough = size_analytic(sizing_args(s, embedded_config(SCOUT), None))
        assert rough["weights_bytes"] == pytest.approx(sz["weights_bytes"], rel=0.03)
        assert compute_estimate(rough, s, parse_gpus("1xH100-80GB")).confidence == "low"
