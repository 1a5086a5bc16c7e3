"""What the plan must see before a run: refusals of the lean path that depend on the position, models
whose chunked prefill is not exact, and the probe's forward spelled as the installed transformers wants."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from doctor.runtime import attention as lean
from doctor.runtime.forward import inspect_forward
from doctor.runtime.paths import lean_refusal

VOCAB = 64


def _tiny(model_type: str, **overrides: Any) -> Any:
    base = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "max_position_embeddings": 512,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(model_type, **{**base, **overrides})
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():  # fused experts start at zero: give them weight
                parameter.normal_(0.0, 0.2)
    return model


# ---------------------------------------------------------------- the probe's forward


def test_the_probe_passes_the_cache_under_the_name_the_forward_takes() -> None:
    # transformers 5.25 renamed past_key_values to cache and warns that the old name goes in 5.40
    lean.register()
    model = _tiny("llama")
    model.set_attn_implementation(lean.LEAN_ATTENTION)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert lean_refusal(model) is None
    assert not [w for w in caught if "past_key_values" in str(w.message)]


def test_the_cache_keyword_is_the_one_the_signature_names() -> None:
    class Before525:  # transformers 5.17's spelling
        def forward(
            self, input_ids: Any = None, past_key_values: Any = None, logits_to_keep: int = 0
        ) -> None:
            pass

    class Since525:
        def forward(self, input_ids: Any = None, cache: Any = None, logits_to_keep: int = 0) -> None:
            pass

    assert inspect_forward(Before525()).cache_kw == "past_key_values"
    assert inspect_forward(Since525()).cache_kw == "cache"


# ---------------------------------------------------------------- refusals that depend on the position


def _lean_forward(model: Any, ids: list[int], cache: Any, start: int) -> Any:
    from niah_run import prefill as pf

    lean.register()
    model.set_attn_implementation(lean.LEAN_ATTENTION)
    sig = pf.inspect_forward(model)
    with torch.inference_mode(), lean.query_start(start, len(ids)):
        return model(
            input_ids=torch.tensor([ids]),
            position_ids=torch.arange(start, start + len(ids)).unsqueeze(0),
            **{sig.cache_kw: cache},
        )


def test_the_probe_finds_the_position_where_a_window_only_the_config_sets_is_refused() -> None:
    # PhiMoE: sliding_window in the config, no layer_types, none passed to its attention call. The doctor's
    # 4-token probe never reaches the window; the plan must still know where the run will stop
    from doctor.runtime.paths import lean_probe
    from niah_run import prefill as pf

    window = 6
    model = _tiny("phimoe", sliding_window=window, num_local_experts=2, num_experts_per_tok=1)
    lean.register()
    model.set_attn_implementation(lean.LEAN_ATTENTION)
    probe = lean_probe(model)
    assert probe.refused is None and probe.limit == window
    assert probe.limit_why is not None and "only the config sets" in probe.limit_why
    cache = pf.new_cache(model, capacity=window + 1)
    _lean_forward(model, list(range(3, 3 + window)), cache, 0)  # every position before the limit: computed
    with pytest.raises(lean.LeanUnsupported, match="only the config sets"):
        _lean_forward(model, [7], cache, window)  # the position the probe named: refused


class _FullLayer:
    """A layer whose rule is full attention (no layer types, no window anywhere)."""

    config, layer_idx, is_causal = type("Config", (), {})(), 0, True


def test_a_cache_that_drops_keys_a_full_layer_needs_is_refused_where_the_probe_says() -> None:
    # a windowed cache layer (5 keys kept before a new token) under a full-attention rule: the probe's limit
    # is the first position whose forward the attention itself refuses
    kept = 5
    rule = lean.visibility_rule(_FullLayer(), None)
    limit = lean.first_refused_position(rule, kept)
    assert limit == kept + 1
    query = torch.randn(1, 4, 1, 8)
    for position, refused in ((limit - 1, False), (limit, True)):
        keys = torch.randn(1, 2, min(position, kept) + 1, 8)  # what the windowed layer hands over
        with lean.query_start(position, 1):
            if refused:
                with pytest.raises(lean.LeanUnsupported, match="no longer holds key 0"):
                    lean.lean_attention_forward(_FullLayer(), query, keys, keys, None)
            else:
                lean.lean_attention_forward(_FullLayer(), query, keys, keys, None)


@pytest.mark.parametrize(
    "rule, kept, limit",
    [
        (lean.VisibilityRule("sliding", 8), 7, None),  # transformers' own sliding cache: never short
        (lean.VisibilityRule("sliding", 8), 4, 5),  # a cache smaller than the window
        (lean.VisibilityRule("chunked", 8), 7, None),  # transformers' chunked layers keep chunk - 1
        (lean.VisibilityRule("chunked", 8), 3, 4),
        (lean.VisibilityRule("full", undeclared_window=10), None, 10),
        (lean.VisibilityRule("full", undeclared_window=10), 3, 4),  # whichever comes first
        (lean.VisibilityRule("full"), None, None),
    ],
)
def test_the_first_refused_position_is_where_the_attention_first_refuses(
    rule: Any, kept: int | None, limit: int | None
) -> None:
    assert lean.first_refused_position(rule, kept) == limit

    def refused(position: int) -> bool:
        offset = 0 if kept is None else position - min(position, kept)
        return lean.position_refusal(rule, position, 1, offset) is not None

    # the decision function itself, asked at every position of a span: nothing refused before the limit
    assert [p for p in range(64) if refused(p)][:1] == ([] if limit is None else [limit])


@pytest.fixture(scope="module")
def phimoe_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("phimoe")
    transformers.AutoConfig.for_model(
        "phimoe",
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=4096,
        sliding_window=64,
        num_local_experts=2,
        num_experts_per_tok=1,
    ).save_pretrained(folder)
    return str(folder)


def _judged(folder: str, attn: str, length: int) -> tuple[Any, Any]:
    from doctor.api import judge
    from run_plan.spec import RunSpec

    judged = judge(
        RunSpec(model=folder, gpus="1xH100-80GB", attn=attn, lengths=(length,), max_new_tokens=8),
        only=("attn-implementation",),
    )
    (check,) = [c for c in judged.report.checks if c.id == "attn-implementation"]
    return judged.plan, check


def test_auto_keeps_transformers_path_for_a_model_the_lean_path_refuses_past_a_position(
    phimoe_folder: str,
) -> None:
    plan, check = _judged(phimoe_folder, "auto", 256)
    assert plan.spec.attn == "sdpa"
    (why,) = [d.why for d in plan.decisions if d.name == "attn"]
    assert "from position 64 on" in why and "only the config sets" in why
    assert check.status.name == "PASS"


def test_an_explicit_lean_attention_past_its_position_limit_fails_with_the_fix(phimoe_folder: str) -> None:
    plan, check = _judged(phimoe_folder, "niah_lean", 256)
    assert plan.spec.attn == "niah_lean"
    assert check.status.name == "FAIL"
    assert "from position 64 on" in check.summary and "only the config sets" in check.summary
    assert check.fix is not None and any("--attn sdpa" in command for command in check.fix.commands)
    # below the limit (56 + 8 answer tokens: positions 0..62) it runs; the estimate is transformers' path's
    _, below = _judged(phimoe_folder, "niah_lean", 56)
    assert below.status.name == "WARN" and "only before position 64" in below.summary


# ---------------------------------------------------------------- a chunked prefill and the model's state

ATOL = 1e-4

# models whose state between forwards a forward of several tokens drops: (config overrides, the state)
STATE_DROPPED: dict[str, tuple[dict[str, Any], str]] = {
    # the convolution window, kept in the module (RecurrentGemmaRecurrentBlock.conv1d_state) and recomputed
    # from the forward's own tokens
    "recurrent_gemma": (
        {
            "num_hidden_layers": 3,
            "lru_width": 32,
            "block_types": ["recurrent", "recurrent", "attention"],
            "attention_window_size": 16,
        },
        "conv1d_state",
    ),
    # Mamba-1's selective scan over several tokens takes no initial state: the cache's is replaced
    "mamba": ({"state_size": 4, "expand": 2, "conv_kernel": 4, "time_step_rank": 4}, "recurrent_states"),
    "jamba": (
        {
            "num_experts": 2,
            "num_experts_per_tok": 1,
            "attn_layer_period": 2,
            "attn_layer_offset": 1,
            "expert_layer_period": 2,
            "expert_layer_offset": 1,
            "mamba_d_state": 4,
            "mamba_dt_rank": 4,
            "mamba_d_conv": 4,
        },
        "recurrent_states",
    ),
}
# recurrent and hybrid models whose cache carries every state across chunks
STATE_CARRIED: dict[str, dict[str, Any]] = {
    "mamba2": {
        "state_size": 4,
        "expand": 2,
        "conv_kernel": 4,
        "n_groups": 1,
        "num_heads": 8,
        "chunk_size": 4,
    },
    "bamba": {
        "mamba_n_heads": 8,
        "mamba_d_head": 8,
        "mamba_d_state": 4,
        "mamba_n_groups": 1,
        "mamba_chunk_size": 4,
        "attn_layer_indices": [1],
    },
    "qwen3_next": {
        "linear_num_value_heads": 2,
        "linear_num_key_heads": 2,
        "linear_key_head_dim": 8,
        "linear_value_head_dim": 8,
        "num_experts": 2,
        "num_experts_per_tok": 1,
        "moe_intermediate_size": 16,
        "shared_expert_intermediate_size": 16,
        "layer_types": ["linear_attention", "full_attention"],
    },
    "lfm2": {"layer_types": ["conv", "full_attention"], "conv_L_cache": 3},
}
PROMPT = [5, 9, 13, 7, 22, 31, 8, 11, 40]


def _eager_one_shot(model: Any, ids: list[int]) -> Any:
    """Every position's logits of one forward over `ids`, with no cache passed (the model sets up its
    own state from nothing)."""
    model.set_attn_implementation("eager")
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def _niah_prefill(model: Any, ids: list[int], chunk: int | None) -> Any:
    from niah_run import prefill as pf

    model.set_attn_implementation("eager")
    cache = pf.new_cache(model)
    return pf.prefill(model, pf.inspect_forward(model), torch.tensor([ids]), cache, start=0, chunk_size=chunk)


@pytest.fixture(scope="module")
def dropping() -> dict[str, Any]:
    return {name: _tiny(name, **overrides) for name, (overrides, _) in STATE_DROPPED.items()}


@pytest.mark.parametrize("name", sorted(STATE_DROPPED))
def test_the_probe_names_the_state_a_chunk_of_several_tokens_drops(name: str, dropping: dict) -> None:
    from doctor.runtime.state import uncarried_state

    model = dropping[name]
    why = uncarried_state(model)
    assert why is not None and STATE_DROPPED[name][1] in why
    # the claim is real: niah's chunked prefill of such a model is not the one-shot forward
    expected = _eager_one_shot(model, PROMPT)[-1]
    got = _niah_prefill(model, PROMPT, 4).logits
    assert float((got - expected).abs().max()) > ATOL


@pytest.mark.parametrize("name", sorted(STATE_DROPPED))
def test_niah_prefills_such_a_model_in_one_forward_and_equals_eager(name: str, dropping: dict) -> None:
    from niah_run.backends.hf import HFBackend

    model = dropping[name]
    backend = HFBackend(model, None)
    assert "one forward per prompt" in backend.describe()["prefill"]
    first = [4, *PROMPT[:5]]
    backend.generate(first, max_new_tokens=3)  # leaves its state in the model (RecurrentGemma's modules)
    # the sweep's hints: the prompt shares 3 tokens with the last one and the next diverges at 5
    got = backend.generate(PROMPT, max_new_tokens=4, reusable_prefix_len=3, snapshot_at=5)
    assert got.reused_prefix_tokens == 0
    # each generated token is the argmax of one eager forward over the prompt and the tokens before it
    tokens = list(got.output_ids)
    reference = _eager_one_shot(model, PROMPT + tokens[:-1])
    assert reference[len(PROMPT) - 1 :].argmax(-1).tolist() == tokens
    expected = _eager_one_shot(model, PROMPT)[-1]
    assert float((_niah_prefill(model, PROMPT, None).logits - expected).abs().max()) <= ATOL


def test_a_chunk_shorter_than_the_prompt_is_refused_not_run_inexactly(dropping: dict) -> None:
    from niah_run.backends.hf import HFBackend
    from run_plan.errors import UsageError

    backend = HFBackend(dropping["mamba"], None, prefill_chunk=4)
    with pytest.raises(UsageError, match="not exact"):
        backend.generate(PROMPT, max_new_tokens=2)
    assert backend.generate(PROMPT[:4], max_new_tokens=2).output_ids  # a prompt within one chunk runs


@pytest.mark.parametrize("name", sorted(STATE_CARRIED))
@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_a_model_whose_cache_carries_its_state_is_chunked_exactly(name: str, chunk: int) -> None:
    from doctor.runtime.state import uncarried_state

    model = _tiny(name, **STATE_CARRIED[name])
    assert uncarried_state(model) is None
    expected = _eager_one_shot(model, PROMPT)[-1]
    assert float((_niah_prefill(model, PROMPT, chunk).logits - expected).abs().max()) <= ATOL


def test_the_plan_prefills_such_a_model_in_one_forward_and_fails_a_shorter_chunk(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from doctor.api import judge
    from run_plan.spec import RunSpec

    folder = tmp_path_factory.mktemp("recurrent_gemma")
    config = transformers.AutoConfig.for_model(
        "recurrent_gemma",
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=4096,
        **STATE_DROPPED["recurrent_gemma"][0],
    )
    config.save_pretrained(folder)
    only = ("prefill-exact",)
    auto = judge(RunSpec(model=str(folder), gpus="1xH100-80GB", lengths=(256, 1024)), only=only)
    assert auto.plan.spec.prefill_chunk == 1024  # the longest prompt: every one in one forward
    (why,) = [d.why for d in auto.plan.decisions if d.name == "prefill_chunk"]
    assert "one forward per prompt" in why and "conv1d_state" in why
    assert [c.status.name for c in auto.report.checks] == ["PASS"]
    given = judge(
        RunSpec(model=str(folder), gpus="1xH100-80GB", lengths=(1024,), prefill_chunk=64), only=only
    )
    (check,) = given.report.checks
    assert check.status.name == "FAIL" and "not exact" in check.summary and "conv1d_state" in check.summary
    assert check.fix is not None and not any("--prefill-chunk" in c for c in check.fix.commands)


def test_the_cache_length_is_the_most_any_layer_counts(dropping: dict) -> None:
    # RecurrentGemma keeps its recurrent state in its modules: its first cache layers count no tokens (under
    # transformers 5.25 the cache's own get_seq_length reads layer 0 and said 0, and niah's decode stopped)
    from niah_run import prefill as pf

    model = dropping["recurrent_gemma"]
    cache = pf.new_cache(model)
    pf.prefill(model, pf.inspect_forward(model), torch.tensor([PROMPT]), cache, start=0, chunk_size=None)
    assert pf.cache_length(cache) == len(PROMPT)
