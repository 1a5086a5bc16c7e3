"""results.jsonl durability: fsync'd lines, torn last line repaired, ENOSPC leaves valid JSON lines."""

from __future__ import annotations

import errno
import json
import os

import pytest

from niah_run.results import ResultsStore, TornResultsWarning, is_done, latest_by_key, read_rows
from niah_run.summary import render_markdown, summarize, wilson_interval
from run_plan.errors import RunFailed


def _row(key: str, status: str = "ok", correct: bool = True, **extra) -> dict:
    return {
        "trial_key": key,
        "status": status,
        "correct": correct,
        "context_tokens": 1024,
        "depth_percent": 50.0,
        "failure_class": None if correct else "other",
        "control": False,
        **extra,
    }


def test_append_fsyncs_each_line(tmp_path, monkeypatch) -> None:
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    store = ResultsStore(tmp_path)
    store.append(_row("a"))
    store.append(_row("b"))
    assert len(synced) == 2
    assert [json.loads(line)["trial_key"] for line in store.path.read_text().splitlines()] == ["a", "b"]


def test_torn_last_line_is_cut_with_a_warning(tmp_path) -> None:
    store = ResultsStore(tmp_path)
    store.append(_row("a"))
    store.append(_row("b"))
    with open(store.path, "ab") as handle:
        handle.write(b'{"trial_key": "c", "status": "o')
    with pytest.warns(TornResultsWarning, match="torn last line"):
        rows = store.load(repair=True)
    assert [r["trial_key"] for r in rows] == ["a", "b"]
    store.append(_row("c"))
    assert [json.loads(line)["trial_key"] for line in store.path.read_text().splitlines()] == ["a", "b", "c"]


def test_complete_json_without_newline_counts_as_torn(tmp_path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(_row("a")) + "\n" + json.dumps(_row("b")))
    with pytest.warns(TornResultsWarning):
        assert [r["trial_key"] for r in read_rows(path)] == ["a"]


def test_disk_full_keeps_whole_lines(tmp_path, monkeypatch) -> None:
    store = ResultsStore(tmp_path)
    store.append(_row("a"))
    real_write = os.write

    def half_then_enospc(fd, data):
        if len(data) > 20:
            real_write(fd, bytes(data[:20]))  # a partial line reaches the disk, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", half_then_enospc)
    with pytest.raises(RunFailed, match="disk full") as info:
        store.append(_row("b"))
    assert "--resume" in info.value.hint
    monkeypatch.setattr(os, "write", real_write)
    lines = store.path.read_text().splitlines()
    assert [json.loads(line)["trial_key"] for line in lines] == ["a"]


def test_other_write_errors_are_clear(tmp_path, monkeypatch) -> None:
    store = ResultsStore(tmp_path)
    monkeypatch.setattr(os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(RunFailed, match="cannot write"):
        store.append(_row("a"))


def test_latest_row_wins_and_retry_rules() -> None:
    rows = [
        _row("a", "oom"),
        _row("a", "ok"),
        _row("b", "error"),
        _row("c", "skipped", skip_reason="estimate"),
        _row("d", "skipped", skip_reason="after_oom"),
    ]
    latest = latest_by_key(rows)
    assert latest["a"]["status"] == "ok"
    assert {k for k, r in latest.items() if is_done(r)} == {"a", "c"}


def test_wilson_interval() -> None:
    low, high = wilson_interval(0, 0)
    assert (low, high) == (0.0, 1.0)
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and 0.69 < low < 0.73
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-3) and high == pytest.approx(0.7634, abs=1e-3)


def test_summary_cells_and_markdown() -> None:
    rows = [
        _row("a"),
        _row("b", correct=False),
        _row("c", "oom", correct=False, depth_percent=75.0),
        {**_row("d"), "control": True},
    ]
    rows[2]["failure_class"] = "oom"
    summary = summarize(rows)
    cells = {(c["context_tokens"], c["depth_percent"]): c for c in summary["cells"]}
    assert cells[(1024, 50.0)]["n"] == 2 and cells[(1024, 50.0)]["accuracy"] == 0.5
    assert cells[(1024, 75.0)]["n"] == 0 and cells[(1024, 75.0)]["oom"] == 1
    assert summary["controls"]["1024"]["n"] == 1
    text = render_markdown(summary)
    assert "| 50 | 50% (1/2) |" in text and "| 75 | OOM |" in text
