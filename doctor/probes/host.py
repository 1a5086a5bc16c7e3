"""Host facts: CPU architecture, OS/glibc, Python and virtualenv, RAM (cgroup-aware), HF cache disk."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from doctor.probes import Probe, probe
from run_plan.spec import RunSpec


@dataclass(frozen=True)
class HostFacts:
    machine: str  # platform.machine(): x86_64, aarch64, arm64
    system: str
    os_release: str
    libc: str  # "glibc 2.36" or "" where unknown
    python_version: str
    python_executable: str
    virtualenv: str | None  # path of the venv/conda env in use, None for the system interpreter
    ram_total_bytes: int
    ram_available_bytes: int
    cgroup_memory_limit_bytes: int | None  # the container's cap, None when unlimited/unknown
    cpu_count: int
    hf_cache_dir: str
    hf_cache_free_bytes: int | None


def _cgroup_memory_limit() -> int | None:
    """Containers often cap memory far below MemTotal; the loader is killed at the cap (exit 137)."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw == "max":
            return None
        try:
            value = int(raw)
        except ValueError:
            continue
        # cgroup v1 reports "unlimited" as a huge page-aligned number.
        return value if value < (1 << 60) else None
    return None


def _virtualenv() -> str | None:
    if sys.prefix != getattr(sys, "base_prefix", sys.prefix):
        return sys.prefix
    return os.environ.get("CONDA_PREFIX") or None


def hf_cache_dir() -> str:
    """Where huggingface_hub keeps downloads (HF_HUB_CACHE / HF_HOME aware), asked of the library."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # huggingface_hub is a core dependency, but a broken install must not stop us
        home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~/.cache"), "huggingface")
        return os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")


def _free_bytes(path: str) -> int | None:
    candidate = Path(path)
    while not candidate.exists() and candidate != candidate.parent:
        candidate = candidate.parent  # the cache may not exist yet: measure the disk it will live on
    try:
        return shutil.disk_usage(candidate).free
    except OSError:
        return None


HOST: Probe[HostFacts] = Probe("host")


@probe(HOST)
def host_probe(target: RunSpec) -> HostFacts:
    vm = psutil.virtual_memory()
    libc_name, libc_version = platform.libc_ver()
    cache = hf_cache_dir()
    return HostFacts(
        machine=platform.machine(),
        system=platform.system(),
        os_release=platform.release(),
        libc=f"{libc_name} {libc_version}".strip(),
        python_version=platform.python_version(),
        python_executable=sys.executable,
        virtualenv=_virtualenv(),
        ram_total_bytes=int(vm.total),
        ram_available_bytes=int(vm.available),
        cgroup_memory_limit_bytes=_cgroup_memory_limit(),
        cpu_count=os.cpu_count() or 1,
        hf_cache_dir=cache,
        hf_cache_free_bytes=_free_bytes(cache),
    )
