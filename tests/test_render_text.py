"""The text report fits the terminal: goldens captured from tmux at 60, 100 and 160 columns; the default
view fits one screen, `-v` shows everything.

The reports are saved JSON (tests/golden/*.json: a CPU box asked about Llama 4 Scout on an H100, and
a healthy H100); tests/golden/capture.sh re-captures the goldens after a deliberate layout change.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from doctor.report.load import read_report_json, report_from_json_dict
from doctor.report.model import CheckResult, CodeEdit, Fix, Report, Status
from doctor.report.render_text import _GLYPH as GLYPH
from doctor.report.render_text import LINE_BUDGET, render_text

GOLDEN = Path(__file__).parent / "golden"
WIDTHS = (60, 100, 160)
_VOLATILE = (
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:\d\d|Z)?"), "<TIME>"),
    (re.compile(r"^niah-doctor \S+", re.MULTILINE), "niah-doctor <VERSION>"),
)


def load(name: str) -> Report:
    return report_from_json_dict(read_report_json(GOLDEN / f"{name}.json"))


def normalise(text: str) -> str:
    for pattern, replacement in _VOLATILE:
        text = pattern.sub(replacement, text)
    return "\n".join(line.rstrip() for line in text.rstrip("\n").splitlines())


@pytest.mark.parametrize("cols", WIDTHS)
@pytest.mark.parametrize("name", ["scout-cpu", "h100-healthy"])
def test_matches_the_terminal_capture(name: str, cols: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(cols))
    rendered = render_text(load(name), color=False)
    golden = (GOLDEN / f"{name}.text-{cols}.txt").read_text(encoding="utf-8")
    assert normalise(rendered) == normalise(golden)


def _is_unbreakable(line: str, report: Report) -> bool:
    """A command, a link, the code of an edit, or a word too long for a narrow line (a hub id): allowed to
    overflow, never broken."""
    body = line.strip()
    code = {e.code for c in report.checks if c.fix for e in c.fix.edits}
    return body.startswith(("$ ", "see: $ ", "http")) or body in code or len(max(body.split(), key=len)) > 40


@pytest.mark.parametrize("verbose", [False, True])
@pytest.mark.parametrize("cols", WIDTHS)
def test_prose_fits_and_commands_are_never_wrapped(cols: int, verbose: bool) -> None:
    report = load("scout-cpu")
    lines = render_text(report, color=False, width=cols, verbose=verbose).splitlines()
    assert all(len(line) <= cols or _is_unbreakable(line, report) for line in lines), [
        line for line in lines if len(line) > cols and not _is_unbreakable(line, report)
    ]
    # -v shows every fix step; the default view the first of each problem's fix
    fixes = [c.fix for c in report.checks if c.fix and c.status in (Status.FAIL, Status.WARN)]
    commands = [cmd for fix in fixes for cmd in (fix.commands if verbose else fix.commands[:1])]
    assert commands
    for cmd in commands:
        assert any(line.strip() == f"$ {cmd}" for line in lines), cmd


def test_default_view_is_one_screen_verdict_first_one_line_per_problem_and_section() -> None:
    report = load("scout-cpu")
    text = render_text(report, color=False, width=80)
    lines = text.splitlines()
    assert len(lines) <= LINE_BUDGET
    assert lines[0].startswith("PROBLEMS FOUND: 4 fail, 2 warn")
    found = [c for c in report.checks if c.status in (Status.FAIL, Status.ERROR, Status.WARN)]
    for check in found:  # one line of cause, then one fix line
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{GLYPH[check.status]} {check.id}: "))
        assert lines[at + 1].startswith(("  $ ", "  fix: ", "  in ")), lines[at + 1]
    assert next(c.id for c in found) == "nvidia-driver"  # failures first, in report order
    sections = list(dict.fromkeys(c.section for c in report.checks))
    names = "|".join(map(re.escape, sections))
    rows = [line for line in lines if re.match(rf"^[✓✗!?-] ({names}) +\S", line)]
    assert [row.split()[1] for row in rows] == sections  # one line per section, in report order
    assert "evidence:" not in text  # evidence waits for -v / doctor explain
    assert "doctor explain nvidia-driver" in text


def test_sections_show_the_facts_a_person_wants() -> None:
    text = render_text(load("h100-healthy"), color=False, width=160)
    gpu = next(line for line in text.splitlines() if line.startswith("✓ gpu "))
    assert "1× NVIDIA H100 80GB HBM3 (79.6 GiB, sm_90)" in gpu and "driver 580.159.04 (CUDA ≤ 13.0)" in gpu
    torch = next(line for line in text.splitlines() if line.startswith("✓ torch "))
    assert "torch 2.11.0+cu130 (CUDA 13.0 build)" in torch and "CUDA available on 1 GPU(s)" in torch
    bnb = next(line for line in text.splitlines() if line.startswith("✓ bitsandbytes "))
    assert "libbitsandbytes_cuda130.so" in bnb and "nf4 round trip ok on cuda" in bnb
    assert "transformers 5.17.0 · accelerate 1.15.0" in text
    assert text.splitlines()[0] == "OK: 25 pass, 17 skip"


def test_a_code_change_is_shown_as_code_at_its_line_not_as_a_command() -> None:
    fix = Fix("Give accelerate integer keys", (), None, (CodeEdit("run.py", 12, "max_memory={0: '74GiB'}"),))
    check = CheckResult("script-settings", "t", "run-args", Status.FAIL, "run.py:12: bad key", fix=fix)
    report = dataclasses.replace(load("h100-healthy"), checks=(check,))
    for verbose in (False, True):
        lines = render_text(report, color=False, width=80, verbose=verbose).splitlines()
        at = lines.index("  in run.py:12, write:" if not verbose else "    in run.py:12, write:")
        assert lines[at + 1].strip() == "max_memory={0: '74GiB'}"
        assert not any(line.strip().startswith("$ max_memory") for line in lines)


def test_many_problems_still_fit_the_budget() -> None:
    base = load("scout-cpu")
    many = tuple(
        dataclasses.replace(c, status=Status.FAIL, fix=Fix("x", ("true",))) if c.status is Status.PASS else c
        for c in base.checks
    )
    for cols in (60, 80, 120):
        lines = render_text(dataclasses.replace(base, checks=many), color=False, width=cols).splitlines()
        assert len(lines) <= LINE_BUDGET, cols
        assert any(line.startswith("  +") and "more (rerun with -v): " in line for line in lines)


def test_verbose_shows_everything() -> None:
    report = load("scout-cpu")
    text = render_text(report, color=False, verbose=True, width=100)
    assert "skipped:" not in text
    for check in report.checks:
        assert check.id in text
        for ev in check.evidence:
            assert ev.key in text
    verdict = text[text.index("PROBLEMS FOUND") :].replace("\n  ", " ")
    assert verdict.startswith("PROBLEMS FOUND: 4 fail (nvidia-driver, model-config-loads")


def test_width_comes_from_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    report = load("h100-healthy")
    monkeypatch.setenv("COLUMNS", "60")
    narrow = render_text(report, color=False)
    monkeypatch.setenv("COLUMNS", "160")
    wide = render_text(report, color=False)
    assert max(map(len, narrow.splitlines())) <= 60 < max(map(len, wide.splitlines()))


def test_colour_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    report = load("scout-cpu")
    assert "\x1b[" in render_text(report, color=True, width=100)
    assert "\x1b[" not in render_text(report, color=False, width=100)
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[" not in render_text(report, color=None, width=100)


def test_target_line_shows_what_was_given_including_lists() -> None:
    report = dataclasses.replace(
        load("h100-healthy"),
        target={
            "model": "demo",
            "lengths": [512, 1024],
            "context": 131072,
            "quant": "none",
            "max_memory": {"0": "70GiB"},
        },
    )
    text = render_text(report, color=False, width=100)
    assert "target: model demo · lengths 512, 1024 · context 131,072 · max-memory" in text
    assert "quant" not in text.splitlines()[1]  # a default says nothing
