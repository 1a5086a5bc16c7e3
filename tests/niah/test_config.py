"""Run config: TOML < flags, unknown keys and wrong types name the key, property tests for the parsers."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from niah_run.config import read_saved_doc, resolve_spec
from run_plan.errors import UsageError
from run_plan.options import parse_depths, parse_lengths
from run_plan.spec import RunSpec


def resolve_config(flags: dict, config_path: str | None = None) -> RunSpec:
    return resolve_spec(flags, config_path)


def _toml(tmp_path, text: str) -> str:
    path = tmp_path / "run.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_defaults() -> None:
    config = resolve_config({})
    assert config == RunSpec(model="demo", lengths=(1024, 2048))
    assert config.model == "demo" and config.lengths == (1024, 2048) and config.needle_kind == "passkey"


def test_toml_then_flags_win(tmp_path) -> None:
    path = _toml(
        tmp_path,
        'model = "some/model"\nlengths = ["1k", 4096]\ndepths = [10, 90]\ntrials = 3\n'
        'needle_kind = "uuid"\nmax_new_tokens = 16\n',
    )
    config = resolve_config({"lengths": "2k", "trials": None}, path)
    assert config.model == "some/model" and config.lengths == (2048,) and config.depths == (10.0, 90.0)
    assert config.trials == 3 and config.needle_kind == "uuid" and config.max_new_tokens == 16


def test_run_table_and_dashes(tmp_path) -> None:
    path = _toml(tmp_path, '[run]\nneedle-kind = "word"\nmax-new-tokens = 8\n')
    config = resolve_config({}, path)
    assert config.needle_kind == "word" and config.max_new_tokens == 8


@pytest.mark.parametrize(
    "body, key",
    [
        ('modle = "x"\n', "modle"),
        ('trials = "three"\n', "trials"),
        ("trials = 0\n", "trials"),
        ("lengths = 3.5\n", "lengths"),
        ('quant = "int3"\n', "quant"),
        ("resume = 1\n", "resume"),
        ("model = 5\n", "model"),
        ('depths = ["deep"]\n', "depths"),
    ],
)
def test_bad_toml_names_the_key(tmp_path, body: str, key: str) -> None:
    with pytest.raises(UsageError, match=key):
        resolve_config({}, _toml(tmp_path, body))


@pytest.mark.parametrize(
    "body, meant",
    [
        ('attn = "NIAH_LEAN"\n', "niah_lean"),
        ('attn = "niah-lean"\n', "niah_lean"),
        ('experts = "Routed"\n', "routed"),
        ('experts = "transformer"\n', "transformers"),
    ],
)
def test_a_near_miss_choice_in_toml_suggests_the_value(tmp_path, body: str, meant: str) -> None:
    with pytest.raises(UsageError) as info:
        resolve_config({}, _toml(tmp_path, body))
    assert info.value.hint == f"Did you mean {meant!r}?"


def test_invalid_toml_and_missing_file(tmp_path) -> None:
    with pytest.raises(UsageError, match="not valid TOML"):
        resolve_config({}, _toml(tmp_path, "model = \n"))
    with pytest.raises(UsageError, match="does not exist"):
        resolve_config({}, str(tmp_path / "nope.toml"))


@pytest.mark.parametrize("depths", ["-1", "101", "50,150", "abc"])
def test_depth_outside_range(depths: str) -> None:
    with pytest.raises(UsageError):
        resolve_config({"depths": depths})


@pytest.mark.parametrize("lengths", ["0", "-5", "abc", "1.5", ""])
def test_bad_lengths(lengths: str) -> None:
    with pytest.raises(UsageError):
        resolve_config({"lengths": lengths})


def test_resume_inherits_saved_config(tmp_path) -> None:
    saved = {
        "config": {
            **RunSpec(model="m", trials=4, attn="sdpa", lengths=(1024,)).to_dict(),
            "skip_preflight": True,
        }
    }
    (tmp_path / "config.json").write_text(json.dumps(saved))
    doc = read_saved_doc(tmp_path)
    config = resolve_spec({}, None, doc)
    assert config.model == "m" and config.trials == 4 and config.source_of("trials") == "saved run"
    assert resolve_spec({"trials": 2}, None, doc).trials == 2


@pytest.mark.parametrize(
    "key, value", [("identity", 5), ("identity", "x"), ("identity_sha256", 5), ("plan_identity", [1])]
)
def test_a_saved_run_whose_identity_is_of_the_wrong_type_is_refused(tmp_path, key: str, value) -> None:
    """--resume compares the identity and keys trials by its hash: unreadable, the earlier rows would
    silently count as another test's and every trial would run again."""
    doc = {"config": RunSpec(model="m", lengths=(1024,)).to_dict(), key: value}
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(UsageError, match=f"damaged: '{key}'") as info:
        read_saved_doc(tmp_path)
    assert info.value.exit_code == 2 and info.value.hint


def test_a_saved_run_of_an_older_release_resumes_with_what_it_computed(tmp_path) -> None:
    config = RunSpec(model="m", lengths=(1024,)).to_dict()
    del config["experts"]  # written before the setting existed
    (tmp_path / "config.json").write_text(json.dumps({"config": config}))
    spec = resolve_spec({}, None, read_saved_doc(tmp_path))
    assert spec.experts == "transformers" and spec.source_of("experts") == "saved run"
    assert resolve_spec({"experts": "routed"}, None, read_saved_doc(tmp_path)).experts == "routed"


def test_toml_typo_suggests_the_key(tmp_path) -> None:
    with pytest.raises(UsageError) as info:
        resolve_config({}, _toml(tmp_path, "lenghts = [1024]\n"))
    assert "lenghts" in info.value.message and "lengths" in (info.value.hint or "")


def test_sources_say_where_each_setting_came_from(tmp_path) -> None:
    config = resolve_config({"trials": 2}, _toml(tmp_path, 'model = "m"\n'))
    assert config.source_of("trials") == "flag" and config.source_of("model") == "toml"
    assert config.source_of("depths") == "default"


@given(st.lists(st.integers(min_value=1, max_value=10_000_000), min_size=1, max_size=8))
def test_lengths_roundtrip(values: list[int]) -> None:
    assert parse_lengths(",".join(map(str, values))) == tuple(sorted(set(values)))
    assert parse_lengths(values) == tuple(sorted(set(values)))


@given(st.lists(st.integers(min_value=1, max_value=4096), min_size=1, max_size=5))
def test_k_suffix(values: list[int]) -> None:
    assert parse_lengths([f"{v}k" for v in values]) == tuple(sorted({v * 1024 for v in values}))


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), min_size=1, max_size=8))
def test_depths_in_range(values: list[float]) -> None:
    assert parse_depths(values) == tuple(sorted(set(values)))


@given(st.floats(allow_nan=False).filter(lambda v: v < 0 or v > 100))
def test_depths_out_of_range(value: float) -> None:
    with pytest.raises(UsageError):
        parse_depths([value])


@given(st.text(max_size=12))
def test_lengths_parser_never_crashes(text: str) -> None:
    try:
        result = parse_lengths(text)
    except UsageError:
        return
    assert all(isinstance(v, int) and v > 0 for v in result)
