"""The harder needle kinds and depth honesty through a whole `niah run` (fake backend, no model)."""

from __future__ import annotations

import json
import re

import pytest

from doctor.boundary import run_cli
from niah_run.backends.base import Generation
from niah_run.cli import niah_command
from tests.niah.fakes import FakeBackend


class SolvingBackend(FakeBackend):
    """A test double that solves every kind by reading the prompt (a real backend never decodes)."""

    def generate(self, input_ids, *, max_new_tokens, reusable_prefix_len=0, **hints):
        prompt = self._tokenizer.decode(input_ids)
        document, _, question = prompt.partition("</document>")
        if "How many times" in question:
            animal = re.search(r"is an? (\w+) mentioned", question).group(1)
            text = str(len(re.findall(rf"\b{animal}\b", document)))
        elif "Which character" in question:
            match = re.search(r"Actually, (\w+) lives next to", document)
            text = match.group(1) if match else "No character has been there."
        elif "in the order they appear" in question:
            text = ", ".join(re.findall(r"magic numbers for \w+ is: (\d+)", document)) or "There is none."
        else:
            match = re.search(r"passkey is (\d+)", document)
            text = match.group(1) if match else "There is no passkey."
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"][:max_new_tokens]
        return Generation(
            output_ids=tuple(ids),
            stopped_at_eos=True,
            prefill_seconds=0.01,
            decode_seconds=0.01,
            reused_prefix_tokens=reusable_prefix_len,
        )


@pytest.fixture()
def solver(monkeypatch):
    import niah_run.sweep as sweep_module

    backend = SolvingBackend()
    monkeypatch.setattr(sweep_module, "make_backend", lambda config: backend)
    return backend


def _run(out, *args: str) -> list[dict]:
    code = run_cli(
        niah_command,
        [
            "run",
            "--lengths",
            "700,1400",
            "--depths",
            "0,50,100",
            "--skip-preflight",
            "-q",
            "--controls",
            "1",
            "--max-new-tokens",
            "80",
            "--out",
            str(out),
            *args,
        ],
        prog_name="niah",
    )
    assert code == 0
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", ["association", "ordered", "counting"])
def test_new_kinds_score_a_perfect_reader_as_correct(tmp_path, solver, kind) -> None:
    rows = _run(tmp_path / kind, "--needle-kind", kind)
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    assert all(r["correct"] for r in rows), [
        (r["output_text"], r["needle_value"], r["failure_class"]) for r in rows
    ]
    assert all("extra_values" in r and r["needle_kind"] == kind for r in rows)
    summary = json.loads((tmp_path / kind / "summary.json").read_text())
    assert kind in summary["effective_length"]


def test_code_like_haystack_puts_each_needle_at_a_line_break_at_its_depth(tmp_path, solver, capsys) -> None:
    code = tmp_path / "module.py"
    code.write_text(
        "\n".join(
            f"    total_{i % 7} = compute(values[{i % 13}]) + cache.get(key_{i % 11})" for i in range(3000)
        )
        + "\n",
        encoding="utf-8",
    )
    rows = _run(tmp_path / "run", "--haystack", str(code))
    err = capsys.readouterr().err
    assert err.count("no sentence end near depth") == 1 and "line break" in err  # once, as a plain line
    assert "warning:" in err
    needles = [r for r in rows if not r["control"]]
    assert all("depth_snapped" in r and "snap_tolerance_tokens" in r for r in needles)
    # every needle went where its row says: at a line break near the requested depth, none snapped away
    assert not [r for r in needles if r["depth_snapped"]]
    assert all(abs(r["snap_tokens"]) <= r["snap_tolerance_tokens"] for r in needles), [
        (r["depth_percent"], r["actual_depth_percent"], r["snap_tokens"]) for r in needles
    ]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["depth_snapped_cells"] == 0
    assert "† at" not in (tmp_path / "run" / "summary.md").read_text()
