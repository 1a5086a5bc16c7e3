"""The model's config, tokenizer and generation config are loaded by the installed transformers in a
child process, exactly as the run loads them — no mocks: real folders, real transformers.

Cases: a field of the wrong type (Llama 4's `attn_temperature_tuning: 4`, refused since transformers
5.4.0), a model_type transformers does not know, a valid config with tokenizer and generation config,
a truncated generation_config.json (the run falls back), and the embedded Llama 4 Scout config, whose
verdict must not be OK while it does not load.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from doctor.context import DoctorContext
from doctor.model_config import resolve_model
from doctor.probes.config_load import (
    ConfigLoadFacts,
    FieldRejection,
    check_model_files,
    corrected_value,
    locate_rejection,
)
from doctor.registry import load_checks
from doctor.report.model import Status
from doctor.runner import run_check
from run_plan.spec import RunSpec

pytest.importorskip("transformers")

SCOUT = "meta-llama/Llama-4-Scout-17B-16E-Instruct"
LLAMA = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "vocab_size": 5,
    "transformers_version": "4.45.0",
}
# A small Llama 4 config written the way the published April 2025 configs are: two int flags the
# class now declares as bool.
LLAMA4_AS_PUBLISHED = {
    "model_type": "llama4",
    "architectures": ["Llama4ForConditionalGeneration"],
    "transformers_version": "4.51.0.dev0",
    "text_config": {
        "model_type": "llama4_text",
        "attn_temperature_tuning": 4,
        "use_qk_norm": 1,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "num_hidden_layers": 2,
    },
}


def _spec(check_id: str):
    return next(s for s in load_checks() if s.id == check_id)


def _judge(check_id: str, facts: object, target: RunSpec | None = None):
    ctx = DoctorContext.from_snapshot(target or RunSpec(model="m"), {"config-load": facts})
    result, _ = run_check(_spec(check_id), ctx)
    return result


def _folder(tmp_path: Path, config: dict) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _load(folder: Path) -> ConfigLoadFacts:
    facts = check_model_files(resolve_model(str(folder)), trust_remote_code=False, timeout_s=120)
    assert isinstance(facts, ConfigLoadFacts), facts
    return facts


def _save_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(str(folder))


# ---------------------------------------------------------------- real transformers, real files


def test_wrong_typed_fields_fail_with_transformers_text_field_value_and_fixes(tmp_path: Path) -> None:
    folder = _folder(tmp_path, LLAMA4_AS_PUBLISHED)
    facts = _load(folder)
    config = facts.attempt("config")
    assert config is not None and config.status == "failed"
    assert config.error_type == "StrictDataclassFieldValidationError"
    # Every refused field is listed (transformers stops at the first), located inside text_config.
    found = {r.path: (r.value, r.expected) for r in facts.rejected_fields}
    assert found == {
        "text_config.attn_temperature_tuning": (4, "bool"),
        "text_config.use_qk_norm": (1, "bool"),
    }

    result = _judge("model-config-loads", facts, RunSpec(model=str(folder)))
    assert result.status is Status.FAIL
    assert "expected bool, got int" in result.summary and "+1 more" in result.summary
    assert result.fix is not None
    commands = "\n".join(result.fix.commands)
    # a corrected value in the user's own file...
    assert (
        ".text_config.attn_temperature_tuning = true" in commands and str(folder / "config.json") in commands
    )
    # ...or the releases that accept the file as published (llama4 exists since 4.51.0; strict since 5.4.0)
    assert "transformers>=4.51.0,<5.4.0" in commands


@pytest.mark.parametrize(
    "config, said, fixed",
    [
        (
            {
                "model_type": "llama-from-the-future",
                "architectures": ["FutureForCausalLM"],
                "transformers_version": "9.1.0",
            },
            "does not recognize this architecture",
            "transformers>=9.1.0",
        ),
        ({"architectures": ["LlamaForCausalLM"], "hidden_size": 64}, "model_type", "names no model_type"),
    ],
)
def test_unknown_or_missing_model_type_fails_with_transformers_message(
    tmp_path: Path, config: dict, said: str, fixed: str
) -> None:
    folder = _folder(tmp_path, config)
    facts = _load(folder)
    result = _judge("model-config-loads", facts, RunSpec(model=str(folder)))
    assert result.status is Status.FAIL
    assert said in result.summary
    assert result.fix is not None and fixed in result.fix.summary + " ".join(result.fix.commands)


def test_valid_config_tokenizer_and_generation_config_load(tmp_path: Path) -> None:
    from transformers import GenerationConfig

    folder = _folder(tmp_path, LLAMA)
    _save_tokenizer(folder)
    GenerationConfig(bos_token_id=1, eos_token_id=2).save_pretrained(str(folder))
    facts = _load(folder)
    assert facts.rejected_fields == ()
    config = _judge("model-config-loads", facts)
    assert config.status is Status.PASS and "LlamaConfig" in config.summary
    files = _judge("tokenizer-generation-config-load", facts)
    assert files.status is Status.PASS
    assert "tokenizer:" in files.summary and "generation config: GenerationConfig" in files.summary


def test_truncated_generation_config_warns_the_run_falls_back(tmp_path: Path) -> None:
    folder = _folder(tmp_path, LLAMA)
    (folder / "generation_config.json").write_text('{"eos_token_id": [1, 2')
    facts = _load(folder)
    tokenizer = facts.attempt("tokenizer")
    assert tokenizer is not None and tokenizer.status == "not-checked"  # no tokenizer files downloaded
    result = _judge("tokenizer-generation-config-load", facts)
    assert result.status is Status.WARN and "falls back" in result.summary


def test_embedded_scout_config_does_not_load_so_the_verdict_is_not_ok() -> None:
    """The issue's case: the embedded Llama 4 Scout config carries attn_temperature_tuning: 4."""
    target = RunSpec(model=SCOUT)
    ctx = DoctorContext(target)
    result, _ = run_check(_spec("model-config-loads"), ctx)
    from transformers import __version__

    from doctor.checks.libraries import _base

    if _base(__version__) is not None and _base(__version__) < (5, 4):
        assert result.status is Status.PASS  # pre-strict transformers accepts the published file
        return
    assert result.status is Status.FAIL
    assert "attn_temperature_tuning" in result.summary and "embedded copy" in result.summary
    assert "AutoConfig.from_pretrained('meta-llama/Llama-4-Scout-17B-16E-Instruct'" in str(result.evidence)
    assert result.fix is not None and any("hf download" in c for c in result.fix.commands)


# ---------------------------------------------------------------- pure parts


def test_locate_rejection_finds_the_nested_field_of_the_reported_type() -> None:
    message = (
        "Validation error for field 'attn_temperature_tuning':\n"
        "    TypeError: Field 'attn_temperature_tuning' expected bool, got int (value: 4)"
    )
    config = {"attn_temperature_tuning": True, "text_config": {"attn_temperature_tuning": 4}}
    found = locate_rejection(message, config)
    assert (found.path, found.value, found.expected, found.got) == (
        "text_config.attn_temperature_tuning",
        4,
        "bool",
        "int",
    )


@pytest.mark.parametrize(
    "value, expected, fixed",
    [
        (4, "bool", True),
        (0, "bool", False),
        (2.0, "int", 2),
        (3, "float", 3.0),
        ("12", "int", 12),
        ("sure", "bool", None),
        (2.5, "int", None),
    ],
)
def test_corrected_value_only_when_the_meaning_is_unambiguous(
    value: object, expected: str, fixed: object
) -> None:
    rejection = FieldRejection("f", "f", value, expected, type(value).__name__, "")
    assert corrected_value(rejection) == fixed and type(corrected_value(rejection)) is type(fixed)
