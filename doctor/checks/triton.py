"""triton: installed, matching the version torch pins, and able to compile a kernel on the GPU.

Why it matters: `--attn flex_attention` (what transformers recommends for Llama 4's long context)
torch.compiles the attention and its block masks, so Inductor needs a working Triton
("TritonMissing: Cannot find a working triton installation"). With `--attn sdpa` the run works
without it, so a Triton problem is FAIL only for flex_attention and WARN otherwise.
"""

from __future__ import annotations

from doctor.context import DoctorContext
from doctor.probes import Unavailable
from doctor.probes.libs_static import TORCH_BUILD, TRITON_DIST, TritonDist
from doctor.probes.nvml import NVML
from doctor.probes.triton_live import TRITON_LIVE
from doctor.registry import Outcome, check
from doctor.report.model import Evidence, Fix, Status

SECTION = "triton"
HOW_VERSION = "python -m pip show triton"
HOW_PIN = (
    'python -c \'import importlib.metadata as m; print([r for r in m.requires("torch") if "triton" in r])\''
)
HOW_KERNEL = "python -c 'import torch; from torch.utils._triton import has_triton; print(has_triton())'"


def _needs_triton(ctx: DoctorContext) -> bool:
    return ctx.target.attn == "flex_attention"


def _problem(ctx: DoctorContext, summary: str, evidence: list[Evidence], fix: Fix) -> Outcome:
    if _needs_triton(ctx):
        return Outcome(
            Status.FAIL, summary + "; --attn flex_attention compiles with Triton", tuple(evidence), fix
        )
    return Outcome(
        Status.WARN,
        summary + "; flex_attention / torch.compile need it (--attn sdpa does not)",
        tuple(evidence),
        fix,
    )


def _pinned_spec(requirement: str | None) -> str | None:
    """'triton==3.3.0; platform_system == "Linux"' -> 'triton==3.3.0'."""
    return requirement.split(";", 1)[0].strip().replace(" ", "") if requirement else None


def _fix(dist: TritonDist) -> Fix:
    spec = _pinned_spec(dist.torch_requirement) or "triton"
    return Fix(
        "Install the Triton build torch pins (from the same index as torch), or run with --attn sdpa",
        (f'pip install "{spec}"', "doctor --attn sdpa  # and pass --attn sdpa to niah run: no Triton needed"),
        "https://github.com/triton-lang/triton#quick-installation",
    )


@check(
    "triton-installed",
    title="triton installed and matching torch's pin",
    section=SECTION,
    needs=(TRITON_DIST, TORCH_BUILD),
)
def triton_installed(ctx: DoctorContext) -> Outcome:
    dist = ctx.needed(TRITON_DIST)
    build = ctx.needed(TORCH_BUILD)
    evidence = [
        Evidence("triton.version", dist.version, "metadata", HOW_VERSION),
        Evidence("torch.requires.triton", dist.torch_requirement, "torch dist-info METADATA", HOW_PIN),
    ]
    if not build.installed:
        return Outcome.skip("torch is not installed")
    nvml = ctx.probe(NVML)
    has_gpu = not isinstance(nvml, Unavailable) and bool(nvml.gpus)
    if build.build != "cuda" and not has_gpu:
        state = f"triton {dist.version} installed" if dist.installed else "triton not installed"
        return Outcome.ok(f"{state}; not used by a CPU-only torch on a machine without a GPU", evidence)
    if not dist.installed:
        why = ""
        if dist.torch_requirement and dist.requirement_applies is False:
            why = (
                f" (torch {build.version}'s requirement `{dist.torch_requirement}` excludes {dist.machine}, "
                "so pip never installed it)"
            )
        return _problem(ctx, f"triton is not installed{why}", evidence, _fix(dist))
    if (
        dist.torch_requirement
        and dist.requirement_satisfied is False
        and dist.requirement_applies is not False
    ):
        return _problem(
            ctx,
            f"{dist.dist_name} {dist.version} does not match torch {build.version}'s pin "
            f"{_pinned_spec(dist.torch_requirement)}",
            evidence,
            _fix(dist),
        )
    pin = f" (torch pins {_pinned_spec(dist.torch_requirement)})" if dist.torch_requirement else ""
    return Outcome.ok(f"{dist.dist_name} {dist.version}{pin}", evidence)


@check(
    "triton-kernel",
    title="triton compiles and runs a kernel on the GPU (live)",
    section=SECTION,
    needs=(TRITON_LIVE,),
)
def triton_kernel(ctx: DoctorContext) -> Outcome:
    live = ctx.needed(TRITON_LIVE)
    dist = ctx.probe(TRITON_DIST)
    fix = _fix(dist) if isinstance(dist, TritonDist) else Fix("Reinstall triton", ("pip install -U triton",))
    evidence = [
        Evidence("triton.version", live.version, "triton (child)", HOW_VERSION),
        Evidence("torch.utils._triton.has_triton", live.torch_has_triton, "torch (child)", HOW_KERNEL),
    ]
    if live.import_error:
        return _problem(ctx, f"`import triton` fails: {live.import_error}", evidence, fix)
    if live.kernel_ran is None:
        return Outcome.skip(f"triton {live.version} imports; no CUDA device, so no kernel compiled", evidence)
    evidence.append(
        Evidence(
            "kernel",
            {"ran": live.kernel_ran, "error": live.kernel_error, "seconds": live.kernel_seconds},
            "triton (child)",
            "python -m doctor --only triton-kernel --live",
        )
    )
    if not live.kernel_ran:
        return _problem(
            ctx,
            f"triton {live.version} cannot compile/run a kernel: "
            f"{(live.kernel_error or 'unknown error').splitlines()[0]}",
            evidence,
            fix,
        )
    if live.torch_has_triton is False:
        return _problem(
            ctx,
            "triton runs kernels but torch.utils._triton.has_triton() is False (Inductor will "
            "raise TritonMissing)",
            evidence,
            fix,
        )
    return Outcome.ok(
        f"triton {live.version} compiled and ran an add kernel on cuda:0 in {live.kernel_seconds or 0:.1f} s",
        evidence,
    )
