"""Run arguments: --max-memory parsed exactly as accelerate parses it (a differential property test
against accelerate's own convert_file_size_to_int), device_map values, attention back-ends, dtype.
Property tests for parse_max_memory and parse_token_count: round trips, only UsageError."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from doctor.context import DoctorContext
from doctor.model_config import ModelResolution
from doctor.probes.run_args import RunArgFacts, run_args_probe
from doctor.registry import load_checks
from doctor.report.model import Status
from doctor.runner import run_check
from run_plan.errors import UsageError
from run_plan.sizes import format_max_memory, max_memory_bytes, parse_max_memory, size_to_bytes
from run_plan.spec import RunSpec, parse_token_count

# ---------------------------------------------------------------- parse_max_memory


def test_parses_the_documented_example() -> None:
    assert parse_max_memory("0=70GiB,1=70GiB,cpu=200GiB") == {0: "70GiB", 1: "70GiB", "cpu": "200GiB"}
    assert max_memory_bytes({0: "75Gb"}) == {0: 75 * 10**9 // 8}  # bits: 9.4 GB
    assert size_to_bytes("80GB") == 80 * 10**9 and size_to_bytes("80GiB") == 80 * 2**30


@pytest.mark.parametrize(
    "text, words",
    [
        ("cpu=auto", "'auto' is not in a valid format"),  # the seed's ValueError
        ("cuda:0=70GiB", "use 0"),
        ("gpu0=70GiB", "use 0"),
        ("0=75G", "not in a valid format"),
        ("0=75 gigs", "not in a valid format"),
        ("nvme=10GiB", "not a device accelerate knows"),
        ("0=70GiB,0=60GiB", "given twice"),
        ("0:70GiB", "no '='"),
        ("", "empty"),
        ("0=-5GB", "negative"),
        ("0=infGB", "finite"),
    ],
)
def test_bad_values_name_the_problem(text: str, words: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_max_memory(text)
    assert words in info.value.message and "\n" not in info.value.message


SIZE_TEXT = st.text(alphabet="0123456789.-+eEinfaGMKBibg ", max_size=10)


@settings(max_examples=400, deadline=None)
@given(SIZE_TEXT)
def test_replica_agrees_with_accelerate(text: str) -> None:
    """Differential: our parser accepts exactly what accelerate accepts, with the same byte count.
    Known, deliberate difference: a digit-only string is bytes for us (accelerate wants an int)."""
    from accelerate.utils import convert_file_size_to_int

    try:
        theirs: int | None = convert_file_size_to_int(text)
    except (ValueError, OverflowError):
        theirs = None
    try:
        ours: int | None = size_to_bytes(text)
    except UsageError:
        ours = None
    if text.strip().isdigit():
        assert ours == int(text.strip())
    else:
        assert ours == theirs


KEYS = st.one_of(st.integers(0, 15), st.sampled_from(["cpu", "disk", "mps"]))
SIZES = st.builds(
    lambda n, u: f"{n}{u}", st.integers(0, 10**4), st.sampled_from(["GiB", "MiB", "KiB", "GB", "MB", "KB"])
)


@given(st.dictionaries(KEYS, st.one_of(SIZES, st.integers(0, 10**12)), min_size=1, max_size=6))
def test_max_memory_round_trips(budget: dict) -> None:
    assert parse_max_memory(format_max_memory(budget)) == budget


@given(st.text(max_size=40))
def test_max_memory_only_raises_usage_error(text: str) -> None:
    try:
        parsed = parse_max_memory(text)
    except UsageError as exc:
        assert exc.message and "\n" not in exc.message
    else:
        assert parsed and all(isinstance(k, int) or k in ("cpu", "disk", "mps") for k in parsed)


# ---------------------------------------------------------------- parse_token_count


@given(st.integers(1, 2**31 // 1024))  # run_plan caps token counts at 2^31 (no model has more positions)
def test_token_count_round_trips(n: int) -> None:
    assert parse_token_count(str(n)) == n
    assert parse_token_count(f"{n}k") == n * 1024


@given(st.text(max_size=20))
def test_token_count_only_raises_usage_error(text: str) -> None:
    try:
        value = parse_token_count(text)
    except UsageError:
        return
    assert isinstance(value, int) and value > 0


# ---------------------------------------------------------------- the checks (fake GPUs via the snapshot)


@dataclass(frozen=True)
class FakeGpu:
    name: str
    memory_total_bytes: int
    compute_capability: tuple[int, int]
    memory_free_bytes: int | None = None


@dataclass(frozen=True)
class FakeNvml:
    gpus: tuple[FakeGpu, ...]


H100 = FakeNvml((FakeGpu("NVIDIA H100 80GB HBM3", 85_520_809_984, (9, 0)),))
T4 = FakeNvml((FakeGpu("Tesla T4", 16_106_127_360, (7, 5)),))
VERSIONS = {
    "torch": "2.6.0",
    "accelerate": "1.6.0",
    "triton": "3.2.0",
    "flash-attn": None,
    "transformers": "4.52.4",
}


def facts(
    sizes: dict | None = None, errors: dict | None = None, problem: str | None = None, **versions: str | None
) -> RunArgFacts:
    return RunArgFacts({**VERSIONS, **versions}, False, sizes, errors or {}, problem)


def run_named(check_id: str, target: RunSpec, snapshot: dict) -> tuple[Status, str]:
    spec = next(s for s in load_checks() if s.id == check_id)
    result, _ = run_check(spec, DoctorContext.from_snapshot(target, snapshot))
    return result.status, result.summary


def test_lowercase_b_warns_loudly_about_bits() -> None:
    status, summary = run_named(
        "max-memory-format",
        RunSpec(max_memory="0=75Gb"),
        {"run-args": facts({"75Gb": 9_375_000_000}), "nvml": H100},
    )
    assert status is Status.WARN and "BITS" in summary and "9.4 GB" in summary


def test_budget_above_the_card_fails() -> None:
    status, summary = run_named(
        "max-memory-format",
        RunSpec(max_memory="0=90GiB"),
        {"run-args": facts({"90GiB": 90 * 2**30}), "nvml": H100},
    )
    assert status is Status.FAIL and "above the card's capacity" in summary


def test_budget_above_free_memory_warns() -> None:
    busy = FakeNvml((FakeGpu("NVIDIA H100 80GB HBM3", 85_520_809_984, (9, 0), memory_free_bytes=40 * 2**30),))
    status, summary = run_named(
        "max-memory-format",
        RunSpec(max_memory="0=70GiB"),
        {"run-args": facts({"70GiB": 70 * 2**30}), "nvml": busy},
    )
    assert status is Status.WARN and "free memory" in summary


def test_gb_vs_gib_note_and_confidence() -> None:
    status, summary = run_named(
        "max-memory-format",
        RunSpec(max_memory="0=70GB,cpu=100GiB"),
        {"run-args": facts({"70GB": 70 * 10**9, "100GiB": 100 * 2**30}), "nvml": H100},
    )
    assert status is Status.PASS and "65.2 GiB" in summary and "lower confidence" not in summary
    status, summary = run_named(
        "max-memory-format",
        RunSpec(max_memory="0=70GiB"),
        {"run-args": facts(problem="accelerate is not installed"), "nvml": H100},
    )
    assert status is Status.PASS and "lower confidence" in summary


def test_accelerate_verdict_wins_and_bad_target_fails_without_cli() -> None:
    status, summary = run_named(
        "max-memory-format",
        RunSpec(max_memory="0=70GiB"),
        {"run-args": facts({"70GiB": None}, {"70GiB": "ValueError: simulated"})},
    )
    assert status is Status.FAIL and "accelerate rejects" in summary
    status, summary = run_named("max-memory-format", RunSpec(max_memory="cpu=auto"), {"run-args": facts()})
    assert status is Status.FAIL and "auto" in summary


def test_max_memory_skips_when_absent() -> None:
    assert run_named("max-memory-format", RunSpec(), {"run-args": facts()})[0] is Status.SKIP


@pytest.mark.parametrize(
    "value, status",
    [
        ("auto", Status.PASS),
        ("balanced_low_0", Status.WARN),
        ("cuda:0", Status.PASS),
        ("cuda:3", Status.FAIL),
        ("gpu", Status.FAIL),
    ],
)
def test_device_map_values(value: str, status: Status) -> None:
    assert run_named("device-map-value", RunSpec(device_map=value), {"nvml": H100})[0] is status


def test_attention_backends() -> None:
    status, summary = run_named(
        "attn-implementation", RunSpec(attn="flash_attention_2"), {"run-args": facts()}
    )
    assert status is Status.FAIL and "flash-attn" in summary
    status, summary = run_named(
        "attn-implementation", RunSpec(attn="flex_attention"), {"run-args": facts(torch="2.4.1")}
    )
    assert status is Status.WARN and "2.5" in summary
    status, _ = run_named("attn-implementation", RunSpec(attn="eager", context=131072), {"run-args": facts()})
    assert status is Status.WARN
    assert run_named("attn-implementation", RunSpec(), {"run-args": facts()})[0] is Status.PASS


@pytest.mark.parametrize(
    "target, nvml, status, words",
    [
        (RunSpec(attn="niah_lean"), H100, Status.PASS, "flash kernel"),
        (RunSpec(attn="niah_lean"), FakeNvml(()), Status.FAIL, "no GPU is planned"),
        (RunSpec(attn="niah_lean", dtype="float32"), FakeNvml(()), Status.FAIL, "no GPU is planned"),
        (RunSpec(attn="niah_lean"), T4, Status.FAIL, "sm_75"),
        (RunSpec(attn="niah_lean", gpus="1xV100-32GB"), H100, Status.FAIL, "sm_70"),
        (RunSpec(attn="niah_lean", device_map="cpu"), H100, Status.FAIL, "--device-map cpu"),
    ],
)
def test_the_lean_attention_without_a_gpu_that_runs_it_is_a_fail(
    target: RunSpec, nvml: FakeNvml, status: Status, words: str
) -> None:
    """On the CPU it would be the math reference (slower, larger, not what the plan sized), and on a card
    older than sm_80 torch's flash op refuses: either way a FAIL with sdpa as the fix, whatever the dtype."""
    got, summary = run_named("attn-implementation", target, {"run-args": facts(), "nvml": nvml})
    assert got is status and words in summary, summary


def test_dtype_against_gpu_and_model() -> None:
    status, summary = run_named("dtype-choice", RunSpec(dtype="bfloat16"), {"nvml": T4})
    assert status is Status.FAIL and "7.5" in summary
    llama4 = ModelResolution("m", "found", "", model_type="llama4", config={"model_type": "llama4"})
    status, summary = run_named("dtype-choice", RunSpec(dtype="float16"), {"model": llama4, "nvml": H100})
    assert status is Status.WARN and "bfloat16" in summary
    auto_bf16 = ModelResolution("m", "found", "", model_type="llama", config={"torch_dtype": "bfloat16"})
    assert run_named("dtype-choice", RunSpec(), {"model": auto_bf16, "nvml": T4})[0] is Status.FAIL


@pytest.mark.slow
def test_probe_asks_accelerate_itself_in_a_child() -> None:
    got = run_args_probe(RunSpec(max_memory="0=75Gb,cpu=200GiB"))
    assert got.accelerate_error is None, got.accelerate_error
    assert got.accelerate_sizes == {"75Gb": 9_375_000_000, "200GiB": 200 * 2**30}


# ---------------------------------------------------------------- --max-memory in the dict form a script uses


def test_max_memory_accepts_the_python_and_json_dict_forms() -> None:
    assert parse_max_memory('{0: "75GiB", "cpu": "200GiB"}') == {0: "75GiB", "cpu": "200GiB"}
    assert parse_max_memory('{"0": "75GiB", "1": 80000000000}') == {0: "75GiB", 1: 80000000000}


@pytest.mark.parametrize(
    "text, words",
    [
        (
            '{"0": "75GiB", "cpu": "auto"}',
            "'auto' is not in a valid format",
        ),  # the seed's ValueError, dict form
        ('{0: "70GiB", "0": "60GiB"}', "given twice"),
        ('{"cuda:0": "70GiB"}', "use 0"),
        ("{0: GPU_BUDGET}", "not a dict of literals"),  # a name: never evaluated
        ('{"a", "b"}', "must be a dict"),
    ],
)
def test_bad_dict_forms_name_the_problem(text: str, words: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_max_memory(text)
    assert words in info.value.message and "\n" not in info.value.message


# ---------------------------------------------------------------- script-settings: what the run script passes

STORY_SCRIPT = """\
import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

MODEL_ID = "{model}"
USE_4BIT_QUANTIZATION = False

def load():
    quantization_config = None
    if USE_4BIT_QUANTIZATION:
        quantization_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    return AutoModelForCausalLM.from_pretrained(MODEL_ID, device_map="auto", max_memory={{0: "75GiB", "cpu": "auto"}},
                                                attn_implementation="{attn}", quantization_config=quantization_config)
"""


def _script_result(tmp_path, text: str, *, committed: str | None = None, target_model: str | None = None):
    import os
    import subprocess

    from doctor.probes.run_args import script_settings_probe

    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    script = tmp_path / "long_context_test.py"
    if committed is not None:
        subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=env)
        script.write_text(committed)
        subprocess.run(["git", "add", script.name], cwd=tmp_path, check=True, env=env)
        subprocess.run(["git", "commit", "-q", "-m", "x"], cwd=tmp_path, check=True, env=env)
    script.write_text(text)
    target = RunSpec(scripts=(str(script),), model=target_model)
    snapshot = {"script-settings": script_settings_probe(target), "run-args": facts(), "nvml": H100}
    spec = next(s for s in load_checks() if s.id == "script-settings")
    result, _ = run_check(spec, DoctorContext.from_snapshot(target, snapshot))
    return result


def test_script_story_findings_cite_file_and_line(tmp_path) -> None:
    real = "meta-llama/Llama-4-Scout-17B-16E-Instruct"
    result = _script_result(
        tmp_path,
        STORY_SCRIPT.format(model=real, attn="sdpa"),
        committed=STORY_SCRIPT.format(model="meta-llama/Llama-4-Scout-10M-hf", attn="sdpa"),
    )
    assert result.status is Status.FAIL
    summary = result.summary
    # the placeholder committed, the real id only in the working tree: one line, with the line number
    assert (
        "long_context_test.py:4: the committed file (HEAD, line 4) has model 'meta-llama/Llama-4-Scout-10M-hf'"
        in summary
        and f"the working tree has '{real}'" in summary
    )
    assert "quantization is off behind a flag" in summary and "USE_4BIT_QUANTIZATION = False at" in summary
    assert "long_context_test.py:11: max_memory=" in summary and "'auto' is not in a valid format" in summary
    assert any(e.key == "long_context_test.py.model.committed" for e in result.evidence)


def test_script_attention_that_will_fail(tmp_path) -> None:
    text = STORY_SCRIPT.format(model="org/model", attn="flash_attention_2").replace(
        '"cpu": "auto"', '"cpu": "9GiB"'
    )
    result = _script_result(tmp_path, text)
    assert result.status is Status.FAIL and "flash-attn package" in result.summary
    text = STORY_SCRIPT.format(model="org/model", attn="flash_attn").replace('"cpu": "auto"', '"cpu": "9GiB"')
    assert "not an implementation transformers knows" in _script_result(tmp_path, text).summary


def test_script_too_dynamic_warns_only_when_no_flag_names_the_model(tmp_path) -> None:
    text = (
        "import sys\nfrom transformers import AutoModelForCausalLM\n"
        "model = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
    )
    result = _script_result(tmp_path, text)
    assert result.status is Status.WARN and "could not determine: model at" in result.summary
    assert _script_result(tmp_path, text, target_model="org/model").status is Status.PASS


def test_script_fixes_are_code_at_the_scripts_line_never_shell_lines(tmp_path) -> None:
    """A budget or attention the script sets is fixed in the script: code at file:line, not a `$` line."""
    text = STORY_SCRIPT.format(model="org/model", attn="flash_attention_2").replace(
        '"cpu": "auto"', '"cpu": "9Gb"'
    )
    result = _script_result(tmp_path, text)
    assert result.fix is not None
    edits = {e.code: e.where for e in result.fix.edits}
    assert edits['attn_implementation="sdpa"'].endswith("long_context_test.py:12")
    budget = next(code for code in edits if code.startswith("max_memory="))
    assert budget == "max_memory={0: '75GiB', 'cpu': '9GB'}"  # the script's own budget, bytes this time
    assert all(not c.startswith(("--", "from_pretrained", "max_memory")) for c in result.fix.commands)


def test_flag_fixes_are_the_whole_doctor_command_with_the_flag_changed() -> None:
    spec = next(s for s in load_checks() if s.id == "max-memory-format")
    for budget, corrected in (("0=75Gb", "0=75GB"), ("cuda:0=70GiB", "0=70GiB"), ("0=90GiB", "0=71GiB")):
        target = RunSpec(model="org/m", max_memory=budget, sources=(("max_memory", "flag"),))
        snapshot = {"run-args": facts({"75Gb": 9_375_000_000, "90GiB": 90 * 2**30}), "nvml": H100}
        result, _ = run_check(spec, DoctorContext.from_snapshot(target, snapshot))
        assert result.fix is not None and result.fix.commands, budget
        assert result.fix.commands[0] == f"doctor --model org/m --max-memory {corrected}", budget
    # what was meant cannot be told: no made-up command, the form in words
    result, _ = run_check(
        spec, DoctorContext.from_snapshot(RunSpec(max_memory="cpu=auto"), {"run-args": facts()})
    )
    assert result.fix is not None and not result.fix.commands and "--max-memory 0=74GiB" in result.fix.summary
