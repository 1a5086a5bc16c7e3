"""`context-within-model-limit`: a context past max_position_embeddings is a FAIL with the limit as the fix."""

from __future__ import annotations

from doctor.checks.model_source import context_within_model_limit
from doctor.context import DoctorContext
from doctor.model_config import ModelResolution
from doctor.report.model import Status
from run_plan.spec import RunSpec


def _ctx(context: int | None, config: dict) -> DoctorContext:
    res = ModelResolution(
        "org/model",
        "found",
        "test",
        resolved_id="org/model",
        source="local-folder",
        config=config,
        model_type=config.get("model_type"),
    )
    return DoctorContext.from_snapshot(RunSpec(model="org/model", context=context), {"model": res})


def test_context_above_limit_fails_with_the_limit() -> None:
    out = context_within_model_limit(
        _ctx(1 << 20, {"model_type": "llama", "max_position_embeddings": 131072})
    )
    assert out.status is Status.FAIL
    assert "131,072" in out.summary and "--context 131072" in out.fix.commands[0]


def test_nested_text_config_limit_is_used() -> None:
    cfg = {"model_type": "llama4", "text_config": {"max_position_embeddings": 10485760}}
    assert context_within_model_limit(_ctx(1 << 20, cfg)).status is Status.PASS


def test_without_context_or_limit_it_skips() -> None:
    assert context_within_model_limit(_ctx(None, {"max_position_embeddings": 8})).status is Status.SKIP
    assert context_within_model_limit(_ctx(8, {"model_type": "x"})).status is Status.SKIP
