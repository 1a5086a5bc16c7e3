"""Multi-GPU placement (issue 5): the doctor places decoder layers on GPUs the way transformers'
`device_map="auto"` does, honours --max-memory per GPU, and a run records layers per device."""

from __future__ import annotations

import re

import pytest

from doctor.memory.estimate import gpu_budgets
from doctor.memory.placement import CPU, place_blocks
from niah_run.backends.hf import layers_per_device

GIB = 1 << 30


def test_gpu_budgets_reads_gpu_entries_by_accelerates_rules() -> None:
    assert gpu_budgets("0=70GiB,1=70GB,cpu=200GiB") == ((0, 70 * GIB), (1, 70 * 10**9))
    assert gpu_budgets(None) == ()


def test_a_gpu_missing_from_max_memory_gets_nothing() -> None:
    assert place_blocks([4, 4, 4], [0, 20]) == [1, 1, 1]
    assert place_blocks([4, 4, 4], [0, 0]) == [CPU, CPU, CPU]


def test_layers_per_device_summarizes_the_map() -> None:
    summary = layers_per_device(
        {
            "model.embed_tokens": 0,
            "model.layers.0": 0,
            "model.layers.1": 0,
            "model.layers.2": 1,
            "model.norm": 1,
            "lm_head": 1,
        }
    )
    assert summary == {
        "cuda:0": {"other": ["model.embed_tokens"], "layer_count": 2, "layers": "0-1"},
        "cuda:1": {"other": ["model.norm", "lm_head"], "layer_count": 1, "layers": "2"},
    }
    assert layers_per_device(None) is None


def _scout_config(layers: int) -> dict:
    from transformers import Llama4TextConfig

    return Llama4TextConfig(
        hidden_size=5120,
        num_attention_heads=40,
        num_key_value_heads=8,
        head_dim=128,
        num_local_experts=16,
        intermediate_size=8192,
        intermediate_size_mlp=16384,
        attention_chunk_size=8192,
        vocab_size=202048,
        num_hidden_layers=layers,
        no_rope_layers=[0 if (i + 1) % 4 == 0 else 1 for i in range(layers)],
        interleave_moe_layer_step=1,
        tie_word_embeddings=False,
        dtype="bfloat16",
    ).to_dict()


def _transformers_layers(config: dict, max_memory: dict) -> dict[int, list[int]]:
    import torch
    from transformers import Llama4ForCausalLM, Llama4TextConfig
    from transformers.integrations.accelerate import _get_device_map

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):  # not init_empty_weights: it initializes on the CPU first (slow)
            model = Llama4ForCausalLM(Llama4TextConfig(**config))
    finally:
        torch.set_default_dtype(previous)
    device_map = _get_device_map(model, "auto", dict(max_memory), None)
    out: dict[int, list[int]] = {}
    for name, device in device_map.items():
        match = re.search(r"layers\.(\d+)$", name)
        if match:
            out.setdefault(device if isinstance(device, int) else CPU, []).append(int(match.group(1)))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("max_memory", ["0=70GiB,1=70GiB", "0=30GiB,1=70GiB", "0=40GiB,1=40GiB,2=40GiB"])
def test_doctor_places_layers_like_transformers_auto(max_memory: str) -> None:
    pytest.importorskip("accelerate")
    from doctor.memory.skeleton import size_model
    from run_plan.sizes import parse_max_memory

    config = _scout_config(20)  # 85.9 GiB of bf16 weights: more than one 80 GB card
    sizing = size_model(
        {
            "config": config,
            "quant": "none",
            "prequantized": False,
            "double_quant": True,
            "bnb_4bit_type": "nf4",
            "dtype": "bfloat16",
            "quantization_config": None,
        }
    )
    budgets = gpu_budgets(max_memory)
    placement = place_blocks([b["bytes"] for b in sizing["blocks"]], [b for _, b in budgets])
    doctor: dict[int, list[int]] = {}
    for block, gpu in zip(sizing["blocks"], placement):
        match = re.search(r"layers\.(\d+)$", block["name"])
        if match:
            doctor.setdefault(gpu, []).append(int(match.group(1)))
    assert doctor == _transformers_layers(config, parse_max_memory(max_memory))


@pytest.mark.slow
def test_multi_gpu_benchmark_smoke_on_cpu(tmp_path) -> None:
    """benchmarks/multi_gpu_sweep.py --tiny --device cpu: planned map over two pretend GPUs, random
    weights, our Sweep + HFBackend, the doctor's estimate; placement must agree with accelerate."""
    import importlib.util
    import json
    from pathlib import Path

    pytest.importorskip("accelerate")
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "multi_gpu_sweep.py"
    spec = importlib.util.spec_from_file_location("multi_gpu_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--tiny", "--device", "cpu", "--lengths", "256", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "multi_gpu_sweep.json").read_text())
    assert doc["status"] == "done" and doc["placement_matches_doctor"] is True
    assert doc["cases"][0]["statuses"] == ["ok", "ok"]
    saved = json.loads((tmp_path / "runs" / "len-256" / "config.json").read_text())
    assert saved["backend"]["placement"]["cpu"]["layer_count"] == 4


def _real_benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "multi_gpu_real.py"
    spec = importlib.util.spec_from_file_location("multi_gpu_real", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_real_checkpoint_benchmark_compares_maps_and_peaks() -> None:
    """benchmarks/multi_gpu_real.py (issue 16): hf_device_map vs the doctor's map, per-GPU peaks vs the
    plan's predictions, read from niah's results rows (the GPU run itself needs 2 GPUs)."""
    bench = _real_benchmark()
    actual = {
        "model.embed_tokens": 0,
        "model.layers.0": 0,
        "model.layers.1": 1,
        "model.norm": 1,
        "lm_head": 1,
    }
    assert bench.layers_by_device(actual) == {"cuda:0": [0], "cuda:1": [1]}
    assert bench.normalized(actual) == bench.normalized({k: str(v) for k, v in actual.items()})
    rows = [
        {
            "context_tokens": 8192,
            "status": "ok",
            "predicted_peak_bytes": {"cuda:0": 100, "cuda:1": 100},
            "memory": {"per_gpu_peak_bytes": {"cuda:0": 90, "cuda:1": 101}},
        }
    ]
    table = bench.peaks_table(rows)
    assert [(r["device"], r["within_prediction"]) for r in table] == [("cuda:0", True), ("cuda:1", True)]
    rows[0]["memory"]["per_gpu_peak_bytes"]["cuda:1"] = 103  # more than 2 % over the prediction
    assert bench.peaks_table(rows)[1]["within_prediction"] is False
    doc = {
        "peaks": table,
        "placement": {"actual_layers": {"cuda:0": [0, 1]}, "doctor_layers": {"cuda:0": [0, 1]}},
    }
    assert "| cuda:0 | 0-1 | 0-1 |" in bench.markdown(doc)
    report = bench.doctor_report(
        {
            "rc": 1,
            "stdout": '{"summary": {"verdict": "x"}, "checks": [{"id": "memory-fit", '
            '"status": "fail", "summary": "no"}], "plan": {"max_context_tokens": 5}}',
            "stderr_tail": "",
        }
    )
    assert report["memory_fit"]["status"] == "fail" and report["max_context_tokens"] == 5
    assert report["failing_checks"] == ["memory-fit"]
