"""Text from outside never drives the terminal: whatever field it lands in (a model id a server lists, a
config.json field, a file name, git output, an error a server sends), the text and Markdown reports and
every stderr line show its control characters as escapes, never raw.

The class test puts hostile text into every string of a saved report at once, so a field added later is
covered without a new test; the end-to-end test drives the real path from a server's /v1/models."""

from __future__ import annotations

import json
from typing import Any

import pytest

from doctor.report.load import report_from_json_dict
from doctor.report.render_markdown import render_markdown
from doctor.report.render_text import render_check, render_text
from run_plan.text import inert, is_inert
from tests.conftest import REPO

# Clear the screen, turn red, retitle the window (OSC ... BEL), plant a hyperlink, overwrite the line, a C1
# CSI, and a right-to-left override that makes "exe.txt" read as "txt.exe".
HOSTILE = "\x1b[2J\x1b[31mX\x1b]0;pwned\x07\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\\rY\x9b31m\u202eexe.txt"
# Fields whose values the model constrains (a status must stay a status; an id stays kebab-case).
_KEEP = {"status", "id", "section", "schema_version", "exit_code", "verdict"}


def _poison(node: Any, key: str = "") -> Any:
    if isinstance(node, dict):
        return {k: _poison(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [_poison(v, key) for v in node]
    if isinstance(node, str) and key not in _KEEP:
        return f"{node}{HOSTILE}"
    return node


@pytest.fixture(scope="module")
def poisoned_doc() -> dict[str, Any]:
    doc = json.loads((REPO / "tests" / "golden" / "scout-cpu.json").read_text(encoding="utf-8"))
    return _poison(doc)


def test_inert_escapes_every_control_and_reordering_character() -> None:
    shown = inert(HOSTILE)
    assert is_inert(shown) and "\\x1b[2J" in shown and "\\x07" in shown and "\\u202e" in shown
    assert inert("two\nlines\tand tabs") == "two\nlines\tand tabs"  # layout characters stay


@pytest.mark.parametrize("cols", [60, 120])
def test_every_field_of_a_report_is_inert_in_text_and_markdown(poisoned_doc, cols: int) -> None:
    report = report_from_json_dict(poisoned_doc)
    outputs = [
        render_text(report, color=False, width=cols),
        render_text(report, color=False, width=cols, verbose=True),
        render_markdown(report, facts=True),
        *(render_check(report, c.id, color=False, width=cols) for c in report.checks),
    ]
    for text in outputs:
        assert is_inert(text), [line for line in text.splitlines() if not is_inert(line)][:3]
    assert "\\x1b[2J" in outputs[1]  # shown, so the reader sees something was there


def test_colour_is_ours_alone(poisoned_doc) -> None:
    """With colour on, the only escape sequences are the renderer's own SGR codes."""
    import re

    text = render_text(report_from_json_dict(poisoned_doc), color=True, width=100, verbose=True)
    assert not is_inert(text)
    assert is_inert(re.sub(r"\x1b\[[0-9;]*m", "", text))


def test_a_model_id_served_by_a_server_reaches_the_terminal_inert(capfd) -> None:
    from doctor.boundary import run_cli
    from doctor.cli import doctor_command
    from tests.test_security_http import FakeServer, json_route

    models = {"object": "list", "data": [{"id": f"evil{HOSTILE}", "max_model_len": 4096}]}
    with FakeServer({"/v1/models": json_route(models)}) as server:
        for fmt in ("text", "markdown"):
            run_cli(
                doctor_command,
                [
                    "--base-url",
                    server.url,
                    "--model",
                    "m",
                    "--context",
                    "1024",
                    "--only",
                    "server",
                    "--format",
                    fmt,
                    "-v",
                ],
            )
            out, err = capfd.readouterr()
            assert "evil" in out, fmt
            assert is_inert(out) and is_inert(err), fmt


def test_error_lines_on_stderr_are_inert(capfd, tmp_path) -> None:
    """A file name is outside text too: the one-line error that names it must not act on the terminal."""
    from doctor.boundary import run_cli
    from niah_run.cli import (
        main,  # noqa: F401 - the niah boundary
        niah_command,
    )

    missing = tmp_path / f"run{HOSTILE}"
    assert run_cli(niah_command, ["report", str(missing)]) == 2
    _, err = capfd.readouterr()
    assert "has no results.jsonl" in err and is_inert(err)
