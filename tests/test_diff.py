"""`doctor diff A.json B.json`: what differs between a machine where the job works and one where it fails."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from doctor.boundary import run_cli
from doctor.diff import diff_command, diff_reports, render_diff_markdown, render_diff_text

GOLDEN = Path(__file__).parent / "golden"
GOOD, BAD = GOLDEN / "h100-healthy.json", GOLDEN / "scout-cpu.json"


def _doc(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _by_key(result: dict) -> dict[tuple[str, str], dict]:
    return {(d["section"], d["key"]): d for d in result["differences"]}


def test_names_versions_gpu_driver_and_verdicts() -> None:
    diffs = _by_key(diff_reports(_doc(GOOD), _doc(BAD)))
    assert (
        diffs[("libraries", "torch")]["a"] == "2.11.0" and diffs[("libraries", "torch")]["b"] == "2.13.0+cpu"
    )
    assert diffs[("libraries", "torch build")]["b"] == "CPU-only"
    assert diffs[("GPU and driver", "NVIDIA driver")]["a"] == "580.159.04"
    assert "H100" in diffs[("GPU and driver", "GPU 0")]["a"]
    assert (
        diffs[("checks", "nvidia-driver")]["a"] == "pass"
        and diffs[("checks", "nvidia-driver")]["b"] == "fail"
    )
    assert "no NVIDIA driver" in diffs[("checks", "nvidia-driver")]["note"]  # why it fails on B
    assert ("verdict", "verdict") in diffs
    assert diffs[("platform", "python_version")]["b"] == "3.11.7"


def test_failures_come_first_and_runtime_wheels_fold() -> None:
    result = diff_reports(_doc(GOOD), _doc(BAD))
    checks = [d for d in result["differences"] if d["section"] == "checks"]
    ranks = {"fail": 4, "error": 3, "warn": 2, "skip": 1, "pass": 0}
    worst = [max(ranks.get(d["a"], 0), ranks.get(d["b"], 0)) for d in checks]
    assert worst == sorted(worst, reverse=True)
    wheels = [
        d
        for d in result["differences"]
        if d["section"] == "libraries" and d["key"].startswith("nvidia-") and d["key"] != "nvidia-ml-py"
    ]
    assert len(wheels) == 1 and wheels[0]["a"] == "15 installed"


def test_environment_variables_differ() -> None:
    a, b = _doc(GOOD), copy.deepcopy(_doc(GOOD))
    b["facts"]["nvml"]["cuda_visible_devices"] = "1"
    diffs = diff_reports(a, b)["differences"]
    assert diffs == [
        {
            "section": "environment variables",
            "key": "CUDA_VISIBLE_DEVICES",
            "a": "unset",
            "b": "1",
            "note": "",
        }
    ]


def test_same_report_has_no_differences() -> None:
    result = diff_reports(_doc(GOOD), _doc(GOOD))
    assert result["differences"] == [] and result["same"] > 20
    assert "agree on everything" in render_diff_text(result, "a", "b", width=80)


def test_text_fits_and_markdown_renders() -> None:
    result = diff_reports(_doc(GOOD), _doc(BAD))
    text = render_diff_text(result, "good.json", "bad.json", width=80)
    assert all(len(line) <= 80 or len(max(line.split(), key=len)) > 40 for line in text.splitlines())
    markdown_it = pytest.importorskip("markdown_it")
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(render_diff_markdown(result, "a", "b"))
    assert html.count("<tr>") == len(result["differences"]) + 1


@pytest.mark.parametrize("fmt", ["text", "markdown", "json"])
def test_cli_exits_0_in_every_format(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(diff_command, [str(GOOD), str(BAD), "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert "nvidia-driver" in out
    if fmt == "json":
        assert json.loads(out)["differences"]


def test_cli_bad_input_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_json = tmp_path / "r.md"
    not_json.write_text("## a markdown report\n")
    assert run_cli(diff_command, [str(GOOD), str(not_json)]) == 2
    assert run_cli(diff_command, [str(GOOD), str(tmp_path / "missing.json")]) == 2
    assert run_cli(diff_command, [str(GOOD)]) == 2
    err = capsys.readouterr().err
    assert "not JSON" in err and "no such file" in err and "Traceback" not in err
