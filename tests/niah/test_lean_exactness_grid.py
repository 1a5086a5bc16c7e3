"""A seeded random grid of lean prefills against transformers' eager forward, on the CPU, in fp32.

Each case is drawn once from `random.Random(SEED)` (the same grid on every run): an architecture that
transformers has with sliding, chunked or full layers; a window (sliding_window or Llama 4's
attention_chunk_size) of 3 to 24 tokens; a prompt length around and across it (1, window - 1, window,
window + 1, several windows); a prefill chunk grid (chunks of 1 token, window ± 1, sizes that straddle the
window, larger than the prompt, one shot) with up to three extra cuts for an uneven grid. Per case:

- every position's logits of the lean chunked prefill (`niah_lean` attention, the preallocated cache, the
  chunk grid of `niah_run.prefill`) against one eager forward over the same ids;
- a prefill that snapshots the cache at a drawn position (`prefill(snapshot_at=…)`), a restore to it and a
  different suffix prefilled from there: equal to the eager forward over that whole new prompt, and to a
  fresh lean prefill of it;
- greedy decoding after the prefill (`HFBackend`, preallocated KV): tokens identical to eager `generate`.

Tolerance: |Δlogit| ≤ 1e-4 at every position (fp32; measured ≤ 2e-6), greedy tokens identical.

An architecture the lean path claims (the doctor's probe `lean_refusal` finds nothing to refuse) must be
exact in every case. One it cannot compute (attention sinks, softcapping, bidirectional attention) must
raise `LeanUnsupported` with a reason, in the probe and in the real forward, never another exception and
never an answer. A window that only the config names (PhiMoE passes none to its attention call) is exact
before it and refused past it, where the doctor's probe (`lean_probe`) says the refusals begin.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from doctor.runtime import attention as lean
from doctor.runtime import cache as lean_cache
from doctor.runtime.paths import lean_probe, lean_refusal
from niah_run import prefill as pf
from niah_run.backends.hf import HFBackend

SEED = 20_260_417
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


# ---------------------------------------------------------------- the grid: architectures


def _mixed(variant: int) -> list[str]:
    """Sliding and full layers, both present, in an order the variant picks."""
    orders = [("s", "s", "f"), ("f", "s", "s"), ("s", "f", "s"), ("s", "f", "f")]
    return ["sliding_attention" if k == "s" else "full_attention" for k in orders[variant % len(orders)]]


def _nope_layers(variant: int) -> list[int]:
    """Llama 4's / SmolLM3's no_rope_layers (1 = RoPE): at least one NoPE layer."""
    return [[1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 0, 0]][variant % 4]


Builder = Callable[[int, int], Any]  # (window, variant) -> config

EXACT: dict[str, Builder] = {
    "llama": lambda w, v: _config("llama"),
    "llama-one-kv-head": lambda w, v: _config("llama", num_key_value_heads=1),
    "mistral": lambda w, v: _config("mistral", sliding_window=w),
    "mistral-no-grouping": lambda w, v: _config("mistral", sliding_window=w, num_key_value_heads=4),
    "qwen2-max-window-layers": lambda w, v: _config(
        "qwen2", sliding_window=w, use_sliding_window=True, max_window_layers=v % LAYERS
    ),
    "qwen2-layer-types": lambda w, v: _config(
        "qwen2", sliding_window=w, use_sliding_window=True, layer_types=_mixed(v)
    ),
    "qwen3": lambda w, v: _config("qwen3", sliding_window=w, use_sliding_window=True, max_window_layers=1),
    "gemma3": lambda w, v: _config(
        "gemma3_text",
        sliding_window=w,
        layer_types=_mixed(v),
        query_pre_attn_scalar=(8, 16)[v % 2],
        # local layers on another RoPE base than global ones, as in the real model
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
    ),
    "gemma2-no-softcap": lambda w, v: _config(
        "gemma2",
        sliding_window=w,
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        query_pre_attn_scalar=8,
    ),
    "cohere2": lambda w, v: _config("cohere2", sliding_window=w, layer_types=_mixed(v)),
    "llama4-chunked-nope": lambda w, v: _config(
        "llama4_text",
        intermediate_size_mlp=48,
        num_local_experts=2,
        num_experts_per_tok=1,
        attention_chunk_size=w,
        no_rope_layers=_nope_layers(v),
        floor_scale=4,  # NoPE layers' temperature tuning then varies with the absolute position
    ),
    "phi3": lambda w, v: _config("phi3", sliding_window=w),
    "starcoder2": lambda w, v: _config("starcoder2", sliding_window=w),
    "ministral": lambda w, v: _config("ministral", sliding_window=w, layer_types=_mixed(v)),
    "olmo3": lambda w, v: _config("olmo3", sliding_window=w, layer_types=_mixed(v)),
    "exaone4": lambda w, v: _config("exaone4", sliding_window=w, sliding_window_pattern=2 + v % 2),
    "smollm3": lambda w, v: _config(
        "smollm3", sliding_window=w, use_sliding_window=True, no_rope_layers=_nope_layers(v)
    ),
    "mixtral": lambda w, v: _config("mixtral", sliding_window=w, num_local_experts=2, num_experts_per_tok=1),
    # per-layer configs, and two layers reading the K/V of earlier ones (their cache layers hold nothing)
    "gemma4-kv-shared": lambda w, v: _config(
        "gemma4_text",
        num_hidden_layers=4,
        sliding_window=w,
        layer_types=["sliding_attention", "full_attention"] * 2,
        num_kv_shared_layers=2,
        global_head_dim=8,
        hidden_size_per_layer_input=0,
    ),
}
# shared-KV layers are not a layer kind doctor.runtime.cache restores exactly: never snapshotted
NOT_SNAPSHOTTED = {"gemma4-kv-shared"}

# what the lean attention cannot compute: (builder, words its reason contains)
REFUSED: dict[str, tuple[Builder, str]] = {
    "gpt-oss-sinks": (
        lambda w, v: _config("gpt_oss", sliding_window=w, num_local_experts=2, num_experts_per_tok=1),
        "s_aux",
    ),
    "gemma2-softcap": (lambda w, v: _config("gemma2", sliding_window=w, query_pre_attn_scalar=8), "softcap"),
    "gemma3-bidirectional": (
        lambda w, v: _config(
            "gemma3_text", sliding_window=w, layer_types=_mixed(v), use_bidirectional_attention=True
        ),
        "mask",
    ),
}

# a window that only the config sets: exact before it, refused past it
WINDOW_ONLY_IN_CONFIG: dict[str, Builder] = {
    "phimoe": lambda w, v: _config("phimoe", sliding_window=w, num_local_experts=2, num_experts_per_tok=1),
}


BUILDERS: dict[str, Builder] = {
    **EXACT,
    **{name: builder for name, (builder, _) in REFUSED.items()},
    **WINDOW_ONLY_IN_CONFIG,
}


@functools.cache
def model_for(arch: str, window: int, variant: int) -> Any:
    torch.manual_seed(window * 10 + variant)
    model = transformers.AutoModelForCausalLM.from_config(
        BUILDERS[arch](window, variant), attn_implementation="eager", dtype=torch.float32
    ).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():  # fused experts and sinks start at zero: give them weight
                parameter.normal_(0.0, 0.2)
    return model


# ---------------------------------------------------------------- the grid: cases


@dataclass(frozen=True)
class Case:
    arch: str
    window: int
    variant: int
    ids: tuple[int, ...]
    chunk: int | None
    cuts: tuple[int, ...]
    snapshot_at: int  # 0: the prompt is too short to share a prefix
    other_suffix: tuple[int, ...]
    new_tokens: int

    @property
    def id(self) -> str:
        cuts = f"-cuts{'.'.join(map(str, self.cuts))}" if self.cuts else ""
        chunk = "oneshot" if self.chunk is None else self.chunk
        return (
            f"{self.arch}-w{self.window}v{self.variant}-L{len(self.ids)}-c{chunk}{cuts}-s{self.snapshot_at}"
        )


def _length(kind: int, window: int, rng: random.Random) -> int:
    return [1, window - 1, window, window + 1, 2 * window + 1, 3 * window + rng.randint(1, window)][kind]


def _chunk(kind: int, window: int, length: int, rng: random.Random) -> int | None:
    # 1; the window and its neighbours; a size that straddles window boundaries; past the prompt; one shot
    return [1, window - 1, window, window + 1, window // 2 + 2, length + rng.randint(1, 5), None][kind]


LENGTH_KINDS, CHUNK_KINDS = 6, 7
COMBINATIONS = [(n, c) for n in range(LENGTH_KINDS) for c in range(CHUNK_KINDS)]


def _ids(rng: random.Random, n: int) -> tuple[int, ...]:
    return tuple(rng.randrange(EOS + 1, VOCAB) for _ in range(n))


def draw_cases(arch: str, first: int, count: int, rng: random.Random) -> list[Case]:
    """`count` cases of one architecture, taking the (length kind, chunk kind) combinations in turn from
    `first` on (so the architectures together meet every combination several times); windows, cuts,
    snapshot positions and suffixes drawn."""
    cases = []
    for i in range(first, first + count):
        length_kind, chunk_kind = COMBINATIONS[i * 5 % len(COMBINATIONS)]  # 5: neighbours differ in both
        window = rng.randint(3, 24)
        length = max(1, _length(length_kind, window, rng))
        chunk = _chunk(chunk_kind, window, length, rng)
        inner = range(1, length)
        cuts = tuple(sorted(rng.sample(inner, k=min(len(inner), rng.randint(0, 3)))))
        snapshot_at = rng.randint(1, length - 1) if length >= 2 else 0
        cases.append(
            Case(
                arch=arch,
                window=window,
                variant=rng.randrange(4),
                ids=_ids(rng, length),
                chunk=chunk,
                cuts=cuts,
                snapshot_at=snapshot_at,
                other_suffix=_ids(rng, rng.randint(1, length + 3)),
                new_tokens=rng.randint(1, 6),
            )
        )
    return cases


PER_ARCH = 12
_RNG = random.Random(SEED)
EXACT_CASES = [
    case for k, arch in enumerate(EXACT) for case in draw_cases(arch, k * PER_ARCH, PER_ARCH, _RNG)
]
REFUSED_CASES = [case for k, arch in enumerate(REFUSED) for case in draw_cases(arch, 5 * k, 2, _RNG)]
CONFIG_WINDOW_CASES = [case for arch in WINDOW_ONLY_IN_CONFIG for case in draw_cases(arch, 0, 8, _RNG)]


def _ids_of(cases: list[Case]) -> list[str]:
    return [case.id for case in cases]


def eager_generate(model: Any, ids: tuple[int, ...], new_tokens: int) -> list[int]:
    model.set_attn_implementation("eager")
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([list(ids)]), max_new_tokens=new_tokens, do_sample=False, pad_token_id=0
        )
    return out[0, len(ids) :].tolist()


def lean_generate(model: Any, case: Case) -> list[int]:
    lean.register()
    model.set_attn_implementation(lean.LEAN_ATTENTION)
    backend = HFBackend(model, None, prefill_chunk=case.chunk, preallocate_kv=True)
    return list(backend.generate(list(case.ids), max_new_tokens=case.new_tokens).output_ids)


# ---------------------------------------------------------------- claimed architectures: exact


@pytest.mark.parametrize("arch", sorted(EXACT))
def test_the_doctor_probe_claims_every_exact_architecture(arch: str) -> None:
    lean.register()
    model = model_for(arch, 5, 0)
    model.set_attn_implementation(lean.LEAN_ATTENTION)
    assert lean_refusal(model) is None


@pytest.mark.parametrize("case", EXACT_CASES, ids=_ids_of(EXACT_CASES))
def test_chunked_lean_prefill_equals_eager_one_shot(case: Case) -> None:
    model = model_for(case.arch, case.window, case.variant)
    ids = list(case.ids)
    expected = eager_logits(model, ids)
    got = lean_rows(model, ids, pf.new_cache(model, capacity=len(ids) + 8), 0, case.chunk, case.cuts)
    assert _max_error(got, expected) <= ATOL
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    _, done = _lean_prefill(model, ids, case.chunk)  # niah's own loop: last position's logits only
    assert _max_error(done.logits, expected[-1]) <= ATOL


@pytest.mark.parametrize(
    "case", [c for c in EXACT_CASES if c.snapshot_at], ids=_ids_of([c for c in EXACT_CASES if c.snapshot_at])
)
def test_snapshot_restore_then_another_suffix_equals_a_fresh_prefill(case: Case) -> None:
    model = model_for(case.arch, case.window, case.variant)
    first = list(case.ids)
    cache, done = _lean_prefill(model, first, case.chunk, snapshot_at=case.snapshot_at)
    if case.arch in NOT_SNAPSHOTTED:
        assert done.snapshot is None and not lean_cache.holds_prefix(cache, case.snapshot_at)
        return
    assert done.snapshot is not None and done.snapshot.length == case.snapshot_at
    second = first[: case.snapshot_at] + list(case.other_suffix)
    lean_cache.restore(cache, case.snapshot_at, done.snapshot)
    got = lean_rows(model, second, cache, case.snapshot_at, case.chunk)
    assert _max_error(got, eager_logits(model, second)[case.snapshot_at :]) <= ATOL
    _, fresh = _lean_prefill(model, second, case.chunk)
    assert _max_error(got[-1], fresh.logits) <= ATOL


@pytest.mark.parametrize("case", EXACT_CASES[::2], ids=_ids_of(EXACT_CASES[::2]))
def test_greedy_decode_after_the_lean_prefill_equals_eager_generate(case: Case) -> None:
    model = model_for(case.arch, case.window, case.variant)
    assert lean_generate(model, case) == eager_generate(model, case.ids, case.new_tokens)


SWEEP_ARCHS = ["mistral", "gemma3", "cohere2", "llama4-chunked-nope", "qwen2-layer-types", "phi3"]


@pytest.mark.parametrize("arch", SWEEP_ARCHS)
def test_depth_ordered_trials_reusing_their_prefix_equal_fresh_ones(arch: str) -> None:
    """As the sweep runs them: each prompt shares the haystack up to the previous needle, the backend
    snapshots where the next prompt will diverge and restores from it; every answer equals eager generate."""
    rng = random.Random(f"{SEED}-{arch}")
    window = rng.randint(3, 12)
    model = model_for(arch, window, rng.randrange(4))
    haystack = list(_ids(rng, rng.randint(3 * window, 5 * window)))
    depths = sorted(rng.sample(range(window + 1, len(haystack)), k=3))
    prompts = [haystack[:d] + [3, 4, 5] + haystack[d:] for d in depths]
    lean.register()
    model.set_attn_implementation(lean.LEAN_ATTENTION)
    backend = HFBackend(
        model, None, prefill_chunk=rng.choice([1, window - 1, window + 1, 7]), preallocate_kv=True
    )
    answers, reused = [], []
    for k, prompt in enumerate(prompts):
        shares = depths[k - 1] if k else 0
        diverges = depths[k] if k + 1 < len(prompts) else None
        got = backend.generate(prompt, max_new_tokens=4, reusable_prefix_len=shares, snapshot_at=diverges)
        answers.append(list(got.output_ids))
        reused.append(got.reused_prefix_tokens)
    assert reused == [0, *depths[:-1]]
    assert answers == [eager_generate(model, tuple(p), 4) for p in prompts]


# ---------------------------------------------------------------- what is refused


@pytest.mark.parametrize("case", REFUSED_CASES, ids=_ids_of(REFUSED_CASES))
def test_what_the_lean_path_cannot_compute_is_refused_with_a_reason(case: Case) -> None:
    _, reason = REFUSED[case.arch]
    lean.register()
    model = model_for(case.arch, case.window, case.variant)
    model.set_attn_implementation(lean.LEAN_ATTENTION)
    refused = lean_refusal(model)
    assert refused is not None and reason in refused
    with pytest.raises(lean.LeanUnsupported, match=reason):
        lean_rows(
            model, list(case.ids), pf.new_cache(model, capacity=len(case.ids)), 0, case.chunk, case.cuts
        )
    with pytest.raises(lean.LeanUnsupported, match=reason):
        lean_generate(model, case)


@pytest.mark.parametrize("case", CONFIG_WINDOW_CASES, ids=_ids_of(CONFIG_WINDOW_CASES))
def test_a_window_only_the_config_sets_is_exact_before_it_and_refused_past_it(case: Case) -> None:
    model = model_for(case.arch, case.window, case.variant)
    lean.register()
    model.set_attn_implementation(lean.LEAN_ATTENTION)
    assert lean_probe(model).limit == case.window  # the doctor's probe names where the run stops
    ids = list(case.ids)
    cache = pf.new_cache(model, capacity=len(ids))
    if len(ids) <= case.window:
        got = lean_rows(model, ids, cache, 0, case.chunk, case.cuts)
        assert _max_error(got, eager_logits(model, ids)) <= ATOL
    else:
        with pytest.raises(lean.LeanUnsupported, match="only the config sets"):
            lean_rows(model, ids, cache, 0, case.chunk, case.cuts)
