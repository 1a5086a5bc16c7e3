"""The markdown report is a ticket: problems on top, short, and it renders (checked with markdown-it-py)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from doctor.report.load import read_report_json, report_from_json_dict
from doctor.report.model import CheckResult, Evidence, Fix, Report, Status
from doctor.report.render_markdown import FACTS_LIMIT, HARD_LIMIT, md_text, render_markdown
from tests.conftest import run_module

GOLDEN = Path(__file__).parent / "golden"
TYPICAL_LIMIT = 15_000
SCOUT_ARGS = (
    "--model",
    "meta-llama/Llama-4-Scout-17B-16E-Instruct",
    "--quant",
    "bnb-4bit",
    "--gpus",
    "1xH100-80GB",
    "--context",
    "1M",
    "--format",
    "markdown",
)


def load(name: str) -> Report:
    return report_from_json_dict(read_report_json(GOLDEN / f"{name}.json"))


def to_html(text: str) -> str:
    markdown_it = pytest.importorskip("markdown_it")
    return markdown_it.MarkdownIt("commonmark").enable("table").enable("strikethrough").render(text)


def _section(text: str, title: str) -> str:
    start = text.index(f"### {title}")
    end = text.find("\n### ", start + 1)
    return text[start : end if end > 0 else None]


def test_problems_on_top_environment_short_skips_one_line() -> None:
    report = load("scout-cpu")
    text = render_markdown(report)
    assert len(text) <= TYPICAL_LIMIT
    first_line = text.splitlines()[0]
    assert all(f"`{c.id}`" in first_line for c in report.checks if c.status is Status.FAIL)
    assert text.index("### Problems") < text.index("### Environment") < text.index("### Other checks")
    env = _section(text, "Environment").strip().splitlines()
    assert len(env) <= 25 + 2  # heading + blank line, then at most 25 lines
    skipped = [line for line in text.splitlines() if line.startswith("**Skipped")]
    assert len(skipped) == 1
    assert all(f"`{c.id}`" in skipped[0] for c in report.checks if c.status is Status.SKIP)
    assert "<details>" not in text and "add `--facts`" in text


def test_facts_only_when_asked_and_cut_with_a_note() -> None:
    report = load("scout-cpu")
    text = render_markdown(report, facts=True)
    assert "<summary>Raw facts</summary>" in text
    assert len(text) <= HARD_LIMIT
    assert (
        "Raw facts cut at" in text and f"{FACTS_LIMIT:,}" in text
    )  # the Scout facts are larger than the cut


def test_never_above_the_hard_limit_even_with_huge_facts_and_evidence() -> None:
    report = load("scout-cpu")
    huge_check = CheckResult(
        "huge-evidence",
        "Lots of evidence",
        "test",
        Status.FAIL,
        "x" * 5_000,
        tuple(Evidence(f"k{i}", "v" * 1_000, "test") for i in range(500)),
        Fix("do it", ("echo " + "y" * 10_000,)),
    )
    big = dataclasses.replace(
        report, checks=(*report.checks, huge_check), facts={**report.facts, "blob": "z" * 500_000}
    )
    for facts in (False, True):
        assert len(render_markdown(big, facts=facts)) <= HARD_LIMIT


def test_renders_with_a_real_markdown_renderer() -> None:
    report = load("scout-cpu")
    text = render_markdown(report, facts=True)
    html = to_html(text)
    assert "<h3>Problems</h3>" in html and "<h3>Environment</h3>" in html
    for check in report.checks:
        if check.status is Status.FAIL:
            assert f"<code>{check.id}</code>" in html
            for cmd in check.fix.commands if check.fix else ():
                assert (
                    cmd.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
                    in html
                )
    # "model.layers.*.feed_forward.experts" must not turn into emphasis
    assert "model.layers.*.feed_forward.experts" in html
    assert not re.search(r"<(em|strong)>[^<]*(layers|feed_forward|x86)", html)
    # every table row has as many cells as its header, though cells hold `a | b` commands
    for table in re.findall(r"<table>.*?</table>", html, re.DOTALL):
        header_cells = len(re.findall(r"<th[ >]", table.split("</tr>")[0]))
        for row in re.findall(r"<tr>.*?</tr>", table.split("</thead>")[1], re.DOTALL):
            assert len(re.findall(r"<td[ >]", row)) == header_cells, row
    assert html.count("<details>") == html.count("</details>")


def test_escaping_keeps_text_and_code_as_written() -> None:
    html = to_html(md_text("token <redacted:HF_TOKEN> in model.layers.*.x_y and `a_b | c*`"))
    assert "&lt;redacted:HF_TOKEN&gt;" in html
    assert "model.layers.*.x_y" in html and "<code>a_b | c*</code>" in html


@pytest.mark.slow
def test_scout_ticket_from_the_real_cli_fits() -> None:
    proc = run_module("-m", "doctor", *SCOUT_ARGS, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.startswith("## niah-doctor") and "### Problems" in proc.stdout
    assert len(proc.stdout) <= TYPICAL_LIMIT
    with_facts = run_module("-m", "doctor", *SCOUT_ARGS, "--facts", timeout=300)
    assert len(with_facts.stdout) <= HARD_LIMIT and "Raw facts" in with_facts.stdout
