"""The doctor's config validator is never stricter than the installed transformers.

Configs written by transformers' own `save_pretrained` for every architecture of the accuracy sets
(benchmarks/estimator_accuracy.py, benchmarks/hybrid_accuracy.py) resolve; a field the doctor doubts is
accepted only when the config class accepts it and the model never reads it (Qwen2-MoE's
`sliding_window: 0` with `use_sliding_window: false`), and refused when the model does read it."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from doctor.model_config import resolve_model
from doctor.probes.model import judged_by_library
from run_plan.spec import RunSpec

transformers = pytest.importorskip("transformers")
pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

QWEN2_MOE = {
    "model_type": "qwen2_moe",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "vocab_size": 128,
}


def _accuracy_set_configs() -> dict[str, dict[str, Any]]:
    import estimator_accuracy
    import hybrid_accuracy

    configs: dict[str, dict[str, Any]] = {}
    for case in [*estimator_accuracy._cases(False), *hybrid_accuracy.cases(False)]:
        configs.setdefault(str(case["config"]["model_type"]), case["config"])
    configs["qwen2_moe"] = QWEN2_MOE
    return configs


def _saved(folder: Path, config: dict[str, Any], **over: Any) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.AutoConfig.for_model(
            **{k: v for k, v in {**config, **over}.items() if k != "torch_dtype"}
        ).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("model_type", sorted(_accuracy_set_configs()))
def test_a_config_transformers_wrote_resolves(model_type: str, tmp_path: Path) -> None:
    folder = _saved(tmp_path / model_type, _accuracy_set_configs()[model_type])
    res = judged_by_library(resolve_model(str(folder)), RunSpec(model=str(folder)))
    assert res.found, res.message


def test_qwen2_moe_sliding_window_zero_is_accepted_because_the_model_never_reads_it(tmp_path: Path) -> None:
    folder = _saved(tmp_path / "m", QWEN2_MOE)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["sliding_window"] == 0 and saved["use_sliding_window"] is False  # as transformers writes it
    plain = resolve_model(str(folder))
    assert plain.status == "invalid" and "sliding_window" in plain.message  # the doctor's own rule alone
    res = judged_by_library(plain, RunSpec(model=str(folder)))
    assert res.found and res.accepted_fields == ("sliding_window",)
    assert "never read by the model" in res.message
    # --no-live asks nothing: the doctor's own rule stands
    assert judged_by_library(plain, RunSpec(model=str(folder), live=False)).status == "invalid"


def test_a_doubted_field_the_model_reads_stays_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path / "m", QWEN2_MOE, use_sliding_window=True, max_window_layers=2)
    config = json.loads((folder / "config.json").read_text())
    config["sliding_window"] = 0
    (folder / "config.json").write_text(json.dumps(config))
    res = judged_by_library(resolve_model(str(folder)), RunSpec(model=str(folder)))
    assert res.status == "invalid" and "reads sliding_window" in res.message


def test_a_size_the_model_needs_stays_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path / "m", QWEN2_MOE)
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] = 0
    (folder / "config.json").write_text(json.dumps(config))
    res = judged_by_library(resolve_model(str(folder)), RunSpec(model=str(folder)))
    assert res.status == "invalid"
