"""GPU via NVML, without starting CUDA: driver and its CUDA version, devices, busy memory,
CUDA_VISIBLE_DEVICES, MIG.

No GPU on a machine where the planned run needs none (`doctor` on a CPU dev box) is a WARN once
(`nvidia-driver`) and SKIPs elsewhere; when the run needs a GPU (bnb quantization, a long context)
it is a FAIL. See docs/checks.md.

With a server target (`--base-url`) the model runs on that server, not here: every check of this
module SKIPs with that reason, and no local GPU is "needed" by the run (the server checks judge the
server instead).
"""

from __future__ import annotations

import os

from doctor.context import DoctorContext
from doctor.probes import Unavailable
from doctor.probes.host import HOST
from doctor.probes.memory import MEMORY
from doctor.probes.model import MODEL
from doctor.probes.nvml import GPU_HEALTH, NVML, GpuFacts, NvmlFacts
from doctor.probes.nvml_health import GpuHealthFacts
from doctor.probes.torch_live import TORCH_LIVE, TorchLive
from doctor.registry import Outcome, check
from doctor.report.model import Evidence, Fix
from run_plan.units import GIB, gib

SECTION = "gpu"
SMI_GPUS = "nvidia-smi --query-gpu=index,name,memory.total,memory.free,compute_cap --format=csv"
SMI_DRIVER = "nvidia-smi --query-gpu=driver_version --format=csv,noheader; nvidia-smi | head -4"
SMI_PROCS = "nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv"
NO_GPU_FIX = Fix(
    "Run on a machine with an NVIDIA GPU and driver; in a container start it with GPU access",
    (
        "nvidia-smi",
        "docker run --rm --gpus all ubuntu nvidia-smi  # the NVIDIA Container Toolkit passes the GPU in",
    ),
    "https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html",
)
# The SKIP reason of every local-GPU check when the run's model is served elsewhere.
SERVER_TARGET_REASON = "the model runs on the server at --base-url"
# What one x86 core sustains in a float32 transformer forward under torch (AVX2, conservative), and the
# longest rough prefill of one trial that still counts as a run on the CPU rather than a wait.
CPU_FLOPS_PER_CORE = 25e9
CPU_PREFILL_LIMIT_S = 1800
CPU_COPY_BYTES_PER_S = 20e9  # a server's memory bandwidth, order of magnitude
# Idle H100s report ~0.5 GiB "used" (driver reservations) with no process: not a busy GPU.
_BUSY_BYTES = 2 * GIB


def run_needs_gpu(ctx: DoctorContext) -> str | None:
    """Why the planned run needs a CUDA GPU, or None when a CPU-only machine is fine for it.

    The device is judged from the run: bitsandbytes needs CUDA, a plan made for --gpus is for GPUs,
    and otherwise a model whose weights, KV cache and prefill peak fit this machine's RAM (the same
    estimate the memory checks use, with the RAM as the one device) runs on the CPU. A model the
    doctor cannot find is not said to need anything: `model-resolves` tells what is wrong with it."""
    target = ctx.target
    if target.base_url:
        return None  # the server holds the model; this machine only sends token ids
    if target.quant in ("bnb-4bit", "bnb-8bit"):
        return f"--quant {target.quant} needs a CUDA GPU"
    if not (target.model and target.context):
        return None
    if target.gpus:
        return f"the plan is for --gpus {target.gpus}"
    model = ctx.probe(MODEL)
    if not isinstance(model, Unavailable) and model.status in ("not-found", "invalid", "gated"):
        return None
    found = not isinstance(model, Unavailable) and model.found
    on_cpu, why = cpu_fit(ctx) if found else (None, "")
    if on_cpu or (on_cpu is None and target.model == "demo"):
        return None
    return f"a {target.context}-token run of {target.model} needs a GPU" + (f" ({why})" if why else "")


def runs_on_cpu(ctx: DoctorContext) -> bool:
    """A planned run for this machine's CPU: a model and a length, nothing that needs CUDA, and the
    estimate fits the RAM."""
    target = ctx.target
    if not (target.model and target.context) or target.base_url or run_needs_gpu(ctx):
        return False
    return fits_host_memory(ctx) is True


def fits_host_memory(ctx: DoctorContext) -> bool | None:
    """Whether the planned run fits this machine's CPU (see cpu_fit); None: no estimate to tell."""
    return cpu_fit(ctx)[0]


def cpu_fit(ctx: DoctorContext) -> tuple[bool | None, str]:
    """Whether the planned run fits this machine's CPU: its usable RAM holds weights + KV + prefill peak,
    and a rough prefill of the longest length takes at most CPU_PREFILL_LIMIT_S (a 70B model fits a big
    host's RAM, but one trial would take hours: that run needs a GPU). None: no estimate to tell."""
    from doctor.memory.estimate import Settings, choose_prefill_chunk, fits
    from doctor.memory.gpus import GpuSpec
    from doctor.memory.timing import prefill_time_model

    facts, host = ctx.probe(MEMORY), ctx.probe(HOST)
    if isinstance(facts, Unavailable) or isinstance(host, Unavailable):
        return None, ""
    limit = host.cgroup_memory_limit_bytes
    usable = min(host.ram_available_bytes, limit) if limit else host.ram_available_bytes
    ram = GpuSpec(0, "CPU RAM", int(usable), "host")
    cores = max(host.cpu_count or 1, 1)
    try:
        settings = Settings(**facts["settings"])
        sizing = facts["sizing"]
        if not fits(sizing, settings, [ram]):
            return False, f"more than this machine's {gib(usable)} of RAM holds"
        # the prefill time plan at what this CPU's cores sustain (an assumed rate, CPU_FLOPS_PER_CORE), at
        # the chunk the estimate would quote for this RAM (doctor.memory.estimate.compute_estimate)
        rate = CPU_FLOPS_PER_CORE * cores
        rates = {
            "matmul": rate,
            "lean": rate,
            "masked": rate,
            "copy": CPU_COPY_BYTES_PER_S,
            "device": "this CPU",
        }
        model = prefill_time_model(sizing, settings.attn, settings.quant, [ram], rates)
        chunk = min(settings.prefill_chunk or choose_prefill_chunk(sizing, settings, [ram]), settings.context)
        cpu_seconds = model.seconds(0, settings.context, chunk) if model else None
    except (KeyError, TypeError, ValueError):
        return None, ""
    if cpu_seconds is not None and cpu_seconds > CPU_PREFILL_LIMIT_S:
        return False, f"its prefill would take ~{cpu_seconds / 3600:.1f} h per trial on {cores} CPU cores"
    return True, ""


def gpu_names(nvml: NvmlFacts) -> str:
    names = list(dict.fromkeys(g.name for g in nvml.gpus))
    if len(names) == 1:
        return names[0] + (f" (x{nvml.gpu_count})" if nvml.gpu_count > 1 else "")
    return ", ".join(names)


def driver_evidence(nvml: NvmlFacts) -> list[Evidence]:
    return [
        Evidence("nvidia.driver_version", nvml.driver_version, "nvml", SMI_DRIVER),
        Evidence(
            "nvidia.cuda_driver_version", nvml.cuda_driver_text, "nvml", "nvidia-smi | grep 'CUDA Version'"
        ),
    ]


def served_elsewhere(ctx: DoctorContext) -> Outcome | None:
    """The SKIP for a local-GPU check when --base-url points at the server that runs the model."""
    if ctx.target.base_url:
        return Outcome.skip(SERVER_TARGET_REASON, [Evidence("target.base_url", "set", "--base-url")])
    return None


def _gpu_line(gpu: GpuFacts) -> str:
    cc = f", {gpu.sm}" if gpu.sm else ""
    return (
        f"GPU {gpu.index}: {gpu.name}, {gib(gpu.memory_free_bytes)} free of {gib(gpu.memory_total_bytes)}{cc}"
    )


@check(
    "nvidia-driver", title="NVIDIA driver and the CUDA version it supports", section=SECTION, needs=(NVML,)
)
def nvidia_driver(ctx: DoctorContext) -> Outcome:
    if (elsewhere := served_elsewhere(ctx)) is not None:
        return elsewhere
    nvml = ctx.needed(NVML)
    evidence = [Evidence("nvml", nvml.reason or "ok", "nvml", "nvidia-smi"), *driver_evidence(nvml)]
    health = ctx.probe(GPU_HEALTH)
    if not nvml.driver_visible and isinstance(health, GpuHealthFacts) and health.driver.mismatch:
        # The driver IS installed: an upgrade replaced its libraries under the running kernel module.
        stack = health.driver
        return Outcome.fail(
            f"the NVIDIA driver is broken until a reboot: its libraries ({stack.library_driver_version or '?'}) "
            f"do not match the loaded kernel module ({stack.kernel_module_version or '?'})",
            evidence,
            Fix("Reboot so the new kernel module loads (see nvidia-driver-library)", ("sudo reboot",)),
        )
    if not nvml.driver_visible:
        need = run_needs_gpu(ctx)
        if need:
            return Outcome.fail(f"{nvml.reason}, but {need}", evidence, NO_GPU_FIX)
        if runs_on_cpu(ctx):
            return Outcome.skip(f"{nvml.reason}: this plan runs on the CPU (it fits the RAM)", evidence)
        return Outcome.warn(
            f"{nvml.reason}: fine for `doctor` on a CPU-only box; bnb quantization and "
            "long-context runs need an NVIDIA GPU",
            evidence,
            NO_GPU_FIX,
        )
    return Outcome.ok(
        f"driver {nvml.driver_version} (supports CUDA ≤ {nvml.cuda_driver_text or '?'}), "
        f"{nvml.gpu_count} GPU(s): {gpu_names(nvml)}",
        evidence,
    )


@check("gpu-devices", title="GPUs: name, memory, compute capability", section=SECTION, needs=(NVML,))
def gpu_devices(ctx: DoctorContext) -> Outcome:
    if (elsewhere := served_elsewhere(ctx)) is not None:
        return elsewhere
    nvml = ctx.needed(NVML)
    if not nvml.gpus:
        return Outcome.skip(nvml.reason or "no GPUs")
    evidence = [Evidence(f"gpu[{g.index}]", _gpu_line(g), "nvml", SMI_GPUS) for g in nvml.gpus]
    broken = [g for g in nvml.gpus if "NVML error" in g.name]
    if broken:
        return Outcome.warn(
            f"NVML cannot query {len(broken)} GPU(s): {broken[0].name}",
            evidence,
            Fix(
                "Check the GPU's health (Xid errors in the kernel log); a reset or reboot may help",
                ("nvidia-smi -q | less", "sudo dmesg | grep -i xid"),
            ),
        )
    return Outcome.ok("; ".join(_gpu_line(g) for g in nvml.gpus), evidence)


def _own_process_tree() -> set[int]:
    """Our own children (live probes) may already hold a CUDA context: never call them 'other processes'."""
    try:
        import psutil

        me = psutil.Process()
        return {me.pid, *(c.pid for c in me.children(recursive=True))}
    except Exception:
        return {os.getpid()}


@check("gpu-busy", title="Other processes holding GPU memory", section=SECTION, needs=(NVML,))
def gpu_busy(ctx: DoctorContext) -> Outcome:
    if (elsewhere := served_elsewhere(ctx)) is not None:
        return elsewhere
    nvml = ctx.needed(NVML)
    if not nvml.gpus:
        return Outcome.skip(nvml.reason or "no GPUs")
    ours = _own_process_tree()
    busy: list[str] = []
    free: list[int] = []
    evidence: list[Evidence] = []
    for gpu in nvml.gpus:
        others = [p for p in gpu.processes if p.pid not in ours]
        evidence.append(
            Evidence(f"gpu[{gpu.index}].memory_used_bytes", gpu.memory_used_bytes, "nvml", SMI_GPUS)
        )
        if others:
            evidence.append(
                Evidence(
                    f"gpu[{gpu.index}].processes",
                    [f"pid {p.pid} {p.name or '?'} {gib(p.used_bytes)}" for p in others],
                    "nvml",
                    SMI_PROCS,
                )
            )
        if others or gpu.memory_used_bytes > max(_BUSY_BYTES, gpu.memory_total_bytes // 20):
            who = f"{len(others)} other process(es)" if others else "no listed process"
            busy.append(f"GPU {gpu.index} has {gib(gpu.memory_used_bytes)} in use ({who})")
        else:
            free.append(gpu.index)
    if busy:
        pick = [f"export CUDA_VISIBLE_DEVICES={','.join(map(str, free))}"] if free else []
        return Outcome.warn(
            "; ".join(busy) + " — the run gets only what is left",
            evidence,
            Fix("Stop the other process" + (" or use the free GPUs" if free else ""), (SMI_PROCS, *pick)),
        )
    return Outcome.ok(f"no other process holds GPU memory on {nvml.gpu_count} GPU(s)", evidence)


@check("cuda-visible-devices", title="CUDA_VISIBLE_DEVICES", section=SECTION, needs=(NVML,))
def cuda_visible_devices(ctx: DoctorContext) -> Outcome:
    if (elsewhere := served_elsewhere(ctx)) is not None:
        return elsewhere
    nvml = ctx.needed(NVML)
    cvd = nvml.cuda_visible_devices
    evidence = [
        Evidence(
            "env.CUDA_VISIBLE_DEVICES",
            "unset" if cvd is None else repr(cvd),
            "env",
            'echo "${CUDA_VISIBLE_DEVICES-unset}"',
        ),
        Evidence("gpus.visible_to_cuda", nvml.visible_gpu_count, "nvml+env", SMI_GPUS),
    ]
    visible = nvml.visible_gpu_count
    live = ctx.probe(TORCH_LIVE)
    if isinstance(live, TorchLive) and live.cuda_available:
        visible = live.device_count  # torch has enumerated the devices: trust it over our parsing
        evidence.append(
            Evidence(
                "torch.cuda.device_count",
                visible,
                "torch (child)",
                "python -c 'import torch; print(torch.cuda.device_count())'",
            )
        )
    if not nvml.gpus:
        if cvd is not None:
            return Outcome.skip(
                f"no GPUs (CUDA_VISIBLE_DEVICES={cvd!r} is set but has nothing to select)", evidence
            )
        return Outcome.skip(nvml.reason or "no GPUs", evidence)
    fix = Fix(
        "Unset CUDA_VISIBLE_DEVICES or list valid GPU indices (CUDA stops at the first invalid entry)",
        ("unset CUDA_VISIBLE_DEVICES", "export CUDA_VISIBLE_DEVICES=0"),
    )
    if cvd is None:
        return Outcome.ok(f"unset: all {nvml.gpu_count} GPU(s) visible to CUDA", evidence)
    if visible == 0:
        summary = f"CUDA_VISIBLE_DEVICES={cvd!r} hides all {nvml.gpu_count} GPU(s) from CUDA"
        need = run_needs_gpu(ctx)
        if need:
            return Outcome.fail(f"{summary}, but {need}", evidence, fix)
        return Outcome.warn(summary, evidence, fix)
    entries = [e for e in cvd.split(",") if e.strip()]
    if len(entries) > visible:
        return Outcome.warn(
            f"CUDA_VISIBLE_DEVICES={cvd!r}: only {visible} of {len(entries)} "
            "entries are valid GPUs (CUDA ignores everything after the first invalid one)",
            evidence,
            fix,
        )
    order = (
        ""
        if os.environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID"
        else " (indices follow CUDA's fastest-first order unless CUDA_DEVICE_ORDER=PCI_BUS_ID)"
    )
    return Outcome.ok(
        f"CUDA_VISIBLE_DEVICES={cvd!r}: {visible} of {nvml.gpu_count} GPU(s) visible{order}", evidence
    )


@check("gpu-mig", title="MIG (Multi-Instance GPU) mode", section=SECTION, needs=(NVML,))
def gpu_mig(ctx: DoctorContext) -> Outcome:
    if (elsewhere := served_elsewhere(ctx)) is not None:
        return elsewhere
    nvml = ctx.needed(NVML)
    if not nvml.gpus:
        return Outcome.skip(nvml.reason or "no GPUs")
    evidence = [
        Evidence(
            f"gpu[{g.index}].mig_enabled",
            g.mig_enabled,
            "nvml",
            "nvidia-smi --query-gpu=index,mig.mode.current --format=csv",
        )
        for g in nvml.gpus
    ]
    sliced = [g for g in nvml.gpus if g.mig_enabled]
    if sliced:
        which = ", ".join(f"GPU {g.index}" for g in sliced)
        return Outcome.warn(
            f"MIG is on for {which}: CUDA sees only MIG slices, each a fraction of the "
            f"{gib(sliced[0].memory_total_bytes)}",
            evidence,
            Fix(
                "Use a whole GPU (ask the admin to disable MIG) or plan memory for one slice",
                ("nvidia-smi -L", "sudo nvidia-smi -i 0 -mig 0  # admin, GPU idle"),
            ),
        )
    return Outcome.ok(
        "MIG off" if any(g.mig_enabled is False for g in nvml.gpus) else "MIG not supported/off", evidence
    )
