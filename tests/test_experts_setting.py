"""--experts: what runs on each kind of model, said on the plan line, and one test where it changes nothing.

A model without MoE layers (or with MoE layers niah cannot tell how to compute) runs its own forward
whatever --experts says: the plan says a given value has no effect there, and the run's identity does not
depend on it (tests/niah/test_sweep.py resumes such runs with another value).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from doctor.plan import _paths_from_sizing
from doctor.report.render_text import plan_line
from niah_run.identity import run_identity
from run_plan.resolved import Decision
from run_plan.spec import EXPERTS_DENSE, RunSpec, experts_setting, experts_setting_has_effect
from tests.test_render_text import load

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _tiny(config: Any) -> Any:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _llama() -> Any:
    from transformers import LlamaConfig

    return _tiny(
        LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
        )
    )


def _mixtral() -> Any:
    from transformers import MixtralConfig

    return _tiny(
        MixtralConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            num_local_experts=4,
            num_experts_per_tok=2,
        )
    )


class _RemoteCodeMoE(torch.nn.Module):
    """A MoE block of a class transformers does not know (remote code): a router and its experts."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = torch.nn.Linear(8, 4, bias=False)
        self.experts = torch.nn.ModuleList(torch.nn.Linear(8, 8, bias=False) for _ in range(4))


class _RemoteCodeModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = transformers.PretrainedConfig(n_routed_experts=4)
        self.layers = torch.nn.ModuleList([_RemoteCodeMoE()])


def test_apply_experts_says_dense_only_for_a_model_without_experts() -> None:
    from doctor.runtime.paths import apply_experts

    for value in ("auto", "routed", "transformers"):
        assert apply_experts(_llama(), value)["experts"] == EXPERTS_DENSE
    assert apply_experts(_mixtral(), "routed")["experts"].startswith(
        "routed: transformers' experts interface"
    )
    assert experts_setting_has_effect(apply_experts(_mixtral(), "transformers")["experts"])


def test_a_moe_apply_experts_does_not_recognise_is_named_as_such_never_dense() -> None:
    from doctor.runtime.paths import apply_experts

    for value in ("auto", "routed", "transformers"):
        path = apply_experts(_RemoteCodeModel(), value)["experts"]
        assert path != EXPERTS_DENSE and path.startswith("not recognised")
        assert "n_routed_experts=4" in path and "_RemoteCodeMoE at layers.0" in path
        assert "not known" in path  # what it cannot tell: whether only the routed experts are computed
        assert not experts_setting_has_effect(path) and experts_setting(path) == "transformers"


@pytest.mark.parametrize(
    "path, noted",
    [
        ("dense", "no MoE layer"),
        ("not recognised: config n_routed_experts=64 — ...", "MoE not recognised"),
        ("routed: transformers' experts interface, grouped_mm", None),
    ],
)
def test_a_given_experts_value_without_effect_is_said_in_the_plan(path: str, noted: str | None) -> None:
    sizing = {"experts_path": {"experts": path}}
    spec, decisions = _paths_from_sizing(RunSpec(model="m", experts="routed"), [], sizing)
    assert spec.experts == "routed"  # the user's value stays the plan's
    said = [d for d in decisions if d.name == "experts"]
    if noted is None:
        assert not said
    else:
        assert len(said) == 1 and said[0].value == "routed"
        assert said[0].why.startswith("given; no effect") and noted in said[0].why
        assert not said[0].why.startswith("auto")  # not a choice auto made (the sweep tells them apart)
    # --experts transformers on a dense model is what runs there: nothing to say beyond "given"
    assert (
        _paths_from_sizing(
            RunSpec(model="m", experts="transformers"), [], {"experts_path": {"experts": "dense"}}
        )[1]
        == []
    )


def _plan_line_for(experts: str, decisions: list[Decision]) -> str:
    report = load("scout-cpu")
    plan = dict(report.attachments["plan"])
    plan["spec"] = {**plan["spec"], "experts": experts}
    plan["decisions"] = [*plan["decisions"], *(d.to_dict() for d in decisions)]
    line = plan_line(dataclasses.replace(report, attachments={**report.attachments, "plan": plan}))
    assert line is not None
    return line


def test_the_plan_line_names_a_given_experts_value_as_it_names_the_attention() -> None:
    assert "experts routed (given)" in _plan_line_for("routed", [])
    assert "experts transformers (given)" in _plan_line_for("transformers", [])
    assert "experts" not in _plan_line_for("auto", [])
    noted = Decision("experts", "routed", "given; no effect — no MoE layer: --experts routed changes nothing")
    line = _plan_line_for("routed", [noted])
    assert "experts routed (given; no effect — no MoE layer)" in line and line.count("experts routed") == 1


class _Frame:
    template_sha256 = "t"


class _Haystack:
    sha256 = "h"


class _Tokenizer:
    def get_vocab(self) -> dict[str, int]:
        return {"a": 0}


@pytest.mark.parametrize("path", ["dense", "not recognised: config num_experts=8 — ..."])
def test_the_identity_of_a_model_the_setting_cannot_change_is_one_for_every_value(path: str) -> None:
    def identity(experts: str, facts: dict[str, Any]) -> str:
        spec = RunSpec(model="m", experts=experts)
        return run_identity(spec, facts, _Tokenizer(), _Frame(), _Haystack())[1]  # type: ignore[arg-type]

    without = {"backend": "transformers", "experts": path}
    assert len({identity(v, without) for v in ("routed", "transformers")}) == 1
    # the hash runs of such a model saved with auto (decided "transformers") or before --experts existed
    assert identity("routed", without) == identity("transformers", {"backend": "transformers"})
    moe = {"backend": "transformers", "experts": "routed: transformers' experts interface, grouped_mm"}
    assert identity("routed", moe) != identity("transformers", moe)
