"""A run folder written by the previous release (tests/niah/data/previous_release_run) still reads.

It was written by `niah run` at commit a32c68c with this folder's fake backend (prompts of 1,000 tokens and
more ran out of memory): lengths 512/1024/2048 × depths 0/50/100 × 2 trials + 1 control per length, so 7
scored rows at 512, 8 OOM rows, and 6 rows skipped after the OOM. Its rows predate
`predicted_prefill_seconds`, and its identity predates the `experts` setting.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from doctor.boundary import run_cli
from niah_run.cli import niah_command
from niah_run.results import RESULTS_FILE, read_trial_rows
from tests.niah.fakes import FakeBackend

PREVIOUS_RELEASE_RUN = Path(__file__).parent / "data" / "previous_release_run"
# The command line that wrote it; the previous release computed every model with its own MoE forward,
# which this release names --experts transformers.
RUN_FLAGS = (
    "run",
    "--model",
    "demo",
    "--lengths",
    "512,1024,2048",
    "--depths",
    "0,50,100",
    "--trials",
    "2",
    "--controls",
    "1",
    "--skip-preflight",
    "-q",
    "--experts",
    "transformers",
)


def niah(*args: str) -> int:
    return run_cli(niah_command, list(args), prog_name="niah")


@pytest.fixture()
def old_run(tmp_path: Path) -> Path:
    folder = tmp_path / "old-run"
    shutil.copytree(PREVIOUS_RELEASE_RUN, folder)
    return folder


def test_every_row_of_the_previous_release_is_a_row() -> None:
    rows = read_trial_rows(PREVIOUS_RELEASE_RUN / RESULTS_FILE)
    assert len(rows) == len((PREVIOUS_RELEASE_RUN / RESULTS_FILE).read_text().splitlines()) == 21
    assert sorted({r.status for r in rows}) == ["ok", "oom", "skipped"]
    assert all(r.predicted_prefill_seconds is None for r in rows)  # not recorded then: unknown, not 0
    assert all(r.reused_prefix_tokens is not None for r in rows if r.status == "ok")
    assert all(not r.extra for r in rows)


def test_niah_report_reads_a_run_of_the_previous_release(old_run: Path, capsys) -> None:
    assert niah("report", str(old_run)) == 0
    captured = capsys.readouterr()
    assert "warning:" not in captured.err
    summary = json.loads((old_run / "summary.json").read_text())
    assert summary["trials_recorded"] == 21 and summary["rows_of_other_identities"] == 0
    assert summary["overall"]["n"] == 6 and summary["overall"]["correct"] == 6
    assert summary["overall"]["oom"] == 6 and summary["overall"]["skipped"] == 6
    assert summary["controls"]["512"]["n"] == 1
    assert summary["time_vs_plan"] == []  # no row carries the plan's prefill time
    assert "| 0 | 100% (2/2) | OOM | skipped |" in captured.out


def test_resume_continues_a_run_of_the_previous_release(old_run: Path, monkeypatch, capsys) -> None:
    import niah_run.sweep as sweep_module

    backend = FakeBackend()  # no OOM now: the OOM'd and skipped trials are retried, the rest kept
    monkeypatch.setattr(sweep_module, "make_backend", lambda config: backend)
    assert niah(*RUN_FLAGS, "--resume", "--out", str(old_run)) == 0
    captured = capsys.readouterr()
    assert captured.err.count("tok, done earlier") == 7 and "(14 ran, 7 done earlier," in captured.err
    rows = read_trial_rows(old_run / RESULTS_FILE)
    assert len(rows) == 21 + 14 and len(backend.calls) == 14
    kept = [r for r in rows[:21] if r.status == "ok"]
    assert all(sum(1 for r in rows if r.trial_key == k.trial_key) == 1 for k in kept)  # none run twice
    summary = json.loads((old_run / "summary.json").read_text())
    assert summary["trials_recorded"] == 21 and summary["rows_of_other_identities"] == 0
    assert summary["overall"]["n"] == 18 and summary["overall"]["oom"] == 0
    config = json.loads((old_run / "config.json").read_text())
    assert config["identity_sha256"] == rows[0].identity_sha256  # the same test keeps its trial keys


def test_its_own_command_line_resumes_it_without_naming_settings_added_since(
    old_run: Path, monkeypatch, capsys
) -> None:
    """The run was written before --experts existed: resumed by the command line that wrote it (no
    --experts), it continues with the experts path it ran with, same trial keys, nothing rerun."""
    import niah_run.sweep as sweep_module

    backend = FakeBackend()
    monkeypatch.setattr(sweep_module, "make_backend", lambda config: backend)
    original = RUN_FLAGS[: RUN_FLAGS.index("--experts")]
    assert niah(*original, "--resume", "--out", str(old_run)) == 0, capsys.readouterr().err
    config = json.loads((old_run / "config.json").read_text())
    assert config["config"]["experts"] == "transformers"
    assert config["identity_sha256"] == read_trial_rows(old_run / RESULTS_FILE)[0].identity_sha256
    assert len(backend.calls) == 14  # the OOM'd and skipped trials only
