"""The Triton live probe: import triton in the shared live child (doctor.probes.live_batch), compile and
run a fresh kernel on cuda:0, and ask torch whether Inductor will generate Triton kernels here (in a
worker of its own beside it: `has_triton()` imports torch._dynamo and torch._inductor, 1.5-4 s, which
the kernel itself needs neither of).

`triton_child` and `inductor_child` run inside the child; everything else runs in the doctor.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from doctor.probes import Probe, Unavailable, probe
from doctor.probes.live_batch import LIVE_BATCH, Beside, LiveRequest, live_gate, not_installed, short_error
from run_plan.safe_files import tool_cache_dir
from run_plan.spec import RunSpec


@dataclass(frozen=True)
class TritonLive:
    version: str | None
    import_error: str | None = None
    torch_has_triton: bool | None = None  # torch.utils._triton.has_triton(): what Inductor will decide
    kernel_ran: bool | None = None  # None: not attempted (no CUDA device)
    kernel_error: str | None = None
    kernel_max_abs_error: float | None = None
    kernel_seconds: float | None = None


TRITON_LIVE: Probe[TritonLive] = Probe("triton-live")


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
            out["import_error"] = short_error(exc)
            return out
        out["version"] = getattr(triton, "__version__", None)
        try:
            import torch

            if not args.get("inductor_elsewhere"):
                out.update(inductor_child({}))
        except Exception as exc:
            out["torch_has_triton"] = None
            out["kernel_error"] = f"torch unavailable: {short_error(exc, 300)}"
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
            out["kernel_error"] = short_error(exc, 1500)
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


def triton_stage(fresh_cache: bool) -> LiveRequest:
    """The Triton worker's request, with the Inductor question in a worker beside it."""
    return LiveRequest(
        f"{__name__}:triton_child",
        {"fresh_cache": fresh_cache, "inductor_elsewhere": True},
        "importing triton in a child process",
        preload=("torch",),
        beside=(Beside("inductor", f"{__name__}:inductor_child", ("torch_has_triton",)),),
    )


def triton_request(target: RunSpec, env: dict[str, str] | None = None) -> LiveRequest | Unavailable:
    blocked = live_gate(target) or not_installed(("triton", "pytorch-triton"), env)
    if blocked is not None:
        return blocked
    return triton_stage(fresh_cache=bool(target.deep))


def triton_live_facts(target: RunSpec, env: dict[str, str] | None = None) -> TritonLive | Unavailable:
    data = LIVE_BATCH.answer(TRITON_LIVE.name, target, triton_request(target, env), env)
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


LIVE_BATCH.register(TRITON_LIVE.name, triton_request)


@probe(TRITON_LIVE, announce=LIVE_BATCH.announce)
def triton_live_probe(target: RunSpec) -> TritonLive | Unavailable:
    return triton_live_facts(target)
