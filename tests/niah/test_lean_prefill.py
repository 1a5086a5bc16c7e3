"""The lean prefill path against transformers' own eager forward, on the CPU.

- `niah_lean` attention (doctor.runtime.attention), chunked, against one eager forward over the same ids:
  plain causal (Llama, the demo model), Llama 4's chunked attention with NoPE layers and temperature
  tuning, sliding windows (Mistral, Qwen2's per-layer windows, Gemma 3's mixed layers, Cohere 2).
  Tolerance: |Δlogit| ≤ 1e-4 in fp32 (measured ≤ 5e-7), greedy tokens identical; bf16 ≤ 0.05 of the
  logits' range with identical greedy tokens.
- what the kernel cannot honour (softcapping, attention sinks) is refused, never approximated;
- the preallocated KV cache and prefix snapshots (doctor.runtime.cache): a windowed layer past its window
  is restored exactly from a snapshot, and every reused trial equals a fresh prefill;
- Llama 4's routed experts (doctor.runtime.experts) against transformers' Llama4TextMoe (fp32, bf16, and
  bnb-4bit on the CPU, where the shared expert is quantized).
"""

from __future__ import annotations

import hashlib
import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from doctor.runtime import attention as lean
from doctor.runtime import cache as lean_cache
from doctor.runtime.experts import route_llama4_experts
from niah_run import prefill as pf
from niah_run.backends.hf import HFBackend

VOCAB = 160
WINDOW = 16  # every windowed model here: prompts of 70+ tokens cross it several times


def _config(model_type: str, **overrides):
    base = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 1024,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    return transformers.AutoConfig.for_model(model_type, **{**base, **overrides})


def llama4_config(attention_chunk_size: int = WINDOW, **overrides):
    layers = int(overrides.get("num_hidden_layers", 4))
    values = {
        "intermediate_size_mlp": 96,
        "num_local_experts": 4,
        "num_experts_per_tok": 1,
        "attention_chunk_size": attention_chunk_size,
        # RoPE + chunked layers and a NoPE global layer every fourth, as in Scout
        "no_rope_layers": [0 if (i + 1) % 4 == 0 else 1 for i in range(layers)],
        "floor_scale": 4,  # so the NoPE layer's temperature tuning varies with the absolute position here
        **overrides,
    }
    return _config("llama4_text", **values)


CONFIGS = {
    "llama": lambda: _config("llama"),
    "llama4-chunked-nope": llama4_config,
    "mistral-sliding": lambda: _config("mistral", sliding_window=WINDOW),
    "qwen2-per-layer-window": lambda: _config(
        "qwen2", sliding_window=WINDOW, use_sliding_window=True, max_window_layers=2
    ),
    "gemma3-mixed": lambda: _config(
        "gemma3_text",
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
    ),
    "cohere2-sliding": lambda: _config("cohere2", sliding_window=WINDOW),
}


def build(config, dtype=torch.float32):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=dtype)
    return model.eval()


def ids_of(length: int, seed: int = 1) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (length,), generator=generator).tolist()


def eager_logits(model, ids: list[int]):
    model.set_attn_implementation("eager")
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def lean_logits(model, ids: list[int], chunk: int):
    """Every position's logits from a chunked lean prefill into the preallocated cache."""
    lean.register()
    model.set_attn_implementation(lean.LEAN_ATTENTION)
    cache = pf.new_cache(model, capacity=len(ids))
    sig = pf.inspect_forward(model)
    rows = []
    with torch.inference_mode():
        for a, b in pf.chunk_bounds(0, len(ids), chunk):
            positions = torch.arange(a, b).unsqueeze(0)
            with lean.query_start(a):
                out = model(
                    input_ids=torch.tensor([ids[a:b]]), position_ids=positions, **{sig.cache_kw: cache}
                )
            rows.append(out.logits[0].float())
    return torch.cat(rows)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def fp32_model(request):
    return request.param, build(CONFIGS[request.param]())


@pytest.mark.parametrize("chunk", [5, 8, WINDOW, 23, 1000])
def test_lean_chunked_equals_eager_one_shot(fp32_model, chunk: int) -> None:
    _, model = fp32_model
    ids = ids_of(71)  # 71: ragged chunks, and several window / attention-chunk crossings
    reference = eager_logits(model, ids)
    got = lean_logits(model, ids, chunk)
    assert (got - reference).abs().max().item() <= 1e-4
    assert torch.equal(got.argmax(-1), reference.argmax(-1))


def test_sliding_windows_really_take_the_three_piece_path(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = lean._attend_sliding
    monkeypatch.setattr(lean, "_attend_sliding", lambda *a, **k: calls.append(1) or original(*a, **k))
    model = build(CONFIGS["mistral-sliding"]())
    ids = ids_of(50)
    assert (lean_logits(model, ids, 8) - eager_logits(model, ids)).abs().max().item() <= 1e-4
    assert calls  # rows past the window were computed from the merged pieces


@pytest.mark.parametrize("name", ["llama4-chunked-nope", "gemma3-mixed"])
def test_lean_bf16_close_with_identical_greedy_tokens(name: str) -> None:
    model = build(CONFIGS[name](), dtype=torch.bfloat16)
    ids = ids_of(64, seed=2)
    reference = eager_logits(model, ids)
    got = lean_logits(model, ids, 8)
    spread = (reference.max() - reference.min()).item()
    assert (got - reference).abs().max().item() <= 0.05 * spread
    backend_eager = HFBackend(model, None, prefill_chunk=None)
    model.set_attn_implementation("eager")
    expected = backend_eager.generate(ids, max_new_tokens=8).output_ids
    model.set_attn_implementation(lean.LEAN_ATTENTION)
    lean_tokens = HFBackend(model, None, prefill_chunk=8, preallocate_kv=True).generate(ids, max_new_tokens=8)
    assert lean_tokens.output_ids == expected


def test_demo_sized_dimensions_and_decode_match_eager_generate() -> None:
    model = build(_config("llama", num_attention_heads=8, num_key_value_heads=2, head_dim=8, hidden_size=64))
    ids = ids_of(40, seed=4)
    model.set_attn_implementation("eager")
    with torch.inference_mode():
        expected = model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False, pad_token_id=0)
    lean.register()
    model.set_attn_implementation(lean.LEAN_ATTENTION)
    got = HFBackend(model, None, prefill_chunk=7, preallocate_kv=True).generate(ids, max_new_tokens=10)
    assert list(got.output_ids) == expected[0, len(ids) :].tolist()[: len(got.output_ids)]


@pytest.mark.slow
def test_demo_model_lean_equals_eager() -> None:
    from niah_run.backends.loading import load_backend
    from run_plan.spec import RunSpec

    backend = load_backend(RunSpec(model="demo", attn="eager", dtype="float32"))
    model, tokenizer = backend.model, backend.tokenizer
    ids = tokenizer("The quick brown fox jumps over the lazy dog. " * 30)["input_ids"][:300]
    reference = eager_logits(model, ids)
    got = lean_logits(model, ids, 64)
    assert (got - reference).abs().max().item() <= 1e-3
    assert torch.equal(got.argmax(-1), reference.argmax(-1))


class _Module:
    def __init__(self, config, layer_idx: int = 0) -> None:
        self.config, self.layer_idx = config, layer_idx


def _qkv(length: int = 4):
    q = torch.randn(1, 4, length, 16)
    k = torch.randn(1, 2, length, 16)
    return q, k, k.clone()


@pytest.mark.parametrize(
    "kwargs, refused",
    [
        ({"softcap": 50.0}, "softcap"),
        ({"s_aux": torch.zeros(4)}, "s_aux"),
        ({"position_bias": torch.zeros(1)}, "position_bias"),
        ({"is_causal": False}, "bidirectional"),
    ],
)
def test_what_the_kernel_cannot_honour_is_refused(kwargs, refused: str) -> None:
    q, k, v = _qkv()
    with pytest.raises(lean.LeanUnsupported, match=refused):
        lean.lean_attention_forward(_Module(_config("llama")), q, k, v, None, **kwargs)


def test_padding_masks_and_unknown_positions_are_refused() -> None:
    q, k, v = _qkv()
    with pytest.raises(lean.LeanUnsupported, match="mask"):
        lean.lean_attention_forward(
            _Module(_config("llama")), q, k, v, torch.ones(1, 1, 4, 4, dtype=torch.bool)
        )
    # a windowed layer whose cache is full cannot tell where its queries are without query_start
    module = _Module(_config("mistral", sliding_window=4))
    q, k, v = torch.randn(1, 4, 2, 16), torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16)
    with pytest.raises(lean.LeanUnsupported, match="position"):
        lean.lean_attention_forward(module, q, k, v, None, sliding_window=4)  # as Mistral passes it
    with lean.query_start(10):
        out, _ = lean.lean_attention_forward(module, q, k, v, None, sliding_window=4)
    assert out.shape == (1, 2, 4, 16)


def test_gemma2_softcapping_model_is_refused_in_its_real_forward() -> None:
    model = build(_config("gemma2", sliding_window=WINDOW, attn_logit_softcapping=50.0))
    with pytest.raises(lean.LeanUnsupported, match="softcap"):
        lean_logits(model, ids_of(20), 8)


def test_bottom_right_causal_from_two_aligned_blocks_equals_one() -> None:
    # the fallback for a flash build whose causal mode is top-left: same result from two blocks
    q, k, v = torch.randn(1, 4, 5, 16), torch.randn(1, 2, 12, 16), torch.randn(1, 2, 12, 16)
    expected, expected_lse = lean._math_block(q, k, v, 0.25, True)
    got, lse = lean.causal_by_split(q, k, v, 0.25, lean._math_block)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, expected_lse, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("cudnn_s", "flash_s", "chosen"), [(0.004, 0.006, "cuDNN"), (0.007, 0.006, "flash")])
def test_cudnn_takes_the_earlier_keys_only_where_it_timed_faster(
    monkeypatch: pytest.MonkeyPatch, cudnn_s: float, flash_s: float, chosen: str
) -> None:
    # exact and in place is not enough: the split is there for speed, so the slower kernel never runs
    timings = iter([cudnn_s, flash_s])
    monkeypatch.setattr(lean, "best_cuda_seconds", lambda block, device: next(timings))
    monkeypatch.setattr(lean, "_cudnn_matches_reference", lambda device, dtype: True)
    monkeypatch.setattr(lean, "_cudnn_reads_the_cache_in_place", lambda device, dtype: True)
    monkeypatch.setattr(lean, "_CUDNN_OK", {})
    monkeypatch.setattr(lean, "_KERNEL_SECONDS", {})
    used = lean.prepare_kernels("cpu", torch.float32)
    assert used.startswith(chosen)
    assert f"{cudnn_s * 1e3:.2f} ms on cuDNN" in used and f"{flash_s * 1e3:.2f} ms on flash" in used
    assert lean._cudnn_usable("cpu", torch.float32) is (chosen == "cuDNN")


# ---------------------------------------------------------------- cache


def test_chunk_grid_is_absolute_and_cuts_where_asked() -> None:
    assert pf.chunk_bounds(0, 10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert pf.chunk_bounds(6, 17, 4) == [(6, 8), (8, 12), (12, 16), (16, 17)]
    assert pf.chunk_bounds(6, 17, 4, cuts=[10, 99]) == [(6, 8), (8, 10), (10, 12), (12, 16), (16, 17)]
    assert pf.chunk_bounds(3, 9, None, cuts=[5]) == [(3, 5), (5, 9)]
    assert pf.chunk_bounds(5, 5, 4) == []


def test_preallocated_layer_fills_one_buffer_in_place() -> None:
    model = build(CONFIGS["llama"]())
    cache = pf.new_cache(model, capacity=40)
    sig = pf.inspect_forward(model)
    layer = cache.layers[0]
    assert lean_cache.is_preallocated(layer)
    pf.prefill(model, sig, torch.tensor([ids_of(30)]), cache, start=0, chunk_size=8)
    buffer = layer.keys.untyped_storage().data_ptr()
    assert layer.keys.shape[-2] == 30 and layer.capacity == 40
    lean_cache.restore(cache, 12, None)
    pf.prefill(model, sig, torch.tensor([ids_of(45)]), cache, start=12, chunk_size=8)  # past capacity
    assert pf.cache_length(cache) == 45 and layer.capacity >= 45
    assert layer.keys.untyped_storage().data_ptr() != buffer  # grew once, by a copy
    torch.testing.assert_close(
        pf.prefill(model, sig, torch.tensor([ids_of(45)]), pf.new_cache(model), start=0, chunk_size=8).logits,
        pf.prefill(
            model, sig, torch.tensor([ids_of(45)]), pf.new_cache(model, 45), start=0, chunk_size=8
        ).logits,
    )


def _hash(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()


@pytest.mark.parametrize("attn", ["sdpa", lean.LEAN_ATTENTION])
def test_snapshot_reuse_past_the_window_equals_fresh_prefills(attn: str) -> None:
    """Depth-ordered prompts sharing a haystack prefix up to their own needle, on a Llama 4 whose 16-token
    attention chunks are long gone by the shared length: with the snapshot every trial after the first
    reuses its prefix, and each output and input hash equals a fresh prefill's."""
    lean.register()
    model = build(llama4_config(WINDOW))
    model.set_attn_implementation(attn)
    haystack = ids_of(120, seed=7)
    needles = [30, 55, 80]  # ascending depths: trial k shares haystack[:needles[k-1]] with trial k-1
    prompts = [haystack[:at] + [5, 6, 7] + haystack[at:117] for at in needles]
    lean_path = attn == lean.LEAN_ATTENTION
    fresh = [
        HFBackend(model, None, prefill_chunk=16, preallocate_kv=lean_path).generate(p, max_new_tokens=6)
        for p in prompts
    ]
    backend = HFBackend(model, None, prefill_chunk=16, preallocate_kv=lean_path)
    reused = []
    for k, p in enumerate(prompts):
        shared_with_previous = needles[k - 1] if k else 0
        next_shares = needles[k] if k + 1 < len(prompts) else None
        reused.append(
            backend.generate(
                p, max_new_tokens=6, reusable_prefix_len=shared_with_previous, snapshot_at=next_shares
            )
        )
    assert [g.reused_prefix_tokens for g in reused] == [0, 30, 55]
    assert [g.output_ids for g in reused] == [g.output_ids for g in fresh]
    assert [_hash(p) for p in prompts] == [_hash(list(p)) for p in prompts]


def test_no_snapshot_no_reuse_and_a_wrong_snapshot_is_never_used() -> None:
    model = build(llama4_config(WINDOW))
    backend = HFBackend(model, None, prefill_chunk=16)
    first, second = ids_of(60, seed=8), ids_of(60, seed=8)[:40] + ids_of(20, seed=9)
    backend.generate(first, max_new_tokens=3, snapshot_at=20)  # snapshot at 20, but 40 are shared
    got = backend.generate(second, max_new_tokens=3, reusable_prefix_len=40)
    assert got.reused_prefix_tokens == 20  # the snapshot's length, the longest exact restore
    assert (
        got.output_ids
        == HFBackend(model, None, prefill_chunk=16).generate(second, max_new_tokens=3).output_ids
    )
    backend.generate(first, max_new_tokens=3)
    assert backend.generate(second, max_new_tokens=3, reusable_prefix_len=40).reused_prefix_tokens == 0


def test_unknown_cache_layers_are_never_snapshotted() -> None:
    class Opaque:
        def get_seq_length(self) -> int:
            return 5

    class FakeCache:
        def __init__(self) -> None:
            self.layers = [Opaque()]

        def get_seq_length(self) -> int:
            return 5

    assert lean_cache.take_snapshot(FakeCache()) is None
    assert not lean_cache.holds_prefix(FakeCache(), 3)


# ---------------------------------------------------------------- routed experts


def _moe_model(dtype, top_k: int = 1):
    # widths that are multiples of bitsandbytes' 64-element quantization blocks
    config = llama4_config(
        num_hidden_layers=2,
        moe_layers=[0, 1],
        num_local_experts=8,
        num_experts_per_tok=top_k,
        intermediate_size=64,
        intermediate_size_mlp=128,
    )
    model = build(config, dtype=dtype)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)  # non-trivial experts (from_config leaves fused experts at zero)
    return model


@pytest.mark.parametrize("dtype, top_k", [(torch.float32, 1), (torch.float32, 2), (torch.bfloat16, 1)])
def test_routed_experts_equal_transformers_moe(dtype, top_k: int) -> None:
    model = _moe_model(dtype, top_k)
    moe = model.model.layers[0].feed_forward
    x = torch.randn(50, 64, dtype=dtype)
    ids = ids_of(40, seed=11)
    with torch.inference_mode():
        expected_out, expected_logits = moe(x)[0], model(input_ids=torch.tensor([ids])).logits
    assert route_llama4_experts(model) == ["model.layers.0.feed_forward", "model.layers.1.feed_forward"]
    with torch.inference_mode():
        got_out, got_logits = moe(x)[0], model(input_ids=torch.tensor([ids])).logits
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert (got_out - expected_out).abs().max().item() <= tolerance * expected_out.abs().max().item()
    torch.testing.assert_close(got_logits, expected_logits, rtol=tolerance, atol=tolerance)


def test_routed_experts_with_bnb_4bit_shared_expert(tmp_path) -> None:
    pytest.importorskip("bitsandbytes")
    model = _moe_model(torch.bfloat16)
    model.config.architectures = ["Llama4ForCausalLM"]
    model.save_pretrained(tmp_path)
    quantized = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path,
        quantization_config=transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16
        ),
        device_map="cpu",
        dtype=torch.bfloat16,
    )
    assert type(quantized.model.layers[0].feed_forward.shared_expert.gate_proj).__name__ == "Linear4bit"
    ids = torch.tensor([ids_of(30, seed=12)])
    with torch.inference_mode():
        expected = quantized(input_ids=ids).logits
    route_llama4_experts(quantized)
    with torch.inference_mode():
        got = quantized(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_routed_experts_trace_on_meta() -> None:
    config = llama4_config(num_hidden_layers=2, moe_layers=[0, 1])
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    route_llama4_experts(model)
    out = model(input_ids=torch.zeros(1, 20, dtype=torch.long, device="meta"))
    assert out.logits.shape == (1, 20, VOCAB)
