"""The lean prefill path's exactness regressions against transformers' eager forward, on the CPU, in fp32:
each the smallest case of a defect, |Δlogit| ≤ 1e-4, or the refusal (`LeanUnsupported`) the case needs."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from doctor.runtime import attention as lean
from niah_run import prefill as pf

ATOL = 1e-4
VOCAB = 64
EOS = 2
LAYERS = 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # models this small spend more time handing work to a second thread than computing it
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(model_type: str, **overrides: Any) -> Any:
    base = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "max_position_embeddings": 512,
        "bos_token_id": 1,
        "eos_token_id": EOS,
        "pad_token_id": 0,
    }
    return transformers.AutoConfig.for_model(model_type, **{**base, **overrides})


# ---------------------------------------------------------------- the two paths


def eager_logits(model: Any, ids: tuple[int, ...] | list[int]) -> Any:
    model.set_attn_implementation("eager")
    with torch.inference_mode():
        return model(input_ids=torch.tensor([list(ids)])).logits[0].float()


def lean_rows(model: Any, ids: list[int], cache: Any, start: int, chunk: int | None, cuts=()) -> Any:
    """Every position's logits of ids[start:], prefilled on the lean path into `cache` (holding `start`
    tokens) on niah's chunk grid, each forward inside `query_start` as `niah_run.prefill` runs it."""
    lean.register()
    model.set_attn_implementation(lean.LEAN_ATTENTION)
    sig = pf.inspect_forward(model)
    rows = []
    with torch.inference_mode():
        for a, b in pf.chunk_bounds(start, len(ids), chunk, cuts):
            with lean.query_start(a, b - a):
                out = model(
                    input_ids=torch.tensor([ids[a:b]]),
                    position_ids=torch.arange(a, b).unsqueeze(0),
                    **{sig.cache_kw: cache},
                )
            rows.append(out.logits[0].float())
    return torch.cat(rows)


def _max_error(got: Any, expected: Any) -> float:
    assert got.shape == expected.shape
    return float((got - expected).abs().max())


def _lean_prefill(model: Any, ids: list[int], chunk: int | None, snapshot_at: int | None = None) -> Any:
    lean.register()
    model.set_attn_implementation(lean.LEAN_ATTENTION)
    cache = pf.new_cache(model, capacity=len(ids) + 8)
    done = pf.prefill(
        model,
        pf.inspect_forward(model),
        torch.tensor([ids]),
        cache,
        start=0,
        chunk_size=chunk,
        snapshot_at=snapshot_at,
    )
    return cache, done


# ---------------------------------------------------------------- regressions, each the smallest case


def _smallest(model_type: str, **overrides: Any) -> Any:
    """One layer unless the case needs more."""
    torch.manual_seed(0)
    config = _config(model_type, **{"num_hidden_layers": 1, **overrides})
    return transformers.AutoModelForCausalLM.from_config(
        config, attn_implementation="eager", dtype=torch.float32
    ).eval()


def test_bidirectional_attention_is_refused_never_computed_as_causal() -> None:
    # Gemma 3 with use_bidirectional_attention (EmbeddingGemma's setting): the module's is_causal is False
    # and the model adds its own mask function; the lean path had computed causal attention over 2 tokens
    model = _smallest("gemma3_text", layer_types=["full_attention"], use_bidirectional_attention=True)
    with pytest.raises(lean.LeanUnsupported, match="mask pattern"):
        lean_rows(model, [5, 6], pf.new_cache(model, capacity=2), 0, None)

    class Bidirectional:
        config, layer_idx, is_causal = _config("llama"), 0, False

    q, k = torch.randn(1, 4, 2, 8), torch.randn(1, 2, 2, 8)
    with pytest.raises(lean.LeanUnsupported, match="bidirectional"):
        lean.lean_attention_forward(Bidirectional(), q, k, k, None)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunk", [1, 2, None])
def test_a_window_of_one_token_is_exact_and_the_prefill_ends(chunk: int | None) -> None:
    # sliding_window=1 (each token sees only itself): the row segmentation had advanced by window - 1 = 0
    model = _smallest("mistral", sliding_window=1)
    ids = [5, 6, 7]
    got = lean_rows(model, ids, pf.new_cache(model, capacity=3), 0, chunk)
    assert _max_error(got, eager_logits(model, ids)) <= ATOL


def test_queries_of_only_the_chunks_last_token_are_placed_at_its_end() -> None:
    # Gemma 4's KV-shared layers, under logits_to_keep=1 (every prefill forward of niah's), get the query of
    # the chunk's last token only, with the chunk's keys: the lean path had placed it at the chunk's start
    # (seeing one key, not two)
    model = _smallest(
        "gemma4_text",
        num_hidden_layers=2,
        layer_types=["full_attention"] * 2,
        num_kv_shared_layers=1,
        global_head_dim=8,
        hidden_size_per_layer_input=0,
    )
    ids = [5, 6]
    _, done = _lean_prefill(model, ids, None)  # niah's prefill: logits_to_keep=1
    assert _max_error(done.logits, eager_logits(model, ids)[-1]) <= ATOL


def test_a_window_only_the_config_sets_is_never_taken_for_full_attention() -> None:
    # PhiMoE: config.sliding_window drives its mask and transformers' cache, but its attention call passes no
    # sliding_window and it declares no layer_types; the lean path had attended to all 4 keys, not the last 3
    model = _smallest("phimoe", sliding_window=3, num_local_experts=2, num_experts_per_tok=1)
    ids = [5, 6, 7, 8]
    within = lean_rows(model, ids[:3], pf.new_cache(model, capacity=3), 0, None)
    assert _max_error(within, eager_logits(model, ids[:3])) <= ATOL
    with pytest.raises(lean.LeanUnsupported, match="only the config sets"):
        lean_rows(model, ids, pf.new_cache(model, capacity=4), 0, None)
