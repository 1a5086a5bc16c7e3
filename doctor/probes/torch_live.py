"""The torch live probe: import torch in the shared live child (doctor.probes.live_batch), see which CUDA
it was built for and whether CUDA starts, and run a known-answer GEMM on every visible GPU (with
`RunSpec.deep`, pinned-copy bandwidth and real peer-to-peer copies too).

`torch_child` runs inside the child; everything else runs in the doctor, which never imports torch.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from doctor.children import child
from doctor.probes import Probe, Unavailable, probe
from doctor.probes.live_batch import LIVE_BATCH, LiveRequest, live_gate, not_installed, short_error
from run_plan.spec import RunSpec


@dataclass(frozen=True)
class TorchDevice:
    index: int  # CUDA index (after CUDA_VISIBLE_DEVICES), not the NVML index
    name: str
    capability: tuple[int, int]
    memory_free_bytes: int | None = None
    memory_total_bytes: int | None = None


@dataclass(frozen=True)
class GemmResult:
    """One GPU's known-answer GEMM (fp32 and bf16): a wrong result or a hang is a broken GPU."""

    index: int  # CUDA index
    ok: bool
    max_abs_error: float | None = None  # vs the exact answer computed on the CPU; 0 when healthy
    seconds: float | None = None
    error: str | None = None  # what CUDA raised
    hung: bool = False  # no answer within timeout_s
    timeout_s: float = 0.0


@dataclass(frozen=True)
class CopyBandwidth:
    """Pinned host<->device copy speed of one GPU (--deep)."""

    index: int
    h2d_gb_s: float | None = None
    d2h_gb_s: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class PeerCopy:
    """A real device-to-device copy between two GPUs, checked byte for byte (--deep)."""

    src: int
    dst: int
    can_access_peer: bool | None
    ok: bool
    gb_s: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class DeepProbes:
    bandwidth: tuple[CopyBandwidth, ...] = ()
    peer: tuple[PeerCopy, ...] = ()
    hung: bool = False  # the deep probes did not finish within their time
    timeout_s: float = 0.0


@dataclass(frozen=True)
class TorchLive:
    version: str | None
    import_error: str | None = None
    cuda: str | None = None  # torch.version.cuda
    hip: str | None = None
    cuda_built: bool | None = None  # torch.backends.cuda.is_built()
    cuda_available: bool = False
    init_error: str | None = None  # what torch.cuda.init() raised when CUDA is unavailable
    device_count: int = 0
    devices: tuple[TorchDevice, ...] = ()
    arch_list: tuple[str, ...] = ()  # torch.cuda.get_arch_list(): sm_80, sm_90, compute_90 ...
    # CUDA-related warnings raised while initialising (driver too old, sm_XY not supported by this build)
    warnings: tuple[str, ...] = ()
    import_seconds: float | None = None
    gemm: tuple[GemmResult, ...] = ()  # one per CUDA device, when CUDA is available
    deep: DeepProbes | None = None  # --deep only


TORCH_LIVE: Probe[TorchLive] = Probe("torch-live")


_CUDA_WORDS = ("CUDA", "cuda", "driver", "GPU", "capability", "sm_")


def torch_child(args: Mapping[str, Any]) -> dict[str, Any]:
    import warnings

    out: dict[str, Any] = {"version": None}
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            import torch
        except Exception as exc:  # OSError for a missing libcudart/libcudnn is common
            out["import_error"] = short_error(exc)
            return out
        # Preloaded by the batch child before forking: report that import's cost, not ~0 s.
        out["import_seconds"] = child.PRELOAD_SECONDS.get("torch", round(time.monotonic() - start, 2))
        out["version"] = torch.__version__
        out["cuda"] = torch.version.cuda
        out["hip"] = getattr(torch.version, "hip", None)
        out["cuda_built"] = bool(torch.backends.cuda.is_built())
        out["cuda_available"] = available = bool(torch.cuda.is_available())
        out["arch_list"] = list(torch.cuda.get_arch_list()) if available else []  # [] unless available
        if not available:
            try:
                torch.cuda.init()  # raises the real reason: "not compiled with CUDA", "driver too old", ...
            except Exception as exc:
                out["init_error"] = short_error(exc)
        count = torch.cuda.device_count() if available else 0
        timeout = float(args.get("gemm_timeout_s") or 10.0)
        devices, gemm = _exercise_devices(torch, count, timeout)
        out["device_count"] = len(devices)
        out["devices"] = devices
        out["gemm"] = gemm
        if args.get("deep") and count and not any(g.get("hung") for g in gemm):
            out["deep"] = _deep_probes(torch, count, timeout)
    # Only CUDA-related warnings are evidence; torch's unrelated import-time deprecations are noise.
    texts = [*child.PRELOAD_WARNINGS, *(str(w.message).strip()[:600] for w in caught)]
    out["warnings"] = list(dict.fromkeys(t for t in texts if any(k in t for k in _CUDA_WORDS)))
    return out


GEMM_SIZE = 256


def known_answer_gemm(torch: Any, index: int, device_type: str = "cuda") -> dict[str, Any]:
    """A @ B on cuda:index in fp32 and bf16, compared with the exact answer computed on the CPU.

    A and B hold -1/0/1, so every product and every partial sum (|x| <= 256) is exact in fp32, TF32
    and bf16 alike: any difference at all is the GPU computing wrong, not rounding.
    """
    start = time.monotonic()
    gen = torch.Generator().manual_seed(1234 + index)
    a = torch.randint(-1, 2, (GEMM_SIZE, GEMM_SIZE), generator=gen)
    b = torch.randint(-1, 2, (GEMM_SIZE, GEMM_SIZE), generator=gen)
    expected = a.double() @ b.double()
    device = torch.device(device_type, index)
    worst = 0.0
    for dtype in (torch.float32, torch.bfloat16):
        got = (a.to(device, dtype) @ b.to(device, dtype)).double().cpu()  # .cpu() waits for the GPU
        worst = max(worst, float((got - expected).abs().max()))
    return {
        "index": index,
        "ok": worst == 0.0,
        "max_abs_error": worst,
        "seconds": round(time.monotonic() - start, 4),
    }


def _device_facts(torch: Any, index: int) -> dict[str, Any]:
    """Name and capability come from the device properties (no context yet)."""
    cap = torch.cuda.get_device_capability(index)
    return {"index": index, "name": torch.cuda.get_device_name(index), "capability": list(cap)}


def _exercise_devices(
    torch: Any, count: int, timeout_s: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Free memory and a known-answer GEMM for every device, concurrently, each under a watchdog.

    A GPU that hangs blocks its thread inside CUDA forever; the watchdog stops waiting after
    `timeout_s` and reports it (the child then exits with os._exit, so the stuck thread cannot
    hold the process open).
    """
    import threading

    devices = [_device_facts(torch, index) for index in range(count)]
    gemm: dict[int, dict[str, Any]] = {}

    def work(index: int) -> None:
        try:
            free, total = torch.cuda.mem_get_info(index)  # creates a context: the true free memory
            devices[index].update(memory_free_bytes=int(free), memory_total_bytes=int(total))
        except Exception as exc:
            devices[index]["error"] = short_error(exc, 300)
        try:
            gemm[index] = known_answer_gemm(torch, index)
        except Exception as exc:
            gemm[index] = {"index": index, "ok": False, "error": short_error(exc, 600)}

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    hung = {"ok": False, "hung": True, "timeout_s": timeout_s}
    return devices, [gemm.get(index, {"index": index, **hung}) for index in range(count)]


COPY_BYTES = 256 << 20  # what Azure's and DCGM's bandwidth checks move: long enough to reach steady state
PEER_BYTES = 64 << 20


def _timed_copies(torch: Any, dst: Any, src: Any, device: Any, repeats: int = 3) -> float:
    """Best GB/s of `repeats` copies (the first one also warms the path up)."""
    best = float("inf")
    for _ in range(repeats + 1):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        with torch.cuda.device(device):
            start.record()
            dst.copy_(src, non_blocking=True)
            end.record()
            end.synchronize()
        best = min(best, start.elapsed_time(end) / 1000)
    return round(src.numel() * src.element_size() / best / 1e9, 2)


def host_bandwidth(torch: Any, index: int) -> dict[str, Any]:
    device = torch.device("cuda", index)
    host = torch.empty(COPY_BYTES, dtype=torch.uint8).pin_memory()
    gpu = torch.empty(COPY_BYTES, dtype=torch.uint8, device=device)
    return {
        "index": index,
        "h2d_gb_s": _timed_copies(torch, gpu, host, device),
        "d2h_gb_s": _timed_copies(torch, host, gpu, device),
    }


def peer_copy(torch: Any, src: int, dst: int) -> dict[str, Any]:
    """Copy a known pattern cuda:src -> cuda:dst and compare every byte: `can_device_access_peer`
    can say yes on systems where P2P silently corrupts or hangs (ACS/IOMMU settings)."""
    ramp = torch.arange(PEER_BYTES // 4, dtype=torch.int64)
    pattern = (ramp * 2654435761 % 2**31).to(torch.int32).to(f"cuda:{src}")  # no run of equal bytes
    target = torch.empty_like(pattern, device=f"cuda:{dst}")
    gb_s = _timed_copies(torch, target, pattern, torch.device("cuda", dst), repeats=2)
    same = bool(torch.equal(target.cpu(), pattern.cpu()))
    return {
        "src": src,
        "dst": dst,
        "can_access_peer": bool(torch.cuda.can_device_access_peer(src, dst)),
        "ok": same,
        "gb_s": gb_s,
        "error": None if same else "the copy arrived corrupted",
    }


def _deep_probes(torch: Any, count: int, timeout_s: float) -> dict[str, Any]:
    """Pinned copy bandwidth per GPU, and a ring of real peer copies (i -> i+1) on 2+ GPUs."""
    import threading

    out: dict[str, Any] = {"bandwidth": [], "peer": [], "timeout_s": timeout_s * 2}

    def work() -> None:
        for index in range(count):
            try:
                out["bandwidth"].append(host_bandwidth(torch, index))
            except Exception as exc:
                out["bandwidth"].append({"index": index, "error": short_error(exc, 300)})
        pairs = (
            [(i, (i + 1) % count) for i in range(count)]
            if count > 2
            else ([(0, 1), (1, 0)] if count == 2 else [])
        )
        for src, dst in pairs:
            try:
                out["peer"].append(peer_copy(torch, src, dst))
            except Exception as exc:
                out["peer"].append(
                    {
                        "src": src,
                        "dst": dst,
                        "can_access_peer": None,
                        "ok": False,
                        "error": short_error(exc, 300),
                    }
                )

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout_s * 2)
    out["hung"] = thread.is_alive()
    return out


def _deep_from_dict(data: Mapping[str, Any] | None) -> DeepProbes | None:
    if not isinstance(data, Mapping):
        return None
    return DeepProbes(
        bandwidth=tuple(
            CopyBandwidth(int(b["index"]), b.get("h2d_gb_s"), b.get("d2h_gb_s"), b.get("error"))
            for b in data.get("bandwidth") or ()
        ),
        peer=tuple(
            PeerCopy(
                int(p["src"]),
                int(p["dst"]),
                p.get("can_access_peer"),
                bool(p.get("ok")),
                p.get("gb_s"),
                p.get("error"),
            )
            for p in data.get("peer") or ()
        ),
        hung=bool(data.get("hung")),
        timeout_s=float(data.get("timeout_s") or 0.0),
    )


def _gemm_from_dict(data: Mapping[str, Any]) -> GemmResult:
    return GemmResult(
        index=int(data.get("index", 0)),
        ok=bool(data.get("ok")),
        max_abs_error=data.get("max_abs_error"),
        seconds=data.get("seconds"),
        error=data.get("error"),
        hung=bool(data.get("hung")),
        timeout_s=float(data.get("timeout_s") or 0.0),
    )


def torch_live_from_dict(data: Mapping[str, Any]) -> TorchLive:
    devices = tuple(
        TorchDevice(
            index=int(d["index"]),
            name=str(d["name"]),
            capability=(int(d["capability"][0]), int(d["capability"][1])),
            memory_free_bytes=d.get("memory_free_bytes"),
            memory_total_bytes=d.get("memory_total_bytes"),
        )
        for d in data.get("devices") or ()
    )
    return TorchLive(
        version=data.get("version"),
        import_error=data.get("import_error"),
        cuda=data.get("cuda"),
        hip=data.get("hip"),
        cuda_built=data.get("cuda_built"),
        cuda_available=bool(data.get("cuda_available")),
        init_error=data.get("init_error"),
        device_count=int(data.get("device_count") or 0),
        devices=devices,
        arch_list=tuple(data.get("arch_list") or ()),
        warnings=tuple(data.get("warnings") or ()),
        import_seconds=data.get("import_seconds"),
        gemm=tuple(_gemm_from_dict(g) for g in data.get("gemm") or ()),
        deep=_deep_from_dict(data.get("deep")),
    )


def _gemm_timeout(target: RunSpec) -> float:
    # A healthy GPU answers in well under a second; leave most of the probe's time to the import.
    return max(2.0, min(20.0, float(target.probe_timeout_s) / 3))


def torch_request(target: RunSpec, env: dict[str, str] | None = None) -> LiveRequest | Unavailable:
    blocked = live_gate(target) or not_installed(("torch",), env)
    if blocked is not None:
        return blocked
    return LiveRequest(
        f"{__name__}:torch_child",
        {"gemm_timeout_s": _gemm_timeout(target), "deep": bool(target.deep)},
        "importing torch in a child process",
        preload=("torch",),
    )


def torch_live_facts(target: RunSpec, env: dict[str, str] | None = None) -> TorchLive | Unavailable:
    data = LIVE_BATCH.answer(TORCH_LIVE.name, target, torch_request(target, env), env)
    return data if isinstance(data, Unavailable) else torch_live_from_dict(data)


LIVE_BATCH.register(TORCH_LIVE.name, torch_request)


@probe(TORCH_LIVE, announce=LIVE_BATCH.announce)
def torch_live_probe(target: RunSpec) -> TorchLive | Unavailable:
    return torch_live_facts(target)
