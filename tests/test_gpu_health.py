"""GPU health: named incidents (verdict, cause, action), the NVML/kernel-log readers against fakes,
the known-answer GEMM and its watchdog, and the shared live child (hang/crash per stage)."""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any

import pytest

from doctor.children.child import run_stages_in_child
from doctor.context import DoctorContext
from doctor.probes import nvml as nvml_module
from doctor.probes.nvml_health import (
    DriverStack,
    GpuHealthFacts,
    kernel_module_version,
    loaded_library_path,
    parse_xid_lines,
    read_kmsg,
)
from doctor.probes.torch_live import GemmResult, _exercise_devices, known_answer_gemm
from doctor.registry import load_checks
from doctor.report.model import CheckResult, Status
from doctor.runner import run_check
from tests.fakes import scenarios as sc

GPU_MODULES = ("doctor.checks.gpu", "doctor.checks.gpu_health")


def judge(scenario: sc.Scenario) -> dict[str, CheckResult]:
    ctx = DoctorContext.from_snapshot(scenario.target, scenario.snapshot)
    specs = [s for s in load_checks() if s.run.__module__ in GPU_MODULES]
    return {spec.id: run_check(spec, ctx)[0] for spec in specs}


def fix_text(result: CheckResult) -> str:
    assert result.fix is not None, f"{result.id} has no fix"
    return result.fix.summary + " | " + " | ".join(result.fix.commands)


def problems(results: dict[str, CheckResult]) -> dict[str, Status]:
    return {k: r.status for k, r in results.items() if r.status in (Status.FAIL, Status.WARN, Status.ERROR)}


# ---------------------------------------------------------------- healthy machines: no false alarm


def test_healthy_h100_sxm_shows_the_new_facts_and_raises_nothing() -> None:
    results = judge(sc.healthy_h100())
    assert problems(results) == {}
    assert results["gpu-fabric"].summary == "fabric registration completed on 1 GPU(s)"
    assert "ECC on, 0 uncorrectable errors" in results["gpu-ecc-errors"].summary
    assert "Gen5 x16" in results["gpu-pcie-link"].summary
    assert results["gpu-xid-errors"].summary == "no Xid errors in the kernel log since boot"
    assert results["nvidia-driver-library"].status is Status.PASS
    assert results["gpu-known-answer"].status is Status.PASS


def test_pcie_h100_is_never_judged_on_fabric_and_idle_gen1_is_not_a_fault() -> None:
    results = judge(sc.healthy_h100_pcie())
    assert problems(results) == {}
    assert results["gpu-fabric"].status is Status.SKIP and "PCIe card" in results["gpu-fabric"].summary
    assert "idles at Gen1" in results["gpu-pcie-link"].summary
    assert results["gpu-persistence-mode"].status is Status.PASS
    assert "not a fault" in results["gpu-persistence-mode"].summary
    xid = results["gpu-xid-errors"]
    assert xid.status is Status.SKIP and "dmesg" in xid.summary


def test_no_gpu_box_skips_every_health_check() -> None:
    results = judge(sc.no_gpu())
    assert problems(results).keys() == {"nvidia-driver"}  # the one warning the CPU box always had


# ---------------------------------------------------------------- the incidents


def test_xid79_fallen_off_the_bus_means_reboot() -> None:
    results = judge(sc.xid79_fallen_off_bus())
    xid = results["gpu-xid-errors"]
    assert xid.status is Status.FAIL
    assert (
        "Xid 79 on GPU 0: GPU has fallen off the bus" in xid.summary and "reboot the machine" in xid.summary
    )
    assert "sudo reboot" in fix_text(xid)
    assert "fallen off the bus" in str([e.value for e in xid.evidence])
    assert results["gpu-devices"].status is Status.WARN  # NVML cannot query it
    assert results["gpu-ecc-errors"].status is Status.SKIP  # nothing NVML can tell about a lost GPU


def test_xid48_double_bit_ecc_means_reset() -> None:
    results = judge(sc.xid48_double_bit_ecc())
    xid = results["gpu-xid-errors"]
    assert (
        xid.status is Status.FAIL and "Xid 48 on GPU 0: double-bit (uncorrectable) ECC error" in xid.summary
    )
    assert "--gpu-reset" in fix_text(xid)
    ecc = results["gpu-ecc-errors"]
    assert ecc.status is Status.FAIL
    assert "GPU 0 has 1 uncorrectable ECC error(s) since its last reset" in ecc.summary
    assert "--gpu-reset" in fix_text(ecc)
    assert results["gpu-memory-remap"].status is Status.FAIL  # the DBE's remap waits for that reset


def test_xid48_after_a_reset_is_only_a_warning() -> None:
    scenario = sc.xid48_double_bit_ecc()
    healed = sc.gpu_health(
        sc.health(ecc_aggregate_uncorrected=1, remapped_rows_uncorrectable=1),
        xids=scenario.snapshot["gpu-health"].xid.events,
    )
    xid = judge(scenario.with_facts(gpu_health=healed))["gpu-xid-errors"]
    assert xid.status is Status.WARN and "reset since" in xid.summary


def test_application_xids_are_not_the_gpus_fault() -> None:
    health = sc.gpu_health(
        xids=(
            sc.xid(13, "Graphics SM Warp Exception on (GPC 0, TPC 1)"),
            sc.xid(31, "MMU Fault: ENGINE GRAPHICS"),
        )
    )
    xid = judge(sc.healthy_h100().with_facts(gpu_health=health))["gpu-xid-errors"]
    assert xid.status is Status.PASS and "application" in xid.summary


def test_xid154_follows_its_own_recovery_action() -> None:
    health = sc.gpu_health(
        xids=(sc.xid(154, "GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)"),)
    )
    xid = judge(sc.healthy_h100().with_facts(gpu_health=health))["gpu-xid-errors"]
    assert xid.status is Status.FAIL and "sudo reboot" in fix_text(xid)


def test_row_remap_pending_means_reset() -> None:
    remap = judge(sc.row_remap_pending())["gpu-memory-remap"]
    assert remap.status is Status.FAIL
    assert "GPU 0: a memory row remap / page retirement is pending" in remap.summary
    assert "--gpu-reset" in fix_text(remap)


def test_row_remap_failure_means_a_ticket() -> None:
    failed = sc.gpu_health(sc.health(remap_failed=True, remapped_rows_uncorrectable=8))
    remap = judge(sc.healthy_h100().with_facts(gpu_health=failed))["gpu-memory-remap"]
    assert remap.status is Status.FAIL and "no spare memory rows" in remap.summary
    assert "support ticket" in fix_text(remap) and "nvidia-bug-report" in fix_text(remap)


def test_thermal_slowdown_means_a_ticket() -> None:
    clocks = judge(sc.thermal_slowdown())["gpu-clock-throttle"]
    assert clocks.status is Status.WARN
    assert "GPU 0: software thermal slowdown, hardware thermal slowdown at 91 °C" in clocks.summary
    assert "support ticket" in fix_text(clocks)


def test_pcie_x16_trained_at_x8_means_a_ticket() -> None:
    link = judge(sc.pcie_x8())["gpu-pcie-link"]
    assert link.status is Status.WARN and "GPU 0 link is x8 of x16" in link.summary
    assert "riser" in fix_text(link)


def test_pcie_gen_below_max_under_load_is_flagged() -> None:
    slow = sc.gpu_health(sc.health(pcie_gen_current=3, clock_event_reasons=0, utilization_gpu_percent=85))
    link = judge(sc.healthy_h100().with_facts(gpu_health=slow))["gpu-pcie-link"]
    assert link.status is Status.WARN and "Gen3 of Gen5 under load" in link.summary


def test_fabric_manager_not_started_means_start_it() -> None:
    results = judge(sc.fabric_manager_not_started())
    fabric = results["gpu-fabric"]
    assert fabric.status is Status.FAIL
    assert "NVSwitch fabric not-started on 8 GPU(s)" in fabric.summary and "error 802" in fabric.summary
    assert "systemctl restart nvidia-fabricmanager" in fix_text(fabric)


def test_fabric_not_started_on_one_gpu_with_working_cuda_is_not_an_alarm() -> None:
    one = sc.gpu_health(sc.health(fabric_state="not-started", fabric_clique_id=0))
    fabric = judge(sc.healthy_h100().with_facts(gpu_health=one))["gpu-fabric"]
    assert fabric.status is Status.PASS and "single GPU" in fabric.summary


def test_fabric_completed_with_an_error_status_fails() -> None:
    bad = sc.gpu_health(sc.health(fabric_status="InsufficientResources"))
    fabric = judge(sc.healthy_h100().with_facts(gpu_health=bad))["gpu-fabric"]
    assert fabric.status is Status.FAIL and "InsufficientResources" in fabric.summary


def test_driver_library_mismatch_means_reboot() -> None:
    results = judge(sc.driver_library_mismatch())
    match = results["nvidia-driver-library"]
    assert match.status is Status.FAIL
    assert "(570.133.20) do not match the loaded kernel module (570.124.06)" in match.summary
    assert "sudo reboot" in fix_text(match)
    driver = results["nvidia-driver"]  # not "no driver, fine on a CPU box": the real cause
    assert driver.status is Status.FAIL and "until a reboot" in driver.summary


def test_driver_mismatch_seen_in_files_even_when_nvml_starts() -> None:
    stack = DriverStack(
        "570.124.06", "570.124.06", "12.570.133.20", "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.570.133.20"
    )
    assert stack.mismatch and stack.library_driver_version == "570.133.20"
    assert not sc.driver_stack().mismatch


def test_tenant_holding_20gib_is_named_with_its_pid() -> None:
    busy = judge(sc.tenant_holding_20gib())["gpu-busy"]
    assert busy.status is Status.WARN and "GPU 0 has 20.6 GiB in use (1 other process(es))" in busy.summary
    assert "pid 31337 python3 20.0 GiB" in str([e.value for e in busy.evidence])
    assert "--query-compute-apps" in fix_text(busy)  # who holds it; its only GPU: nowhere else to go


# ---------------------------------------------------------------- known-answer GEMM


def _with_gemm(*results: GemmResult) -> sc.Scenario:
    return sc.healthy_h100().with_facts(torch_live=replace(sc.torch_live_ok(), gemm=results))


def test_gpu_that_computes_wrong_fails_with_a_ticket() -> None:
    gemm = judge(_with_gemm(GemmResult(0, False, 2.0, 0.01)))["gpu-known-answer"]
    assert gemm.status is Status.FAIL and "cuda:0 computed a wrong result (max abs error 2" in gemm.summary
    assert "support ticket" in fix_text(gemm)


def test_gpu_that_hangs_fails_with_reboot() -> None:
    gemm = judge(_with_gemm(GemmResult(0, False, hung=True, timeout_s=10.0)))["gpu-known-answer"]
    assert gemm.status is Status.FAIL and "did not finish within 10 s (hung)" in gemm.summary
    assert "sudo reboot" in fix_text(gemm)


def test_cuda_error_in_the_gemm_fails_with_reset() -> None:
    error = "RuntimeError: CUDA error: uncorrectable ECC error encountered"
    gemm = judge(_with_gemm(GemmResult(0, False, error=error)))["gpu-known-answer"]
    assert gemm.status is Status.FAIL and "uncorrectable ECC error encountered" in gemm.summary
    assert "--gpu-reset" in fix_text(gemm)


def test_known_answer_gemm_is_exact_on_cpu() -> None:
    torch = pytest.importorskip("torch")
    result = known_answer_gemm(torch, 0, device_type="cpu")
    assert result["ok"] is True and result["max_abs_error"] == 0.0


def test_gemm_watchdog_reports_a_hung_device_without_waiting_for_it() -> None:
    release = threading.Event()

    class HangingTorch:
        class cuda:
            @staticmethod
            def get_device_capability(i: int) -> tuple[int, int]:
                return (9, 0)

            @staticmethod
            def get_device_name(i: int) -> str:
                return "NVIDIA H200"

            @staticmethod
            def mem_get_info(i: int) -> tuple[int, int]:
                release.wait(30)  # a GPU stuck inside CUDA
                return (1, 2)

    try:
        devices, gemm = _exercise_devices(HangingTorch, 1, timeout_s=0.3)
    finally:
        release.set()
    assert devices[0]["name"] == "NVIDIA H200" and devices[0]["capability"] == [9, 0]
    assert gemm == [{"index": 0, "ok": False, "hung": True, "timeout_s": 0.3}]


# ---------------------------------------------------------------- NVML reader against a fake pynvml


class FakeNvml:
    """pynvml as an HGX H100 answers, GPU 1 lost; `refuse` makes every health query NotSupported."""

    class NVMLError(Exception):
        def __new__(cls, value: int = 0) -> Any:
            sub = {3: FakeNvml.NVMLError_NotSupported, 15: FakeNvml.NVMLError_GpuIsLost}.get(value, cls)
            return Exception.__new__(sub)

        def __init__(self, value: int = 0) -> None:
            super().__init__(value)

    NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 0, 1
    NVML_VOLATILE_ECC, NVML_AGGREGATE_ECC = 0, 1
    NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS = 0
    NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR = 1
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse

        class C_Fabric:  # the ctypes struct NVML fills in
            def __init__(self) -> None:
                self.clusterUuid, self.status, self.cliqueId, self.state = bytes(16), 0, 0, 0

        self.c_nvmlGpuFabricInfo_t = C_Fabric

    def _health(self, value: Any) -> Any:
        if self.refuse:
            raise self.NVMLError_NotSupported(3)
        return value

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlSystemGetDriverVersion(self) -> str:
        return "570.124.06"

    def nvmlSystemGetNVMLVersion(self) -> str:
        return "12.570.124.06"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12080

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        if h == 1:
            raise self.NVMLError_GpuIsLost(15)
        return NS(total=80 << 30, free=79 << 30, used=1 << 30)

    def nvmlDeviceGetName(self, h: int) -> str:
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetCudaComputeCapability(self, h: int) -> tuple[int, int]:
        return (9, 0)

    def nvmlDeviceGetMigMode(self, h: int) -> Any:
        raise self.NVMLError_NotSupported(3)

    def nvmlDeviceGetPciInfo(self, h: int) -> Any:
        return NS(busId=b"00000000:18:00.0")

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return "GPU-abc"

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[Any]:
        return []

    def nvmlDeviceGetEccMode(self, h: int) -> Any:
        return self._health([1, 1])

    def nvmlDeviceGetTotalEccErrors(self, h: int, kind: int, counter: int) -> int:
        return self._health(7 if (kind, counter) == (0, 1) else 0)

    def nvmlDeviceGetRemappedRows(self, h: int) -> Any:
        return self._health((0, 0, 1, 0))

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:
        return self._health(0x41)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        return self._health(88)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return self._health(NS(gpu=100, memory=50))

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: int) -> int:
        return self._health(5)

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: int) -> int:
        return self._health(5)

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: int) -> int:
        return self._health(8)

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: int) -> int:
        return self._health(16)

    def nvmlDeviceGetGpuFabricInfo(self, h: int, ref: Any) -> int:
        self._health(None)
        info = ref._obj
        info.state, info.status, info.cliqueId = 1, 0, 0  # NOT_STARTED
        return 0

    def nvmlDeviceGetPersistenceMode(self, h: int) -> int:
        return self._health(1)


FakeNvml.NVMLError_NotSupported = type("NVMLError_NotSupported", (FakeNvml.NVMLError,), {})
FakeNvml.NVMLError_GpuIsLost = type("NVMLError_GpuIsLost", (FakeNvml.NVMLError,), {})


def _read_with(monkeypatch: pytest.MonkeyPatch, fake: FakeNvml) -> GpuHealthFacts:
    import ctypes

    class Ref:
        def __init__(self, obj: Any) -> None:
            self._obj = obj

    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(ctypes, "byref", Ref)
    nvml_module._read_nvml_once.cache_clear()
    try:
        return nvml_module.read_gpu_health()
    finally:
        nvml_module._read_nvml_once.cache_clear()


def test_nvml_health_reader_collects_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    facts = _read_with(monkeypatch, FakeNvml())
    assert facts.driver.nvml_driver_version == "570.124.06" and not facts.driver.mismatch
    first, lost = facts.gpus
    assert lost.query_error and lost.index == 1
    assert (
        first.ecc_enabled is True
        and first.ecc_aggregate_corrected == 7
        and first.ecc_volatile_uncorrected == 0
    )
    assert first.remap_pending is True and first.remap_failed is False
    assert first.active_clock_reasons == ("gpu_idle", "hw_thermal_slowdown") and first.temperature_c == 88
    assert (first.pcie_width_current, first.pcie_width_max) == (8, 16)
    assert first.fabric_state == "not-started" and first.fabric_status == "Success"
    assert first.fabric_cluster_uuid_zero is True and first.persistence_mode is True


def test_every_nvml_refusal_is_a_value_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    facts = _read_with(monkeypatch, FakeNvml(refuse=True))
    first = facts.gpus[0]
    assert first.ecc_enabled is None and first.remap_pending is None and first.clock_event_reasons is None
    assert first.fabric_state is None and first.persistence_mode is None
    assert first.unavailable["ecc_enabled"] == "NotSupported"
    assert first.unavailable["fabric"] == "NotSupported"
    assert "nvmlDeviceGetRetiredPages not in this nvidia-ml-py" in first.unavailable.values()
    # ... and the checks turn them into SKIPs, not errors.
    scenario = sc.healthy_h100().with_facts(gpu_health=replace(facts, gpus=(first,)))
    results = judge(scenario)
    for check_id in (
        "gpu-ecc-errors",
        "gpu-memory-remap",
        "gpu-clock-throttle",
        "gpu-pcie-link",
        "gpu-fabric",
        "gpu-persistence-mode",
    ):
        assert results[check_id].status is Status.SKIP, (check_id, results[check_id].summary)
    assert "NotSupported" in results["gpu-ecc-errors"].summary


# ---------------------------------------------------------------- kernel log and driver files


KMSG = [
    "6,1201,5321400000,-;NVRM: Xid (PCI:0000:18:00): 79, pid=2231, name=python, GPU has fallen off the bus.",
    "4,1202,5321500000,-;NVRM: GPU 0000:18:00.0: GPU has fallen off the bus.",
    (
        "3,1300,6000000000,-;NVRM: Xid (PCI:0000:2a:00): 48, pid='<unknown>', name=<unknown>, An uncorrectable "
        "double bit error"
    ),
    "[ 12.5] NVRM: Xid (PCI:0000:2A:00): 13, pid=9, Graphics Exception",
]


def test_xid_lines_map_to_nvml_gpu_indices() -> None:
    events = parse_xid_lines(KMSG, {"0000:18:00": 0, "0000:2a:00": 3})
    assert [(e.code, e.gpu_index) for e in events] == [(79, 0), (48, 3), (13, 3)]
    assert events[0].seconds_since_boot == pytest.approx(5321.4)
    assert "fallen off the bus" in events[0].text


def test_kmsg_reader_reads_records_and_says_why_not(tmp_path: Path) -> None:
    log = tmp_path / "kmsg"
    log.write_text("\n".join(KMSG) + "\n")
    records, reason = read_kmsg(str(log))
    assert records and reason == "" and "Xid" in "".join(records)
    missing, why = read_kmsg(str(tmp_path / "absent"))
    assert missing is None and "not readable" in why


def test_driver_versions_from_proc_and_maps(tmp_path: Path) -> None:
    version = tmp_path / "version"
    version.write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.124.06  Fri Feb 21 20:35:08 UTC 2025\n"
        "GCC version:  gcc version 12.3.0\n"
    )
    assert kernel_module_version(str(version)) == "570.124.06"
    open_kernel = tmp_path / "open"
    open_kernel.write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build\n"
    )
    assert kernel_module_version(str(open_kernel)) == "580.65.06"
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 42 /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.570.124.06\n")
    assert loaded_library_path(maps=str(maps)).endswith("libnvidia-ml.so.570.124.06")
    assert kernel_module_version(str(tmp_path / "absent")) is None


# ---------------------------------------------------------------- the shared live child


SELFTEST = "doctor.children.child:selftest_child"


def test_batch_child_answers_each_stage_and_isolates_a_hang_and_a_crash() -> None:
    results = run_stages_in_child(
        {
            "fine": (SELFTEST, {"echo": "hi", "expect_preloaded": ["json"]}),
            "hangs": (SELFTEST, {"sleep_s": 60}),
            "crashes": (SELFTEST, {"signal": int(signal.SIGSEGV)}),
            "raises": (SELFTEST, {"raise": "boom"}),
        },
        timeout_s=4,
        preload=("json",),
    )
    assert results["fine"].ok and results["fine"].data["echo"] == "hi"
    assert results["fine"].data["preloaded"] == ["json"]  # imported once, before the fork
    assert not results["hangs"].ok and results["hangs"].returncode is None
    assert "did not finish within 4 s" in (results["hangs"].error or "")
    assert "SIGSEGV" in (results["crashes"].error or "")
    assert results["raises"].error == "RuntimeError: boom"
    assert results["hangs"].as_unavailable("x").kind == "timeout"


def test_live_probes_announced_together_share_one_child(monkeypatch: pytest.MonkeyPatch) -> None:
    from doctor.probes import live_batch
    from run_plan.spec import RunSpec

    calls: list[set[str]] = []

    def fake_batch(target: Any, requests: dict[str, Any], env: Any = None) -> dict[str, Any]:
        calls.append(set(requests))
        return {name: {"version": "9.9"} for name in requests}

    monkeypatch.setattr(live_batch.LIVE_BATCH, "run", fake_batch)
    monkeypatch.setattr(live_batch, "live_gate", lambda target: None)
    monkeypatch.setattr(live_batch, "find_dist", lambda name: object())
    ctx = DoctorContext(RunSpec(live=True))
    ctx.prefetch(["torch-live", "bnb-live", "triton-live"])
    assert calls == [{"torch-live", "bnb-live", "triton-live"}]
    assert ctx.probe("bnb-live").version == "9.9" and ctx.probe("triton-live").version == "9.9"


# ---------------------------------------------------------------- --deep: bandwidth and real P2P


def _deep_results(deep: Any, device_count: int = 1, deep_flag: bool = True) -> dict[str, CheckResult]:
    from doctor.probes.torch_live import DeepProbes  # noqa: F401 - the type the fakes build

    live = replace(sc.torch_live_ok(), device_count=device_count, deep=deep)
    target = NS(deep=deep_flag, quant="none", model=None, context=None)
    ctx = DoctorContext.from_snapshot(target, {"torch-live": live, "gpu-health": sc.gpu_health()})
    specs = [s for s in load_checks() if s.id in ("gpu-host-bandwidth", "gpu-p2p")]
    return {spec.id: run_check(spec, ctx)[0] for spec in specs}


def test_deep_checks_skip_without_the_flag() -> None:
    results = _deep_results(None, deep_flag=False)
    assert all(r.status is Status.SKIP and "--deep" in r.summary for r in results.values())


def test_host_bandwidth_against_the_link() -> None:
    from doctor.probes.torch_live import CopyBandwidth, DeepProbes

    good = _deep_results(DeepProbes(bandwidth=(CopyBandwidth(0, 53.1, 54.0),)))["gpu-host-bandwidth"]
    assert good.status is Status.PASS and "≥ 31.5 GB/s expected on PCIe Gen5 x16" in good.summary
    slow = _deep_results(DeepProbes(bandwidth=(CopyBandwidth(0, 12.0, 11.5),)))["gpu-host-bandwidth"]
    assert slow.status is Status.WARN and "below 31.5 GB/s" in slow.summary and "numactl" in fix_text(slow)


def test_p2p_that_corrupts_fails_even_when_torch_says_peer_access_works() -> None:
    from doctor.probes.torch_live import DeepProbes, PeerCopy

    corrupt = DeepProbes(
        peer=(
            PeerCopy(0, 1, True, False, 40.0, "the copy arrived corrupted"),
            PeerCopy(1, 0, True, True, 41.0),
        )
    )
    p2p = _deep_results(corrupt, device_count=2)["gpu-p2p"]
    assert p2p.status is Status.FAIL
    assert "cuda:0→cuda:1: the copy arrived corrupted although can_device_access_peer says yes" in p2p.summary
    assert "NCCL_P2P_DISABLE=1" in fix_text(p2p)
    assert _deep_results(DeepProbes(), device_count=1)["gpu-p2p"].status is Status.SKIP
