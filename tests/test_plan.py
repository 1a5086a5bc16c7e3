"""One plan: what the doctor resolves is what `niah run` executes (issue: one plan).

The plan is resolved over the real transformers meta skeleton of embedded configs (no weights, no GPU:
`--gpus` stands in for the cards), the same path `doctor` takes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict

import pytest

from doctor.checks import plan_limits
from doctor.context import DoctorContext
from doctor.memory import embedded_config, settings_for, sizing_args
from doctor.plan import remember_static_decisions, resolve_plan, settle_static_choices
from doctor.report.model import Status
from run_plan.errors import UsageError
from run_plan.options import Layer, build_spec
from run_plan.resolved import LengthPlan, ResolvedPlan
from run_plan.spec import DEFAULT_PREFILL_CHUNK, RunSpec
from tests.conftest import run_module

pytest.importorskip("transformers")
SCOUT = "meta-llama/Llama-4-Scout-17B-16E-Instruct"
LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"
_SIZINGS: dict[tuple, dict] = {}


def _ctx(spec: RunSpec) -> DoctorContext:
    """A doctor context for `spec` with its memory facts sized once per (model, quant)."""
    from doctor.memory.skeleton import size_model

    settled, decisions = settle_static_choices(spec)
    config = embedded_config(settled.model)
    settings = settings_for(settled, config, None)
    key = (settled.model, settled.quant, settled.prequantized)
    if key not in _SIZINGS:
        _SIZINGS[key] = size_model(sizing_args(settings, config, None))
    facts = {
        "model": settled.model,
        "config_source": "embedded",
        "settings": asdict(settings),
        "sizing": _SIZINGS[key],
    }
    ctx = DoctorContext.from_snapshot(settled, {"memory": facts})
    remember_static_decisions(ctx, decisions)
    return ctx


def _scout(**values) -> RunSpec:
    return RunSpec(model=SCOUT, quant="bnb-4bit", prequantized=True, gpus="1xH100-80GB", **values)


@pytest.mark.slow
def test_every_auto_is_decided_and_the_longest_length_runs_while_ten_percent_more_is_skipped() -> None:
    first = resolve_plan(_ctx(_scout(context=4 << 20)))  # 4M tokens: beyond one card
    longest = first.max_context_tokens
    assert longest and longest < 4 << 20
    assert {d.name for d in first.decisions} == {"attn", "experts", "prefill_chunk"}
    assert first.spec.attn == "niah_lean" and first.spec.experts == "routed"  # an H100 runs the lean path
    # What `niah run --lengths 8k,L,1.1L` gets: L runs (with a chunk chosen for L), 1.1 L is skipped up front.
    plan = resolve_plan(_ctx(_scout(lengths=(8192, longest, int(longest * 1.1)))))
    assert [lp.fits for lp in plan.lengths] == [True, True, False]
    assert plan.too_long() == (int(longest * 1.1),)
    assert plan.max_context_tokens == longest
    assert all(d.predicted_peak_bytes < d.limit_bytes for lp in plan.lengths[:2] for d in lp.devices)


@pytest.mark.slow
def test_a_budget_bounds_the_whole_run_not_only_the_weights() -> None:
    roomy = resolve_plan(_ctx(_scout(context=131072)))
    tight = resolve_plan(_ctx(_scout(context=131072, max_memory="0=66GiB")))
    assert tight.max_context_tokens < roomy.max_context_tokens
    assert all(d.limit_bytes == 66 << 30 for lp in tight.lengths for d in lp.devices)


@pytest.mark.slow
def test_flex_past_its_kernel_limit_is_a_fail_and_auto_picks_the_lean_path() -> None:
    explicit = plan_limits.attention_limit(_ctx(_scout(context=1 << 20, attn="flex_attention")))
    assert explicit.status is Status.FAIL and "--attn sdpa" in " ".join(explicit.fix.commands)
    auto = _ctx(_scout(context=1 << 20))
    assert resolve_plan(auto).spec.attn == "niah_lean"
    assert plan_limits.attention_limit(auto).status is Status.PASS


@pytest.mark.slow
def test_bnb_weights_spilled_off_the_gpus_fail_like_transformers_refuses_them() -> None:
    spec = RunSpec(
        model=LLAMA_70B, quant="bnb-4bit", gpus="2xH100-80GB", max_memory="0=20GiB,1=20GiB", context=8192
    )
    outcome = plan_limits.bnb_cpu_offload(_ctx(spec))
    assert outcome.status is Status.FAIL and "off the GPU" in outcome.summary


def test_plan_file_round_trips_and_refuses_foreign_json(tmp_path) -> None:
    plan = ResolvedPlan(spec=RunSpec(model="demo", lengths=(512, 1024), attn="sdpa", prefill_chunk=256))
    plan.write(tmp_path / "plan.json")
    assert ResolvedPlan.read(tmp_path / "plan.json") == plan
    (tmp_path / "other.json").write_text(json.dumps({"checks": []}))
    with pytest.raises(UsageError, match="not a niah-doctor plan"):
        ResolvedPlan.read(tmp_path / "other.json")


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("lengths", [0], "lengths"),
        ("lengths", ["abc"], "lengths"),
        ("depths", [500], "depth"),
        ("price_per_gpu_hour", -3, "price_per_gpu_hour"),
        ("price_per_gpu_hour", 1e308, "price_per_gpu_hour"),
        ("experts", 5, "experts"),
        ("trials", "2", "trials"),
        ("sources", 5, "sources"),
        ("bogus", 1, "bogus"),
    ],
)
def test_a_plan_files_settings_are_checked_as_flags_are(tmp_path, key: str, value, words: str) -> None:
    """A plan file is text from outside: a value no flag accepts stops `niah run --plan` before anything
    runs (exit 2, naming the key), not in the middle of the sweep or as an internal error."""
    plan = ResolvedPlan(spec=RunSpec(model="demo", lengths=(512, 1024), attn="sdpa", prefill_chunk=256))
    doc = plan.to_dict()
    doc["spec"][key] = value
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    with pytest.raises(UsageError, match=words) as info:
        ResolvedPlan.read(tmp_path / "plan.json")
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    "change", [{"max_context_tokens": "abc"}, {"max_context_tokens": -5}, {"fits": "false"}]
)
def test_a_plan_files_predictions_of_the_wrong_type_are_refused(tmp_path, change: dict) -> None:
    plan = ResolvedPlan(
        spec=RunSpec(model="demo", lengths=(512,), attn="sdpa", prefill_chunk=256),
        lengths=(LengthPlan(512, False, why_not="too long"),),
    )
    doc = plan.to_dict()
    if "fits" in change:
        doc["lengths"][0].update(change)
    else:
        doc.update(change)
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    with pytest.raises(UsageError, match="malformed"):
        ResolvedPlan.read(tmp_path / "plan.json")


def test_script_settings_are_a_layer_under_the_flags(tmp_path) -> None:
    from doctor.probes.script_reader import script_layer

    script = tmp_path / "run.py"
    script.write_text(
        'MODEL_ID = "org/model"\nUSE_4BIT = True\nfrom transformers import AutoModelForCausalLM\n'
        "kw = {}\nif USE_4BIT:\n    kw['load_in_4bit'] = True\n"
        "m = AutoModelForCausalLM.from_pretrained(MODEL_ID, attn_implementation='eager', **kw)\n"
    )
    spec = build_spec([script_layer([str(script)]), Layer("the command line", {"attn": "sdpa"}, "flag")])
    assert spec.model == "org/model" and spec.source_of("model").startswith(f"script {script}:")
    assert spec.attn == "sdpa" and spec.source_of("attn") == "flag"  # flags win


def test_one_default_chunk_when_nothing_can_be_estimated() -> None:
    ctx = DoctorContext.from_snapshot(RunSpec(model="demo", context=4096), {})
    plan = resolve_plan(ctx)
    assert plan.spec.prefill_chunk == DEFAULT_PREFILL_CHUNK and plan.lengths == ()


def test_doctor_plan_out_is_what_niah_plan_reads(tmp_path) -> None:
    out = tmp_path / "plan.json"
    proc = run_module(
        "-m",
        "doctor",
        "--model",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "--gpus",
        "1xL4",
        "--lengths",
        "2k,8k",
        "--no-live",
        "--only",
        "memory",
        "--plan-out",
        str(out),
        timeout=300,
    )
    assert proc.returncode in (0, 1), proc.stderr
    plan = ResolvedPlan.read(out)
    # an L4 (sm_89) runs the flash kernel: attn=auto plans the lean attention there
    assert plan.spec.lengths == (2048, 8192) and plan.spec.prefill_chunk and plan.spec.attn == "niah_lean"
    assert [lp.tokens for lp in plan.lengths] == [2048, 8192]
    assert proc.stdout.splitlines()[0].startswith(("OK", "PROBLEMS FOUND"))  # the verdict is the report's
    assert dataclasses.replace(plan.spec, sources=()).identity() == plan.spec.identity()


def test_a_fix_command_judges_the_same_run_with_only_the_fix_changed() -> None:
    """A fix's `doctor …` line carries every setting the user gave that changes the judgement (dtype,
    experts, 4-bit type and double quant, KV dtype, lengths, revision, the server), so pasted, it judges
    the run with only the fix applied; what the plan chose itself (auto) is left to choose again."""
    from doctor.plan import rerun_command
    from run_plan.options import build_spec, flag_layer

    given = build_spec(
        [
            flag_layer(
                {
                    "model": "org/m",
                    "revision": "abc123",
                    "lengths": "8k,128k",
                    "dtype": "float32",
                    "experts": "transformers",
                    "attn": "niah_lean",
                    "quant": "bnb-4bit",
                    "double_quant": False,
                    "kv_dtype": "float16",
                    "scripts": ("run.py",),
                }
            )
        ]
    )
    command = rerun_command(given, attn="sdpa")
    for part in (
        "--model org/m",
        "--revision abc123",
        "--context 131072",
        "--lengths 8192,131072",
        "--dtype float32",
        "--experts transformers",
        "--attn sdpa",
        "--quant bnb-4bit",
        "--no-double-quant",
        "--kv-dtype float16",
    ):
        assert part in command, (part, command)
    assert "niah_lean" not in command and "--script" not in command
    assert rerun_command(RunSpec(model="m", context=4096)) == "doctor --model m --context 4096"
    served = RunSpec(model="m", base_url="http://user:s3cret@127.0.0.1:8000/v1")
    assert rerun_command(served) == "doctor --model m --base-url http://127.0.0.1:8000/v1"
    resolved = dataclasses.replace(build_spec([flag_layer({"model": "m"})]), experts="routed", attn="sdpa")
    assert rerun_command(resolved) == "doctor --model m"  # auto's choices are made again
