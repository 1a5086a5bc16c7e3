"""doctor.probes.script_reader reads a run script's settings with ast, never executing it. The scripts are
shaped like the one in the story behind this tool: a `MODEL_ID` constant, `USE_4BIT_QUANTIZATION = False`
guarding the BitsAndBytesConfig, `max_memory` with `"cpu": "auto"`, a placeholder id committed while
the working tree has the real one — and a script too dynamic to read."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from doctor.probes.script_reader import SETTING_KEYS, read_script, read_source, script_settings

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}
PLACEHOLDER = "meta-llama/Llama-4-Scout-10M-hf"
REAL = "meta-llama/Llama-4-Scout-17B-16E-Instruct"

STORY = """\
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

ORG = "meta-llama"
MODEL_ID = f"{ORG}/Llama-4-Scout-17B-16E-Instruct"
USE_4BIT_QUANTIZATION = False
TARGET_CHAR_COUNT = 800_000
MAX_CONTEXT_TOKENS = 192 * 1024


def load_model():
    quantization_config = None
    if USE_4BIT_QUANTIZATION:
        quantization_config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
    tokenizer = AutoTokenizer.from_pretrained(MODEL_ID)
    model = AutoModelForCausalLM.from_pretrained(
        MODEL_ID,
        device_map="auto",
        max_memory={0: "75GiB", "cpu": "auto"},
        torch_dtype=torch.bfloat16,
        attn_implementation="sdpa",
        quantization_config=quantization_config,
        trust_remote_code=False,
    )
    return tokenizer, model
"""

DYNAMIC = """\
import argparse, json, os
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

def main(config_path):
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="meta-llama/Llama-3.1-8B-Instruct")
    args = parser.parse_args()
    cfg = json.load(open(config_path))
    quant = BitsAndBytesConfig(load_in_4bit=True) if os.environ.get("QUANT") == "4bit" else None
    return AutoModelForCausalLM.from_pretrained(args.model, quantization_config=quant,
                                                max_memory=cfg["max_memory"], torch_dtype=os.getenv("DTYPE"))
"""


def sh(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, check=True, capture_output=True)


def test_the_story_script_is_read_without_running_it(tmp_path: Path) -> None:
    script = tmp_path / "long_context_test.py"
    script.write_text(STORY + "\nraise SystemExit('executing this file is a bug in the reader')\n")
    reading = read_script(script)
    s = reading.settings
    assert reading.problem is None and set(s) <= set(SETTING_KEYS)
    assert s["model"].value == REAL and s["model"].line == 5  # the f-string constant, cited where it is set
    assert s["quant"].value == "none" and s["quant"].determined
    assert (
        "USE_4BIT_QUANTIZATION = False" in s["quant"].note and ":13" in s["quant"].note
    )  # the guarding `if`
    assert s["max_memory"].value == {0: "75GiB", "cpu": "auto"}
    assert s["max_memory"].flag_text() == "0=75GiB,cpu=auto" and s["max_memory"].line == 24
    assert (s["attn"].value, s["dtype"].value, s["device_map"].value) == ("sdpa", "bfloat16", "auto")
    assert s["trust_remote_code"].value is False
    assert s["context"].value == 196608 and s["context"].note == "module constant MAX_CONTEXT_TOKENS"


def test_the_flag_on_turns_4bit_on_with_its_options(tmp_path: Path) -> None:
    settings, _ = read_source(
        STORY.replace("USE_4BIT_QUANTIZATION = False", "USE_4BIT_QUANTIZATION = True"), "r.py"
    )
    quant = settings["quant"]
    assert quant.value == "bnb-4bit" and quant.line == 14
    assert dict(quant.extra) == {"bnb_4bit_type": "nf4", "double_quant": True}


def test_placeholder_committed_real_id_only_in_the_working_tree(tmp_path: Path) -> None:
    sh(tmp_path, "init", "-q")
    script = tmp_path / "long_context_test.py"
    script.write_text(STORY.replace('f"{ORG}/Llama-4-Scout-17B-16E-Instruct"', f'"{PLACEHOLDER}"'))
    sh(tmp_path, "add", script.name)
    sh(tmp_path, "commit", "-q", "-m", "placeholder")
    script.write_text(STORY)  # the fix, edited but never committed
    model = read_script(script).settings["model"]
    assert model.value == REAL
    assert model.committed is not None and model.committed.value == PLACEHOLDER and model.committed.line == 5
    # Settings that did not change carry no committed copy.
    assert read_script(script).settings["max_memory"].committed is None


def test_committed_and_unchanged_has_no_revision_and_untracked_says_so(tmp_path: Path) -> None:
    sh(tmp_path, "init", "-q")
    (tmp_path / "run.py").write_text(STORY)
    sh(tmp_path, "add", "run.py")
    sh(tmp_path, "commit", "-q", "-m", "x")
    assert all(s.committed is None for s in read_script(tmp_path / "run.py").settings.values())
    (tmp_path / "new.py").write_text(STORY)
    assert "not committed" in (read_script(tmp_path / "new.py").committed_problem or "")


def test_a_script_too_dynamic_to_read_says_could_not_determine(tmp_path: Path) -> None:
    script = tmp_path / "dynamic.py"
    script.write_text(DYNAMIC)
    s = read_script(script).settings
    for key in ("model", "quant", "max_memory", "dtype"):
        assert (
            not s[key].determined and s[key].value is None and s[key].note.startswith("could not determine")
        )
    assert "argparse default" in s["model"].note and "meta-llama/Llama-3.1-8B-Instruct" in s["model"].note
    assert "environment variable QUANT" in s["quant"].note
    assert "environment variable DTYPE" in s["dtype"].note


def test_kwargs_dict_built_in_the_file_is_followed() -> None:
    text = """
from transformers import AutoModelForCausalLM, BitsAndBytesConfig
QUANTIZE = False
kwargs = {"device_map": "auto", "attn_implementation": "eager"}
if QUANTIZE:
    kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
model = AutoModelForCausalLM.from_pretrained("org/model", **kwargs)
"""
    settings, _ = read_source(text, "k.py")
    assert settings["attn"].value == "eager" and settings["device_map"].value == "auto"
    assert settings["quant"].value == "none"


def test_characters_are_not_tokens_and_syntax_errors_are_reported() -> None:
    settings, problem = read_source('TARGET_CHAR_COUNT = 10_000\nMODEL_NAME = "org/m"\n', "c.py")
    assert settings["model"].value == "org/m"
    assert not settings["context"].determined and "characters, not tokens" in settings["context"].note
    settings, problem = read_source("def broken(:\n", "b.py")
    assert settings == {} and problem is not None and "SyntaxError at line 1" in problem


def test_script_settings_merges_files_first_determined_wins(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(DYNAMIC)
    (tmp_path / "b.py").write_text(STORY)
    merged = script_settings([tmp_path / "a.py", tmp_path / "b.py"])
    assert merged["model"].value == REAL and merged["model"].file.endswith("b.py")
    assert merged["model"].source == f"script {merged['model'].where}"


def test_odd_files_never_raise_and_reassignment_chains_stay_cheap() -> None:
    chain = (
        "X = 1\n" + "X = X + X\n" * 60 + "from transformers import AutoModelForCausalLM\n"
        "m = AutoModelForCausalLM.from_pretrained('org/m', max_memory={0: X})\n"
    )
    settings, problem = read_source(chain, "chain.py")
    assert problem is None and settings["max_memory"].value == {0: 2**60}
    for text in (
        "MODEL_ID = MODEL_ID\n",
        "a\0b = 1\n",
        "x = " + "(" * 300 + "1" + ")" * 300 + "\n",
        "MODEL_ID = lambda: 'org/m'\nMAX_TOKENS = 2 ** 10 ** 10\n",
    ):
        settings, problem = read_source(text, "odd.py")
        assert problem is not None or all(not s.determined or s.value is not None for s in settings.values())


def test_the_shipped_example_script_is_read_as_the_readme_says() -> None:
    from tests.conftest import REPO

    settings = script_settings([str(REPO / "examples" / "long_context_test.py")])
    assert settings["model"].value == "meta-llama/Llama-4-Scout-17B-16E-Instruct"
    assert settings["quant"].value == "bnb-4bit" and settings["attn"].value == "sdpa"
    assert settings["context"].value == 131072 and settings["device_map"].value == "auto"
    assert all(settings[key].determined for key in ("model", "quant", "max_memory", "attn", "context"))
