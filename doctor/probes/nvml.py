"""GPU facts from NVML (nvidia-ml-py), without starting CUDA or importing torch.

NVML talks to the driver directly, so it answers even when torch is CPU-only or broken — which is
exactly when we need to know whether a GPU is there. No driver / no library is a value
("no NVIDIA driver/GPU visible"), never an exception.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from typing import Any

from doctor.probes import Probe, Unavailable, probe
from doctor.probes.nvml_health import GpuHealthFacts
from run_plan.spec import RunSpec

NO_GPU_REASON = "no NVIDIA driver/GPU visible"


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    name: str | None  # may be None inside containers (other PID namespace)
    used_bytes: int | None


@dataclass(frozen=True)
class GpuFacts:
    index: int  # NVML index (PCI bus order, like nvidia-smi)
    name: str
    memory_total_bytes: int
    memory_free_bytes: int
    memory_used_bytes: int
    compute_capability: tuple[int, int] | None
    mig_enabled: bool | None  # None: MIG unsupported on this GPU
    processes: tuple[GpuProcess, ...] = ()
    pci_bus_id: str | None = None

    @property
    def sm(self) -> str | None:
        return (
            f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"
            if self.compute_capability
            else None
        )


@dataclass(frozen=True)
class NvmlFacts:
    driver_visible: bool
    reason: str  # why not visible (empty when visible)
    driver_version: str | None = None  # e.g. "550.54.15"
    cuda_driver_version: tuple[int, int] | None = None  # highest CUDA the driver supports, e.g. (12, 4)
    gpus: tuple[GpuFacts, ...] = ()
    cuda_visible_devices: str | None = None  # raw env value; None = unset
    visible_gpu_count: int = 0  # how many of `gpus` a CUDA process will see under CUDA_VISIBLE_DEVICES

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    @property
    def cuda_driver_text(self) -> str | None:
        return (
            f"{self.cuda_driver_version[0]}.{self.cuda_driver_version[1]}"
            if self.cuda_driver_version
            else None
        )


def cuda_version_from_int(value: int) -> tuple[int, int]:
    """NVML encodes CUDA 12.4 as 12040."""
    return value // 1000, (value % 1000) // 10


def count_visible(cuda_visible_devices: str | None, gpu_count: int, uuids: tuple[str, ...] = ()) -> int:
    """How many GPUs CUDA will enumerate under CUDA_VISIBLE_DEVICES.

    CUDA's rules: unset = all; empty string = none; entries are indices or (prefixes of) UUIDs;
    parsing stops at the first invalid entry (so "-1" or "0,99,1" hides everything after it).
    """
    if cuda_visible_devices is None:
        return gpu_count
    seen: set[int] = set()
    for raw in cuda_visible_devices.split(","):
        entry = raw.strip()
        if not entry:
            break
        if entry.lstrip("-").isdigit():
            index = int(entry)
            if index < 0 or index >= gpu_count or index in seen:
                break
            seen.add(index)
            continue
        if entry.startswith("MIG-"):
            seen.add(-len(seen) - 1)  # a MIG instance: one device, not mappable to an NVML index here
            continue
        match = [i for i, uuid in enumerate(uuids) if uuid.startswith(entry)]
        if len(match) != 1 or match[0] in seen:
            break
        seen.add(match[0])
    return len(seen)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _safe(fn: Any, *args: Any) -> Any:
    """NVML raises NVMLError_NotSupported for fields some GPUs/containers lack: that field is None."""
    import pynvml

    if fn is None:  # a function this nvidia-ml-py does not have
        return None
    try:
        return fn(*args)
    except pynvml.NVMLError:
        return None


def _processes(handle: Any) -> tuple[GpuProcess, ...]:
    import pynvml

    procs = _safe(pynvml.nvmlDeviceGetComputeRunningProcesses, handle) or []
    out = []
    for p in procs:
        name = _safe(pynvml.nvmlSystemGetProcessName, p.pid)
        used = getattr(p, "usedGpuMemory", None)
        out.append(
            GpuProcess(
                pid=int(p.pid),
                name=_text(name) if name else None,
                used_bytes=int(used) if isinstance(used, int) else None,
            )
        )
    return tuple(out)


def _gpu(index: int) -> tuple[GpuFacts, str, Any]:
    import pynvml

    from doctor.probes.nvml_health import read_device_health

    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
    cc = _safe(pynvml.nvmlDeviceGetCudaComputeCapability, handle)
    mig = _safe(pynvml.nvmlDeviceGetMigMode, handle)
    pci = _safe(pynvml.nvmlDeviceGetPciInfo, handle)
    uuid = _safe(pynvml.nvmlDeviceGetUUID, handle)
    facts = GpuFacts(
        index=index,
        name=_text(pynvml.nvmlDeviceGetName(handle)),
        memory_total_bytes=int(mem.total),
        memory_free_bytes=int(mem.free),
        memory_used_bytes=int(mem.used),
        compute_capability=(int(cc[0]), int(cc[1])) if cc else None,
        mig_enabled=bool(mig[0]) if mig else None,
        processes=_processes(handle),
        pci_bus_id=_text(pci.busId) if pci is not None else None,
    )
    health = read_device_health(pynvml, handle, index, facts.name, facts.pci_bus_id)
    # UUIDs only serve CUDA_VISIBLE_DEVICES matching; never reported
    return facts, _text(uuid) if uuid else "", health


def _gpu_or_placeholder(index: int) -> tuple[GpuFacts, str, Any]:
    """A GPU that NVML cannot query (fallen off the bus, Xid errors) is itself a finding, not a crash."""
    import pynvml

    from doctor.probes.nvml_health import lost_gpu_health

    try:
        return _gpu(index)
    except pynvml.NVMLError as exc:
        return (
            GpuFacts(
                index=index,
                name=f"GPU {index} (NVML error: {exc})",
                memory_total_bytes=0,
                memory_free_bytes=0,
                memory_used_bytes=0,
                compute_capability=None,
                mig_enabled=None,
            ),
            "",
            lost_gpu_health(index, str(exc)),
        )


@dataclass(frozen=True)
class _NvmlRead:
    facts: NvmlFacts
    uuids: tuple[str, ...]
    health: GpuHealthFacts | Unavailable


_READ_LOCK = threading.Lock()


def read_nvml() -> tuple[NvmlFacts, tuple[str, ...]]:
    """Query NVML once per process: the nvml probe and the live-probe gates run in parallel threads."""
    with _READ_LOCK:
        read = _read_nvml_once()
    return read.facts, read.uuids


def read_gpu_health() -> GpuHealthFacts | Unavailable:
    """Health facts from the same single NVML session."""
    with _READ_LOCK:
        return _read_nvml_once().health


def _driver_stack(
    init_error: BaseException | None = None, driver: str | None = None, nvml_version: str | None = None
) -> Any:
    from doctor.probes.nvml_health import (
        DriverStack,
        init_error_kind,
        kernel_module_version,
        loaded_library_path,
    )

    return DriverStack(
        kernel_module_version=kernel_module_version(),
        nvml_driver_version=driver,
        nvml_library_version=nvml_version,
        nvml_library_path=loaded_library_path(),
        init_error=str(init_error) if init_error is not None else None,
        init_error_kind=init_error_kind(init_error) if init_error is not None else None,
    )


@functools.lru_cache(maxsize=1)
def _read_nvml_once() -> _NvmlRead:
    from doctor.probes.nvml_health import GpuHealthFacts, XidLog, pci_index_map, xid_log

    try:
        import pynvml
    except ImportError:
        reason = f"{NO_GPU_REASON} (nvidia-ml-py is not installed)"
        return _NvmlRead(
            NvmlFacts(False, reason), (), Unavailable("nvidia-ml-py is not installed", "missing")
        )
    try:
        pynvml.nvmlInit()
    except (pynvml.NVMLError, OSError) as exc:
        # LibraryNotFound: no driver installed (or not mounted into this container); DriverNotLoaded;
        # LibRmVersionMismatch: user-space libraries upgraded while the old kernel module stays loaded.
        facts = NvmlFacts(False, f"{NO_GPU_REASON} (NVML: {exc})")
        stack = _driver_stack(exc)
        # With a driver present (a version mismatch, a lost GPU) the kernel log still tells what happened.
        no_driver = stack.init_error_kind == "library-not-found"
        xids = XidLog(False, "no NVIDIA driver installed") if no_driver else xid_log({})
        health = GpuHealthFacts(stack, (), xids)
        return _NvmlRead(facts, (), health)
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        nvml_version = _safe(getattr(pynvml, "nvmlSystemGetNVMLVersion", None))
        cuda_int = _safe(pynvml.nvmlSystemGetCudaDriverVersion)
        count = int(pynvml.nvmlDeviceGetCount())
        triples = [_gpu_or_placeholder(i) for i in range(count)]
        stack = _driver_stack(None, driver, _text(nvml_version) if nvml_version else None)
    finally:
        _safe(pynvml.nvmlShutdown)
    gpus = tuple(t[0] for t in triples)
    uuids = tuple(t[1] for t in triples)
    health_gpus = tuple(t[2] for t in triples)
    reason = "" if gpus else f"{NO_GPU_REASON} (driver {driver} loaded but reports 0 GPUs)"
    facts = NvmlFacts(
        driver_visible=bool(gpus),
        reason=reason,
        driver_version=driver,
        cuda_driver_version=cuda_version_from_int(int(cuda_int)) if cuda_int else None,
        gpus=gpus,
    )
    health = GpuHealthFacts(stack, health_gpus, xid_log(pci_index_map(health_gpus)))
    return _NvmlRead(facts, uuids, health)


def nvml_facts(environ: dict[str, str] | None = None) -> NvmlFacts:
    facts, uuids = read_nvml()
    env = os.environ if environ is None else environ
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    return NvmlFacts(
        driver_visible=facts.driver_visible,
        reason=facts.reason,
        driver_version=facts.driver_version,
        cuda_driver_version=facts.cuda_driver_version,
        gpus=facts.gpus,
        cuda_visible_devices=cvd,
        visible_gpu_count=count_visible(cvd, facts.gpu_count, uuids),
    )


def nvml_sees_gpu() -> bool:
    return read_nvml()[0].gpu_count > 0


NVML: Probe[NvmlFacts] = Probe("nvml")


@probe(NVML)
def nvml_probe(target: RunSpec) -> NvmlFacts:
    return nvml_facts()


GPU_HEALTH: Probe[GpuHealthFacts] = Probe("gpu-health")


@probe(GPU_HEALTH)
def gpu_health_probe(target: RunSpec) -> GpuHealthFacts | Unavailable:
    """Health facts, read in the nvml probe's NVML session."""
    return read_gpu_health()
