"""LIVE tier: import torch / bitsandbytes / triton / transformers in child processes and exercise them.

Each library is its own probe, so `ctx.prefetch` runs the children concurrently; each child has
`Target.probe_timeout_s`, and a hang or a segfault comes back as an Unavailable(error|timeout)
value that the runner turns into an ERROR row. The parent never imports these libraries.

Live probes run when `--live` is given, or by default when NVML sees a GPU: on a CPU-only box,
`import torch` (~4 s) and `import bitsandbytes` (~9 s) would blow the doctor's start-up budget
and tell us nothing the static tier does not.

The `*_child` functions run inside the child (`doctor.probes._child_main`): they take a dict and
return a JSON-able dict, and report a failing import as data (`import_error`), not as an exception.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from doctor.probes import Unavailable, probe
from doctor.probes.child import run_in_child
from doctor.probes.nvml import nvml_sees_gpu
from doctor.probes.packages import find_dist

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


def _run(
    function: str,
    what: str,
    target: Any,
    args: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any] | Unavailable:
    timeout = float(getattr(target, "probe_timeout_s", 60.0))
    result = run_in_child(f"{_MODULE}:{function}", args or {}, timeout_s=timeout, env=env)
    if not result.ok or result.data is None:
        return result.as_unavailable(what)
    return result.data


# ---------------------------------------------------------------- torch


@dataclass(frozen=True)
class TorchDevice:
    index: int  # CUDA index (after CUDA_VISIBLE_DEVICES), not the NVML index
    name: str
    capability: tuple[int, int]
    memory_free_bytes: int | None = None
    memory_total_bytes: int | None = None


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
        out["import_seconds"] = round(time.monotonic() - start, 2)
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
        devices = []
        for index in range(torch.cuda.device_count() if available else 0):
            cap = torch.cuda.get_device_capability(index)
            device = {"index": index, "name": torch.cuda.get_device_name(index), "capability": list(cap)}
            try:
                free, total = torch.cuda.mem_get_info(index)  # creates a context: the true free memory
                device.update(memory_free_bytes=int(free), memory_total_bytes=int(total))
            except Exception as exc:
                device["error"] = _short(exc, 300)
            devices.append(device)
        out["device_count"] = len(devices)
        out["devices"] = devices
    # Only CUDA-related warnings are evidence; torch's unrelated import-time deprecations are noise.
    texts = (str(w.message).strip()[:600] for w in caught)
    out["warnings"] = list(dict.fromkeys(t for t in texts if any(k in t for k in _CUDA_WORDS)))
    return out


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
    )


def torch_live_facts(target: Any, env: dict[str, str] | None = None) -> TorchLive | Unavailable:
    gate = live_gate(target)
    if gate is not None:
        return gate
    if env is None and find_dist("torch") is None:
        return Unavailable("torch is not installed", "missing")
    data = _run("torch_child", "importing torch in a child process", target, env=env)
    return data if isinstance(data, Unavailable) else torch_live_from_dict(data)


@probe("torch-live")
def torch_live_probe(target: Any) -> TorchLive | Unavailable:
    return torch_live_facts(target)


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
        import bitsandbytes
    except Exception as exc:
        out["import_error"] = _short(exc, 1500)
        out["log_messages"] = messages
        return out
    import torch

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


def bnb_live_facts(
    target: Any, env: dict[str, str] | None = None, roundtrip_on_cpu: bool = False
) -> BnbLive | Unavailable:
    gate = live_gate(target)
    if gate is not None:
        return gate
    if env is None and find_dist("bitsandbytes") is None:
        return Unavailable("bitsandbytes is not installed", "missing")
    quant_type = getattr(target, "bnb_4bit_type", "nf4")
    data = _run(
        "bnb_child",
        "importing bitsandbytes in a child process",
        target,
        {"quant_type": quant_type, "roundtrip_on_cpu": roundtrip_on_cpu},
        env=env,
    )
    return data if isinstance(data, Unavailable) else bnb_live_from_dict(data)


@probe("bnb-live")
def bnb_live_probe(target: Any) -> BnbLive | Unavailable:
    return bnb_live_facts(target)


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


def triton_child(args: Mapping[str, Any]) -> dict[str, Any]:
    import os
    import shutil
    import tempfile

    # A fresh cache forces a real compile (ptxas + the C launcher stub), the step that breaks.
    cache = tempfile.mkdtemp(prefix="niah-doctor-triton-")
    os.environ["TRITON_CACHE_DIR"] = cache
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
            from torch.utils._triton import has_triton

            out["torch_has_triton"] = bool(has_triton())
        except Exception as exc:
            out["torch_has_triton"] = None
            out["kernel_error"] = f"torch unavailable: {_short(exc, 300)}"
            return out
        if not torch.cuda.is_available():
            return out
        start = time.monotonic()
        try:
            from doctor.probes._triton_add import run_add

            out["kernel_max_abs_error"] = run_add(torch)
            out["kernel_ran"] = out["kernel_max_abs_error"] < 1e-5
            if not out["kernel_ran"]:
                out["kernel_error"] = f"wrong result: max abs error {out['kernel_max_abs_error']:.3g}"
        except Exception as exc:
            out["kernel_ran"] = False
            out["kernel_error"] = _short(exc, 1500)
        out["kernel_seconds"] = round(time.monotonic() - start, 3)
        return out
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def triton_live_facts(target: Any, env: dict[str, str] | None = None) -> TritonLive | Unavailable:
    gate = live_gate(target)
    if gate is not None:
        return gate
    if env is None and find_dist("triton") is None and find_dist("pytorch-triton") is None:
        return Unavailable("triton is not installed", "missing")
    data = _run("triton_child", "importing triton in a child process", target, env=env)
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


def transformers_live_facts(
    target: Any, resolution: Any = None, env: dict[str, str] | None = None
) -> TransformersLive | Unavailable:
    """model_type / architecture support in the installed transformers (needs no GPU: runs whenever
    a --model resolved, unless --no-live)."""
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
    args = {
        "model_type": resolution.model_type,
        "architectures": list(resolution.architectures),
        "config_transformers_version": resolution.config_transformers_version,
    }
    data = _run("transformers_child", "importing transformers in a child process", target, args, env=env)
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
