"""The transformers backend on tiny random-weight models built here (CPU, float32, seconds).

Proves: chunked prefill == one-shot prefill logits, our greedy loop == model.generate, KV prefix
reuse == no reuse (Llama; Llama 4 with chunked attention, where the backend must fall back when the
chunked layers' window has dropped tokens), and a simulated CUDA OOM → BackendOOM, then recovery.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from niah_run import prefill as pf
from niah_run.backends.base import BackendOOM
from niah_run.backends.hf import HFBackend, eos_ids_of

VOCAB = 300
EOS = 2
ATTENTION_CHUNK = 16  # Llama 4 chunked layers: prompts of 40+ tokens really cross chunk borders


def word_level_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": EOS, **{f"w{i}": i for i in range(3, VOCAB)}}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=EOS,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).float().eval()


def tiny_llama4(attention_chunk_size: int = ATTENTION_CHUNK):
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    torch.manual_seed(0)
    config = Llama4TextConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=64,
        intermediate_size_mlp=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=4,
        num_experts_per_tok=1,
        max_position_embeddings=1024,
        attention_chunk_size=attention_chunk_size,
        no_rope_layers=[1, 1, 1, 0],  # layers 0-2 RoPE + chunked, layer 3 NoPE + global (as Scout)
        floor_scale=4,  # so the NoPE temperature tuning varies with the absolute position here
        bos_token_id=1,
        eos_token_id=EOS,
        pad_token_id=0,
        attn_implementation="sdpa",
    )
    return Llama4ForCausalLM(config).float().eval()


def prompt(length: int, seed: int = 1) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (length,), generator=generator).tolist()


MODELS = {"llama": tiny_llama, "llama4": tiny_llama4}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    return MODELS[request.param]()


def one_shot_last_logits(model, ids: list[int]):
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


@pytest.mark.parametrize("chunk_size", [1, 5, 7, 16, 24, 37, 1000])
def test_chunked_prefill_logits_equal_one_shot(model, chunk_size: int) -> None:
    ids = prompt(61)  # 61 is prime: most chunk sizes leave a ragged last chunk
    sig = pf.inspect_forward(model)
    cache = pf.new_cache(model)
    chunked = pf.prefill(model, sig, torch.tensor([ids]), cache, start=0, chunk_size=chunk_size).logits
    assert pf.cache_length(cache) == len(ids)
    torch.testing.assert_close(chunked, one_shot_last_logits(model, ids), rtol=1e-4, atol=1e-4)


def test_prefill_keeps_only_last_logits(model) -> None:
    sig = pf.inspect_forward(model)
    assert sig.logits_kw in ("logits_to_keep", "num_logits_to_keep")
    seen = []
    original = model.forward

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(out.logits.shape[1])
        return out

    model.forward = spy
    try:
        pf.prefill(model, sig, torch.tensor([prompt(40)]), pf.new_cache(model), start=0, chunk_size=16)
    finally:
        del model.forward
    assert seen == [1, 1, 1]


def test_greedy_tokens_equal_model_generate(model) -> None:
    ids = prompt(45, seed=3)
    backend = HFBackend(model, word_level_tokenizer(), prefill_chunk=8)
    ours = backend.generate(ids, max_new_tokens=12)
    with torch.inference_mode():
        reference = model.generate(
            torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=EOS, pad_token_id=0
        )
    expected = reference[0, len(ids) :].tolist()
    assert list(ours.output_ids) == expected
    assert ours.stopped_at_eos == (expected[-1] == EOS)
    assert ours.prefill_seconds >= 0 and ours.decode_seconds >= 0


def test_stops_at_any_eos_id(model) -> None:
    ids = prompt(20, seed=4)
    backend = HFBackend(model, word_level_tokenizer(), prefill_chunk=None)
    free_run = backend.generate(ids, max_new_tokens=6).output_ids
    backend.eos_ids = (EOS, free_run[2])  # make the third greedy token an EOS
    stopped = backend.generate(ids, max_new_tokens=6)
    assert stopped.output_ids == free_run[:3] and stopped.stopped_at_eos


def depth_variants(prefix_len: int, total: int) -> list[list[int]]:
    """Prompts sharing a haystack prefix, each with a different tail (a needle at another depth)."""
    prefix = prompt(prefix_len, seed=10)
    return [prefix + prompt(total - prefix_len, seed=20 + k) for k in range(3)]


def run_all(backend: HFBackend, prompts: list[list[int]], reusable: int):
    return [backend.generate(p, max_new_tokens=8, reusable_prefix_len=reusable) for p in prompts]


def test_prefix_reuse_gives_same_tokens_llama() -> None:
    model = tiny_llama()
    prompts = depth_variants(prefix_len=50, total=70)
    baseline = run_all(HFBackend(model, None, prefill_chunk=16), prompts, reusable=0)
    reused = run_all(HFBackend(model, None, prefill_chunk=16), prompts, reusable=50)
    assert [g.output_ids for g in reused] == [g.output_ids for g in baseline]
    assert [g.reused_prefix_tokens for g in reused] == [0, 50, 50]  # really served from the cache


@pytest.mark.parametrize("attention_chunk_size, expect_reuse", [(ATTENTION_CHUNK, False), (256, True)])
def test_prefix_reuse_gives_same_tokens_llama4(attention_chunk_size: int, expect_reuse: bool) -> None:
    # With a 16-token attention chunk the chunked layers' cache keeps only its window, so without a
    # snapshot at the shared length the 50-token prefix cannot be restored exactly: the backend must
    # notice and prefill in full. With a 256-token chunk every layer still holds the whole prompt and
    # cropping is exact. (With a snapshot: tests/niah/test_lean_prefill.py.)
    model = tiny_llama4(attention_chunk_size)
    prompts = depth_variants(prefix_len=50, total=70)
    baseline = run_all(HFBackend(model, None, prefill_chunk=16), prompts, reusable=0)
    reused = run_all(HFBackend(model, None, prefill_chunk=16), prompts, reusable=50)
    assert [g.output_ids for g in reused] == [g.output_ids for g in baseline]
    assert [g.reused_prefix_tokens for g in reused] == ([0, 50, 50] if expect_reuse else [0, 0, 0])


def test_prefix_reuse_checks_the_tokens_itself() -> None:
    model = tiny_llama()
    backend = HFBackend(model, None, prefill_chunk=16)
    first, other = prompt(40, seed=30), prompt(40, seed=31)
    backend.generate(first, max_new_tokens=4)
    wrong_hint = backend.generate(other, max_new_tokens=4, reusable_prefix_len=30)
    fresh = HFBackend(model, None, prefill_chunk=16).generate(other, max_new_tokens=4)
    assert wrong_hint.reused_prefix_tokens == 0
    assert wrong_hint.output_ids == fresh.output_ids


def test_can_crop_detects_dropped_window_tokens() -> None:
    model = tiny_llama4(ATTENTION_CHUNK)
    sig = pf.inspect_forward(model)
    short, long = pf.new_cache(model), pf.new_cache(model)
    pf.prefill(model, sig, torch.tensor([prompt(10)]), short, start=0, chunk_size=None)
    pf.prefill(model, sig, torch.tensor([prompt(40)]), long, start=0, chunk_size=None)
    assert pf.can_crop_to(short, 5)
    assert not pf.can_crop_to(long, 5)
    assert not pf.can_crop_to(short, 0) and not pf.can_crop_to(short, 11)


def test_simulated_oom_raises_backend_oom_then_recovers(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_llama()
    backend = HFBackend(model, None, prefill_chunk=8)
    ids = prompt(40, seed=5)
    expected = backend.generate(ids, max_new_tokens=6).output_ids

    calls = {"n": 0}
    original = model.forward

    def failing_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # in the middle of the chunked prefill
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", failing_forward)
    with pytest.raises(BackendOOM) as caught:
        backend.generate(ids, max_new_tokens=6, reusable_prefix_len=30)
    assert "out of memory" in str(caught.value)
    assert isinstance(caught.value.memory, dict)
    assert backend._cache is None  # the half-filled cache was dropped

    again = backend.generate(ids, max_new_tokens=6, reusable_prefix_len=30)
    assert again.output_ids == expected
    assert again.reused_prefix_tokens == 0  # nothing stale was reused after the failure


def test_runtime_error_out_of_memory_is_also_oom(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_llama()
    backend = HFBackend(model, None)

    def failing_forward(*args, **kwargs):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(model, "forward", failing_forward)
    with pytest.raises(BackendOOM):
        backend.generate(prompt(10), max_new_tokens=2)


def test_other_errors_are_not_disguised_as_oom(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_llama()
    backend = HFBackend(model, None)
    monkeypatch.setattr(model, "forward", lambda *a, **k: (_ for _ in ()).throw(ValueError("boom")))
    with pytest.raises(ValueError, match="boom"):
        backend.generate(prompt(10), max_new_tokens=2)


def test_eos_ids_accept_int_or_list() -> None:
    model = tiny_llama()
    assert eos_ids_of(model, None) == (EOS,)
    model.generation_config.eos_token_id = [EOS, 7, EOS]
    assert eos_ids_of(model, None) == (EOS, 7)


def test_describe_reports_the_run_facts() -> None:
    backend = HFBackend(
        tiny_llama(), word_level_tokenizer(), prefill_chunk=8, facts={"model": "tiny", "source": "test"}
    )
    facts = backend.describe()
    assert facts["model"] == "tiny" and facts["model_class"] == "LlamaForCausalLM"
    assert facts["dtype"] == "float32" and facts["attn_implementation"] == "sdpa"
    assert facts["versions"]["torch"] and facts["memory_footprint_bytes"] > 0
    assert backend.tokenizer is not None
    backend.close()
    assert backend.model is None
