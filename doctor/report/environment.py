"""The machine in a few labelled lines, read from a report's raw facts (for tickets and `doctor diff`).

Facts of a probe that did not run are `{"reason": ...}` objects; every reader here tolerates those and
missing keys, because a report from an older or newer doctor may lack them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from run_plan.units import gib

LIBRARIES = (
    "torch",
    "bitsandbytes",
    "triton",
    "transformers",
    "accelerate",
    "huggingface-hub",
    "safetensors",
    "flash-attn",
    "nvidia-ml-py",
)
MAX_ROWS = 23  # + a 2-line table header = at most 25 lines in a ticket


def _get(facts: Mapping[str, Any], probe: str) -> dict[str, Any]:
    value = facts.get(probe)
    return value if isinstance(value, dict) else {}


def _gpu_line(nvml: dict[str, Any]) -> str:
    gpus = nvml.get("gpus") or []
    if not gpus:
        return f"none visible ({nvml['reason']})" if nvml.get("reason") else "none visible"
    names = Counter(
        f"{g.get('name', '?')} ({gib(g.get('memory_total_bytes'))}"
        + (f", sm_{''.join(str(x) for x in g['compute_capability'])}" if g.get("compute_capability") else "")
        + ")"
        for g in gpus
    )
    return ", ".join(f"{n}× {name}" for name, n in names.items())


def _driver_line(nvml: dict[str, Any]) -> str | None:
    if not nvml.get("driver_version"):
        return None
    cuda = nvml.get("cuda_driver_version")
    cuda_text = ".".join(str(x) for x in cuda) if isinstance(cuda, list) else cuda
    return f"{nvml['driver_version']}" + (f" (supports CUDA ≤ {cuda_text})" if cuda_text else "")


def _torch_line(build: dict[str, Any], live: dict[str, Any]) -> str | None:
    if not build.get("installed"):
        return "not installed" if build else None
    kind = (
        f"CUDA {build['cuda']} build"
        if build.get("cuda")
        else (f"ROCm {build['hip']} build" if build.get("hip") else "CPU-only build")
    )
    line = f"{build.get('version')}, {kind}"
    if "cuda_available" in live:
        line += f"; torch.cuda.is_available() = {live['cuda_available']}"
    return line


def library_versions(facts: Mapping[str, Any]) -> dict[str, str | None]:
    """Installed versions of the libraries the run depends on (None = not installed)."""
    versions: dict[str, str | None] = {}
    for probe in ("run-args", "packages"):  # "packages" wins: it is the one meant for versions
        versions.update(_get(facts, probe).get("versions") or {})
    return {name: versions.get(name) for name in LIBRARIES if name in versions}


def environment_variables(facts: Mapping[str, Any]) -> dict[str, str]:
    """The environment variables the probes recorded (values already redacted by the report)."""
    out: dict[str, str] = {}
    nvml, hub, bnb = _get(facts, "nvml"), _get(facts, "hub"), _get(facts, "bnb-files")
    if "cuda_visible_devices" in nvml:
        out["CUDA_VISIBLE_DEVICES"] = (
            "unset" if nvml["cuda_visible_devices"] is None else str(nvml["cuda_visible_devices"])
        )
    for name in hub.get("offline_vars") or ():
        out[str(name)] = "on"
    if bnb.get("cuda_version_override"):
        out["BNB_CUDA_VERSION"] = str(bnb["cuda_version_override"])
    return out


def environment_rows(facts: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) lines describing the machine; at most MAX_ROWS."""
    host, nvml = _get(facts, "host"), _get(facts, "nvml")
    rows: list[tuple[str, str]] = []
    if host.get("system"):
        rows.append(
            (
                "OS",
                (
                    f"{host.get('system')} {host.get('os_release', '')} {host.get('machine', '')}, "
                    f"{host.get('libc') or 'libc ?'}, {host.get('cpu_count', '?')} CPUs, "
                    f"{gib(host.get('ram_total_bytes'))} RAM"
                ),
            )
        )
    if host.get("python_version"):
        rows.append(
            (
                "Python",
                f"{host['python_version']}"
                + (f" (venv {host['virtualenv']})" if host.get("virtualenv") else " (no virtualenv)"),
            )
        )
    if nvml:
        rows.append(("GPUs", _gpu_line(nvml)))
    driver = _driver_line(nvml)
    if driver:
        rows.append(("NVIDIA driver", driver))
    torch = _torch_line(_get(facts, "torch-build"), _get(facts, "torch-live"))
    if torch:
        rows.append(("torch", torch))
    for name, version in library_versions(facts).items():
        if name != "torch":
            rows.append((name, version or "not installed"))
    hub = _get(facts, "hub")
    if hub.get("endpoint"):
        rows.append(("Hugging Face", f"{hub['endpoint']}, token: {hub.get('token_source') or 'none'}"))
    for name, value in environment_variables(facts).items():
        rows.append((name, value))
    return rows[:MAX_ROWS]
