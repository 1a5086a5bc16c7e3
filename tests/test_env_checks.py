"""Environment checks judged on fake hardware: each named scenario asserts verdict, cause and fix."""

from __future__ import annotations

from dataclasses import replace

import pytest

from doctor.context import DoctorContext
from doctor.probes.nvml import GpuProcess
from doctor.registry import load_checks
from doctor.report.model import CheckResult, Status
from doctor.runner import run_check
from tests.fakes import scenarios as sc

ENV_MODULES = (
    "doctor.checks.gpu",
    "doctor.checks.gpu_health",
    "doctor.checks.torch_cuda",
    "doctor.checks.bitsandbytes",
    "doctor.checks.libraries",
    "doctor.checks.import_shadowing",
    "doctor.checks.triton",
)


def judge(scenario: sc.Scenario) -> dict[str, CheckResult]:
    ctx = DoctorContext.from_snapshot(scenario.target, scenario.snapshot)
    specs = [s for s in load_checks() if s.run.__module__ in ENV_MODULES]
    return {spec.id: run_check(spec, ctx)[0] for spec in specs}


def commands(result: CheckResult) -> str:
    assert result.fix is not None, f"{result.id} has no fix"
    return " | ".join(result.fix.commands)


def not_ok(results: dict[str, CheckResult]) -> dict[str, str]:
    return {
        k: f"{r.status.value}: {r.summary}"
        for k, r in results.items()
        if r.status in (Status.FAIL, Status.WARN, Status.ERROR)
    }


# ---------------------------------------------------------------- the named scenarios


@pytest.mark.parametrize("cuda, driver_cuda", [("12.6", (12, 8)), ("12.8", (12, 8)), ("13.0", (13, 0))])
def test_healthy_h100_has_no_false_alarm(cuda: str, driver_cuda: tuple[int, int]) -> None:
    results = judge(sc.healthy_h100(cuda, driver_cuda))
    assert not_ok(results) == {}
    assert "H100" in results["nvidia-driver"].summary
    assert results["torch-cuda-available"].status is Status.PASS
    assert "libbitsandbytes_cuda" in results["bnb-native-library"].summary
    assert results["bnb-4bit-roundtrip"].status is Status.PASS
    assert results["triton-kernel"].status is Status.PASS


def test_no_gpu_dev_box_warns_once_and_never_fails() -> None:
    results = judge(sc.no_gpu())
    assert not_ok(results).keys() == {"nvidia-driver"}
    driver = results["nvidia-driver"]
    assert driver.status is Status.WARN and "no NVIDIA driver/GPU visible" in driver.summary
    assert "nvidia-smi" in commands(driver)
    assert results["torch-cuda-build"].status is Status.PASS
    assert results["torch-cuda-available"].status is Status.SKIP
    assert "--live" in results["torch-cuda-available"].summary


def test_no_gpu_fails_when_the_run_needs_one() -> None:
    results = judge(sc.no_gpu().with_target(quant="bnb-4bit"))
    driver = results["nvidia-driver"]
    assert driver.status is Status.FAIL
    assert "no NVIDIA driver/GPU visible" in driver.summary and "bnb-4bit" in driver.summary
    build = results["torch-cuda-build"]
    assert build.status is Status.WARN and "CPU-only build of torch 2.13.0+cpu" in build.summary
    assert "download.pytorch.org/whl/cu128" in commands(build)


def test_gh200_cpu_only_torch_names_the_cause_in_one_sentence() -> None:
    results = judge(sc.gh200_cpu_torch())
    build = results["torch-cuda-build"]
    assert build.status is Status.FAIL
    assert build.summary == "CPU-only torch 2.7.0 from PyPI on aarch64 with an NVIDIA GH200 480GB present"
    assert (
        commands(build)
        == "pip install --force-reinstall torch --index-url https://download.pytorch.org/whl/cu128"
    )
    available = results["torch-cuda-available"]
    assert (
        available.status is Status.FAIL and "CPU-only torch 2.7.0 from PyPI on aarch64" in available.summary
    )
    # bitsandbytes' CPU library is blamed on torch, with torch's fix, not on bitsandbytes.
    bnb = results["bnb-native-library"]
    assert bnb.status is Status.FAIL and "CPU library because CPU-only torch" in bnb.summary
    assert "download.pytorch.org/whl/cu128" in commands(bnb)


def test_driver_too_old_for_torch_cuda() -> None:
    results = judge(sc.driver_too_old())
    compat = results["torch-driver-compat"]
    assert compat.status is Status.FAIL
    assert (
        "driver 520.61.05 supports CUDA up to 11.8, older than torch 2.7.0+cu126's CUDA 12.6"
        in compat.summary
    )
    assert "whl/cu118" in commands(compat)
    assert "too old" in str([e.value for e in compat.evidence])
    available = results["torch-cuda-available"]
    assert available.status is Status.FAIL and "supports CUDA up to 11.8" in available.summary


def test_bnb_cpu_library_while_torch_sees_the_gpu() -> None:
    results = judge(sc.bnb_cpu_library())
    native = results["bnb-native-library"]
    assert native.status is Status.FAIL
    assert "loaded its CPU library" in native.summary and "no CUDA library" in native.summary
    assert 'pip install --force-reinstall -U "bitsandbytes>=0.46"' in commands(native)
    assert results["bnb-cuda-library"].status is Status.FAIL
    assert "CUDA VERSION MISMATCH" in results["bnb-cuda-library"].summary
    roundtrip = results["bnb-4bit-roundtrip"]
    assert roundtrip.status is Status.FAIL and "CPU-only version of bitsandbytes" in roundtrip.summary
    # torch itself is fine: no torch check blames it.
    assert results["torch-cuda-available"].status is Status.PASS


def test_transformers_450_does_not_know_llama4() -> None:
    results = judge(sc.transformers_450_llama4())
    model_type = results["model-type-supported"]
    assert model_type.status is Status.FAIL
    assert (
        "4.50.3" in model_type.summary and "'llama4'" in model_type.summary and "4.51.0" in model_type.summary
    )
    assert commands(model_type) == 'pip install -U "transformers>=4.51.0"'
    assert results["model-architecture-class"].status is Status.FAIL
    assert results["config-transformers-version"].status is Status.WARN


def test_triton_missing_fails_for_flex_attention_and_says_why() -> None:
    results = judge(sc.triton_missing())
    triton = results["triton-installed"]
    assert triton.status is Status.FAIL
    assert "triton is not installed" in triton.summary and "flex_attention" in triton.summary
    assert 'pip install "triton==3.3.0"' in commands(triton) and "--attn sdpa" in commands(triton)
    assert results["triton-kernel"].status is Status.SKIP


def test_triton_missing_is_only_a_warning_with_sdpa() -> None:
    results = judge(sc.triton_missing().with_target(attn="sdpa"))
    assert results["triton-installed"].status is Status.WARN


# ---------------------------------------------------------------- more failure modes (F3, F5-F7, F15)


def test_gpu_arch_not_in_torch_arch_list() -> None:
    blackwell = sc.gpu("NVIDIA RTX PRO 6000 Blackwell", total_gib=95.0, cc=(12, 0))
    base = sc.healthy_h100()
    scenario = base.with_facts(
        nvml=sc.nvml(blackwell, cuda=(12, 8)), torch_live=sc.torch_live_ok(name=blackwell.name, cc=(12, 0))
    )
    arch = judge(scenario)["torch-gpu-arch"]
    assert arch.status is Status.FAIL and "sm_120" in arch.summary and "no kernel image" in arch.summary
    assert "whl/cu128" in commands(arch)


def test_sm90_is_covered_by_sm_90_or_same_major() -> None:
    assert judge(sc.healthy_h100())["torch-gpu-arch"].status is Status.PASS


def test_bnb_x86_binaries_on_aarch64() -> None:
    scenario = sc.gh200_cpu_torch().with_facts(
        bnb_files=sc.bnb_files("0.42.0", machine="aarch64", lib_machine="x86_64")
    )
    results = judge(scenario)
    arch = results["bnb-library-arch"]
    assert (
        arch.status is Status.FAIL and "only x86_64 libraries" in arch.summary and "aarch64" in arch.summary
    )
    version = results["bnb-version"]
    assert version.status is Status.FAIL and "0.46.0" in version.summary
    assert "bitsandbytes>=0.46" in commands(version)


def test_old_bnb_misleading_message_names_the_real_cause() -> None:
    cpu_torch = sc.torch_cpu_build("2.5.1+cpu", "x86_64", "the download.pytorch.org CPU index")
    scenario = sc.healthy_h100().with_facts(bnb_files=sc.bnb_files("0.43.0"), torch_build=cpu_torch)
    version = judge(scenario)["bnb-version"]
    assert version.status is Status.FAIL
    assert "requires the latest version of bitsandbytes" in version.summary
    assert "CPU-only torch 2.5.1+cpu from the download.pytorch.org CPU index on x86_64" in version.summary


def test_bnb_failed_native_library_shows_bnb_own_error() -> None:
    error = (
        "\n🚨 CUDA SETUP ERROR: Missing dependency: libcudart.so.12 🚨\n\nCUDA 12.x runtime libraries were "
        "not found in the LD_LIBRARY_PATH.\n"
    )
    live = replace(
        sc.bnb_live_cuda(),
        library_class="ErrorHandlerMockBNBNativeLibrary",
        library_kind="failed",
        library_path=None,
        formatted_error=error,
        roundtrip=None,
    )
    native = judge(sc.healthy_h100().with_facts(bnb_live=live))["bnb-native-library"]
    assert native.status is Status.FAIL
    assert "Missing dependency: libcudart.so.12" in native.summary
    assert any(e.value == error for e in native.evidence)


def test_bnb_problems_are_warnings_when_the_run_does_not_quantize() -> None:
    scenario = sc.bnb_cpu_library().with_target(quant="none")
    assert judge(scenario)["bnb-native-library"].status is Status.WARN


def test_bnb_cuda_version_override_to_missing_library() -> None:
    scenario = sc.healthy_h100().with_facts(bnb_files=sc.bnb_files(override="122"))
    lib = judge(scenario)["bnb-cuda-library"]
    assert lib.status is Status.FAIL and "BNB_CUDA_VERSION=122" in lib.summary
    assert commands(lib) == "unset BNB_CUDA_VERSION"


def test_gpu_busy_names_other_processes() -> None:
    busy = sc.gpu(used_gib=41.0, processes=(GpuProcess(4242, "python", 40 * sc.GIB),))
    result = judge(sc.healthy_h100().with_facts(nvml=sc.nvml(busy)))["gpu-busy"]
    assert (
        result.status is Status.WARN and "GPU 0 has 41.0 GiB in use (1 other process(es))" in result.summary
    )
    assert "pid 4242 python" in str([e.value for e in result.evidence])
    assert "CUDA_VISIBLE_DEVICES" not in commands(result)  # no other GPU to move to: no make-believe index
    two = sc.healthy_h100().with_facts(nvml=sc.nvml(busy, sc.gpu(index=1)))
    assert "export CUDA_VISIBLE_DEVICES=1" in commands(judge(two)["gpu-busy"])  # the free one, by index


def test_empty_cuda_visible_devices_hides_all_gpus() -> None:
    hidden = sc.TorchLive(
        version="2.7.0+cu126",
        cuda="12.6",
        cuda_built=True,
        cuda_available=False,
        init_error="RuntimeError: No CUDA GPUs are available",
        arch_list=sc.H100_ARCHES,
    )
    scenario = sc.healthy_h100().with_facts(nvml=sc.nvml(sc.gpu(), cvd="", visible=0), torch_live=hidden)
    result = judge(scenario)["cuda-visible-devices"]
    assert result.status is Status.FAIL and "hides all 1 GPU(s)" in result.summary
    assert "unset CUDA_VISIBLE_DEVICES" in commands(result)


def test_mig_enabled_is_a_warning() -> None:
    result = judge(sc.healthy_h100().with_facts(nvml=sc.nvml(sc.gpu(mig=True))))["gpu-mig"]
    assert result.status is Status.WARN and "MIG is on for GPU 0" in result.summary


def test_driver_minor_older_than_torch_cuda_is_a_warning() -> None:
    scenario = sc.healthy_h100("12.8", (12, 4)).with_facts(torch_live=sc.not_live())
    result = judge(scenario)["torch-driver-compat"]
    assert result.status is Status.WARN and "minor-version compatibility" in result.summary
    assert "whl/cu124" in commands(result)
    # When the live probe shows CUDA working, it is not an alarm.
    assert judge(sc.healthy_h100("12.8", (12, 4)))["torch-driver-compat"].status is Status.PASS


def test_torch_missing_fails_only_when_the_run_needs_it() -> None:
    from doctor.probes.libs_static import TorchBuild

    missing = sc.no_gpu().with_facts(torch_build=TorchBuild(installed=False, machine="x86_64"))
    assert judge(missing)["torch-installed"].status is Status.WARN
    assert judge(missing.with_target(quant="bnb-8bit"))["torch-installed"].status is Status.FAIL


def test_every_non_pass_env_check_has_evidence_with_how_and_a_fix() -> None:
    for build in sc.SCENARIOS.values():
        for result in judge(build()).values():
            if result.status in (Status.FAIL, Status.WARN):
                assert result.fix is not None, result.id
                assert any(e.how for e in result.evidence), result.id


def test_docs_table_lists_every_env_check_id() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "checks.md").read_text()
    ids = {s.id for s in load_checks() if s.run.__module__ in ENV_MODULES}
    assert {i for i in ids if f"`{i}`" not in doc} == set()
