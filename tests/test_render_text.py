"""The text report fits the terminal: goldens captured from tmux at 60, 100 and 160 columns.

The reports are saved JSON (tests/golden/*.json: a CPU box asked about Llama 4 Scout on an H100, and
a healthy H100); tests/golden/capture.sh re-captures the goldens after a deliberate layout change.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from doctor.report.load import read_report_json, report_from_json_dict
from doctor.report.model import Report, Status
from doctor.report.render_text import render_text

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


def _is_unbreakable(line: str) -> bool:
    """A command, a link, or a word too long for a narrow line (a hub id): allowed to overflow, never broken."""
    body = line.strip()
    return body.startswith(("$ ", "see: $ ", "http")) or len(max(body.split(), key=len)) > 40


@pytest.mark.parametrize("cols", WIDTHS)
def test_prose_fits_and_commands_are_never_wrapped(cols: int) -> None:
    report = load("scout-cpu")
    lines = render_text(report, color=False, width=cols).splitlines()
    assert all(len(line) <= cols or _is_unbreakable(line) for line in lines), [
        line for line in lines if len(line) > cols and not _is_unbreakable(line)
    ]
    commands = [cmd for c in report.checks if c.fix for cmd in c.fix.commands]
    assert commands
    for cmd in commands:
        assert any(line.strip() == f"$ {cmd}" for line in lines), cmd


def test_problems_first_then_compact_rest_and_a_verdict_naming_the_failures() -> None:
    report = load("scout-cpu")
    text = render_text(report, color=False, width=100)
    failing = [c.id for c in report.checks if c.status is Status.FAIL]
    assert text.index("Problems (") < text.index("Other checks")
    for check_id in failing:  # each failure's block comes before the table
        assert text.index(f"FAIL {check_id}") < text.index("Other checks")
    verdict = text[text.index("PROBLEMS FOUND") :].split("\n--verbose")[0].replace("\n  ", " ")
    assert all(check_id in verdict for check_id in failing)
    # every skipped check is named, but skips take one entry per section, and none gets a detail block
    skips = [c for c in report.checks if c.status is Status.SKIP]
    assert all(c.id in text for c in skips)
    assert "SKIP " not in text
    sections_with_skips = {c.section for c in skips}
    assert len(re.findall(r"^  - \d+ skipped: ", text, re.MULTILINE)) == len(sections_with_skips)


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


def test_verbose_shows_passing_evidence_and_every_skip() -> None:
    report = load("h100-healthy")
    text = render_text(report, color=False, verbose=True, width=100)
    assert "skipped:" not in text
    passing = next(c for c in report.checks if c.status is Status.PASS and c.evidence)
    assert passing.evidence[0].key in text


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
