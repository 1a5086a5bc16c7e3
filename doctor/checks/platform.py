"""Platform: CPU architecture, OS/glibc, Python and virtualenv, RAM, disk where the HF cache lives."""

from __future__ import annotations

import sys

from doctor.context import DoctorContext
from doctor.probes.host import HOST
from doctor.registry import Outcome, check
from doctor.report.model import Evidence, Fix
from run_plan.units import GIB, gib

SECTION = "platform"
# Loading streams shards through host RAM; below this a big checkpoint load is likely "Killed".
_LOW_RAM_BYTES = 16 * GIB
_LOW_DISK_BYTES = 20 * GIB


@check("cpu-architecture", title="CPU architecture and OS", section=SECTION, needs=(HOST,))
def cpu_architecture(ctx: DoctorContext) -> Outcome:
    host = ctx.needed(HOST)
    evidence = [
        Evidence("platform.machine", host.machine, "python", "uname -m"),
        Evidence("os", f"{host.system} {host.os_release}", "python", "uname -sr"),
        Evidence("libc", host.libc or "unknown", "python", "ldd --version"),
    ]
    note = ""
    if host.machine in ("aarch64", "arm64") and host.system == "Linux":
        # PyPI's aarch64 torch wheels were CPU-only for years (pytorch/pytorch#160162): say it up front.
        note = "; aarch64: CUDA torch must come from download.pytorch.org, not PyPI"
    return Outcome.ok(
        f"{host.machine}, {host.system} {host.os_release}, {host.libc or 'libc unknown'}{note}", evidence
    )


@check(
    "python-environment", title="Python interpreter and virtual environment", section=SECTION, needs=(HOST,)
)
def python_environment(ctx: DoctorContext) -> Outcome:
    host = ctx.needed(HOST)
    evidence = [
        Evidence("python.version", host.python_version, "python", "python --version"),
        Evidence("python.executable", host.python_executable, "python", "which python"),
        Evidence("virtualenv", host.virtualenv or "none (system interpreter)", "python", "echo $VIRTUAL_ENV"),
    ]
    if sys.version_info < (3, 10):  # noqa: UP036 - a checkout run with an older interpreter must still explain
        return Outcome.fail(
            f"Python {host.python_version} is older than 3.10",
            evidence,
            Fix(
                "Use Python 3.10 or newer in a virtual environment",
                ("python3 -m venv .venv && . .venv/bin/activate",),
            ),
        )
    where = f"venv {host.virtualenv}" if host.virtualenv else "system interpreter (no virtualenv)"
    return Outcome.ok(f"Python {host.python_version}, {where}", evidence)


@check("host-memory", title="Host RAM available for loading", section=SECTION, needs=(HOST,))
def host_memory(ctx: DoctorContext) -> Outcome:
    host = ctx.needed(HOST)
    limit = host.cgroup_memory_limit_bytes
    usable = min(host.ram_available_bytes, limit) if limit else host.ram_available_bytes
    evidence = [
        Evidence("ram.total_bytes", host.ram_total_bytes, "psutil", "free -b"),
        Evidence("ram.available_bytes", host.ram_available_bytes, "psutil", "free -b"),
        Evidence("cgroup.memory_limit_bytes", limit, "cgroup", "cat /sys/fs/cgroup/memory.max"),
    ]
    summary = f"{gib(usable)} usable of {gib(host.ram_total_bytes)}"
    if limit:
        summary += f" (container limit {gib(limit)})"
    if usable < _LOW_RAM_BYTES:
        return Outcome.warn(
            summary + "; loading large checkpoints may be killed (exit 137)",
            evidence,
            Fix(
                "Use safetensors checkpoints with a device_map so weights stream to the GPU, "
                "or raise the container's memory limit"
            ),
        )
    return Outcome.ok(summary, evidence)


@check("hf-cache-disk", title="Free disk where the Hugging Face cache lives", section=SECTION, needs=(HOST,))
def hf_cache_disk(ctx: DoctorContext) -> Outcome:
    host = ctx.needed(HOST)
    evidence = [
        Evidence("hf.cache_dir", host.hf_cache_dir, "huggingface_hub", "hf env"),
        Evidence("hf.cache_free_bytes", host.hf_cache_free_bytes, "os", f"df -h {host.hf_cache_dir}"),
    ]
    free = host.hf_cache_free_bytes
    if free is None:
        return Outcome.warn("could not measure free space of the cache disk", evidence)
    if free < _LOW_DISK_BYTES:
        return Outcome.warn(
            f"only {gib(free)} free under {host.hf_cache_dir}",
            evidence,
            Fix("Point the cache at a bigger disk", ("export HF_HOME=/path/on/big/disk/huggingface",)),
        )
    return Outcome.ok(f"{gib(free)} free under {host.hf_cache_dir}", evidence)
