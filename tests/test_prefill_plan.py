"""How the plan chooses and times the prefill path: attn=auto, experts=auto, the time model, the sweep's use
of both (snapshot hints, predicted seconds per row, the time-vs-plan flags), and resume compatibility."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from doctor.memory.gpus import GpuSpec, parse_gpus
from doctor.plan import _paths_from_sizing, settle_static_choices
from niah_run.summary import time_vs_plan
from run_plan.errors import UsageError
from run_plan.resolved import Decision, LengthPlan, ResolvedPlan
from run_plan.spec import RunSpec, identity_diff
from run_plan.timing import AttentionLayers, PrefillTimeModel, _prefix_sum_visible
from run_plan.units import duration

H100 = parse_gpus("1xH100-80GB")


@pytest.mark.parametrize(
    "gpus, attn, why",
    [
        (H100, "niah_lean", "flash kernel"),
        (parse_gpus("1xL4"), "niah_lean", "flash kernel"),
        ([], "sdpa", "no GPU planned"),
        (parse_gpus("1xV100-32GB"), "sdpa", "sm_70 is older"),
        (parse_gpus("1x80GiB"), "sdpa", "not known"),
    ],
)
def test_auto_attention_follows_the_planned_gpus(gpus: list[GpuSpec], attn: str, why: str) -> None:
    spec, decisions = settle_static_choices(RunSpec(model="m"), gpus)
    assert spec.attn == attn
    assert decisions[0].name == "attn" and why in decisions[0].why


def test_auto_keeps_sdpa_where_the_device_map_puts_the_model_off_the_gpus() -> None:
    spec, decisions = settle_static_choices(RunSpec(model="m", device_map="cpu"), H100)
    assert spec.attn == "sdpa" and "--device-map cpu" in decisions[0].why
    assert settle_static_choices(RunSpec(model="m", device_map="cuda:0"), H100)[0].attn == "niah_lean"


def test_a_server_backend_keeps_sdpa_and_explicit_choices_stay() -> None:
    served = RunSpec(model="m", backend="openai", base_url="http://127.0.0.1:8000")
    assert settle_static_choices(served, H100)[0].attn == "sdpa"
    assert settle_static_choices(RunSpec(model="m", attn="eager"), H100) == (
        RunSpec(model="m", attn="eager"),
        (),
    )


def test_a_refusal_found_by_the_sizing_child_keeps_transformers_path() -> None:
    sizing = {"trace": {"attn_refused": {"niah_lean": "softcap (the flash kernel has no such term)"}}}
    auto, decisions = settle_static_choices(RunSpec(model="m"), H100)
    spec, out = _paths_from_sizing(auto, list(decisions), sizing)
    assert spec.attn == "sdpa"
    assert any(d.name == "attn" and "softcap" in d.why for d in out)
    explicit = RunSpec(model="m", attn="niah_lean")
    spec, _ = _paths_from_sizing(explicit, [], sizing)
    assert spec.attn == "niah_lean"  # the user asked for it: the attn-implementation check says why not


@pytest.mark.parametrize(
    "path, expected", [("routed: niah's Llama 4 forward", "routed"), ("dense", "transformers")]
)
def test_experts_auto_becomes_what_the_sizing_child_put_on_the_model(path: str, expected: str) -> None:
    spec, decisions = _paths_from_sizing(RunSpec(model="m"), [], {"experts_path": {"experts": path}})
    assert spec.experts == expected and decisions[-1].name == "experts"


# ---------------------------------------------------------------- the time model


@pytest.mark.parametrize("kind, window", [("full", 0), ("window", 16), ("chunked", 16)])
def test_visible_pairs_closed_form_equals_counting(kind: str, window: int) -> None:
    def visible(i: int) -> int:
        if kind == "window":
            return min(i + 1, window)
        if kind == "chunked":
            return i % window + 1
        return i + 1

    for n in (0, 1, 15, 16, 17, 100):
        assert _prefix_sum_visible(kind, window, n) == sum(visible(i) for i in range(n))


def _model(path: str = "lean") -> PrefillTimeModel:
    return PrefillTimeModel(
        path=path,
        linear_flops_per_token=1e9,
        attention_flops_per_pair=4 * 32 * 128,
        kv_heads=8,
        heads=32,
        head_dim=128,
        layers=(AttentionLayers("full", 0, 1), AttentionLayers("chunked", 8192, 3)),
        dequant_bytes_per_chunk=1e9,
        matmul_flops_per_s=7e14,
        attention_flops_per_s=4e14,
        copy_bytes_per_s=3e12,
        rates_source="measured on a test card",
    )


@pytest.mark.parametrize(
    "key, value",
    [
        ("matmul_flops_per_s", 0),
        ("attention_flops_per_s", -1.0),
        ("copy_bytes_per_s", "fast"),
        ("linear_flops_per_token", float("nan")),
        ("heads", True),
        ("path", "warp"),
        ("layers", [{"kind": "diagonal", "window": 0, "count": 1}]),
        ("layers", [{"kind": "full", "window": -4, "count": 1}]),
    ],
)
def test_a_time_model_that_no_doctor_writes_is_refused_when_read(key: str, value) -> None:
    """The rates divide: a plan file's zero, negative, NaN or text would be a ZeroDivisionError or a
    TypeError in the sweep's time plan (exit 3); read back, it is the plan's usage error (exit 2)."""
    data = _model().to_dict()
    assert PrefillTimeModel.from_dict(data) == _model()
    data[key] = value
    with pytest.raises(ValueError, match=key.split("_")[0]):
        PrefillTimeModel.from_dict(data)
    doc = ResolvedPlan(spec=RunSpec(model="m", lengths=(512,)), prefill_time=_model()).to_dict()
    doc["prefill_time"][key] = value
    with pytest.raises(UsageError, match="malformed"):
        ResolvedPlan.from_dict(doc)


def test_time_model_grows_quadratically_and_reuse_saves_the_prefix() -> None:
    model = _model()
    one, two = model.seconds(0, 1 << 20, 8192), model.seconds(0, 2 << 20, 8192)
    assert 3.0 < two / one < 4.0  # global-layer attention dominates
    assert model.seconds(1 << 20, 2 << 20, 8192) == pytest.approx(two - one, rel=0.01)
    # transformers' masked sdpa computes whole chunk × keys rectangles and first copies K/V to every head
    # and writes a mask: on the same kernel rate it still takes longer
    assert _model("masked").seconds(0, 1 << 20, 1024) > 1.1 * one
    assert PrefillTimeModel.from_dict(model.to_dict()) == model


def test_the_plan_carries_its_time_model_through_json() -> None:
    spec = RunSpec(model="m", lengths=(1024,), prefill_chunk=512)
    plan = ResolvedPlan(spec=spec, lengths=(LengthPlan(1024, True, (), None, 1.5),), prefill_time=_model())
    again = ResolvedPlan.from_dict(plan.to_dict())
    assert again == plan
    assert again.predicted_prefill_seconds(0, 1024) == _model().seconds(0, 1024, 512)
    assert ResolvedPlan(spec=spec).predicted_prefill_seconds(0, 1024) is None


def test_a_time_model_that_overflows_predicts_nothing_rather_than_infinity() -> None:
    """A rate of 1e-300 is a positive number and still nonsense: the prediction overflows to inf, which
    no row, ETA or time plan line may carry (JSON has no inf; a duration of inf was exit 3)."""
    from niah_run.trials import TrialSpec, predicted_sweep_seconds

    tiny = dataclasses.replace(_model(), matmul_flops_per_s=1e-300)
    plan = ResolvedPlan(spec=RunSpec(model="m", lengths=(4096,), prefill_chunk=1024), prefill_time=tiny)
    assert plan.predicted_prefill_seconds(0, 4096) is None
    trial = TrialSpec(length=4096, depth=50.0, trial=0, control=False)
    assert predicted_sweep_seconds(plan, [trial]) is None
    assert duration(float("inf")) == duration(float("nan")) == "unknown"


def test_durations_read_as_a_person_says_them() -> None:
    assert [duration(s) for s in (4.2, 42, 400, 7500)] == ["4.2 s", "42 s", "6 min 40 s", "2 h 05 min"]


def test_summary_flags_trials_beyond_a_quarter_off_the_time_plan() -> None:
    rows = [
        {
            "context_tokens": 1024,
            "depth_percent": 0.0,
            "status": "ok",
            "predicted_prefill_seconds": 10.0,
            "prefill_seconds": 11.0,
        },
        {
            "context_tokens": 1024,
            "depth_percent": 50.0,
            "status": "ok",
            "predicted_prefill_seconds": 10.0,
            "prefill_seconds": 14.0,
            "reused_prefix_tokens": 500,
        },
        {"context_tokens": 1024, "depth_percent": 100.0, "status": "oom", "predicted_prefill_seconds": 10.0},
    ]
    out = time_vs_plan(rows)
    assert [r["flagged"] for r in out] == [False, True]
    assert out[1]["reused_prefix_tokens"] == 500


# ---------------------------------------------------------------- resume compatibility


def test_a_saved_identity_without_experts_is_the_models_own_forward() -> None:
    before = {
        k: v for k, v in RunSpec(model="m", experts="transformers").identity().items() if k != "experts"
    }
    assert identity_diff(before, RunSpec(model="m", experts="transformers").identity()) == []
    assert identity_diff(before, RunSpec(model="m", experts="routed").identity()) == ["experts"]
    nested = identity_diff({"config": before}, {"config": RunSpec(model="m", attn="niah_lean").identity()})
    assert sorted(nested) == ["config.attn", "config.experts"]


# ---------------------------------------------------------------- the sweep


def test_sweep_tells_the_backend_where_the_next_prompt_diverges_and_records_the_time_plan(
    tmp_path: Path,
) -> None:
    from niah_run.sweep import RunFolder, Sweep
    from tests.niah.fakes import FakeBackend

    spec = RunSpec(model="demo", lengths=(512,), depths=(0.0, 50.0, 100.0), prefill_chunk=128)
    plan = ResolvedPlan(
        spec=spec,
        lengths=(LengthPlan(512, True),),
        decisions=(Decision("attn", "sdpa", "test"),),
        prefill_time=_model(),
    )
    backend = FakeBackend()
    sweep = Sweep(spec, RunFolder(tmp_path, quiet=True), plan=plan, backend_factory=lambda c: backend)
    sweep.run()
    from niah_run.results import read_rows

    rows = read_rows(tmp_path / "results.jsonl")
    # each call's snapshot point is exactly the reusable prefix of the call after it; the last has none
    assert [c["snapshot_at"] for c in backend.calls[:-1]] == [
        c["reusable"] or None for c in backend.calls[1:]
    ]
    assert backend.calls[-1]["snapshot_at"] is None
    assert all(r["predicted_prefill_seconds"] is not None for r in rows)
    reused = [r["reused_prefix_tokens"] for r in rows]
    assert rows[1]["predicted_prefill_seconds"] == pytest.approx(
        _model().seconds(reused[1], 512, 128), abs=1e-3
    )
    assert sweep.doc["predicted_sweep_seconds"] > 0


def test_predicted_sweep_time_counts_the_reuse_of_each_depths_prefix() -> None:
    from niah_run.trials import TrialSpec, predicted_sweep_seconds

    spec = RunSpec(model="m", lengths=(1 << 20,), prefill_chunk=8192)
    plan = ResolvedPlan(spec=spec, prefill_time=_model())
    depths = [TrialSpec(1 << 20, d, 0, False) for d in (0.0, 25.0, 50.0, 75.0, 100.0)]
    with_reuse = predicted_sweep_seconds(plan, depths)
    fresh = 5 * plan.predicted_prefill_seconds(0, 1 << 20)
    assert with_reuse is not None and fresh / 2 < with_reuse < fresh
    assert predicted_sweep_seconds(dataclasses.replace(plan, prefill_time=None), depths) is None


# ---------------------------------------------------------------- the estimate of the lean path


def _scout4_config(max_positions: int) -> dict:
    from transformers import Llama4TextConfig

    from benchmarks.niah_reach import SCOUT_TEXT

    shape = {**SCOUT_TEXT, "max_position_embeddings": max_positions}
    config = Llama4TextConfig(num_hidden_layers=4, no_rope_layers=[1, 1, 1, 0], **shape).to_dict()
    return {**config, "architectures": ["Llama4ForCausalLM"]}


def _lean_sizing(config: dict, **spec_values) -> tuple:
    from doctor.memory.estimate import settings_for, sizing_args
    from doctor.memory.skeleton import size_model

    target = RunSpec(model="m", attn="niah_lean", **spec_values)
    settings = settings_for(target, config, config.get("quantization_config"))
    return settings, size_model(sizing_args(settings, config, config.get("quantization_config")))


def test_the_lean_path_reaches_the_kv_limit_of_a_scout_shaped_model() -> None:
    """Scout-shaped, 4 layers (1 global), bnb-4bit, one H100 capped at 79 GiB: the KV (4 KiB a token) is what
    limits, not the prefill: the longest context is within 5 % of what the card holds after the weights."""
    from doctor.memory.estimate import compute_estimate

    settings, sizing = _lean_sizing(
        _scout4_config(1 << 24), quant="bnb-4bit", context=1 << 24, max_memory="0=79GiB"
    )
    assert sizing["trace"]["attn_implementation"] == "niah_lean" and sizing["trace"]["kv_preallocated"]
    # no allocation inside the global layer grows with the cached length: no torch.cat copy of its K/V, no
    # repeated K/V, no mask (the chunked layers' window caches still concatenate, bounded by the window)
    activations = sizing["trace"]["activations"]
    global_layer = f"layer:{activations['layer_signatures'][3]}"
    for regime in activations["regimes"]:
        assert all(event[2] == 0 and event[3] == 0 for event in regime["zones"][global_layer]), regime["kind"]
    estimate = compute_estimate(sizing, settings, H100)
    kv_room = (79 << 30) - estimate.weights_bytes - (2 << 30)
    assert estimate.max_context_tokens >= 0.95 * kv_room / 4096
    assert estimate.max_context_tokens >= 8 << 20


def test_a_pre_quantized_scout_on_one_h100_reaches_past_400k_tokens() -> None:
    from doctor.memory import embedded_config
    from doctor.memory.estimate import compute_estimate

    config = embedded_config("meta-llama/Llama-4-Scout-17B-16E-Instruct")
    settings, sizing = _lean_sizing(config, quant="bnb-4bit", prequantized=True, context=1 << 20)
    assert compute_estimate(sizing, settings, H100).max_context_tokens >= 400_000


def test_auto_never_picks_an_implementation_the_class_refuses() -> None:
    refusals = {"sdpa": "ValueError: GptOssForCausalLM does not support sdpa", "eager": None}
    spec, decisions = settle_static_choices(RunSpec(model="m"), [], refusals)
    assert spec.attn == "eager" and "refuses sdpa" in decisions[0].why
    # the lean attention refused too (attention sinks): the plan keeps what the sizing child traced instead
    sizing = {"trace": {"attn_implementation": "eager", "attn_refused": {"niah_lean": "s_aux"}}}
    auto, decisions = settle_static_choices(RunSpec(model="m"), H100, refusals)
    planned, out = _paths_from_sizing(auto, list(decisions), sizing)
    assert planned.attn == "eager" and any("s_aux" in d.why for d in out if d.name == "attn")


def test_the_prefill_eta_follows_the_time_plan_not_tokens_per_second() -> None:
    from niah_run.progress import SweepProgress, _prefill_eta

    plan = _model().seconds
    # half the tokens in 10 s: the rest costs more (its attention spans more keys), so the ETA is > 10 s
    eta = _prefill_eta(lambda a, b: plan(a, b, 8192), 0, 1 << 20, 2 << 20, 10.0)
    assert eta is not None and eta > 20.0
    assert _prefill_eta(None, 0, 10, 20, 1.0) is None
    with SweepProgress(3, quiet=True) as progress:  # -q: no bar, no prefill line
        assert progress.prefill_reporter(1024, None) is None
