"""What the report says beyond accuracy (issue 15): effective length, speed, memory, GPU time and cost,
depth honesty, and a heatmap that names the run and each failure class."""

from __future__ import annotations

import json
import warnings

import pytest

from niah_run.summary import (
    effective_length,
    gpu_count_from_facts,
    peak_memory,
    render_markdown,
    summarize,
    trials_needed,
    wilson_interval,
    write_summary,
)

GIB = 1024**3


def _row(key: str, length: int = 1024, depth: float = 50.0, correct: bool = True, **extra):
    row = {
        "trial_key": key,
        "status": "ok",
        "correct": correct,
        "failure_class": None if correct else "other",
        "control": False,
        "context_tokens": length,
        "depth_percent": depth,
        "actual_depth_percent": depth,
        "needle_kind": "passkey",
        "input_tokens": length,
        "reused_prefix_tokens": 0,
        "prefill_seconds": 0.5,
        "seconds": 2.0,
        "memory": {},
    }
    row.update(extra)
    return row


def _rows_for(length: int, n: int, wrong: int = 0, kind: str = "passkey"):
    return [
        _row(f"{kind}-{length}-{i}", length, depth=float(25 * (i % 5)), correct=i >= wrong, needle_kind=kind)
        for i in range(n)
    ]


# -- effective context length ------------------------------------------------------------------------


def test_trials_needed_matches_the_wilson_bound() -> None:
    n = trials_needed(0.85)
    assert wilson_interval(n, n)[0] >= 0.85 > wilson_interval(n - 1, n - 1)[0]


def test_effective_length_is_the_longest_length_whose_lower_bound_stays_above_threshold() -> None:
    rows = (
        _rows_for(1024, 30)
        + _rows_for(2048, 60, wrong=1)
        + _rows_for(4096, 30, wrong=12)
        + _rows_for(8192, 30)
    )
    summary = summarize(rows)
    eff = summary["effective_length"]["passkey"]
    assert eff["threshold"] == 0.85
    passes = {p["context_tokens"]: p["passes"] for p in eff["per_length"]}
    assert passes == {1024: True, 2048: True, 4096: False, 8192: True}
    # 8192 passes again, but the length must STAY above the bar: 4096 breaks the run.
    assert eff["tokens"] == 2048
    assert (
        "Effective context length (passkey, Wilson 95% lower bound ≥ 0.85): 2,048 tokens"
        in render_markdown(summary)
    )


def test_three_perfect_trials_do_not_certify_a_length() -> None:
    summary = summarize(_rows_for(1024, 3))
    eff = summary["effective_length"]["passkey"]
    assert eff["tokens"] is None and eff["trials_needed_per_length"] == trials_needed(0.85)
    assert "below the shortest length tested" in render_markdown(summary)


def test_threshold_is_configurable_and_unmeasured_lengths_end_the_run() -> None:
    rows = _rows_for(1024, 3) + [_row("oom", 2048, status="oom", correct=False, failure_class="oom")]
    assert summarize(rows, threshold=0.3)["effective_length"]["passkey"]["tokens"] == 1024
    cells = {
        1024: {"n": 5, "wilson_low": 0.9},
        2048: {"n": 0, "wilson_low": 0.0},
        4096: {"n": 5, "wilson_low": 0.9},
    }
    assert effective_length(cells, 0.85) == 1024


def test_effective_length_per_needle_kind() -> None:
    rows = _rows_for(1024, 30, kind="passkey") + _rows_for(1024, 30, wrong=15, kind="counting")
    eff = summarize(rows)["effective_length"]
    assert eff["passkey"]["tokens"] == 1024 and eff["counting"]["tokens"] is None


# -- speed, memory, GPU time, money -------------------------------------------------------------------


def test_peak_memory_reads_every_shape_in_use() -> None:
    assert peak_memory({"per_gpu_peak_bytes": {"cuda:0": 5, "cuda:1": 7}}) == {"cuda:0": 5, "cuda:1": 7}
    oom = {
        "at_failure": {"cuda:0": {"allocated_bytes": 1, "reserved_bytes": 9, "peak_bytes": 8}},
        "after_free": {"cuda:0": {"peak_bytes": 99}},
    }
    assert peak_memory(oom) == {"cuda:0": 8}
    assert peak_memory({"peak_bytes": 123}) == {"device": 123}
    assert peak_memory({}) == {} and peak_memory(None) == {}


def test_per_cell_throughput_ttft_memory_gpu_seconds_and_cost() -> None:
    memory = {"per_gpu_peak_bytes": {"cuda:0": 3 * GIB, "cuda:1": 2 * GIB}}
    rows = [
        _row("a", 4096, prefill_seconds=1.0, seconds=4.0, memory=memory),
        _row(
            "b",
            4096,
            prefill_seconds=0.5,
            seconds=2.0,
            reused_prefix_tokens=2048,
            memory={"per_gpu_peak_bytes": {"cuda:0": 4 * GIB, "cuda:1": 1 * GIB}},
        ),
        _row(
            "c",
            4096,
            status="oom",
            correct=False,
            failure_class="oom",
            seconds=1.0,
            prefill_seconds=None,
            memory={"at_failure": {"cuda:0": {"peak_bytes": 6 * GIB}}},
        ),
    ]
    summary = summarize(rows, price_per_gpu_hour=3.6, gpu_count=2)
    cell = summary["cells"][0]
    assert cell["prefill_tokens_per_s"] == pytest.approx(
        (4096 + 2048) / 1.5, abs=0.1
    )  # reused tokens excluded
    assert cell["ttft_seconds"] == 0.75 and cell["ttft_seconds_max"] == 1.0
    assert cell["peak_memory_bytes"] == 6 * GIB and cell["peak_memory_total_bytes"] == 6 * GIB
    assert cell["gpu_seconds"] == pytest.approx((4 + 2 + 1) * 2)
    assert cell["cost"] == pytest.approx(14 / 3600 * 3.6)
    assert summary["cost"]["gpu_seconds"] == pytest.approx(14) and summary["cost"]["money"] == pytest.approx(
        0.014
    )
    text = render_markdown(summary)
    assert (
        "cost at 3.6 per GPU-hour" in text
        and "| 4096 | 50 | 4,096 | 0.750 / 1.000 | 6.00 / 6.00 | 14.0 | 0.0140 |" in text
    )


def test_no_price_no_money_and_unknown_gpus_are_said_so() -> None:
    summary = summarize([_row("a", memory={})])
    assert summary["cells"][0]["cost"] is None and summary["cells"][0]["gpu_seconds"] is None
    assert "GPU-seconds unknown" in render_markdown(summary)
    counted = summarize(
        [_row("a", memory={"per_gpu_peak_bytes": {"cuda:0": 1}})]
    )  # no placement: the row's GPUs
    assert counted["cells"][0]["gpu_seconds"] == 2.0


def test_gpu_count_from_backend_facts() -> None:
    assert gpu_count_from_facts({"backend": "transformers", "placement": {"cuda:0": {}, "cuda:1": {}}}) == 2
    assert gpu_count_from_facts({"backend": "transformers", "placement": {"cuda:0": {}, "cpu": {}}}) == 1
    assert gpu_count_from_facts({"backend": "transformers", "device_map": "cpu"}) == 0
    assert gpu_count_from_facts({"backend": "openai", "base_url": "http://x"}) is None


# -- depth honesty --------------------------------------------------------------------------------------


def test_snapped_cells_are_labelled_by_actual_depth() -> None:
    rows = [
        _row("a", depth=50.0, actual_depth_percent=0.0, depth_snapped=True, snap_tokens=-500.0),
        _row("b", depth=0.0),
    ]
    summary = summarize(rows)
    cell = next(c for c in summary["cells"] if c["depth_percent"] == 50.0)
    assert (
        cell["depth_snapped"] == 1
        and cell["actual_depth_percent"] == 0.0
        and summary["depth_snapped_cells"] == 1
    )
    text = render_markdown(summary)
    assert "| 50 | 100% (1/1) † at 0% |" in text and "few sentence boundaries" in text
    assert "| 0 | 100% (1/1) |" in text


def test_old_rows_without_the_flag_are_judged_from_their_snap() -> None:
    rows = [
        _row("a", depth=50.0, actual_depth_percent=0.0, snap_tokens=-700.0, haystack_tokens=1400),
        _row("b", depth=25.0, snap_tokens=-10.0, haystack_tokens=1400),
    ]
    cells = {c["depth_percent"]: c for c in summarize(rows)["cells"]}
    assert cells[50.0]["depth_snapped"] == 1 and cells[25.0]["depth_snapped"] == 0


# -- run facts, summary files and the heatmap ----------------------------------------------------------


def _run_dir(tmp_path, rows, config=None):
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    doc = {
        "created_at": "2026-11-30T10:00:00+00:00",
        "config": {
            "model": "org/Model-8B",
            "quant": "bnb-4bit",
            "dtype": "auto",
            "needle_kind": "passkey",
            "backend": "transformers",
            **(config or {}),
        },
        "backend": {
            "backend": "transformers",
            "dtype": "bfloat16",
            "placement": {"cuda:0": {"layers": "0-31"}},
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(doc), encoding="utf-8")
    return tmp_path


def test_write_summary_reads_the_run_facts_and_settings(tmp_path) -> None:
    run = _run_dir(tmp_path, [_row("a"), _row("b", correct=False)], {"price_per_gpu_hour": 2.0})
    summary = write_summary(run)
    assert summary["run"]["model"] == "org/Model-8B" and summary["run"]["gpu_count"] == 1
    assert summary["run"]["price_per_gpu_hour"] == 2.0 and summary["cost"]["money"] == pytest.approx(
        4 / 3600 * 2, abs=1e-6
    )
    assert json.loads((run / "summary.json").read_text())["effective_length"]["passkey"]["threshold"] == 0.85
    assert (run / "summary.md").read_text().startswith("# org/Model-8B · passkey · bnb-4bit, bfloat16")
    override = write_summary(run, price_per_gpu_hour=10.0, threshold=0.5)
    assert override["run"]["price_per_gpu_hour"] == 10.0 and override["run"]["effective_threshold"] == 0.5


@pytest.mark.parametrize(
    "key, value",
    [
        ("price_per_gpu_hour", -5),
        ("price_per_gpu_hour", float("nan")),
        ("price_per_gpu_hour", 1e308),
        ("price_per_gpu_hour", "2 USD"),
        ("effective_threshold", -5),
        ("effective_threshold", float("nan")),
        ("effective_threshold", True),
    ],
)
def test_a_setting_no_flag_would_accept_in_config_json_is_not_used(tmp_path, key: str, value) -> None:
    """config.json is a file from outside: a price or threshold that `niah run` would refuse is said
    (a warning) and left out, never a negative cost or an 'effective' length under a bound of -5."""
    run = _run_dir(tmp_path, [_row("a"), _row("b", correct=False)], {key: value})
    with pytest.warns(UserWarning, match=key):
        summary = write_summary(run)
    assert summary["run"][key] == {"price_per_gpu_hour": None, "effective_threshold": 0.85}[key]
    assert summary["cost"]["money"] is None
    assert json.loads((run / "summary.json").read_text())["effective_length"]["passkey"]["threshold"] == 0.85


def test_heatmap_title_palette_borders_and_glyphs(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from niah_run.heatmap import COLORMAP, FAILURE_GLYPHS, heatmap_title, render_heatmap

    classes = [c for c in FAILURE_GLYPHS if c not in ("oom", "skipped_too_long")]
    rows = [
        _row(f"r{i}", 1024 * (1 + i % 3), depth=float(50 * (i % 3)), correct=False, failure_class=c)
        for i, c in enumerate(classes)
    ]
    rows.append(_row("oom", 4096, status="oom", correct=False, failure_class="oom"))
    rows.append(_row("snap", 2048, depth=100.0, actual_depth_percent=3.0, depth_snapped=True))
    run = _run_dir(tmp_path, rows)
    summary = write_summary(run)
    title = heatmap_title(summary, "fallback")
    assert title.splitlines() == [
        "org/Model-8B · passkey",
        "quant bnb-4bit · dtype bfloat16 · transformers · 2026-11-30",
    ]
    assert COLORMAP in ("cividis", "viridis")
    assert len(set(FAILURE_GLYPHS.values())) == len(FAILURE_GLYPHS)  # one glyph per class
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        render_heatmap(summary, run / "heatmap.png")
    assert not [w for w in caught if "missing from" in str(w.message) or "Glyph" in str(w.message)]
    assert (run / "heatmap.png").stat().st_size > 5000


def test_heatmap_without_run_facts_uses_the_given_title() -> None:
    from niah_run.heatmap import heatmap_title

    assert heatmap_title({"run": {}}, "my run").startswith("my run\nquant none")
