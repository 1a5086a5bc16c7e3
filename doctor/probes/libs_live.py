"""LIVE tier: import torch / bitsandbytes / triton / transformers in child processes and exercise them.

Each library is its own probe, but the probes a report needs share ONE child: it imports torch once
and forks a worker per probe, which run concurrently (see "one shared child" below). Each worker has
`RunSpec.probe_timeout_s`, and a hang or a segfault comes back as an Unavailable(error|timeout) value
for that probe alone, which the runner turns into an ERROR row. The parent never imports these
libraries. The torch worker also runs a known-answer GEMM on every visible GPU (and, with
`RunSpec.deep`, pinned-copy bandwidth and real peer-to-peer copies).

Live probes run when `--live` is given, or by default when NVML sees a GPU: on a CPU-only box,
`import torch` (~4 s) and `import bitsandbytes` (~9 s) would blow the doctor's start-up budget
and tell us nothing the static tier does not.

The `*_child` functions run inside the child (`doctor.children._child_main`): they take a dict and
return a JSON-able dict, and report a failing import as data (`import_error`), not as an exception.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from doctor.children.bnb_import import import_bitsandbytes
from doctor.children.child import run_stages_in_child
from doctor.probes import Unavailable, probe
from doctor.probes.nvml import nvml_sees_gpu
from doctor.probes.packages import find_dist
from run_plan.safe_files import tool_cache_dir

NOT_LIVE_REASON = "no NVIDIA GPU visible; live CUDA probes skipped (use --live to force)"
_MODULE = "doctor.probes.libs_live"


def live_gate(target: Any) -> Unavailable | None:
    """None when live probes should run for this target, else why not."""
    live = getattr(target, "live", None)
    if live is False:
        return Unavailable("live probes disabled (--no-live)", "not-applicable")
    if live is None and not nvml_sees_gpu():
        return Unavailable(NOT_LIVE_REASON, "not-applicable")
    return None


def _short(exc: BaseException, limit: int = 800) -> str:
    return f"{type(exc).__name__}: {exc}"[:limit]


# ---------------------------------------------------------------- one shared child for all live probes
#
# Each live probe used to start its own child, and each child paid `import torch` (2-5 s) and its
# own CUDA start. Now the probes that a report needs are announced up front (DoctorContext.prefetch
# calls `announce`), the first one to run starts ONE child for all of them, that child imports torch
# once and forks a worker per probe (doctor.children._child_main), and the others wait for their share.

Request = tuple[str, dict[str, Any]]  # (child function name in this module, its args)
_PRELOAD = {
    "torch-live": ("torch",),
    "bnb-live": ("torch",),
    "triton-live": ("torch",),
    "rates-live": ("torch",),
}
_WHAT = {
    "torch-live": "importing torch in a child process",
    "rates-live": "timing the GPU's kernels in a child process",
    "bnb-live": "importing bitsandbytes in a child process",
    "triton-live": "importing triton in a child process",
    "transformers-live": "importing transformers in a child process",
}
_batch_lock = threading.Lock()
# Seconds each stage of the last batch ran after the fork (its own work, the shared import excluded);
# read by benchmarks/doctor_startup.py, never by a check.
LAST_BATCH_SECONDS: dict[str, float] = {}
_announced: dict[Any, set[str]] = {}
_pending: dict[tuple[Any, str], Future[dict[str, Any] | Unavailable]] = {}


def _key(target: Any) -> Any:
    try:
        hash(target)
    except TypeError:  # an unhashable target type: this object is the only one that can match
        return id(target)
    return target


def announce(target: Any, names: Any) -> None:
    """The live probes this report will ask for, so the first one can start a child for all of them."""
    wanted = {n for n in names if n in _WHAT}
    if wanted:
        with _batch_lock:
            _announced.setdefault(_key(target), set()).update(wanted)


def _request(name: str, target: Any) -> Request | Unavailable:
    builders: dict[str, Callable[[Any], Request | Unavailable]] = {
        "torch-live": _torch_request,
        "bnb-live": _bnb_request,
        "triton-live": _triton_request,
        "transformers-live": _transformers_request,
        "rates-live": _rates_request,
    }
    return builders[name](target)


# `has_triton()` imports torch._dynamo and torch._inductor (1.5-4 s), while the Triton kernel itself needs
# neither: in a batch the question goes to a worker of its own, so the two run side by side.
_INDUCTOR_STAGE = "triton-live.inductor"


def _run_batch(
    target: Any,
    requests: dict[str, Request],
    env: dict[str, str] | None = None,
) -> dict[str, dict[str, Any] | Unavailable]:
    timeout = float(getattr(target, "probe_timeout_s", 60.0))
    preload = tuple(dict.fromkeys(m for n in requests for m in _PRELOAD.get(n, ())))
    # a request names a function of this module, or "module:function" elsewhere
    stages = {name: (fn if ":" in fn else f"{_MODULE}:{fn}", args) for name, (fn, args) in requests.items()}
    if "triton-live" in stages:
        function, args = stages["triton-live"]
        stages["triton-live"] = (function, {**args, "inductor_elsewhere": True})
        stages[_INDUCTOR_STAGE] = (f"{_MODULE}:inductor_child", {})
    results = run_stages_in_child(stages, timeout_s=timeout, preload=preload, env=env)
    LAST_BATCH_SECONDS.update({name: round(r.seconds, 2) for name, r in results.items()})
    inductor = results.pop(_INDUCTOR_STAGE, None)
    answers: dict[str, dict[str, Any] | Unavailable] = {
        name: (r.data if r.ok and r.data is not None else r.as_unavailable(_WHAT[name]))
        for name, r in results.items()
    }
    triton = answers.get("triton-live")
    if isinstance(triton, dict) and not triton.get("import_error"):
        found = inductor.data if inductor is not None and inductor.ok and inductor.data else {}
        triton["torch_has_triton"] = found.get("torch_has_triton")
    return answers


def _shared(name: str, target: Any, request: Request) -> dict[str, Any] | Unavailable:
    """This probe's share of the target's one live child (started by whichever probe asks first)."""
    with _batch_lock:
        future = _pending.pop((_key(target), name), None)
        if future is None:
            others = _announced.pop(_key(target), set()) - {name}
            batch: dict[str, Future[dict[str, Any] | Unavailable]] = {n: Future() for n in others}
            for other, fut in batch.items():
                _pending[(_key(target), other)] = fut
    if future is not None:
        return future.result()
    requests: dict[str, Request] = {name: request}
    try:
        for other, fut in batch.items():
            req = _request(other, target)
            if isinstance(req, Unavailable):
                fut.set_result(req)
            else:
                requests[other] = req
        results = _run_batch(target, requests)
    except Exception as exc:  # never leave another probe waiting forever
        failed = Unavailable(f"live probes failed: {_short(exc, 300)}", "error")
        results = {n: failed for n in requests}
    for other, fut in batch.items():
        if not fut.done():
            fut.set_result(results.get(other, Unavailable("the live child gave no answer", "error")))
    return results[name]


def _live(
    name: str, target: Any, request: Request | Unavailable, env: dict[str, str] | None, private: bool = False
) -> dict[str, Any] | Unavailable:
    if isinstance(request, Unavailable):
        return request
    if env is not None or private:  # a test's environment or arguments: a child of its own
        return _run_batch(target, {name: request}, env)[name]
    return _shared(name, target, request)


# ---------------------------------------------------------------- torch


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
            out["import_error"] = _short(exc)
            return out
        from doctor.children import child

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
                out["init_error"] = _short(exc)
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
            devices[index]["error"] = _short(exc, 300)
        try:
            gemm[index] = known_answer_gemm(torch, index)
        except Exception as exc:
            gemm[index] = {"index": index, "ok": False, "error": _short(exc, 600)}

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
                out["bandwidth"].append({"index": index, "error": _short(exc, 300)})
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
                    {"src": src, "dst": dst, "can_access_peer": None, "ok": False, "error": _short(exc, 300)}
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


def _gemm_timeout(target: Any) -> float:
    # A healthy GPU answers in well under a second; leave most of the probe's time to the import.
    return max(2.0, min(20.0, float(getattr(target, "probe_timeout_s", 60.0)) / 3))


def _torch_request(target: Any, env: dict[str, str] | None = None) -> Request | Unavailable:
    gate = live_gate(target)
    if gate is not None:
        return gate
    if env is None and find_dist("torch") is None:
        return Unavailable("torch is not installed", "missing")
    return "torch_child", {
        "gemm_timeout_s": _gemm_timeout(target),
        "deep": bool(getattr(target, "deep", False)),
    }


def torch_live_facts(target: Any, env: dict[str, str] | None = None) -> TorchLive | Unavailable:
    data = _live("torch-live", target, _torch_request(target, env), env)
    return data if isinstance(data, Unavailable) else torch_live_from_dict(data)


@probe("torch-live")
def torch_live_probe(target: Any) -> TorchLive | Unavailable:
    return torch_live_facts(target)


torch_live_probe.announce = announce  # type: ignore[attr-defined]


# ---------------------------------------------------------------- bitsandbytes


@dataclass(frozen=True)
class BnbRoundTrip:
    device: str
    quant_type: str
    dequant_rel_error: float | None = None  # ||dequant(quant(W)) - W|| / ||W||
    linear_rel_error: float | None = None  # Linear4bit(x) vs x @ W.T in bf16
    error: str | None = None  # what raised, if the round trip failed
    seconds: float | None = None


@dataclass(frozen=True)
class BnbLive:
    version: str | None
    import_error: str | None = None
    library_class: str | None = (
        None  # CudaBNBNativeLibrary, BNBNativeLibrary, ErrorHandlerMockBNBNativeLibrary
    )
    library_kind: str = "unknown"  # "cuda", "cpu", "xpu", "failed", "unknown"
    library_path: str | None = None  # the .so actually loaded
    backend: str | None = None  # bitsandbytes.cextension.BNB_BACKEND
    formatted_error: str | None = None  # bnb's own troubleshooting text when the load failed
    log_messages: tuple[str, ...] = ()  # warnings/errors bnb logged while importing
    torch_cuda: str | None = None
    torch_cuda_available: bool | None = None
    roundtrip: BnbRoundTrip | None = None


def _library_kind(cls_name: str, compiled_with_cuda: bool) -> str:
    if "ErrorHandlerMock" in cls_name:
        return "failed"
    if compiled_with_cuda:
        return "cuda"
    if "Xpu" in cls_name:
        return "xpu"
    return "cpu" if cls_name == "BNBNativeLibrary" else "unknown"


def _rel_error(torch: Any, got: Any, ref: Any) -> float:
    diff = (got.float() - ref.float()).norm()
    return float((diff / ref.float().norm().clamp_min(1e-12)).item())


def bnb_roundtrip(torch: Any, device: str, quant_type: str = "nf4") -> dict[str, Any]:
    """The path a 4-bit load uses: quantize_4bit/dequantize_4bit and a Linear4bit forward vs bf16."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    start = time.monotonic()
    out: dict[str, Any] = {"device": device, "quant_type": quant_type}
    try:
        gen = torch.Generator().manual_seed(0)
        weight = torch.randn(256, 512, generator=gen).to(torch.bfloat16)
        x = torch.randn(8, 512, generator=gen).to(torch.bfloat16)
        w_dev = weight.to(device)
        packed, state = F.quantize_4bit(w_dev, blocksize=64, quant_type=quant_type)
        restored = F.dequantize_4bit(packed, state, quant_type=quant_type)
        out["dequant_rel_error"] = round(_rel_error(torch, restored, w_dev), 5)
        layer = bnb.nn.Linear4bit(512, 256, bias=False, compute_dtype=torch.bfloat16, quant_type=quant_type)
        layer.weight = bnb.nn.Params4bit(weight.clone(), requires_grad=False, quant_type=quant_type)
        layer = layer.to(device)  # Params4bit quantizes when moved to the device
        with torch.no_grad():
            got = layer(x.to(device))
            ref = x.to(device) @ w_dev.t()
        out["linear_rel_error"] = round(_rel_error(torch, got, ref), 5)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    except Exception as exc:
        out["error"] = _short(exc, 1500)
    out["seconds"] = round(time.monotonic() - start, 3)
    return out


def bnb_child(args: Mapping[str, Any]) -> dict[str, Any]:
    import logging

    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(f"{record.levelname}: {record.getMessage()}"[:1500])

    handler = _Collect(level=logging.WARNING)
    logging.getLogger().addHandler(handler)
    out: dict[str, Any] = {"version": None}
    try:
        import torch

        bitsandbytes = import_bitsandbytes(torch)
    except Exception as exc:
        out["import_error"] = _short(exc, 1500)
        out["log_messages"] = messages
        return out

    out["version"] = getattr(bitsandbytes, "__version__", None)
    out["torch_cuda"] = torch.version.cuda
    out["torch_cuda_available"] = cuda = bool(torch.cuda.is_available())
    try:
        from bitsandbytes import cextension
    except Exception as exc:
        out["import_error"] = _short(exc)
        return out
    lib = getattr(cextension, "lib", None)
    if lib is not None:
        cls = type(lib)
        state = vars(lib)  # not getattr: the error mock answers every attribute with a function
        out["library_class"] = cls.__name__
        out["library_kind"] = _library_kind(cls.__name__, bool(getattr(cls, "compiled_with_cuda", False)))
        out["library_path"] = getattr(state.get("_lib"), "_name", None)
        out["formatted_error"] = state.get("formatted_error") or state.get("error_msg")
    out["backend"] = getattr(cextension, "BNB_BACKEND", None)
    device = "cuda" if cuda else ("cpu" if args.get("roundtrip_on_cpu") else None)
    if device is not None and args.get("roundtrip", True):
        out["roundtrip"] = bnb_roundtrip(torch, device, str(args.get("quant_type") or "nf4"))
    logging.getLogger().removeHandler(handler)
    out["log_messages"] = list(dict.fromkeys(messages))
    return out


def bnb_live_from_dict(data: Mapping[str, Any]) -> BnbLive:
    rt = data.get("roundtrip")
    roundtrip = (
        BnbRoundTrip(
            device=str(rt.get("device")),
            quant_type=str(rt.get("quant_type")),
            dequant_rel_error=rt.get("dequant_rel_error"),
            linear_rel_error=rt.get("linear_rel_error"),
            error=rt.get("error"),
            seconds=rt.get("seconds"),
        )
        if isinstance(rt, Mapping)
        else None
    )
    return BnbLive(
        version=data.get("version"),
        import_error=data.get("import_error"),
        library_class=data.get("library_class"),
        library_kind=str(data.get("library_kind") or "unknown"),
        library_path=data.get("library_path"),
        backend=data.get("backend"),
        formatted_error=data.get("formatted_error"),
        log_messages=tuple(data.get("log_messages") or ()),
        torch_cuda=data.get("torch_cuda"),
        torch_cuda_available=data.get("torch_cuda_available"),
        roundtrip=roundtrip,
    )


def _bnb_request(
    target: Any,
    env: dict[str, str] | None = None,
    roundtrip_on_cpu: bool = False,
) -> Request | Unavailable:
    gate = live_gate(target)
    if gate is not None:
        return gate
    if env is None and find_dist("bitsandbytes") is None:
        return Unavailable("bitsandbytes is not installed", "missing")
    quant_type = getattr(target, "bnb_4bit_type", "nf4")
    return "bnb_child", {"quant_type": quant_type, "roundtrip_on_cpu": roundtrip_on_cpu}


def bnb_live_facts(
    target: Any, env: dict[str, str] | None = None, roundtrip_on_cpu: bool = False
) -> BnbLive | Unavailable:
    request = _bnb_request(target, env, roundtrip_on_cpu)
    data = _live("bnb-live", target, request, env, private=roundtrip_on_cpu)
    return data if isinstance(data, Unavailable) else bnb_live_from_dict(data)


@probe("bnb-live")
def bnb_live_probe(target: Any) -> BnbLive | Unavailable:
    return bnb_live_facts(target)


bnb_live_probe.announce = announce  # type: ignore[attr-defined]


# ---------------------------------------------------------------- triton


@dataclass(frozen=True)
class TritonLive:
    version: str | None
    import_error: str | None = None
    torch_has_triton: bool | None = None  # torch.utils._triton.has_triton(): what Inductor will decide
    kernel_ran: bool | None = None  # None: not attempted (no CUDA device)
    kernel_error: str | None = None
    kernel_max_abs_error: float | None = None
    kernel_seconds: float | None = None


# The probe kernel's source gets a new literal every run, so Triton's cache never has it: every run
# really compiles a kernel (frontend, LLVM, ptxas). The cache directory is the doctor's own and
# persists, so Triton's C helper module is built with the C compiler once per machine (as for the
# user's own runs), and the probe neither fills the user's Triton cache nor pays gcc every time.
_TRITON_KERNEL = """
import triton
import triton.language as tl


@triton.jit
def probe_add(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    salt = {salt}  # a new literal each run: a new cache key, so a real compile
    x = tl.load(x_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, x + tl.load(y_ptr + offsets, mask=mask) + (salt - salt), mask=mask)
"""


def triton_cache_dir() -> str:
    return str(tool_cache_dir("triton"))


def _compile_and_run_kernel(torch: Any, workdir: str, n: int = 4096) -> float:
    """Write the salted kernel module, compile and launch it on cuda:0; max abs error vs torch's x + y."""
    import importlib.util
    import os
    import random

    salt = random.SystemRandom().randrange(1, 2**30)
    path = os.path.join(workdir, f"niah_doctor_triton_probe_{salt}.py")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(_TRITON_KERNEL.replace("{salt}", str(salt)))
    spec = importlib.util.spec_from_file_location(f"niah_doctor_triton_probe_{salt}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # @triton.jit reads the source back from this real file
    x = torch.rand(n, device="cuda")
    y = torch.rand(n, device="cuda")
    out = torch.empty_like(x)
    module.probe_add[((n + 1023) // 1024,)](x, y, out, n, BLOCK=1024)
    torch.cuda.synchronize()
    return float((out - (x + y)).abs().max().item())


def _forget_probe_kernels(cache: str, before: set[str]) -> None:
    """Drop the cache entries of this run's one-off kernel; keep the C helper builds (.so)."""
    import os
    import shutil

    try:
        created = set(os.listdir(cache)) - before
    except OSError:
        return
    for entry in created:
        path = os.path.join(cache, entry)
        try:
            keep = any(name.endswith(".so") for name in os.listdir(path))
        except OSError:
            continue
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def triton_child(args: Mapping[str, Any]) -> dict[str, Any]:
    import os
    import shutil
    import tempfile

    fresh = bool(args.get("fresh_cache"))
    cache = tempfile.mkdtemp(prefix="niah-doctor-triton-") if fresh else triton_cache_dir()
    os.makedirs(cache, exist_ok=True)
    os.environ["TRITON_CACHE_DIR"] = cache
    workdir = tempfile.mkdtemp(prefix="niah-doctor-triton-src-")
    before = set(os.listdir(cache))
    out: dict[str, Any] = {"version": None}
    try:
        try:
            import triton
        except Exception as exc:
            out["import_error"] = _short(exc)
            return out
        out["version"] = getattr(triton, "__version__", None)
        try:
            import torch

            if not args.get("inductor_elsewhere"):
                out.update(inductor_child({}))
        except Exception as exc:
            out["torch_has_triton"] = None
            out["kernel_error"] = f"torch unavailable: {_short(exc, 300)}"
            return out
        if not torch.cuda.is_available():
            return out
        start = time.monotonic()
        try:
            out["kernel_max_abs_error"] = _compile_and_run_kernel(torch, workdir)
            out["kernel_ran"] = out["kernel_max_abs_error"] < 1e-5
            if not out["kernel_ran"]:
                out["kernel_error"] = f"wrong result: max abs error {out['kernel_max_abs_error']:.3g}"
        except Exception as exc:
            out["kernel_ran"] = False
            out["kernel_error"] = _short(exc, 1500)
        out["kernel_seconds"] = round(time.monotonic() - start, 3)
        return out
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if fresh:
            shutil.rmtree(cache, ignore_errors=True)
        else:
            _forget_probe_kernels(cache, before)


def inductor_child(args: Mapping[str, Any]) -> dict[str, Any]:
    """Whether torch.compile's Inductor will generate Triton kernels here (what `--attn flex` needs)."""
    from torch.utils._triton import has_triton

    return {"torch_has_triton": bool(has_triton())}


def _triton_request(target: Any, env: dict[str, str] | None = None) -> Request | Unavailable:
    gate = live_gate(target)
    if gate is not None:
        return gate
    if env is None and find_dist("triton") is None and find_dist("pytorch-triton") is None:
        return Unavailable("triton is not installed", "missing")
    return "triton_child", {"fresh_cache": bool(getattr(target, "deep", False))}


def triton_live_facts(target: Any, env: dict[str, str] | None = None) -> TritonLive | Unavailable:
    data = _live("triton-live", target, _triton_request(target, env), env)
    if isinstance(data, Unavailable):
        return data
    return TritonLive(
        version=data.get("version"),
        import_error=data.get("import_error"),
        torch_has_triton=data.get("torch_has_triton"),
        kernel_ran=data.get("kernel_ran"),
        kernel_error=data.get("kernel_error"),
        kernel_max_abs_error=data.get("kernel_max_abs_error"),
        kernel_seconds=data.get("kernel_seconds"),
    )


@probe("triton-live")
def triton_live_probe(target: Any) -> TritonLive | Unavailable:
    return triton_live_facts(target)


triton_live_probe.announce = announce  # type: ignore[attr-defined]


# ---------------------------------------------------------------- transformers


@dataclass(frozen=True)
class TransformersLive:
    version: str | None
    import_error: str | None = None
    model_type: str | None = None
    model_type_known: bool | None = None  # model_type in CONFIG_MAPPING_NAMES
    architectures: tuple[str, ...] = ()
    missing_architectures: tuple[str, ...] = ()  # named by config.json but not exported by transformers
    config_transformers_version: str | None = None


def transformers_child(args: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "version": None,
        "model_type": args.get("model_type"),
        "architectures": list(args.get("architectures") or ()),
        "config_transformers_version": args.get("config_transformers_version"),
    }
    try:
        import transformers
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    except Exception as exc:
        out["import_error"] = _short(exc)
        return out
    out["version"] = transformers.__version__
    if out["model_type"]:
        out["model_type_known"] = out["model_type"] in CONFIG_MAPPING_NAMES
    exported = set(dir(transformers))  # the lazy module lists every class without importing its modeling code
    out["missing_architectures"] = [a for a in out["architectures"] if a not in exported]
    return out


def _model_resolution(target: Any) -> Any:
    """The `model` probe's facts (doctor.model_config.ModelResolution), or Unavailable."""
    from doctor.probes import load_probes

    resolve = load_probes().get("model")
    if resolve is None:
        return Unavailable("no model probe is registered", "not-applicable")
    try:
        return resolve(target)
    except Exception as exc:  # the model probe's own errors are reported by its own checks
        return Unavailable(f"model probe failed: {_short(exc, 300)}", "not-applicable")


def _transformers_request(
    target: Any, resolution: Any = None, env: dict[str, str] | None = None
) -> Request | Unavailable:
    if not getattr(target, "model", None):
        return Unavailable("no --model given; model support in transformers not checked", "not-applicable")
    if getattr(target, "live", None) is False:
        return Unavailable("live probes disabled (--no-live)", "not-applicable")
    resolution = _model_resolution(target) if resolution is None else resolution
    if isinstance(resolution, Unavailable):
        return resolution
    if not getattr(resolution, "found", False) or not getattr(resolution, "model_type", None):
        message = getattr(resolution, "message", "model config not available")
        return Unavailable(f"model config not available ({message})", "not-applicable")
    if env is None and find_dist("transformers") is None:
        return Unavailable("transformers is not installed", "missing")
    return "transformers_child", {
        "model_type": resolution.model_type,
        "architectures": list(resolution.architectures),
        "config_transformers_version": resolution.config_transformers_version,
    }


def transformers_live_facts(
    target: Any, resolution: Any = None, env: dict[str, str] | None = None
) -> TransformersLive | Unavailable:
    """model_type / architecture support in the installed transformers (needs no GPU: runs whenever
    a --model resolved, unless --no-live)."""
    request = _transformers_request(target, resolution, env)
    data = _live("transformers-live", target, request, env, private=resolution is not None)
    if isinstance(data, Unavailable):
        return data
    return TransformersLive(
        version=data.get("version"),
        import_error=data.get("import_error"),
        model_type=data.get("model_type"),
        model_type_known=data.get("model_type_known"),
        architectures=tuple(data.get("architectures") or ()),
        missing_architectures=tuple(data.get("missing_architectures") or ()),
        config_transformers_version=data.get("config_transformers_version"),
    )


@probe("transformers-live")
def transformers_live_probe(target: Any) -> TransformersLive | Unavailable:
    return transformers_live_facts(target)


transformers_live_probe.announce = announce  # type: ignore[attr-defined]


# ---------------------------------------------------------------- the card's rates (prefill time plan)


def _rates_request(target: Any, env: dict[str, str] | None = None) -> Request | Unavailable:
    gate = live_gate(target)
    if gate is not None:
        return gate
    if not getattr(target, "model", None) or getattr(target, "backend", "transformers") != "transformers":
        return Unavailable("no local model planned: the prefill time needs no rates", "not-applicable")
    if env is None and find_dist("torch") is None:
        return Unavailable("torch is not installed", "missing")
    return "doctor.probes.card_rates:rates_child", {"device": 0}


@probe("rates-live")
def rates_live_probe(target: Any) -> dict[str, Any] | Unavailable:
    """The planned GPU's bf16 GEMM, flash attention, masked sdpa and copy rates (doctor.probes.card_rates)."""
    data = _live("rates-live", target, _rates_request(target), None)
    if isinstance(data, dict) and data.get("error"):
        return Unavailable(f"rates not measured: {data['error']}", "missing")
    return data


rates_live_probe.announce = announce  # type: ignore[attr-defined]
