"""GPU health facts from NVML and the kernel log: what a rented GPU hides from an environment dump.

Read in the same NVML session as the `nvml` probe (doctor.probes.nvml calls `read_device_health`
per GPU), so a health read costs a few ioctls per GPU, not another `nvmlInit`. Every NVML query
may raise (NotSupported on consumer cards and vGPUs, NoPermission in containers, GpuIsLost on a
GPU that fell off the bus): each such answer is kept as a value — the field is None and
`unavailable[field]` says why — never an exception.

Facts only; doctor/checks/gpu_health.py judges them.
"""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# NVML clock-event reason bits (nvmlClocksEventReason*), stable since driver 4.304's throttle reasons.
CLOCK_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}

# nvmlGpuFabricState_t
FABRIC_STATES = {0: "not-supported", 1: "not-started", 2: "in-progress", 3: "completed"}

KMSG_PATH = "/dev/kmsg"
PROC_DRIVER_VERSION = "/proc/driver/nvidia/version"


@dataclass(frozen=True)
class GpuHealth:
    index: int  # NVML index (PCI bus order, like nvidia-smi)
    name: str
    pci_bus_id: str | None = None
    query_error: str | None = None  # NVML could not open/query this GPU at all (GpuIsLost, Unknown...)
    # ECC and memory repair
    ecc_enabled: bool | None = None
    ecc_volatile_uncorrected: int | None = None  # since the last driver load / GPU reset
    ecc_volatile_corrected: int | None = None
    ecc_aggregate_uncorrected: int | None = None  # lifetime of the board
    ecc_aggregate_corrected: int | None = None
    retired_pages_sbe: int | None = None  # pre-Ampere page retirement
    retired_pages_dbe: int | None = None
    retired_pages_pending: bool | None = None
    remapped_rows_correctable: int | None = None  # Ampere+ row remapping
    remapped_rows_uncorrectable: int | None = None
    remap_pending: bool | None = None  # a remap waits for a GPU reset to take effect
    remap_failed: bool | None = None  # the remapper ran out of spare rows
    # clocks and thermals
    clock_event_reasons: int | None = None  # bitmask, see CLOCK_REASONS
    temperature_c: int | None = None
    utilization_gpu_percent: int | None = None
    # PCIe
    pcie_gen_current: int | None = None
    pcie_gen_max: int | None = None  # the link's maximum: min(GPU, slot)
    pcie_gen_gpu_max: int | None = None  # what the GPU itself supports
    pcie_width_current: int | None = None
    pcie_width_max: int | None = None
    # NVSwitch fabric (HGX/DGX); "not-supported" on PCIe cards
    fabric_state: str | None = None
    fabric_status: str | None = None  # NVML's return-code name for the registration ("Success", ...)
    fabric_cluster_uuid_zero: bool | None = None
    fabric_clique_id: int | None = None
    persistence_mode: bool | None = None
    unavailable: Mapping[str, str] = field(default_factory=dict)  # field -> why NVML did not answer

    @property
    def active_clock_reasons(self) -> tuple[str, ...]:
        if self.clock_event_reasons is None:
            return ()
        return tuple(name for bit, name in CLOCK_REASONS.items() if self.clock_event_reasons & bit)


@dataclass(frozen=True)
class XidEvent:
    code: int
    pci: str  # as the kernel wrote it, e.g. "0000:18:00"
    gpu_index: int | None  # NVML index with that PCI bus id, when known
    seconds_since_boot: float | None
    text: str  # the message after "Xid (...): ", truncated


@dataclass(frozen=True)
class XidLog:
    readable: bool
    reason: str = ""  # why the kernel log could not be read
    source: str = KMSG_PATH
    events: tuple[XidEvent, ...] = ()


@dataclass(frozen=True)
class DriverStack:
    kernel_module_version: str | None  # /proc/driver/nvidia/version (the loaded kernel module)
    nvml_driver_version: str | None  # nvmlSystemGetDriverVersion
    nvml_library_version: str | None  # nvmlSystemGetNVMLVersion, e.g. "12.570.124.06"
    nvml_library_path: str | None  # the libnvidia-ml.so this process loaded (from /proc/self/maps)
    init_error: str | None = None  # what nvmlInit raised
    init_error_kind: str | None = None  # "rm-version-mismatch", "driver-not-loaded", "library-not-found", ...

    @property
    def library_driver_version(self) -> str | None:
        """The driver version the user-space NVML library belongs to."""
        for text in (self.nvml_library_path, self.nvml_library_version):
            match = re.search(r"(\d{3,}\.\d+(?:\.\d+)?)$", text or "")
            if match:
                return match.group(1)
        return None

    @property
    def mismatch(self) -> bool:
        if self.init_error_kind == "rm-version-mismatch":
            return True
        lib = self.library_driver_version
        return bool(self.kernel_module_version and lib and lib != self.kernel_module_version)


@dataclass(frozen=True)
class GpuHealthFacts:
    driver: DriverStack
    gpus: tuple[GpuHealth, ...] = ()
    xid: XidLog = field(default_factory=lambda: XidLog(False, "not read"))


# ---------------------------------------------------------------- NVML reads (inside an nvmlInit session)


def _error_name(exc: BaseException) -> str:
    """'NotSupported', 'NoPermission', 'GpuIsLost'... from pynvml's NVMLError_* class names."""
    name = type(exc).__name__
    return name.removeprefix("NVMLError_") if name.startswith("NVMLError_") else str(exc) or name


class _Reader:
    """Calls NVML and files each refusal under the field it was for."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.unavailable: dict[str, str] = {}

    def __call__(self, key: str, fn_name: str, *args: Any) -> Any:
        fn: Callable[..., Any] | None = getattr(self.nvml, fn_name, None)
        if fn is None:
            self.unavailable[key] = f"{fn_name} not in this nvidia-ml-py"
            return None
        try:
            return fn(*args)
        except self.nvml.NVMLError as exc:
            self.unavailable[key] = _error_name(exc)
            return None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _ecc(read: _Reader, handle: Any) -> dict[str, Any]:
    nvml = read.nvml
    mode = read("ecc_enabled", "nvmlDeviceGetEccMode", handle)
    out: dict[str, Any] = {"ecc_enabled": bool(mode[0]) if mode else None}
    if mode is not None and not mode[0]:
        return out  # ECC off: the counters are meaningless (and NVML refuses them)
    unc, cor = nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED
    vol, agg = nvml.NVML_VOLATILE_ECC, nvml.NVML_AGGREGATE_ECC
    for key, kind, counter in (
        ("ecc_volatile_uncorrected", unc, vol),
        ("ecc_volatile_corrected", cor, vol),
        ("ecc_aggregate_uncorrected", unc, agg),
        ("ecc_aggregate_corrected", cor, agg),
    ):
        out[key] = _int(read(key, "nvmlDeviceGetTotalEccErrors", handle, kind, counter))
    return out


def _memory_repair(read: _Reader, handle: Any) -> dict[str, Any]:
    nvml = read.nvml
    out: dict[str, Any] = {}
    rows = read("remapped_rows", "nvmlDeviceGetRemappedRows", handle)
    if rows is not None:
        corr, unc, pending, failed = rows
        out.update(
            remapped_rows_correctable=int(corr),
            remapped_rows_uncorrectable=int(unc),
            remap_pending=bool(pending),
            remap_failed=bool(failed),
        )
        return out  # Ampere and newer remap rows instead of retiring pages
    sbe = read(
        "retired_pages",
        "nvmlDeviceGetRetiredPages",
        handle,
        nvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS,
    )
    dbe = read(
        "retired_pages",
        "nvmlDeviceGetRetiredPages",
        handle,
        nvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR,
    )
    pending = read("retired_pages_pending", "nvmlDeviceGetRetiredPagesPendingStatus", handle)
    out.update(
        retired_pages_sbe=len(sbe) if sbe is not None else None,
        retired_pages_dbe=len(dbe) if dbe is not None else None,
        retired_pages_pending=bool(pending) if pending is not None else None,
    )
    return out


def _clocks(read: _Reader, handle: Any) -> dict[str, Any]:
    reasons = read("clock_event_reasons", "nvmlDeviceGetCurrentClocksEventReasons", handle)
    if reasons is None:  # drivers before 535 only have the older name
        read.unavailable.pop("clock_event_reasons", None)
        reasons = read("clock_event_reasons", "nvmlDeviceGetCurrentClocksThrottleReasons", handle)
    temp = read("temperature_c", "nvmlDeviceGetTemperature", handle, read.nvml.NVML_TEMPERATURE_GPU)
    util = read("utilization_gpu_percent", "nvmlDeviceGetUtilizationRates", handle)
    return {
        "clock_event_reasons": _int(reasons),
        "temperature_c": _int(temp),
        "utilization_gpu_percent": _int(getattr(util, "gpu", None)),
    }


def _pcie(read: _Reader, handle: Any) -> dict[str, Any]:
    return {
        "pcie_gen_current": _int(read("pcie_gen_current", "nvmlDeviceGetCurrPcieLinkGeneration", handle)),
        "pcie_gen_max": _int(read("pcie_gen_max", "nvmlDeviceGetMaxPcieLinkGeneration", handle)),
        "pcie_gen_gpu_max": _int(read("pcie_gen_gpu_max", "nvmlDeviceGetGpuMaxPcieLinkGeneration", handle)),
        "pcie_width_current": _int(read("pcie_width_current", "nvmlDeviceGetCurrPcieLinkWidth", handle)),
        "pcie_width_max": _int(read("pcie_width_max", "nvmlDeviceGetMaxPcieLinkWidth", handle)),
    }


def _return_name(nvml: Any, code: int) -> str:
    if code == 0:
        return "Success"
    try:
        return _error_name(nvml.NVMLError(code))
    except Exception:  # an unknown code must not break the read
        return f"NVML return {code}"


def _fabric(read: _Reader, handle: Any) -> dict[str, Any]:
    nvml = read.nvml
    struct_type = getattr(nvml, "c_nvmlGpuFabricInfo_t", None)
    getter = getattr(nvml, "nvmlDeviceGetGpuFabricInfo", None)
    if struct_type is None or getter is None:
        read.unavailable["fabric"] = "nvmlDeviceGetGpuFabricInfo not in this nvidia-ml-py"
        return {}
    info = struct_type()
    if read("fabric", "nvmlDeviceGetGpuFabricInfo", handle, ctypes.byref(info)) is None:
        return {}
    state = FABRIC_STATES.get(int(info.state), f"state {int(info.state)}")
    out: dict[str, Any] = {"fabric_state": state}
    if state == "not-supported":
        return out
    out["fabric_status"] = _return_name(nvml, int(info.status))
    out["fabric_cluster_uuid_zero"] = not any(bytes(info.clusterUuid))
    out["fabric_clique_id"] = int(info.cliqueId)
    return out


def read_device_health(nvml: Any, handle: Any, index: int, name: str, pci_bus_id: str | None) -> GpuHealth:
    """All health fields of one GPU; each NVML refusal becomes `unavailable[field]`."""
    read = _Reader(nvml)
    values: dict[str, Any] = {}
    for part in (_ecc, _memory_repair, _clocks, _pcie, _fabric):
        try:
            values.update(part(read, handle))
        except Exception as exc:  # a struct/binding surprise in one part must not hide the others
            read.unavailable[part.__name__.lstrip("_")] = f"{type(exc).__name__}: {exc}"[:200]
    persistence = read("persistence_mode", "nvmlDeviceGetPersistenceMode", handle)
    values["persistence_mode"] = bool(persistence) if persistence is not None else None
    return GpuHealth(
        index=index, name=name, pci_bus_id=pci_bus_id, unavailable=dict(read.unavailable), **values
    )


def lost_gpu_health(index: int, error: str) -> GpuHealth:
    return GpuHealth(index=index, name=f"GPU {index}", query_error=error)


# ---------------------------------------------------------------- driver stack (kernel module vs library)

_INIT_ERROR_KINDS = {
    "LibRmVersionMismatch": "rm-version-mismatch",
    "DriverNotLoaded": "driver-not-loaded",
    "LibraryNotFound": "library-not-found",
    "NoPermission": "no-permission",
}


def init_error_kind(exc: BaseException) -> str:
    return _INIT_ERROR_KINDS.get(_error_name(exc), "other")


def kernel_module_version(path: str = PROC_DRIVER_VERSION) -> str | None:
    """'NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.124.06  Thu ...' -> '570.124.06'."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read(4096)
    except OSError:
        return None
    match = re.search(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else None


def loaded_library_path(stem: str = "libnvidia-ml.so", maps: str = "/proc/self/maps") -> str | None:
    """The real file of a shared library this process has loaded (its name carries the driver version)."""
    try:
        with open(maps, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                if stem in os.path.basename(path):
                    return path
    except OSError:
        return None
    return None


# ---------------------------------------------------------------- Xid events from the kernel log

_XID = re.compile(r"NVRM: Xid \(PCI:([0-9A-Fa-f:.]+)\): (\d+),?\s*(.*)")


def _pci_key(text: str | None) -> str | None:
    """'0000:18:00' and '00000000:18:00.0' -> '0000:18:00' (domain:bus:device, lower case)."""
    if not text:
        return None
    parts = text.lower().split(".")[0].split(":")
    if len(parts) < 3:
        return None
    domain, bus, device = parts[-3:]
    return f"{int(domain, 16):04x}:{bus}:{device}"


def parse_xid_lines(records: list[str], pci_to_index: Mapping[str, int]) -> tuple[XidEvent, ...]:
    """/dev/kmsg records ("prio,seq,usec,flags;message") or plain dmesg lines -> Xid events."""
    events = []
    for record in records:
        head, sep, message = record.partition(";")
        if not sep:
            head, message = "", record
        match = _XID.search(message)
        if not match:
            continue
        fields = head.split(",")
        usec = fields[2] if len(fields) > 2 and fields[2].isdigit() else None
        key = _pci_key(match.group(1))
        events.append(
            XidEvent(
                code=int(match.group(2)),
                pci=match.group(1),
                gpu_index=pci_to_index.get(key) if key else None,
                seconds_since_boot=int(usec) / 1e6 if usec else None,
                text=match.group(3).strip()[:300],
            )
        )
    return tuple(events)


def read_kmsg(path: str = KMSG_PATH, max_records: int = 50_000) -> tuple[list[str] | None, str]:
    """Every record in the kernel ring buffer, without blocking; (None, why) when not readable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        return None, f"{path} is not readable ({exc.strerror or exc}); containers usually hide the kernel log"
    records: list[str] = []
    try:
        while len(records) < max_records:
            try:
                chunk = os.read(fd, 8192)  # one record per read
            except BlockingIOError:
                break  # the end of the buffer
            except OSError as exc:
                if exc.errno == 32:  # EPIPE: a record was overwritten while reading; keep going
                    continue
                if not records:
                    return None, f"{path} is not readable ({exc.strerror or exc})"
                break
            if not chunk:
                break
            records.append(chunk.decode("utf-8", "replace").rstrip("\n"))
    finally:
        os.close(fd)
    return records, ""


def xid_log(pci_to_index: Mapping[str, int], path: str = KMSG_PATH) -> XidLog:
    records, reason = read_kmsg(path)
    if records is None:
        return XidLog(False, reason, path)
    return XidLog(True, "", path, parse_xid_lines(records, pci_to_index))


def pci_index_map(gpus: tuple[GpuHealth, ...]) -> dict[str, int]:
    return {key: g.index for g in gpus if (key := _pci_key(g.pci_bus_id))}
