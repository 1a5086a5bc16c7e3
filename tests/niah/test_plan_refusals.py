"""What the plan must see before a run: refusals of the lean path that depend on the position, models
whose chunked prefill is not exact, and the probe's forward spelled as the installed transformers wants."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from doctor.runtime import attention as lean
from doctor.runtime.forward import inspect_forward
from doctor.runtime.paths import lean_refusal

VOCAB = 64


def _tiny(model_type: str, **overrides: Any) -> Any:
    base = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "max_position_embeddings": 512,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(model_type, **{**base, **overrides})
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():  # fused experts start at zero: give them weight
                parameter.normal_(0.0, 0.2)
    return model


# ---------------------------------------------------------------- the probe's forward


def test_the_probe_passes_the_cache_under_the_name_the_forward_takes() -> None:
    # transformers 5.25 renamed past_key_values to cache and warns that the old name goes in 5.40
    lean.register()
    model = _tiny("llama")
    model.set_attn_implementation(lean.LEAN_ATTENTION)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert lean_refusal(model) is None
    assert not [w for w in caught if "past_key_values" in str(w.message)]


def test_the_cache_keyword_is_the_one_the_signature_names() -> None:
    class Before525:  # transformers 5.17's spelling
        def forward(
            self, input_ids: Any = None, past_key_values: Any = None, logits_to_keep: int = 0
        ) -> None:
            pass

    class Since525:
        def forward(self, input_ids: Any = None, cache: Any = None, logits_to_keep: int = 0) -> None:
            pass

    assert inspect_forward(Before525()).cache_kw == "past_key_values"
    assert inspect_forward(Since525()).cache_kw == "cache"
