"""TrialRow: the results row as one type, its JSON both ways, and the one validator."""

from __future__ import annotations

import json

import pytest

from niah_run.results import ResultsStore, read_rows, read_trial_rows
from niah_run.rows import RowProblem, TrialRow


def _ok_row(**changes: object) -> TrialRow:
    row = TrialRow(
        "k1", "ok", 1024, 50.0, trial=0, correct=True, seconds=1.5, input_tokens=1024, prefill_seconds=0.5
    )
    return TrialRow.from_json({**row.to_json(), **changes}) if changes else row


def test_a_row_reads_back_as_it_was_written(tmp_path) -> None:
    row = _ok_row()
    assert TrialRow.from_json(json.loads(json.dumps(row.to_json()))) == row
    ResultsStore(tmp_path).append(row)
    assert read_trial_rows(tmp_path / "results.jsonl") == [row]
    assert read_rows(tmp_path / "results.jsonl") == [row.to_json()]


def test_each_status_writes_its_own_keys() -> None:
    skipped = TrialRow("k2", "skipped", 2048, 50.0, skip_reason="after_oom", limit_tokens=1024).to_json()
    assert "skip_reason" in skipped and "prefill_seconds" not in skipped and "haystack_tokens" not in skipped
    oom = TrialRow("k3", "oom", 2048, 50.0, memory={"peak_bytes": 1}, error="OOM").to_json()
    assert list(oom)[-2:] == ["memory", "error"] and "prefill_seconds" not in oom
    assert "predicted_prefill_seconds" in _ok_row().to_json()


def test_fields_of_a_later_release_are_kept_and_missing_ones_read_as_unknown() -> None:
    doc = {"trial_key": "k", "status": "ok", "context_tokens": 512, "depth_percent": 0.0, "new_field": [1]}
    row = TrialRow.from_json(doc)
    assert row.extra == {"new_field": [1]} and row.to_json()["new_field"] == [1]
    assert row.predicted_prefill_seconds is None and row.depth_snapped is None


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("prefill_seconds", "fast", "prefill_seconds is not a number"),
        ("predicted_peak_bytes", {"cuda:0": "big"}, "predicted_peak_bytes is not a map of device to bytes"),
        ("found_distractors", "1234567", "found_distractors is not a list of strings"),
        ("depth_snapped", 1, "depth_snapped is not true/false"),
        ("seconds", float("nan"), "seconds is not a number"),
    ],
)
def test_a_field_of_the_wrong_type_is_named(field: str, value: object, problem: str) -> None:
    with pytest.raises(RowProblem, match=problem):
        TrialRow.from_json({**_ok_row().to_json(), field: value})


def test_a_row_outside_a_results_file_needs_no_key() -> None:
    fields = {"status": "ok", "context_tokens": 512, "depth_percent": 0.0}
    with pytest.raises(RowProblem, match="trial_key"):
        TrialRow.from_json(fields)
    assert TrialRow.from_json(fields, keyed=False).trial_key == ""
