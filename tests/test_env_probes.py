"""Static probes on this real machine, the child-process path, and fault handling (hang, segfault)."""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path

import pytest

from doctor.context import DoctorContext
from doctor.probes import Unavailable
from doctor.probes.bnb_live import bnb_live_facts
from doctor.probes.libs_static import bnb_files_facts, elf_machine, judge_requirement, torch_build_facts
from doctor.probes.live_batch import NOT_LIVE_REASON, live_gate
from doctor.probes.nvml import count_visible, cuda_version_from_int, nvml_facts, nvml_sees_gpu
from doctor.probes.packages import normalize_machine, packages_probe, this_machine
from doctor.probes.torch_live import TorchLive, torch_live_facts
from doctor.probes.transformers_live import transformers_live_facts
from doctor.registry import load_checks
from doctor.report.model import Status
from doctor.report.render_text import render_text
from doctor.runner import build_report
from run_plan.spec import RunSpec
from tests.fakes import scenarios as sc


def installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


needs_torch = pytest.mark.skipif(not installed("torch"), reason="torch is not installed")
no_gpu_here = pytest.mark.skipif(nvml_sees_gpu(), reason="this machine has an NVIDIA GPU")


# ---------------------------------------------------------------- static probes on this machine


@needs_torch
def test_torch_build_read_from_files() -> None:
    build = torch_build_facts()
    assert build.installed and build.version == metadata.version("torch")
    assert build.machine == this_machine()
    assert build.dist is not None and build.dist.wheel_tags  # from dist-info/WHEEL
    if build.cuda is None and not build.has_libtorch_cuda:  # this CI box: the +cpu wheel
        assert build.build == "cpu"
        assert "CPU" in build.provenance or build.provenance == "PyPI"


@needs_torch
def test_torch_build_probe_imports_no_torch() -> None:
    from tests.conftest import run_module

    code = (
        "import sys; from doctor.probes.libs_static import torch_build_facts, bnb_files_facts, "
        "triton_dist_facts; torch_build_facts(); bnb_files_facts(); triton_dist_facts(); "
        "print([m for m in ('torch', 'bitsandbytes', 'triton') if m in sys.modules])"
    )
    proc = run_module("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@no_gpu_here
def test_default_env_sections_import_nothing_heavy_without_gpu() -> None:
    from tests.conftest import run_module

    code = (
        "import sys; from doctor.context import DoctorContext; from doctor.registry import load_checks, select; "
        "from doctor.runner import build_report; from run_plan.spec import RunSpec; "
        "specs = select(load_checks(), ('gpu', 'torch', 'bitsandbytes', 'libraries', 'triton')); "
        "build_report(specs, DoctorContext(RunSpec()), ['doctor']); "
        "heavy = ('torch', 'bitsandbytes', 'triton', 'transformers', 'accelerate'); "
        "print([m for m in heavy if m in sys.modules])"
    )
    proc = run_module("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def _elf(tmp_path: Path, e_machine: int) -> Path:
    header = (
        b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + (3).to_bytes(2, "little") + e_machine.to_bytes(2, "little")
    )
    path = tmp_path / f"lib{e_machine:x}.so"
    path.write_bytes(header + bytes(44))
    return path


def test_elf_machine_reads_e_machine(tmp_path: Path) -> None:
    assert elf_machine(_elf(tmp_path, 0xB7)) == "aarch64"
    assert elf_machine(_elf(tmp_path, 0x3E)) == "x86_64"
    assert elf_machine(_elf(tmp_path, 0x1234)) == "e_machine 0x1234"
    text = tmp_path / "not-elf.so"
    text.write_text("hello")
    assert elf_machine(text) is None
    assert elf_machine(tmp_path / "missing.so") is None


def test_elf_machine_of_this_interpreter() -> None:
    real = os.path.realpath(sys.executable)
    if elf_machine(real) is None:
        pytest.skip("interpreter is not an ELF binary")
    assert elf_machine(real) == this_machine()


@pytest.mark.skipif(not installed("bitsandbytes"), reason="bitsandbytes is not installed")
def test_bnb_files_ship_libraries_for_this_cpu() -> None:
    files = bnb_files_facts(environ={"BNB_CUDA_VERSION": "126"})
    assert files.installed and files.cuda_version_override == "126"
    assert files.libs and files.native_libs  # the PyPI wheel for this CPU
    assert not files.foreign_libs


def test_machine_names_are_normalized() -> None:
    assert normalize_machine("AMD64") == "x86_64" and normalize_machine("arm64") == "aarch64"


@no_gpu_here
def test_nvml_absent_is_a_value_not_an_exception() -> None:
    facts = nvml_facts()
    assert facts.driver_visible is False and facts.gpus == ()
    assert "no NVIDIA driver/GPU visible" in facts.reason


def test_cuda_visible_devices_rules() -> None:
    assert count_visible(None, 4) == 4
    assert count_visible("", 4) == 0  # empty string hides every GPU
    assert count_visible("-1", 4) == 0
    assert count_visible("1,0", 4) == 2
    assert count_visible("0,7,1", 4) == 1  # CUDA stops at the first invalid entry
    assert count_visible("GPU-ab", 2, ("GPU-abc", "GPU-def")) == 1
    assert cuda_version_from_int(12040) == (12, 4) and cuda_version_from_int(13000) == (13, 0)


def test_triton_pin_marker_and_version() -> None:
    pin = "triton==3.3.0; platform_system == 'Linux' and platform_machine == 'x86_64'"
    applies, satisfied = judge_requirement(pin, "3.3.0")
    assert applies is (this_machine() == "x86_64" and sys.platform.startswith("linux"))
    assert satisfied is True
    assert judge_requirement(pin, "3.2.0")[1] is False
    assert judge_requirement(pin, None)[1] is False


def test_packages_probe_reads_versions() -> None:
    facts = packages_probe(RunSpec())
    assert facts.versions["nvidia-ml-py"] == metadata.version("nvidia-ml-py")


# ---------------------------------------------------------------- live gate and real children


@no_gpu_here
def test_live_probes_skip_without_gpu_unless_forced() -> None:
    gate = live_gate(RunSpec())
    assert isinstance(gate, Unavailable) and gate.kind == "not-applicable" and gate.reason == NOT_LIVE_REASON
    assert live_gate(RunSpec(live=True)) is None
    assert live_gate(RunSpec(live=False)).kind == "not-applicable"


@needs_torch
@no_gpu_here
def test_real_child_imports_torch_on_cpu() -> None:
    facts = torch_live_facts(RunSpec(live=True, probe_timeout_s=120))
    assert isinstance(facts, TorchLive), facts
    assert facts.import_error is None and facts.version == metadata.version("torch")
    assert facts.cuda_available is False and facts.device_count == 0
    if facts.cuda is None:  # CPU-only build: torch's own words say why
        assert "not compiled with CUDA" in (facts.init_error or "")


@pytest.mark.slow
@no_gpu_here
@pytest.mark.skipif(not installed("bitsandbytes"), reason="bitsandbytes is not installed")
def test_real_bnb_child_loads_cpu_library_and_round_trips_on_cpu() -> None:
    facts = bnb_live_facts(RunSpec(live=True, probe_timeout_s=180), roundtrip_on_cpu=True)
    assert not isinstance(facts, Unavailable), facts
    assert facts.import_error is None and facts.library_kind == "cpu"
    assert facts.library_path and facts.library_path.endswith("libbitsandbytes_cpu.so")
    rt = facts.roundtrip
    assert rt is not None and rt.error is None, rt
    assert 0.0 < rt.dequant_rel_error < 0.15 and 0.0 < rt.linear_rel_error < 0.15


@pytest.mark.slow
@pytest.mark.skipif(not installed("transformers"), reason="transformers is not installed")
def test_real_transformers_child_knows_llama4() -> None:
    facts = transformers_live_facts(RunSpec(model=sc.SCOUT, probe_timeout_s=180), sc.llama4_resolution())
    assert not isinstance(facts, Unavailable), facts
    assert facts.model_type_known is True and facts.missing_architectures == ()


# ---------------------------------------------------------------- fault handling


def _fake_torch(tmp_path: Path, body: str) -> dict[str, str]:
    pkg = tmp_path / "torch"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(body)
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


def _report_with(live: object) -> tuple[object, str]:
    scenario = sc.no_gpu().with_target(live=True).with_facts(torch_live=live)
    ctx = DoctorContext.from_snapshot(scenario.target, scenario.snapshot)
    specs = [s for s in load_checks() if s.section in ("gpu", "torch")]
    report = build_report(specs, ctx, ["doctor", "--live"])
    return report, render_text(report, color=False, verbose=True)  # every check, so each can be found


def test_hanging_torch_import_becomes_an_error_row(tmp_path: Path) -> None:
    env = _fake_torch(tmp_path, "import time\nwhile True:\n    time.sleep(1)\n")
    facts = torch_live_facts(RunSpec(live=True, probe_timeout_s=3), env=env)
    assert isinstance(facts, Unavailable) and facts.kind == "timeout"
    assert "did not finish within 3 s" in facts.reason
    report, text = _report_with(facts)
    row = next(c for c in report.checks if c.id == "torch-cuda-available")
    assert row.status is Status.ERROR and "did not finish" in row.summary
    assert "torch-installed" in text and "torch-cuda-available" in text  # the rest still renders


def test_segfaulting_torch_import_becomes_an_error_row_naming_sigsegv(tmp_path: Path) -> None:
    env = _fake_torch(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    facts = torch_live_facts(RunSpec(live=True, probe_timeout_s=30), env=env)
    assert isinstance(facts, Unavailable) and facts.kind == "error"
    assert "SIGSEGV" in facts.reason
    report, text = _report_with(facts)
    row = next(c for c in report.checks if c.id == "torch-cuda-available")
    assert row.status is Status.ERROR and "SIGSEGV" in row.summary
    assert "SIGSEGV" in text and "nvidia-driver" in text


def test_broken_torch_import_is_a_finding_not_a_crash(tmp_path: Path) -> None:
    env = _fake_torch(tmp_path, "raise OSError('libcudart.so.12: cannot open shared object file')\n")
    facts = torch_live_facts(RunSpec(live=True, probe_timeout_s=30), env=env)
    assert isinstance(facts, TorchLive) and "libcudart.so.12" in (facts.import_error or "")
    report, _ = _report_with(facts)
    row = next(c for c in report.checks if c.id == "torch-cuda-available")
    assert row.status is Status.FAIL and "libcudart.so.12" in row.summary


# ---------------------------------------------------------------- NVML reading against a fake pynvml


class _FakeNvml:
    """The pynvml calls the probe makes, answering like a 2-GPU H100 host with one busy GPU."""

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    def __init__(self) -> None:
        from types import SimpleNamespace as NS

        self.NS = NS
        self.shutdown = False

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None:
        self.shutdown = True

    def nvmlSystemGetDriverVersion(self) -> bytes:
        return b"570.124.06"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12080

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> str:
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetCudaComputeCapability(self, h: int) -> tuple[int, int]:
        return (9, 0)

    def nvmlDeviceGetPciInfo(self, h: int) -> object:
        return self.NS(busId=f"00000000:{h + 24:02X}:00.0")

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-{h}abc"

    def nvmlDeviceGetMemoryInfo(self, h: int) -> object:
        used = (40 if h == 1 else 0.5) * sc.GIB
        return self.NS(total=80 * sc.GIB, free=80 * sc.GIB - used, used=used)

    def nvmlDeviceGetMigMode(self, h: int) -> tuple[int, int]:
        raise self.NVMLError_NotSupported("Not Supported")

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[object]:
        return [self.NS(pid=4242, usedGpuMemory=40 * sc.GIB)] if h == 1 else []

    def nvmlSystemGetProcessName(self, pid: int) -> bytes:
        return b"python"


def test_nvml_probe_reads_gpus_processes_and_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    from doctor.probes import nvml as nvml_module

    fake = _FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    nvml_module._read_nvml_once.cache_clear()
    try:
        facts = nvml_facts(environ={"CUDA_VISIBLE_DEVICES": "GPU-1"})
    finally:
        nvml_module._read_nvml_once.cache_clear()
    assert fake.shutdown
    assert (
        facts.driver_visible and facts.driver_version == "570.124.06" and facts.cuda_driver_version == (12, 8)
    )
    assert [g.name for g in facts.gpus] == ["NVIDIA H100 80GB HBM3"] * 2
    assert facts.gpus[0].sm == "sm_90" and facts.gpus[0].mig_enabled is None
    assert facts.gpus[1].processes[0].name == "python" and facts.gpus[1].processes[0].pid == 4242
    assert facts.cuda_visible_devices == "GPU-1" and facts.visible_gpu_count == 1
    assert "GPU-0abc" not in repr(facts)  # UUIDs only serve the CUDA_VISIBLE_DEVICES match


# ---------------------------------------------------------------- real GPU (skipped without one)

needs_gpu = pytest.mark.skipif(not nvml_sees_gpu(), reason="no NVIDIA GPU visible")


@pytest.mark.gpu
@needs_gpu
def test_real_gpu_live_probes_and_no_false_alarm() -> None:
    """On a healthy GPU box (the H100 sample run): the live children work and no env check fails."""
    target = RunSpec(live=True, probe_timeout_s=300)
    torch_facts = torch_live_facts(target)
    assert isinstance(torch_facts, TorchLive) and torch_facts.cuda_available, torch_facts
    assert torch_facts.devices and torch_facts.devices[0].memory_free_bytes
    if installed("bitsandbytes"):
        bnb = bnb_live_facts(target)
        assert not isinstance(bnb, Unavailable) and bnb.library_kind == "cuda", bnb
        assert bnb.roundtrip is not None and bnb.roundtrip.error is None, bnb.roundtrip
        assert bnb.roundtrip.linear_rel_error < 0.15
    ctx = DoctorContext(target)
    specs = [s for s in load_checks() if s.section in ("gpu", "torch", "bitsandbytes", "libraries", "triton")]
    report = build_report(specs, ctx, ["doctor", "--live"])
    broken = {c.id: c.summary for c in report.checks if c.status in (Status.FAIL, Status.ERROR)}
    assert broken == {}
