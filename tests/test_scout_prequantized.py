"""benchmarks/scout_prequantized.py: the pre-quantized checkpoint it writes is one transformers loads whole.

The GPU benchmark of the real Scout geometry builds 48 such layers; here 4 tiny ones on the CPU, loaded by
transformers' own loader (no key missing, unexpected or mismatched), with the experts un-fused as a
pre-quantized load un-fuses them and each expert's Linears in 4 bits — the layout `--prequantized` sizes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("bitsandbytes")
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


def test_the_tiny_prequantized_scout_loads_whole_and_runs_routed(tmp_path: Path) -> None:
    from benchmarks.scout_prequantized import build, check_loads
    from doctor.runtime.paths import apply_experts

    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    (tokenizer / "tokenizer_config.json").write_text("{}")
    folder = tmp_path / "scout-pq"
    build(folder, tokenizer, layers=4, tiny=True)
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "bitsandbytes"
    assert config["no_rope_layers"] == [1, 1, 1, 0]
    loaded = check_loads(folder)
    assert loaded["problems"] == {}
    assert loaded["experts"] == "SequentialLlama4TextExperts"

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, device_map="cpu", dtype=torch.bfloat16)
    expert = model.model.layers[0].feed_forward.experts[0].gate_proj
    assert type(expert).__name__ == "Linear4bit"
    ids = torch.randint(0, config["vocab_size"], (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(input_ids=ids).logits
    applied = apply_experts(model, "routed")
    assert (
        applied["experts"] == "routed: niah's Llama 4 forward, each expert's own module on its routed tokens"
    )
    with torch.inference_mode():
        got = model(input_ids=ids).logits
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
