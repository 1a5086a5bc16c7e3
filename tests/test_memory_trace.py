"""KV and activation peak from the model's own forward (doctor.memory.trace), checked against the library.

Tiny configs of real transformers classes: the KV estimate must equal what a real CPU forward leaves in
DynamicCache (MLA latent, sliding window, plain GQA), the fitted activation model must reproduce a
direct trace at a point it was not fitted on, and a failed trace must fall back, widened and said."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from doctor.memory import Settings, compute_estimate, sizing_args  # noqa: E402
from doctor.memory.activations import traced_activation_per_gpu  # noqa: E402
from doctor.memory.gpus import parse_gpus  # noqa: E402

TINY = {
    "hidden_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 256,
    "vocab_size": 512,
    "max_position_embeddings": 8192,
    "torch_dtype": "bfloat16",
}
ARCHS: dict[str, dict[str, Any]] = {
    "llama": {},
    "gemma3_text": {
        "head_dim": 32,
        "sliding_window": 48,
        "num_hidden_layers": 4,
        "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
    },
    "deepseek_v2": {
        "num_key_value_heads": 4,
        "kv_lora_rank": 32,
        "q_lora_rank": None,
        "qk_rope_head_dim": 16,
        "qk_nope_head_dim": 32,
        "v_head_dim": 32,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 64,
        "first_k_dense_replace": 1,
    },
}
_SIZED: dict[str, dict[str, Any]] = {}


def _config(model_type: str) -> dict[str, Any]:
    return {"model_type": model_type, **TINY, **ARCHS[model_type]}


def _sized(model_type: str) -> dict[str, Any]:
    from doctor.memory.skeleton import size_model

    if model_type not in _SIZED:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _SIZED[model_type] = size_model(sizing_args(Settings(context=512), _config(model_type), None))
    return _SIZED[model_type]


def _real_cache_bytes(model_type: str, context: int, chunk: int) -> int:
    """Prefill a real (random-weight) CPU model and count the storages DynamicCache holds."""
    import transformers

    config = transformers.AutoConfig.for_model(
        **{k: v for k, v in _config(model_type).items() if k != "torch_dtype"}
    )
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    cache = transformers.DynamicCache(config=model.config)
    ids = torch.randint(0, TINY["vocab_size"], (1, context))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for start in range(0, context, chunk):
            model(
                input_ids=ids[:, start : start + chunk],
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
    seen: set[int] = set()
    total = 0
    for layer in cache.layers:
        for t in (layer.keys, layer.values):
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_kv_estimate_equals_what_dynamic_cache_really_holds(model_type: str) -> None:
    sizing = _sized(model_type)
    assert sizing["kv_layout"].get("measured"), sizing["trace"]
    for context, chunk in ((160, 160), (320, 64)):
        estimate = compute_estimate(
            sizing, Settings(context=context, prefill_chunk=chunk), parse_gpus("1x24GB")
        )
        assert estimate.kv_bytes == _real_cache_bytes(model_type, context, chunk)


def test_mla_caches_what_this_transformers_caches_not_a_per_head_formula() -> None:
    sizing = _sized("deepseek_v2")
    cfg = _config("deepseek_v2")
    per_token = {layer["bytes_per_token"] for layer in sizing["kv_layout"]["layers"]}
    latent = (cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"]) * 2
    decompressed = (
        cfg["num_attention_heads"]
        * (cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"] + cfg["v_head_dim"])
        * 2
    )
    assert len(per_token) == 1 and per_token.pop() in (latent, decompressed)


def test_sliding_layers_are_capped_and_the_global_layer_is_not() -> None:
    layers = _sized("gemma3_text")["kv_layout"]["layers"]
    assert [x["kind"] for x in layers] == ["window", "window", "window", "full"]
    assert layers[0]["window"] == 48


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_fitted_activation_model_reproduces_a_direct_trace_at_an_unseen_point(model_type: str) -> None:
    """The polynomial fit is exact: a fresh trace at (context, chunk) not among the fitted points gives
    the same peak as evaluating the stored model there."""
    import transformers

    from doctor.memory import trace
    from doctor.memory.kv import kv_bytes_per_layer, kv_layers

    sizing = _sized(model_type)
    model_info = sizing["trace"]["activations"]
    config = transformers.AutoConfig.for_model(
        **{k: v for k, v in _config(model_type).items() if k != "torch_dtype"}
    )
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(
            config, dtype=torch.bfloat16, attn_implementation="sdpa"
        )
    layers = trace._decoder_layers(model)
    reps = {int(i): name for name, i in model_info["representatives"].items()}
    layout = kv_layers(sizing["text_config"], sizing["kv_layout"]["layers"])
    for context, chunk in ((1000, 300), (777, 777)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zones = trace._trace_point(
                torch, transformers, model, model.config, layers, reps, chunk, context - chunk
            )
        # direct evaluation of the same rule on the raw zones (one GPU, all layers)
        now = kv_bytes_per_layer(sizing["text_config"], layout, context, chunk, 2)
        before = kv_bytes_per_layer(sizing["text_config"], layout, context - chunk, chunk, 2)
        direct = 0
        suffix = 0
        for i in range(len(model_info["layer_signatures"]) - 1, -1, -1):
            suffix += now[i] - before[i]
            sig = model_info["layer_signatures"][i]
            direct = max(direct, zones[f"entry:{sig}"][0] + max(zones[f"layer:{sig}"], default=0) - suffix)
        direct = max(direct, *zones.get("pre", [0]), *zones.get("post", [0]))
        fitted = traced_activation_per_gpu(model_info, [0] * len(now), now, before, context, chunk, 0, 1)
        assert fitted == [direct]


def test_traced_peak_subtracts_cache_growth_of_later_layers_only_on_the_same_gpu() -> None:
    model = {
        "layer_signatures": ["t0", "t0"],
        "regimes": [
            {
                "kind": "chunked",
                "lo": 1,
                "hi": None,
                "zones": {
                    "entry:t0": [[100, 0, 0, 0, 0]],
                    "layer:t0": [[1000, 0, 0, 0, 0]],
                    "pre": [],
                    "post": [],
                },
            }
        ],
    }
    one_gpu = traced_activation_per_gpu(model, [0, 0], [50, 50], [10, 10], 20, 10, 0, 1)
    two_gpus = traced_activation_per_gpu(model, [0, 1], [50, 50], [10, 10], 20, 10, 0, 2)
    assert one_gpu == [1100 - 40]  # the last layer peaks with only its own growth not yet in place
    assert two_gpus == [1100 - 40, 1100 - 40]


def test_uncovered_regime_returns_none() -> None:
    model = {"layer_signatures": ["t0"], "regimes": [{"kind": "oneshot", "lo": 1, "hi": None, "zones": {}}]}
    assert traced_activation_per_gpu(model, [0], [1], [0], 100, 10, 0, 1) is None


def test_without_a_trace_the_analytic_fallback_is_widened_and_said() -> None:
    traced = _sized("llama")
    untraced = {k: v for k, v in traced.items() if k != "trace"}
    s = Settings(context=4096, prefill_chunk=1024)
    a = compute_estimate(traced, s, parse_gpus("1x24GB"))
    b = compute_estimate(untraced, s, parse_gpus("1x24GB"))
    assert a.method == "traced" and a.confidence == "high"
    assert b.method == "meta-skeleton" and b.confidence == "medium"
    assert any("analytic fallback" in n and "widened" in n for n in b.notes)


def test_estimate_follows_the_attention_transformers_really_dispatches() -> None:
    """Gemma 2 refuses sdpa in some transformers versions and then runs eager (materialised scores)."""
    from doctor.memory.skeleton import size_model

    config = {"model_type": "gemma2", **TINY, "head_dim": 32, "sliding_window": 64}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sizing = size_model(sizing_args(Settings(context=512, attn="sdpa"), config, None))
    actual = sizing["trace"]["attn_implementation"]
    estimate = compute_estimate(sizing, Settings(context=512, attn="sdpa"), parse_gpus("1x24GB"))
    if actual == "sdpa":
        pytest.skip("this transformers runs Gemma 2 with sdpa")
    assert any(f"dispatches {actual}" in n for n in estimate.notes)


def test_sizing_cache_computes_once_and_keeps_only_skeleton_answers(tmp_path: Any) -> None:
    from doctor.memory.sizing_cache import cached_sizing

    calls: list[int] = []

    def compute(args: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        return {"method": args["method"], "weights_bytes": 1}

    skeleton = {"config": {"model_type": "llama"}, "method": "meta-skeleton"}
    assert cached_sizing(skeleton, compute, tmp_path) == cached_sizing(skeleton, compute, tmp_path)
    assert len(calls) == 1
    fallback = {"config": {"model_type": "llama"}, "method": "analytic"}
    cached_sizing(fallback, compute, tmp_path)
    cached_sizing(fallback, compute, tmp_path)
    assert len(calls) == 3


def test_cuda_sdpa_dispatch_rules_pick_the_math_path_where_no_fused_kernel_applies() -> None:
    from doctor.memory.trace import fused_sdpa_applies

    def t(heads: int, dim: int = 64, length: int = 16) -> Any:
        return torch.empty(1, heads, length, dim, dtype=torch.bfloat16, device="meta")

    mask = torch.empty(1, 1, 16, 16, dtype=torch.bool, device="meta")
    assert fused_sdpa_applies(torch, t(8), t(8), t(8), mask, False)
    assert fused_sdpa_applies(torch, t(8), t(2), t(2), None, True)  # flash with enable_gqa
    assert not fused_sdpa_applies(torch, t(8), t(2), t(2), mask, True)  # GQA + mask: math
    assert not fused_sdpa_applies(torch, t(71), t(1), t(1), None, False)  # Falcon's multi-query call
    assert not fused_sdpa_applies(torch, t(8, 320), t(8, 320), t(8, 320), None, False)


def test_math_path_materialises_the_scores_in_fp32() -> None:
    """A multi-query sdpa call (no enable_gqa) costs about 9 bytes per score element on CUDA (measured on
    an H200 for Falcon-7B): the trace must see a score-sized fp32 matrix, not a fused kernel's output."""
    from doctor.memory import trace

    tracker = trace._Tracker()
    tracker.enabled = True
    heads, length = 8, 256
    q = torch.empty(1, heads, length, 64, dtype=torch.bfloat16, device="meta")
    kv = torch.empty(1, 1, length, 64, dtype=torch.bfloat16, device="meta")
    with trace._function_mode(torch, tracker), trace._dispatch_mode(torch, tracker):
        torch.nn.functional.scaled_dot_product_attention(q, kv, kv, is_causal=True)
    peak = max(live for _, live in tracker.events)
    assert peak >= 9 * heads * length * length


def _tiny_sizing(config: dict[str, Any], context: int = 512) -> dict[str, Any]:
    from doctor.memory.skeleton import size_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return size_model(sizing_args(Settings(context=context), config, None))


TINY_BLOOM = {
    "model_type": "bloom",
    "hidden_size": 128,
    "n_layer": 2,
    "n_head": 4,
    "vocab_size": 512,
    "torch_dtype": "bfloat16",
}


def _zones(sizing: dict[str, Any]) -> set[str]:
    regimes = sizing["trace"]["activations"]["regimes"]
    return {zone for regime in regimes for zone in regime["zones"]}


def test_own_attention_code_is_traced_like_any_code_and_named() -> None:
    sizing = _tiny_sizing(TINY_BLOOM)
    if not sizing["trace"].get("custom_attention"):
        pytest.skip("this transformers' BLOOM attention dispatches through the attention interface")
    estimate = compute_estimate(sizing, Settings(context=512), parse_gpus("1x24GB"))
    assert estimate.method == "traced" and estimate.confidence == "high"  # every op in it is known
    assert any("own code (BloomAttention)" in n for n in estimate.notes)


def test_outputs_a_models_loop_keeps_through_the_next_layer_are_carried() -> None:
    """BLOOM's loop holds each block's (hidden, attention probabilities) while the next block runs."""
    sizing = _tiny_sizing(TINY_BLOOM)
    assert "carry:t0" in _zones(sizing)
    heads, chunk = 4, 256
    carry = [
        c
        for r in sizing["trace"]["activations"]["regimes"]
        if r["kind"] == "oneshot"
        for c in r["zones"]["carry:t0"]
    ]
    # the bf16 probabilities of one chunk: heads x C x C x 2 bytes
    assert (
        max(sum(x * v for x, v in zip(c, (1, chunk, 0, 0, chunk * chunk))) for c in carry)
        == heads * chunk * chunk * 2
    )


def test_a_layer_that_returns_only_hidden_states_carries_nothing() -> None:
    config = {
        "model_type": "llama",
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "torch_dtype": "bfloat16",
    }
    assert not any(zone.startswith("carry:") for zone in _zones(_tiny_sizing(config)))


def test_a_carry_adds_to_later_layers_on_the_same_gpu_only() -> None:
    zones = {
        "entry:t0": [[0, 0, 0, 0, 0]],
        "layer:t0": [[100, 0, 0, 0, 0]],
        "carry:t0": [[40, 0, 0, 0, 0]],
    }
    model = {
        "layer_signatures": ["t0", "t0"],
        "regimes": [{"kind": "oneshot", "lo": 1, "hi": None, "zones": zones}],
    }
    same = traced_activation_per_gpu(model, [0, 0], [0, 0], [0, 0], 64, 64, 0, 1)
    split = traced_activation_per_gpu(model, [0, 1], [0, 0], [0, 0], 64, 64, 0, 2)
    assert same == [140]  # layer 1 runs while layer 0's return value is still held
    assert split == [100, 100]  # layer 0's return value sits on GPU 0 while layer 1 runs on GPU 1
