"""`niah compare RUN_A RUN_B`: trials matched by prompt hash, agreement of outputs and scores."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from niah_run.cli import niah_command
from niah_run.compare import compare_runs, mcnemar_exact_p, render_text
from run_plan.errors import UsageError


def _row(digest: str, output: str, correct: bool, key: str | None = None, status: str = "ok", **extra):
    return {
        "trial_key": key or f"k-{digest}",
        "status": status,
        "correct": correct,
        "output_text": output,
        "input_ids_sha256": digest,
        "context_tokens": 1024,
        "depth_percent": 50.0,
        "control": False,
        **extra,
    }


def _run(path, rows, **config):
    path.mkdir()
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (path / "config.json").write_text(
        json.dumps({"config": {"max_new_tokens": 32, **config}}), encoding="utf-8"
    )
    return path


def _pair(tmp_path, rows_a, rows_b, config_b=None):
    return _run(tmp_path / "a", rows_a), _run(tmp_path / "b", rows_b, **(config_b or {}))


def test_mcnemar_exact() -> None:
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(1, 1) == 1.0
    assert mcnemar_exact_p(6, 0) == pytest.approx(2 / 64)
    assert mcnemar_exact_p(3, 2) == 1.0


def test_identical_runs(tmp_path) -> None:
    rows = [_row(f"h{i}", f"The passkey is {i}.", True) for i in range(6)]
    a, b = _pair(tmp_path, rows, [dict(r, trial_key="other-" + r["trial_key"]) for r in rows])  # keys differ
    result = compare_runs(a, b)
    assert result.matched == 6 and result.identical_outputs == 6 and result.verdict == "identical"
    assert "IDENTICAL" in render_text(result)


def test_text_differences_with_same_scores_are_greedy_noise(tmp_path) -> None:
    rows_a = [_row(f"h{i}", f"1234567{i}", True) for i in range(40)]
    rows_b = [dict(r) for r in rows_a]
    rows_b[0]["output_text"] = "12345670 is the passkey."
    rows_b[1]["output_text"], rows_b[1]["correct"] = "no idea", False  # 1 flip in 40 = 2.5 % ≤ 5 %
    result = compare_runs(*_pair(tmp_path, rows_a, rows_b))
    assert result.identical_outputs == 38 and result.same_scores == 39
    assert result.a_only_correct == 1 and result.b_only_correct == 0
    assert result.verdict == "greedy-noise"
    assert result.differing[0].input_ids_sha256 == "h1"  # score disagreements listed first


def test_score_flips_beyond_tolerance_are_divergent(tmp_path, monkeypatch) -> None:
    rows_a = [_row(f"h{i}", "1234567", True) for i in range(10)]
    rows_b = [_row(f"h{i}", "I cannot find it" if i < 4 else "1234567", i >= 4) for i in range(10)]
    a, b = _pair(tmp_path, rows_a, rows_b, config_b={"max_new_tokens": 8})
    result = compare_runs(a, b)
    assert result.verdict == "divergent" and result.a_only_correct == 4
    assert any("max_new_tokens differs" in note for note in result.notes)
    runner = CliRunner()
    out = runner.invoke(niah_command, ["compare", str(a), str(b)], standalone_mode=False)
    assert out.return_value == 1 and "DIVERGENT" in out.output
    as_json = runner.invoke(
        niah_command, ["compare", str(a), str(b), "--format", "json"], standalone_mode=False
    )
    doc = json.loads(as_json.output)
    assert doc["verdict"] == "divergent" and doc["matched"] == 10 and len(doc["differing"]) == 4
    loose = runner.invoke(
        niah_command, ["compare", str(a), str(b), "--tolerance", "0.5"], standalone_mode=False
    )
    assert loose.return_value == 0 and "greedy noise" in loose.output


def test_unmatched_and_unscored_trials_are_counted_not_compared(tmp_path) -> None:
    rows_a = [_row("h1", "x", True), _row("h2", "x", True), _row("h3", "", False, status="oom")]
    rows_b = [_row("h1", "x", True), _row("h9", "y", True)]
    result = compare_runs(*_pair(tmp_path, rows_a, rows_b))
    assert result.matched == 1 and result.only_a == 1 and result.only_b == 1 and result.trials_a == 2


def test_latest_row_per_key_wins(tmp_path) -> None:
    rows_a = [_row("h1", "old", False, key="k"), _row("h1", "new", True, key="k")]
    result = compare_runs(*_pair(tmp_path, rows_a, [_row("h1", "new", True)]))
    assert result.verdict == "identical"


def test_nothing_in_common_is_a_usage_error(tmp_path) -> None:
    a, b = _pair(tmp_path, [_row("h1", "x", True)], [_row("h2", "x", True)])
    with pytest.raises(UsageError, match="same prompt ids"):
        compare_runs(a, b)
    with pytest.raises(UsageError, match=r"no results\.jsonl"):
        compare_runs(a, tmp_path / "missing")


def test_text_output_escapes_control_characters(tmp_path) -> None:
    a, b = _pair(tmp_path, [_row("h1", "1234567", True)], [_row("h1", "\x1b[31m1234567\nx", True)])
    text = render_text(compare_runs(a, b))
    assert "\x1b" not in text and "\\x1b[31m1234567⏎x" in text
