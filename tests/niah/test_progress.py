"""What the sweep prints while it runs: one line per trial, and the prefill's ETA from the time plan."""

from __future__ import annotations

import pytest

from niah_run.progress import SweepProgress, _prefill_eta, describe_row
from niah_run.rows import TrialRow


def test_a_finished_trial_is_one_line() -> None:
    ok = TrialRow("k", "ok", 1024, 50.0, trial=1, correct=False, failure_class="distractor", seconds=2.25)
    assert describe_row(ok) == "1024 tok, depth 50%, trial 1: miss (distractor) in 2.2s"
    skipped = TrialRow(
        "k", "skipped", 2048, None, control=True, trial=0, skip_reason="after_oom", seconds=0.0
    )
    assert describe_row(skipped) == "2048 tok, control, trial 0: skipped (after_oom) in 0.0s"


def test_the_prefill_eta_scales_the_time_plan_by_how_the_prefill_kept_to_it() -> None:
    def quadratic(start: int, end: int) -> float:  # attention: later tokens cost more
        return (end * end - start * start) * 1e-6

    # 2 s for the first 1,000 tokens where the plan said 1 s: the rest takes twice its planned time too
    assert _prefill_eta(quadratic, 0, 1000, 2000, 2.0) == pytest.approx(2 * quadratic(1000, 2000))
    assert _prefill_eta(quadratic, 500, 500, 2000, 1.0) is None  # nothing done yet: no rate to scale by
    assert _prefill_eta(None, 0, 1000, 2000, 2.0) is None


def test_nobody_sees_a_prefill_reporter_with_quiet() -> None:
    with SweepProgress(3, quiet=True) as progress:
        assert progress.prefill_reporter(4096, None) is None


@pytest.mark.parametrize("columns", ["0", "1", "10"])
def test_a_terminal_too_narrow_for_the_bar_still_gets_every_trial_line(monkeypatch, capsys, columns) -> None:
    """COLUMNS=0 made rich print nothing, the trials' lines included; 10 wrapped each line a few
    letters wide. Without room for a bar the lines come as with -q: whole, one per trial."""
    monkeypatch.setenv("COLUMNS", columns)
    monkeypatch.setenv("NO_COLOR", "1")
    with SweepProgress(2, quiet=False) as progress:
        progress.advance("512 tok, depth 10%, trial 0: correct in 0.0s")
        assert progress.prefill_reporter(512, None) is None
        progress.advance("512 tok, depth 90%, trial 0: correct in 0.0s")
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "512 tok, depth 10%, trial 0: correct in 0.0s",
        "512 tok, depth 90%, trial 0: correct in 0.0s",
    ]


def test_a_wide_terminal_prints_every_trial_line_whole(monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    with SweepProgress(1, quiet=False) as progress:
        progress.advance("512 tok, depth 10%, trial 0: correct in 0.0s")
    assert "512 tok, depth 10%, trial 0: correct in 0.0s" in capsys.readouterr().err
