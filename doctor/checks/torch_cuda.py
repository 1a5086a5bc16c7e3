"""torch: installed, CUDA build vs CPU-only (from files), driver new enough, GPU arch in the build,
and `cuda.is_available()` — with ONE sentence saying why CUDA is unavailable and the reinstall command.
"""

from __future__ import annotations

import re

from doctor.checks.gpu import NO_GPU_FIX, SMI_GPUS, driver_evidence, gpu_names, run_needs_gpu
from doctor.context import DoctorContext
from doctor.probes import Unavailable
from doctor.probes.libs_static import TORCH_BUILD, TorchBuild
from doctor.probes.nvml import NVML, NvmlFacts
from doctor.probes.packages import this_machine
from doctor.probes.torch_live import TORCH_LIVE, TorchLive
from doctor.registry import Outcome, check
from doctor.report.model import Evidence, Fix
from run_plan.torch_builds import torch_index_url

SECTION = "torch"
HOW_BUILD = "python -c 'import torch; print(torch.__version__, torch.version.cuda)'"
HOW_AVAILABLE = "python -c 'import torch; print(torch.cuda.is_available(), torch.cuda.device_count())'"
HOW_ARCH = "python -c 'import torch; print(torch.cuda.get_arch_list())'"
INSTALL_PAGE = "https://pytorch.org/get-started/locally/"


def reinstall_fix(nvml: NvmlFacts, machine: str, why: str) -> Fix:
    cc = nvml.gpus[0].compute_capability if nvml.gpus else None
    url = torch_index_url(nvml.cuda_driver_version, machine, cc)
    if url is None:
        return Fix(
            f"{why}: the driver (CUDA {nvml.cuda_driver_text}) is too old for any current CUDA torch; "
            "upgrade the NVIDIA driver first",
            ("nvidia-smi",),
            "https://www.nvidia.com/Download/index.aspx",
        )
    pin = (
        " On aarch64, pin it afterwards (constraints file) so a later `pip install` cannot swap in PyPI's "
        "CPU-only wheel again."
        if machine == "aarch64"
        else ""
    )
    return Fix(
        f"{why}: reinstall torch from the CUDA index not newer than the driver's CUDA "
        f"{nvml.cuda_driver_text or '(see nvidia-smi)'}.{pin}",
        (f"pip install --force-reinstall torch --index-url {url}",),
        INSTALL_PAGE,
    )


def _torch_live(ctx: DoctorContext) -> TorchLive | None:
    live = ctx.probe(TORCH_LIVE)
    return live if isinstance(live, TorchLive) else None


def _driver_too_old(build: TorchBuild, nvml: NvmlFacts, live: TorchLive | None) -> bool:
    texts = [*(live.warnings if live else ()), (live.init_error or "") if live else ""]
    if any("too old" in t for t in texts):
        return True
    torch_cuda, driver_cuda = build.cuda_tuple, nvml.cuda_driver_version
    return bool(torch_cuda and driver_cuda and torch_cuda[0] > driver_cuda[0])


def explain_cuda_unavailable(
    nvml: NvmlFacts, build: TorchBuild, live: TorchLive | None = None
) -> tuple[str, Fix]:
    """One sentence combining NVML, the torch build, provenance and CUDA's own error, plus the fix."""
    if not build.installed:
        return "torch is not installed", Fix("Install torch", ('pip install -e ".[niah]"',), INSTALL_PAGE)
    if not nvml.driver_visible:
        return f"{nvml.reason}", NO_GPU_FIX
    if nvml.visible_gpu_count == 0:
        return (
            f"CUDA_VISIBLE_DEVICES={nvml.cuda_visible_devices!r} hides all {nvml.gpu_count} GPU(s)",
            Fix("Unset it or list valid indices", ("unset CUDA_VISIBLE_DEVICES",)),
        )
    gpus = gpu_names(nvml)
    article = "an" if gpus[:1].upper() in "AEIOUN" else "a"
    if build.build == "cpu":
        sentence = (
            f"CPU-only torch {build.version} from {build.provenance} on {build.machine} "
            f"with {article} {gpus} present"
        )
        return sentence, reinstall_fix(nvml, build.machine, "Install a CUDA build of torch")
    if build.build == "rocm":
        return (
            f"ROCm (HIP {build.hip}) build of torch {build.version} on a machine with {article} {gpus}",
            reinstall_fix(nvml, build.machine, "Install a CUDA build of torch"),
        )
    if _driver_too_old(build, nvml, live):
        return _driver_sentence(nvml, build), _driver_fix(nvml, build)
    collect_env = Fix(
        "Read torch's error; `python -m torch.utils.collect_env` shows the full environment",
        ("python -m torch.utils.collect_env", "python -c 'import torch; torch.cuda.init()'"),
    )
    if live is not None and live.init_error:
        return f"torch.cuda.init() fails: {live.init_error}", collect_env
    return f"torch {build.version} (CUDA {build.cuda}) cannot see the {gpus}; cause unknown", collect_env


def _driver_sentence(nvml: NvmlFacts, build: TorchBuild) -> str:
    return (
        f"the NVIDIA driver {nvml.driver_version} supports CUDA up to {nvml.cuda_driver_text}, "
        f"older than torch {build.version}'s CUDA {build.cuda}"
    )


def _driver_fix(nvml: NvmlFacts, build: TorchBuild) -> Fix:
    url = torch_index_url(nvml.cuda_driver_version, build.machine)
    commands = [f"pip install --force-reinstall torch --index-url {url}"] if url else []
    return Fix(
        f"Upgrade the NVIDIA driver to one supporting CUDA {build.cuda}, or install torch built for "
        f"CUDA ≤ {nvml.cuda_driver_text}",
        tuple(commands),
        "https://docs.nvidia.com/deploy/cuda-compatibility/",
    )


def build_evidence(build: TorchBuild) -> list[Evidence]:
    return [
        Evidence("torch.version", build.version, "metadata", "pip show torch"),
        Evidence("torch.version.cuda", build.cuda, "torch/version.py (read as text)", HOW_BUILD),
        Evidence(
            "torch/lib/libtorch_cuda.so",
            "present" if build.has_libtorch_cuda else "absent",
            "files",
            "python -c 'import torch,os; print(os.listdir(os.path.join(torch.__path__[0], \"lib\")))'",
        ),
        Evidence(
            "torch.wheel_tag",
            list(build.dist.wheel_tags) if build.dist else None,
            "dist-info/WHEEL",
            "pip show -v torch",
        ),
        Evidence("torch.provenance", build.provenance, "dist-info", "pip inspect | grep -A3 '\"torch\"'"),
    ]


def _describe_build(build: TorchBuild) -> str:
    if build.build == "cuda":
        return f"CUDA {build.cuda} build" if build.cuda else "CUDA build"
    if build.build == "rocm":
        return f"ROCm {build.hip} build"
    if build.build == "cpu":
        return "CPU-only build"
    return "build type unknown (torch/version.py unreadable)"


@check("torch-installed", title="torch installed", section=SECTION, needs=(TORCH_BUILD,))
def torch_installed(ctx: DoctorContext) -> Outcome:
    build = ctx.needed(TORCH_BUILD)
    if not build.installed:
        evidence = [Evidence("torch", "not installed", "metadata", "pip show torch")]
        fix = Fix("Install torch (a CUDA build on GPU machines)", ('pip install -e ".[niah]"',), INSTALL_PAGE)
        need = run_needs_gpu(ctx)
        if need:
            return Outcome.fail(f"torch is not installed, but {need}", evidence, fix)
        return Outcome.warn("torch is not installed: `niah` and the live checks need it", evidence, fix)
    evidence = build_evidence(build)
    if build.build == "unknown":
        return Outcome.warn(
            f"torch {build.version} is installed but torch/version.py is unreadable (broken install)",
            evidence,
            Fix("Reinstall torch", ("pip install --force-reinstall torch",), INSTALL_PAGE),
        )
    if build.dist is not None and build.dist.copies > 1:
        return Outcome.warn(
            f"{build.dist.copies} copies of torch are installed on sys.path; one shadows the other",
            evidence,
            Fix(
                "Remove the stray copy (user site?)",
                ("python -m pip list -v | grep -i '^torch '", "PYTHONNOUSERSITE=1 doctor"),
            ),
        )
    return Outcome.ok(f"torch {build.version}, {_describe_build(build)} (from {build.provenance})", evidence)


@check(
    "torch-cuda-build",
    title="torch build matches the GPU (CUDA vs CPU-only)",
    section=SECTION,
    needs=(TORCH_BUILD, NVML),
)
def torch_cuda_build(ctx: DoctorContext) -> Outcome:
    build = ctx.needed(TORCH_BUILD)
    nvml = ctx.needed(NVML)
    if not build.installed:
        return Outcome.skip("torch is not installed")
    evidence = [
        *build_evidence(build),
        Evidence("platform.machine", build.machine, "python", "uname -m"),
        Evidence("gpus", gpu_names(nvml) if nvml.gpus else nvml.reason, "nvml", SMI_GPUS),
    ]
    if not nvml.gpus:
        need = run_needs_gpu(ctx)
        if need and build.build != "cuda":
            # The missing GPU already fails `nvidia-driver`; the build would be the next wall on a GPU box.
            return Outcome.warn(
                f"{_describe_build(build)} of torch {build.version}: {need} and a CUDA build of torch",
                evidence,
                reinstall_fix(nvml, build.machine, "Install a CUDA build of torch"),
            )
        return Outcome.ok(f"{_describe_build(build)}; no NVIDIA GPU visible to match it against", evidence)
    if build.build in ("cpu", "rocm"):
        sentence, fix = explain_cuda_unavailable(nvml, build)
        return Outcome.fail(sentence, evidence, fix)
    return Outcome.ok(f"{_describe_build(build)} for {gpu_names(nvml)}", evidence)


@check(
    "torch-driver-compat",
    title="NVIDIA driver new enough for torch's CUDA",
    section=SECTION,
    needs=(TORCH_BUILD, NVML),
)
def torch_driver_compat(ctx: DoctorContext) -> Outcome:
    build = ctx.needed(TORCH_BUILD)
    nvml = ctx.needed(NVML)
    if not build.installed or build.build != "cuda":
        return Outcome.skip("no CUDA build of torch installed")
    if not nvml.driver_visible:
        return Outcome.skip(nvml.reason)
    live = _torch_live(ctx)
    evidence = [
        *driver_evidence(nvml),
        Evidence("torch.version.cuda", build.cuda, "torch/version.py", HOW_BUILD),
    ]
    if live and live.warnings:
        evidence.append(
            Evidence("torch.cuda.init_warnings", list(live.warnings), "torch (child)", HOW_AVAILABLE)
        )
    torch_cuda, driver_cuda = build.cuda_tuple, nvml.cuda_driver_version
    if live is not None and live.cuda_available and torch_cuda and driver_cuda and torch_cuda > driver_cuda:
        # CUDA works anyway (minor-version compatibility, or a cuda-compat libcuda in a container).
        how = (
            "CUDA minor-version compatibility"
            if torch_cuda[0] == driver_cuda[0]
            else "a forward-compatibility package?"
        )
        return Outcome.ok(
            f"torch's CUDA {build.cuda} is newer than the driver's CUDA {nvml.cuda_driver_text}, but "
            f"torch initialises CUDA fine ({how})",
            evidence,
        )
    if _driver_too_old(build, nvml, live):
        sentence = _driver_sentence(nvml, build)
        return Outcome.fail(sentence, evidence, _driver_fix(nvml, build))
    if torch_cuda and driver_cuda and torch_cuda > driver_cuda:
        # Same major: CUDA minor-version compatibility usually works, but PTX JIT and newer APIs may not.
        return Outcome.warn(
            f"torch's CUDA {build.cuda} is newer than the driver's CUDA {nvml.cuda_driver_text} "
            "(same major: minor-version compatibility applies; some kernels may fail)",
            evidence,
            _driver_fix(nvml, build),
        )
    return Outcome.ok(
        f"driver {nvml.driver_version} supports CUDA {nvml.cuda_driver_text or '?'} ≥ torch's "
        f"CUDA {build.cuda}",
        evidence,
    )


@check(
    "torch-cuda-available",
    title="torch.cuda.is_available() (live, in a child process)",
    section=SECTION,
    needs=(TORCH_LIVE,),
)
def torch_cuda_available(ctx: DoctorContext) -> Outcome:
    live = ctx.needed(TORCH_LIVE)
    evidence = [
        Evidence("torch.cuda.is_available", live.cuda_available, "torch (child)", HOW_AVAILABLE),
        Evidence("torch.version.cuda", live.cuda, "torch (child)", HOW_BUILD),
    ]
    if live.import_error:
        return Outcome.fail(
            f"`import torch` fails: {live.import_error}",
            evidence,
            Fix(
                "Reinstall torch (a missing libcudart/libcudnn usually means a half-installed wheel)",
                ("pip install --force-reinstall torch",),
                INSTALL_PAGE,
            ),
        )
    if live.init_error:
        evidence.append(
            Evidence(
                "torch.cuda.init",
                live.init_error,
                "torch (child)",
                "python -c 'import torch; torch.cuda.init()'",
            )
        )
    if live.warnings:
        evidence.append(
            Evidence("torch.cuda.init_warnings", list(live.warnings), "torch (child)", HOW_AVAILABLE)
        )
    if live.cuda_available:
        devices = "; ".join(
            f"cuda:{d.index} {d.name} sm_{d.capability[0]}{d.capability[1]}"
            + (f", {d.memory_free_bytes / 2**30:.1f} GiB free" if d.memory_free_bytes else "")
            for d in live.devices
        )
        return Outcome.ok(f"CUDA available: {live.device_count} device(s): {devices}", evidence)
    nvml = ctx.probe(NVML)
    build = ctx.probe(TORCH_BUILD)
    if isinstance(nvml, Unavailable) or isinstance(build, Unavailable):
        return Outcome.fail(f"CUDA unavailable: {live.init_error or 'unknown reason'}", evidence)
    if not nvml.driver_visible and not run_needs_gpu(ctx):
        return Outcome.ok(
            f"torch {live.version} imports; CUDA unavailable as expected ({nvml.reason})", evidence
        )
    sentence, fix = explain_cuda_unavailable(nvml, build, live)
    return Outcome.fail(f"CUDA unavailable: {sentence}", evidence, fix)


def _arch_supported(capability: tuple[int, int], arch_list: tuple[str, ...]) -> bool:
    """torch's own rule (torch.cuda._check_capability): any sm_ of the same major; or PTX ≤ the GPU."""
    major = capability[0]
    for arch in arch_list:
        digits = "".join(re.findall(r"\d+", arch.split("_", 1)[-1]))
        if not digits:
            continue
        number = int(digits)
        if arch.startswith("sm_") and number // 10 == major:
            return True
        if arch.startswith("compute_") and number <= major * 10 + capability[1]:
            return True
    return False


@check(
    "torch-gpu-arch",
    title="GPU architecture in torch's arch list",
    section=SECTION,
    needs=(TORCH_LIVE, NVML),
)
def torch_gpu_arch(ctx: DoctorContext) -> Outcome:
    live = ctx.needed(TORCH_LIVE)
    nvml = ctx.needed(NVML)
    if live.import_error or not live.arch_list:
        return Outcome.skip("torch reports no CUDA arch list (CUDA unavailable: see torch-cuda-available)")
    caps = {f"cuda:{d.index} {d.name}": d.capability for d in live.devices} or {
        f"GPU {g.index} {g.name}": g.compute_capability for g in nvml.gpus if g.compute_capability
    }
    if not caps:
        return Outcome.skip("no GPU to compare against")
    evidence = [
        Evidence("torch.cuda.get_arch_list", list(live.arch_list), "torch (child)", HOW_ARCH),
        *(
            Evidence(
                f"{name}.capability",
                f"sm_{c[0]}{c[1]}",
                "torch/nvml",
                "nvidia-smi --query-gpu=name,compute_cap --format=csv",
            )
            for name, c in caps.items()
        ),
    ]
    unsupported = [
        f"{name} (sm_{c[0]}{c[1]})" for name, c in caps.items() if not _arch_supported(c, live.arch_list)
    ]
    warned = [w for w in live.warnings if "not compatible with the current PyTorch" in w]
    if unsupported or warned:
        first = next(iter(caps.values()))
        build = ctx.probe(TORCH_BUILD)
        machine = build.machine if isinstance(build, TorchBuild) else this_machine()
        url = torch_index_url(nvml.cuda_driver_version, machine, first)
        return Outcome.fail(
            f"{', '.join(unsupported) or 'a GPU'} not in torch {live.version}'s arch list "
            f"({' '.join(live.arch_list)}): 'no kernel image is available' at the first op",
            evidence,
            Fix(
                "Install a torch build whose arch list includes this GPU (newer CUDA index or nightly)",
                (f"pip install --force-reinstall torch --index-url {url}",) if url else (),
                INSTALL_PAGE,
            ),
        )
    return Outcome.ok(
        f"{', '.join(f'sm_{c[0]}{c[1]}' for c in dict.fromkeys(caps.values()))} covered by torch's arch list",
        evidence,
    )
