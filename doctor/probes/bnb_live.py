"""The bitsandbytes live probe: import bitsandbytes in the shared live child (doctor.probes.live_batch),
see which native library it loaded, and round-trip a weight through the path a 4-bit load uses.

`bnb_child` runs inside the child; everything else runs in the doctor, which never imports it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from doctor.children.bnb_import import import_bitsandbytes
from doctor.probes import Probe, Unavailable, probe
from doctor.probes.live_batch import LIVE_BATCH, LiveRequest, live_gate, not_installed, short_error
from run_plan.spec import RunSpec


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


BNB_LIVE: Probe[BnbLive] = Probe("bnb-live")


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
        out["error"] = short_error(exc, 1500)
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
        out["import_error"] = short_error(exc, 1500)
        out["log_messages"] = messages
        return out

    out["version"] = getattr(bitsandbytes, "__version__", None)
    out["torch_cuda"] = torch.version.cuda
    out["torch_cuda_available"] = cuda = bool(torch.cuda.is_available())
    try:
        from bitsandbytes import cextension
    except Exception as exc:
        out["import_error"] = short_error(exc)
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


def bnb_request(
    target: RunSpec, env: dict[str, str] | None = None, roundtrip_on_cpu: bool = False
) -> LiveRequest | Unavailable:
    blocked = live_gate(target) or not_installed(("bitsandbytes",), env)
    if blocked is not None:
        return blocked
    return LiveRequest(
        f"{__name__}:bnb_child",
        {"quant_type": target.bnb_4bit_type, "roundtrip_on_cpu": roundtrip_on_cpu},
        "importing bitsandbytes in a child process",
        preload=("torch",),
    )


def bnb_live_facts(
    target: RunSpec, env: dict[str, str] | None = None, roundtrip_on_cpu: bool = False
) -> BnbLive | Unavailable:
    request = bnb_request(target, env, roundtrip_on_cpu)
    data = LIVE_BATCH.answer(BNB_LIVE.name, target, request, env, private=roundtrip_on_cpu)
    return data if isinstance(data, Unavailable) else bnb_live_from_dict(data)


LIVE_BATCH.register(BNB_LIVE.name, bnb_request)


@probe(BNB_LIVE, announce=LIVE_BATCH.announce)
def bnb_live_probe(target: RunSpec) -> BnbLive | Unavailable:
    return bnb_live_facts(target)
