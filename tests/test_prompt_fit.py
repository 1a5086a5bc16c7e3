"""Lengths too short for their prompt fail in the doctor (and so in niah's preflight), before any load.

The frame a prompt holds besides the haystack (template, intro, needles, question) is counted by
run_plan.prompt_frame with the run's tokenizer, the code the sweep builds prompts with: the shortest length
the doctor names is the one from which the sweep's prompts build.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from doctor.checks.prompt_fit import lengths_hold_prompt
from doctor.context import DoctorContext
from doctor.probes import Unavailable
from doctor.probes.prompt_frame import PROMPT_FRAME, PromptFrameFacts, prompt_frame_probe
from doctor.report.model import Status
from run_plan.prompt_frame import PromptFit, PromptTooShort, shortest_lengths, trials_at
from run_plan.spec import RunSpec
from tests.niah.fakes import build_tokenizer

pytest.importorskip("transformers")

DEPTHS = (0.0, 50.0, 100.0)


def _sweep_prompts(tokenizer, length: int, kind: str, trials: int, controls: int) -> None:
    """Build every trial of `length` as the sweep builds it (niah_run.trials.RowBuilder)."""
    from niah_run.haystack import generate_haystack
    from niah_run.prompt import PromptBuilder, chat_frame, tokenize_haystack
    from niah_run.trials import RowBuilder

    spec = RunSpec(
        model="m", lengths=(length,), depths=DEPTHS, trials=trials, controls=controls, needle_kind=kind
    )
    haystack = tokenize_haystack(tokenizer, generate_haystack(seed=0, min_chars=20_000))
    rows = RowBuilder(spec, None, "identity", PromptBuilder(tokenizer, chat_frame(tokenizer), haystack))
    for trial in trials_at(length, DEPTHS, trials, controls):
        assert len(rows.prepare(trial, "key", None).prompt.input_ids) == length


@pytest.mark.parametrize("kind", ["passkey", "uuid", "multikey", "counting"])
def test_the_shortest_length_is_where_the_sweeps_prompts_start_to_build(kind: str) -> None:
    tokenizer = build_tokenizer()
    fits, shortest = shortest_lengths(
        tokenizer, [1, 4096], needle_kind=kind, seed=0, depths=DEPTHS, trials=2, controls=1
    )
    assert [fit.fits for fit in fits] == [False, True] and shortest is not None
    _sweep_prompts(tokenizer, shortest, kind, trials=2, controls=1)
    with pytest.raises(PromptTooShort):
        _sweep_prompts(tokenizer, shortest - 1, kind, trials=2, controls=1)
    # no length to search for when every planned one fits
    assert (
        shortest_lengths(tokenizer, [4096], needle_kind=kind, seed=0, depths=DEPTHS, trials=1, controls=0)[1]
        is None
    )


def _facts(*fits: PromptFit, shortest: int | None) -> PromptFrameFacts:
    return PromptFrameFacts("/models/m", "chat", 30, fits, shortest)


def test_a_length_too_short_for_its_prompt_fails_with_the_shortest_that_works() -> None:
    spec = RunSpec(model="m", lengths=(1, 2048))
    ctx = DoctorContext.from_snapshot(
        spec, {PROMPT_FRAME.name: _facts(PromptFit(1, 87), PromptFit(2048, 88), shortest=88)}
    )
    outcome = lengths_hold_prompt(ctx)
    assert outcome.status is Status.FAIL
    assert "length(s) 1 too short" in outcome.summary and "shortest that works is 88" in outcome.summary
    assert "87 tokens" in outcome.summary
    assert outcome.fix is not None and outcome.fix.commands == (
        "doctor --model m --context 2048 --lengths 88,2048",
    )
    only = RunSpec(model="m", context=16)
    ctx = DoctorContext.from_snapshot(only, {PROMPT_FRAME.name: _facts(PromptFit(16, 87), shortest=88)})
    fixed = lengths_hold_prompt(ctx).fix
    assert fixed is not None and fixed.commands == ("doctor --model m --context 88",)
    ctx = DoctorContext.from_snapshot(
        spec, {PROMPT_FRAME.name: _facts(PromptFit(1, 87), PromptFit(2048, 87), shortest=None)}
    )
    assert lengths_hold_prompt(ctx).status is Status.FAIL
    fine = DoctorContext.from_snapshot(spec, {PROMPT_FRAME.name: _facts(PromptFit(2048, 87), shortest=None)})
    assert lengths_hold_prompt(fine).status is Status.PASS


def test_a_template_that_cannot_frame_the_prompt_fails_too() -> None:
    facts = PromptFrameFacts("/models/m", None, None, template_error="the chat template does not contain ...")
    ctx = DoctorContext.from_snapshot(RunSpec(model="m", lengths=(512,)), {PROMPT_FRAME.name: facts})
    assert lengths_hold_prompt(ctx).status is Status.FAIL


def _model_folder(tmp_path: Path) -> Path:
    """A local model folder with a small Llama config and the test tokenizer (no weights: none are read)."""
    folder = tmp_path / "tiny"
    build_tokenizer().save_pretrained(folder)
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 600,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 8192,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_the_probe_counts_with_the_tokenizer_the_run_loads(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path)
    facts = prompt_frame_probe(RunSpec(model=str(folder), lengths=(1, 2048), depths=DEPTHS))
    assert isinstance(facts, PromptFrameFacts), facts
    expected = shortest_lengths(
        build_tokenizer(), [1, 2048], needle_kind="passkey", seed=0, depths=DEPTHS, trials=1, controls=0
    )
    assert (list(facts.lengths), facts.shortest) == expected
    assert facts.tokenizer_from == str(folder) and facts.template_mode == "chat"
    # nothing to count without lengths, and a server backend frames with its own --tokenizer
    assert isinstance(prompt_frame_probe(RunSpec(model=str(folder))), Unavailable)


def test_niah_run_refuses_a_too_short_length_before_loading_the_model(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    import niah_run.sweep as sweep_module
    from doctor.boundary import run_cli
    from niah_run.cli import niah_command

    def must_not_load(config):
        raise AssertionError("the model must not be loaded for a plan the doctor fails")

    monkeypatch.setattr(sweep_module, "make_backend", must_not_load)
    folder = _model_folder(tmp_path)
    out = tmp_path / "run"
    code = run_cli(
        niah_command,
        ["run", "--model", str(folder), "--lengths", "1,2048", "--depths", "50", "-q", "--out", str(out)],
        prog_name="niah",
    )
    err = capsys.readouterr().err
    assert code == 1 and "lengths-hold-prompt" in err and "the shortest that works is" in err


def test_a_gguf_tokenizer_is_read_from_the_runs_converted_copy_once_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the run loads the converted folder's tokenizer; converting the GGUF's vocabulary again costs seconds
    from doctor.model_config import ModelResolution
    from doctor.probes.prompt_frame import tokenizer_location
    from run_plan.gguf_cache import MARKER, converted_folder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF not really")
    res = ModelResolution(requested="demo", status="found", message="", source="demo", gguf_file=str(gguf))
    assert tokenizer_location(res, RunSpec(model="demo")) == (str(tmp_path), "m.gguf")
    copy = converted_folder(None, gguf, "float32")
    copy.mkdir(parents=True)
    (copy / "config.json").write_text("{}")
    assert tokenizer_location(res, RunSpec(model="demo")) == (str(tmp_path), "m.gguf")  # not complete yet
    (copy / MARKER).write_text("{}")
    assert tokenizer_location(res, RunSpec(model="demo")) == (str(copy), None)
