"""The device is judged from the run: a small model whose run fits the RAM (and a CPU's patience) is a
valid plan for the CPU; a big one still needs a GPU; a model that is not there is the headline."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from doctor.context import DoctorContext
from doctor.registry import load_checks
from doctor.report.model import CheckResult, Status
from doctor.runner import run_check
from run_plan.spec import RunSpec
from tests.fakes import scenarios as sc

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # embedded config: sized offline
GPU_CHECKS = ("nvidia-driver", "torch-cuda-build", "memory-fit", "model-resolves")


def judge(target: RunSpec, host: sc.HostFacts | None = None) -> dict[str, CheckResult]:
    """The CPU box of the catalogue, with the model and its memory estimate from the real probes."""
    real = {name: DoctorContext(target).probe(name) for name in ("model", "memory")}
    scenario = sc.no_gpu().with_facts(**real, **({"host": host} if host else {}))
    ctx = DoctorContext.from_snapshot(target, scenario.snapshot)
    return {s.id: run_check(s, ctx)[0] for s in load_checks() if s.id in GPU_CHECKS}


def test_a_small_model_on_the_cpu_is_a_valid_plan() -> None:
    results = judge(RunSpec(model=SMOL, context=512, lengths=(512,)))
    assert results["nvidia-driver"].status is Status.SKIP
    assert "runs on the CPU" in results["nvidia-driver"].summary
    assert results["memory-fit"].status is Status.PASS and "runs on the CPU" in results["memory-fit"].summary
    assert results["torch-cuda-build"].status is Status.PASS


@pytest.mark.parametrize(
    "target, why",
    [
        (RunSpec(model=SMOL, context=512, quant="bnb-4bit"), "--quant bnb-4bit needs a CUDA GPU"),
        (RunSpec(model=SMOL, context=512, gpus="1xH100-80GB"), "the plan is for --gpus 1xH100-80GB"),
    ],
)
def test_what_needs_cuda_still_fails_on_the_cpu(target: RunSpec, why: str) -> None:
    driver = judge(target)["nvidia-driver"]
    assert driver.status is Status.FAIL and why in driver.summary


def test_a_model_beyond_the_ram_or_the_cpus_patience_needs_a_gpu() -> None:
    small_box = dataclasses.replace(sc.host(), ram_available_bytes=16 * sc.GIB, cpu_count=2)
    driver = judge(RunSpec(model="meta-llama/Llama-3.1-70B-Instruct", context=8192), small_box)[
        "nvidia-driver"
    ]
    assert driver.status is Status.FAIL and "more than this machine's 16.0 GiB of RAM holds" in driver.summary
    slow = judge(RunSpec(model="meta-llama/Llama-3.1-8B-Instruct", context=131072), small_box)
    assert slow["nvidia-driver"].status is Status.FAIL


def test_a_missing_folder_is_the_headline_with_a_fix_for_a_path(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "models" / "smollm").mkdir(parents=True)
    (tmp_path / "models" / "smollm" / "config.json").write_text('{"model_type": "llama"}')
    monkeypatch.chdir(tmp_path)
    for typed, fix in (("./models/nope", "ls models"), ("./models/smolm", "doctor --model ./models/smollm")):
        results = judge(RunSpec(model=typed, context=512))
        assert results["nvidia-driver"].status is not Status.FAIL  # no GPU claim about a model not there
        resolves = results["model-resolves"]
        assert resolves.status is Status.FAIL and resolves.summary == f"no such folder: {typed}"
        assert resolves.fix is not None and resolves.fix.commands[0] == fix
        assert not any("hf download" in c for c in resolves.fix.commands)


def test_niah_runs_preflight_names_the_missing_folder_first(tmp_path: Path) -> None:
    from niah_run.preflight import run_preflight
    from run_plan.errors import RunFailed

    with pytest.raises(RunFailed) as caught:
        run_preflight(RunSpec(model=str(tmp_path / "nope"), lengths=(512,), context=512), tmp_path)
    assert caught.value.message.startswith("preflight: model-resolves: no such folder")
    assert "also failing" not in caught.value.message


@pytest.mark.slow
def test_the_preflight_accepts_a_local_copy_of_the_demo_model_on_this_machine(demo_backend, tmp_path) -> None:
    """The user's case: the same 135M model as a plain folder, 512 tokens, judged on this very machine."""
    from niah_run.backends.loading import converted_folder, demo_gguf_path
    from niah_run.preflight import run_preflight
    from tests.conftest import DEMO_DTYPE

    folder = converted_folder(None, demo_gguf_path(), DEMO_DTYPE)
    assert (folder / "config.json").is_file()
    plan = run_preflight(RunSpec(model=str(folder), lengths=(512,), context=512), tmp_path).plan
    assert plan.spec.model == str(folder)
