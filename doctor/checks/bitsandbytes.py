"""bitsandbytes: version rules, ELF architecture of its shipped libraries, which CUDA library it will
pick, which native library it actually loads (live), and a real 4-bit round trip on the GPU (live).

Problems are FAIL only when the planned run uses bnb (`--quant bnb-*`); otherwise WARN, because a
machine that never quantizes can live with a broken bitsandbytes.
"""

from __future__ import annotations

from doctor.checks.gpu import run_needs_gpu
from doctor.checks.torch_cuda import explain_cuda_unavailable
from doctor.context import DoctorContext
from doctor.probes import Unavailable
from doctor.probes.bnb_live import BNB_LIVE
from doctor.probes.libs_static import BNB_FILES, TORCH_BUILD, BnbFiles, TorchBuild
from doctor.probes.nvml import NVML
from doctor.probes.torch_live import TORCH_LIVE
from doctor.registry import Outcome, check
from doctor.report.model import Evidence, Fix, Status

SECTION = "bitsandbytes"
HOW_VERSION = "python -m pip show bitsandbytes"
HOW_DIAG = "python -m bitsandbytes"
HOW_LIB = "python -c 'from bitsandbytes.cextension import lib; print(type(lib).__name__, lib._lib._name)'"
DOCS = "https://huggingface.co/docs/bitsandbytes/main/en/installation"
# NF4/FP4 of a Gaussian matrix loses ~9-10 % (relative Frobenius error); far above that = broken kernels.
MAX_REL_ERROR = 0.15


def uses_bnb(ctx: DoctorContext) -> bool:
    return ctx.target.quant in ("bnb-4bit", "bnb-8bit")


def _problem(ctx: DoctorContext, summary: str, evidence: list[Evidence], fix: Fix | None) -> Outcome:
    """FAIL when the planned run quantizes with bnb; a WARN otherwise."""
    status = Status.FAIL if uses_bnb(ctx) else Status.WARN
    if status is Status.WARN:
        summary += " (only matters for --quant bnb-*)"
    return Outcome(status, summary, tuple(evidence), fix)


def _version_tuple(text: str | None) -> tuple[int, ...]:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(text or "0").release
    except InvalidVersion:
        return (0,)


def _files_evidence(files: BnbFiles) -> list[Evidence]:
    return [
        Evidence("bitsandbytes.version", files.version, "metadata", HOW_VERSION),
        Evidence(
            "bitsandbytes.cuda_libraries",
            list(files.cuda_versions),
            "files",
            'ls $(python -c \'import importlib.util as u; print(u.find_spec("bitsandbytes")'
            ".submodule_search_locations[0])')/libbitsandbytes_*",
        ),
    ]


@check("bnb-installed", title="bitsandbytes installed", section=SECTION, needs=(BNB_FILES,))
def bnb_installed(ctx: DoctorContext) -> Outcome:
    files = ctx.needed(BNB_FILES)
    if not files.installed:
        evidence = [Evidence("bitsandbytes", "not installed", "metadata", HOW_VERSION)]
        if uses_bnb(ctx):
            return Outcome.fail(
                f"bitsandbytes is not installed, but --quant {ctx.target.quant} needs it",
                evidence,
                Fix("Install bitsandbytes", ('pip install -U "bitsandbytes>=0.46"',), DOCS),
            )
        return Outcome.skip("bitsandbytes is not installed (only --quant bnb-* needs it)", evidence)
    evidence = _files_evidence(files)
    if files.dist is not None and files.dist.copies > 1:
        return _problem(
            ctx,
            f"{files.dist.copies} copies of bitsandbytes on sys.path (venv and user site?): "
            "the one imported may not be the one you upgraded",
            evidence,
            Fix(
                "Remove the stray copy",
                ("python -m pip list -v | grep -i bitsandbytes", "PYTHONNOUSERSITE=1 python -m bitsandbytes"),
            ),
        )
    libs = (
        f"CUDA {files.cuda_versions[0]}–{files.cuda_versions[-1]}"
        if files.cuda_versions
        else "no CUDA libraries"
    )
    return Outcome.ok(
        f"bitsandbytes {files.version} ({libs}{', CPU' if files.has_cpu_lib else ''})", evidence
    )


@check(
    "bnb-version", title="bitsandbytes version known-bad combinations", section=SECTION, needs=(BNB_FILES,)
)
def bnb_version(ctx: DoctorContext) -> Outcome:
    files = ctx.needed(BNB_FILES)
    if not files.installed:
        return Outcome.skip("bitsandbytes is not installed")
    version = _version_tuple(files.version)
    evidence = [*_files_evidence(files), Evidence("platform.machine", files.machine, "python", "uname -m")]
    upgrade = Fix("Upgrade bitsandbytes", ('pip install -U "bitsandbytes>=0.46"',), DOCS)
    if files.machine == "aarch64" and version < (0, 46):
        binaries = f"; its libraries are {files.foreign_libs[0].machine}" if files.foreign_libs else ""
        return _problem(
            ctx,
            f"bitsandbytes {files.version} on aarch64: PyPI had no Linux aarch64 wheels before "
            f"0.46.0 (pip fell back to 0.42.0's x86-64-only wheel){binaries}",
            evidence,
            upgrade,
        )
    if version < (0, 43, 1):
        cause = ""
        build = ctx.probe(TORCH_BUILD)
        nvml = ctx.probe(NVML)
        if (
            isinstance(build, TorchBuild)
            and not isinstance(nvml, Unavailable)
            and nvml.gpus
            and build.build != "cuda"
        ):
            cause = f"; here the real cause would be: {explain_cuda_unavailable(nvml, build)[0]}"
        return _problem(
            ctx,
            f"bitsandbytes {files.version} < 0.43.1: when torch cannot see CUDA, transformers "
            "says 'requires the latest version of bitsandbytes' instead of naming the CUDA problem" + cause,
            evidence,
            upgrade,
        )
    return Outcome.ok(
        f"bitsandbytes {files.version}: no known-bad version rule applies on {files.machine}", evidence
    )


@check(
    "bnb-library-arch",
    title="bitsandbytes native libraries built for this CPU (ELF)",
    section=SECTION,
    needs=(BNB_FILES,),
)
def bnb_library_arch(ctx: DoctorContext) -> Outcome:
    files = ctx.needed(BNB_FILES)
    if not files.installed:
        return Outcome.skip("bitsandbytes is not installed")
    machines = sorted({lib.machine or "not ELF" for lib in files.libs})
    evidence = [
        Evidence(
            "bitsandbytes.libs_elf_machine",
            {lib.name: lib.machine for lib in files.libs},
            "ELF header e_machine",
            "file $(python -c 'import bitsandbytes,os; "
            "print(os.path.dirname(bitsandbytes.__file__))')/libbitsandbytes_*.so",
        ),
        Evidence("platform.machine", files.machine, "python", "uname -m"),
    ]
    fix = Fix(
        f"Install a bitsandbytes wheel built for {files.machine}",
        ('pip install --force-reinstall "bitsandbytes>=0.46"',),
        DOCS,
    )
    if not files.libs:
        return _problem(
            ctx,
            "bitsandbytes ships no native library (a source checkout that was never built?)",
            evidence,
            Fix(
                "Install the wheel, or build from source",
                ('pip install --force-reinstall "bitsandbytes>=0.46"',),
                DOCS,
            ),
        )
    if not files.native_libs:
        return _problem(
            ctx,
            f"bitsandbytes {files.version} ships only {', '.join(machines)} libraries; this CPU is "
            f"{files.machine}: every native call will fail",
            evidence,
            fix,
        )
    if files.foreign_libs:
        return Outcome.warn(
            f"{len(files.foreign_libs)} of {len(files.libs)} bitsandbytes libraries are not "
            f"{files.machine} ({files.foreign_libs[0].name}: {files.foreign_libs[0].machine})",
            evidence,
            fix,
        )
    return Outcome.ok(f"all {len(files.libs)} native libraries are {files.machine}", evidence)


def _major_minor(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor.split(".")[0] or 0)


def _pick_cuda_library(files: BnbFiles, torch_cuda: tuple[int, int]) -> str | None:
    """bitsandbytes' own selection (cextension.get_cuda_bnb_library_path): exact, else highest lower minor
    of the same major, else lowest higher minor of the same major; never across majors."""
    versions = [tuple(int(x) for x in v.split(".")) for v in files.cuda_versions]
    same = [v for v in versions if v[0] == torch_cuda[0]]
    lower = [v for v in same if v <= torch_cuda]
    higher = [v for v in same if v > torch_cuda]
    chosen = max(lower) if lower else (min(higher) if higher else None)
    return f"{chosen[0]}.{chosen[1]}" if chosen else None


@check(
    "bnb-cuda-library",
    title="bitsandbytes has a CUDA library for torch's CUDA",
    section=SECTION,
    needs=(BNB_FILES, TORCH_BUILD),
)
def bnb_cuda_library(ctx: DoctorContext) -> Outcome:
    files = ctx.needed(BNB_FILES)
    build = ctx.needed(TORCH_BUILD)
    if not files.installed:
        return Outcome.skip("bitsandbytes is not installed")
    evidence = [
        *_files_evidence(files),
        Evidence(
            "torch.version.cuda",
            build.cuda,
            "torch/version.py",
            "python -c 'import torch; print(torch.version.cuda)'",
        ),
        Evidence(
            "env.BNB_CUDA_VERSION",
            files.cuda_version_override or "unset",
            "env",
            'echo "${BNB_CUDA_VERSION-unset}"',
        ),
    ]
    override = files.cuda_version_override
    if override is not None:
        wanted = f"libbitsandbytes_cuda{override}.so"
        present = any(lib.name == wanted for lib in files.libs)
        fix = Fix("Unset the override unless you built that library yourself", ("unset BNB_CUDA_VERSION",))
        if not present:
            return _problem(
                ctx,
                f"BNB_CUDA_VERSION={override} forces {wanted}, which this bitsandbytes does not ship",
                evidence,
                fix,
            )
        return Outcome.warn(
            f"BNB_CUDA_VERSION={override} overrides bnb's choice (loads {wanted} regardless of "
            f"torch's CUDA {build.cuda})",
            evidence,
            fix,
        )
    if build.build != "cuda" or build.cuda_tuple is None:
        return Outcome.skip("no CUDA build of torch: bitsandbytes will load its CPU library")
    chosen = _pick_cuda_library(files, build.cuda_tuple)
    if chosen is None:
        return _problem(
            ctx,
            f"bitsandbytes {files.version} has no CUDA {build.cuda_tuple[0]}.x library for torch's "
            f"CUDA {build.cuda} (ships {', '.join(files.cuda_versions) or 'none'}): 'CUDA VERSION "
            "MISMATCH' at the first 4-bit op",
            evidence,
            Fix(
                "Upgrade bitsandbytes (newer wheels cover newer CUDA) or install torch for a CUDA it ships",
                ("pip install -U bitsandbytes",),
                DOCS,
            ),
        )
    note = "" if chosen == build.cuda else f" (nearest of the same major to {build.cuda})"
    return Outcome.ok(
        f"torch CUDA {build.cuda} → libbitsandbytes_cuda{chosen.replace('.', '')}.so{note}", evidence
    )


@check(
    "bnb-native-library",
    title="bitsandbytes native library actually loaded (live)",
    section=SECTION,
    needs=(BNB_LIVE,),
)
def bnb_native_library(ctx: DoctorContext) -> Outcome:
    live = ctx.needed(BNB_LIVE)
    evidence = [
        Evidence("bitsandbytes.lib", live.library_class, "bitsandbytes (child)", HOW_LIB),
        Evidence("bitsandbytes.lib_path", live.library_path, "bitsandbytes (child)", HOW_LIB),
        Evidence("torch.cuda.is_available", live.torch_cuda_available, "torch (child)", HOW_DIAG),
    ]
    if live.log_messages:
        evidence.append(
            Evidence("bitsandbytes.log", list(live.log_messages), "bitsandbytes (child)", HOW_DIAG)
        )
    if live.import_error:
        return _problem(
            ctx,
            f"`import bitsandbytes` fails: {live.import_error.splitlines()[0]}",
            evidence,
            Fix(
                "Reinstall bitsandbytes matching torch",
                ("pip install --force-reinstall -U bitsandbytes", HOW_DIAG),
                DOCS,
            ),
        )
    if live.library_kind == "cuda":
        return Outcome.ok(f"CUDA library loaded: {(live.library_path or '?').rsplit('/', 1)[-1]}", evidence)
    if live.library_kind == "failed":
        text = live.formatted_error or ""
        evidence.append(Evidence("bitsandbytes.formatted_error", text, "bitsandbytes (child)", HOW_DIAG))
        headline = next(
            (ln.strip(" 🚨") for ln in text.splitlines() if ln.strip(" 🚨")), "native library failed"
        )
        return _problem(
            ctx,
            f"bitsandbytes could not load its native library: {headline}",
            evidence,
            Fix(
                "Follow bitsandbytes' own hint (kept in the evidence); usually: install the torch/bnb pair "
                "whose CUDA versions match, or unset BNB_CUDA_VERSION",
                (HOW_DIAG,),
                DOCS,
            ),
        )
    nvml = ctx.probe(NVML)
    has_gpu = not isinstance(nvml, Unavailable) and bool(nvml.gpus)
    if not has_gpu and not run_needs_gpu(ctx):
        return Outcome.ok(f"{live.library_kind.upper()} library loaded; expected without a GPU", evidence)
    build = ctx.probe(TORCH_BUILD)
    files = ctx.probe(BNB_FILES)
    cause, fix = ("torch cannot see CUDA", None)
    if live.torch_cuda_available and isinstance(files, BnbFiles):
        # torch is fine: the problem is bitsandbytes' own files (no CUDA build for torch's CUDA).
        chosen = _pick_cuda_library(files, _major_minor(live.torch_cuda)) if live.torch_cuda else None
        cause = (
            f"it ships no CUDA library usable with torch's CUDA {live.torch_cuda} "
            f"(CUDA libraries: {', '.join(files.cuda_versions) or 'none'})"
            if chosen is None
            else "it did not pick its CUDA library (see its log in the evidence)"
        )
        fix = Fix(
            "Install the bitsandbytes wheel from PyPI (it ships CUDA 11.8-13.x libraries)",
            ('pip install --force-reinstall -U "bitsandbytes>=0.46"', HOW_DIAG),
            DOCS,
        )
    elif has_gpu and isinstance(build, TorchBuild) and not isinstance(nvml, Unavailable):
        torch_live = ctx.probe(TORCH_LIVE)
        cause, fix = explain_cuda_unavailable(
            nvml, build, None if isinstance(torch_live, Unavailable) else torch_live
        )
    return _problem(
        ctx, f"bitsandbytes loaded its {live.library_kind.upper()} library because {cause}", evidence, fix
    )


@check(
    "bnb-4bit-roundtrip",
    title="bitsandbytes 4-bit round trip on the GPU (live)",
    section=SECTION,
    needs=(BNB_LIVE,),
)
def bnb_4bit_roundtrip(ctx: DoctorContext) -> Outcome:
    live = ctx.needed(BNB_LIVE)
    rt = live.roundtrip
    if rt is None:
        return Outcome.skip("no CUDA device in the child: 4-bit round trip not run")
    evidence = [
        Evidence(
            "roundtrip",
            {
                "device": rt.device,
                "quant_type": rt.quant_type,
                "dequant_rel_error": rt.dequant_rel_error,
                "linear_rel_error": rt.linear_rel_error,
                "seconds": rt.seconds,
            },
            "bitsandbytes (child)",
            "python -c 'import torch,bitsandbytes.functional as F; w=torch.randn(256,512,"
            'dtype=torch.bfloat16,device="cuda"); q,s=F.quantize_4bit(w,quant_type="nf4"); '
            "print(((F.dequantize_4bit(q,s)-w).norm()/w.norm()).item())'",
        )
    ]
    fix = Fix(
        "Reinstall a bitsandbytes wheel matching torch's CUDA; run its own diagnostics",
        ("pip install --force-reinstall -U bitsandbytes", HOW_DIAG),
        DOCS,
    )
    if rt.error:
        return _problem(
            ctx,
            f"4-bit {rt.quant_type} round trip on {rt.device} raised: {rt.error.strip().splitlines()[0]}",
            evidence + [Evidence("error", rt.error, "child")],
            fix,
        )
    errors = [e for e in (rt.dequant_rel_error, rt.linear_rel_error) if e is not None]
    if not errors or max(errors) > MAX_REL_ERROR:
        return _problem(
            ctx,
            f"4-bit {rt.quant_type} results are wrong on {rt.device}: relative error "
            f"{max(errors) if errors else 'n/a'} > {MAX_REL_ERROR}",
            evidence,
            fix,
        )
    return Outcome.ok(
        f"{rt.quant_type} quantize/dequantize and Linear4bit vs bf16 on {rt.device}: relative error "
        f"{rt.dequant_rel_error:.3f} / {rt.linear_rel_error:.3f} ({rt.seconds:.2f} s)",
        evidence,
    )
