"""Room for the answer on a server, the server's finish_reason, and local-GPU checks with a server
target. The numbers are the ones vLLM 0.32 showed (max_model_len 8192, --max-new-tokens 32):
8192 of 8192 was an HTTP 400, 8180 of 8192 a silently shortened 12-token answer."""

from __future__ import annotations

import pytest

from doctor.checks.gpu import SERVER_TARGET_REASON, run_needs_gpu
from doctor.context import DoctorContext
from doctor.registry import load_checks
from doctor.report.model import Status
from doctor.runner import build_report
from run_plan.errors import UsageError
from run_plan.server_room import (
    classify_server_finish,
    output_ids_source,
    refuse_lengths_without_room,
    room_for_answer,
    server_room_summary,
)
from run_plan.spec import RunSpec
from tests.fakes import scenarios as sc

# -- room_for_answer --------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 4096, 8160])
def test_a_length_with_room_for_the_whole_answer_passes(length: int) -> None:
    assert room_for_answer(length, 32, 8192) is None


def test_an_unknown_server_cap_cannot_refuse_anything() -> None:
    assert room_for_answer(10_000_000, 32, None) is None


def test_a_length_the_server_would_shorten_is_refused_with_the_room_and_the_fixes() -> None:
    message = room_for_answer(8180, 32, 8192)
    assert message is not None
    assert "8,180" in message and "leaves 12 of --max-new-tokens 32" in message and "8,192" in message
    assert "cuts the answer at 12 tokens" in message
    assert "--lengths up to 8,160" in message  # 8192 - 32
    assert "--max-new-tokens to 12" in message
    assert "--max-model-len 8,212 or more" in message


def test_a_length_that_fills_the_server_is_refused_as_a_rejected_request() -> None:
    message = room_for_answer(8192, 32, 8192)
    assert message is not None
    assert "leaves 0 of" in message and "rejects the request" in message
    assert "--max-new-tokens to" not in message  # no answer length would fit: not offered as a fix


def test_one_token_short_is_still_refused() -> None:
    assert room_for_answer(8161, 32, 8192) is not None


def test_refuse_lengths_names_every_short_length_and_exits_2() -> None:
    with pytest.raises(UsageError) as caught:
        refuse_lengths_without_room([4096, 8180, 8192], 32, 8192)
    error = caught.value
    assert error.exit_code == 2
    assert "8,180" in error.message and "(and 8,192)" in error.message and "4,096" not in error.message
    assert error.hint is not None and "--lengths up to 8,160" in error.hint
    assert "--max-model-len 8,224 or more" in error.hint  # room for the longest refused length


def test_refuse_lengths_is_silent_when_everything_fits_or_the_cap_is_unknown() -> None:
    refuse_lengths_without_room([1024, 2048], 32, 8192)
    refuse_lengths_without_room([10**9], 32, None)


def test_the_doctor_text_says_the_server_shortens_the_answer_not_that_it_rejects_it() -> None:
    text = server_room_summary(8192, 8180)
    assert "leaves 12 tokens" in text and "shortens longer answers to 12 tokens" in text
    assert "rejected" not in text
    full = server_room_summary(8192, 8192)
    assert "leaves 0 tokens" in full and "rejected" in full and "HTTP 400" in full


# -- classify_server_finish -------------------------------------------------------------------------


def test_stop_is_a_measured_answer_that_ended_at_eos() -> None:
    verdict = classify_server_finish("stop", 5, 32)
    assert verdict.measured and verdict.stopped_at_eos


def test_length_at_our_own_limit_is_measured_and_may_score_truncated() -> None:
    verdict = classify_server_finish("length", 32, 32)
    assert verdict.measured and not verdict.stopped_at_eos


def test_length_before_our_limit_means_the_server_cut_it_and_it_is_not_measured() -> None:
    verdict = classify_server_finish("length", 12, 32)  # vLLM 0.32 at 8180 of 8192
    assert not verdict.measured
    assert "not measured" in verdict.reason and "12 of 32" in verdict.reason


@pytest.mark.parametrize("reason", ["abort", "content_filter", "tool_calls"])
def test_a_server_side_stop_is_not_measured(reason: str) -> None:
    verdict = classify_server_finish(reason, 3, 32)
    assert not verdict.measured and reason in verdict.reason


def test_length_with_an_unknown_count_is_taken_as_our_limit() -> None:
    verdict = classify_server_finish("length", None, 32)
    assert verdict.measured and not verdict.stopped_at_eos


@pytest.mark.parametrize(("count", "eos"), [(5, True), (32, False), (None, False)])
def test_a_missing_finish_reason_is_measured_and_eos_only_when_shorter_than_the_limit(count, eos) -> None:
    verdict = classify_server_finish(None, count, 32)
    assert verdict.measured and verdict.stopped_at_eos is eos


def test_a_boolean_is_not_a_token_count() -> None:
    assert classify_server_finish("length", True, 32).measured  # True is not "1 token"


# -- output_ids_source ------------------------------------------------------------------------------


def test_output_ids_source_says_which_path_the_replies_took() -> None:
    assert output_ids_source(6, 0) == "server token_ids"
    assert output_ids_source(0, 6).startswith("our tokenizer on the text")
    assert output_ids_source(4, 2).startswith("mixed") and "4" in output_ids_source(4, 2)
    assert output_ids_source(0, 0) == "no reply yet"


# -- local GPU checks with a server target ----------------------------------------------------------

LOCAL_GPU_CHECKS = ("nvidia-driver", "gpu-devices", "gpu-busy", "cuda-visible-devices", "gpu-mig")


def _gpu_rows(target: RunSpec, scenario: sc.Scenario) -> dict[str, object]:
    ctx = DoctorContext.from_snapshot(target, scenario.snapshot)
    specs = [s for s in load_checks() if s.section == "gpu" and s.id in LOCAL_GPU_CHECKS]
    report = build_report(specs, ctx, ["doctor"])
    return {row.id: row for row in report.checks}


def test_a_client_without_a_gpu_fails_nvidia_driver_for_a_local_long_run() -> None:
    # the behaviour the server target must not inherit: a local 8k run of a real model needs a GPU
    rows = _gpu_rows(RunSpec(model="org/model", context=8192), sc.no_gpu())
    assert rows["nvidia-driver"].status is Status.FAIL


def test_with_a_server_target_every_local_gpu_check_skips_with_the_reason() -> None:
    target = RunSpec(model="org/model", context=8192, base_url="http://127.0.0.1:8000")
    for scenario in (sc.no_gpu(), sc.healthy_h100()):
        rows = _gpu_rows(target, scenario)
        assert set(rows) == set(LOCAL_GPU_CHECKS)
        for check_id, row in rows.items():
            assert row.status is Status.SKIP, check_id
            assert row.summary == SERVER_TARGET_REASON, check_id


def test_a_server_target_needs_no_local_gpu_even_with_bnb() -> None:
    served = RunSpec(model="org/model", context=8192, base_url="http://h:8000")
    assert run_needs_gpu(DoctorContext.from_snapshot(served, {})) is None
    assert (
        run_needs_gpu(DoctorContext.from_snapshot(RunSpec(model="org/model", context=8192), {})) is not None
    )
