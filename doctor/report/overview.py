"""One line of facts per report section, for the text report's at-a-glance view.

What a person wants to see without scrolling: the GPU and its driver, torch and the CUDA it was built
for, bitsandbytes and the library it loads, transformers, the model and the plan's memory. The lines are
read from the report's raw facts where those say it best (a saved report from another doctor may lack
some: then the section's passing checks speak), and from the checks' own summaries otherwise.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from doctor.report.environment import library_versions
from doctor.report.model import CheckResult, Report, Status
from run_plan.units import gib

SEPARATOR = " · "


def _facts(report: Report, probe: str) -> dict[str, Any]:
    value = report.facts.get(probe) if isinstance(report.facts, Mapping) else None
    return value if isinstance(value, dict) else {}


def _summary(checks: Sequence[CheckResult], check_id: str) -> str | None:
    return next((c.summary for c in checks if c.id == check_id and c.status is Status.PASS), None)


def _platform(report: Report, checks: Sequence[CheckResult]) -> str | None:
    host = _facts(report, "host")
    if not host.get("python_version"):
        return None
    parts = [
        f"Python {host['python_version']}" + (" (venv)" if host.get("virtualenv") else ""),
        f"{host.get('system', '')} {host.get('machine', '')}".strip(),
    ]
    if host.get("ram_available_bytes"):
        parts.append(f"{gib(host['ram_available_bytes'])} RAM free")
    if host.get("hf_cache_free_bytes"):
        parts.append(f"{gib(host['hf_cache_free_bytes'])} free for the HF cache")
    return SEPARATOR.join(p for p in parts if p)


def _gpu(report: Report, checks: Sequence[CheckResult]) -> str | None:
    nvml = _facts(report, "nvml")
    if not nvml:
        return None
    gpus = [g for g in nvml.get("gpus") or [] if isinstance(g, dict)]
    if not gpus:
        return str(nvml.get("reason") or "no NVIDIA GPU visible")
    names = Counter(
        f"{g.get('name', '?')} ({gib(g.get('memory_total_bytes'))}"
        + (f", sm_{''.join(str(x) for x in g['compute_capability'])}" if g.get("compute_capability") else "")
        + ")"
        for g in gpus
    )
    line = ", ".join(f"{n}× {name}" for name, n in names.items())
    if nvml.get("driver_version"):
        cuda = nvml.get("cuda_driver_version")
        cuda_text = ".".join(str(x) for x in cuda) if isinstance(cuda, list) else cuda
        line += f"{SEPARATOR}driver {nvml['driver_version']}" + (
            f" (CUDA ≤ {cuda_text})" if cuda_text else ""
        )
    return line


def _torch(report: Report, checks: Sequence[CheckResult]) -> str | None:
    build, live = _facts(report, "torch-build"), _facts(report, "torch-live")
    if not build:
        return None
    if not build.get("installed"):
        return "torch not installed"
    kind = (
        f"CUDA {build['cuda']} build"
        if build.get("cuda")
        else (f"ROCm {build['hip']} build" if build.get("hip") else "CPU-only build")
    )
    line = f"torch {build.get('version')} ({kind})"
    if live.get("cuda_available") is True:
        line += f"{SEPARATOR}CUDA available on {live.get('device_count', '?')} GPU(s)"
    elif live.get("cuda_available") is False:
        line += f"{SEPARATOR}CUDA unavailable"
    return line


def _bitsandbytes(report: Report, checks: Sequence[CheckResult]) -> str | None:
    version = library_versions(report.facts).get("bitsandbytes") if report.facts else None
    live = _facts(report, "bnb-live")
    if not version and not live.get("version"):
        return None
    installed = _summary(checks, "bnb-installed")
    line = (
        installed
        if installed and not live.get("version")
        else f"bitsandbytes {live.get('version') or version}"
    )
    if live.get("library_path"):
        line += f"{SEPARATOR}loads {str(live['library_path']).rsplit('/', 1)[-1]}"
    roundtrip = live.get("roundtrip")
    if isinstance(roundtrip, dict) and roundtrip.get("device") and not roundtrip.get("error"):
        line += f"{SEPARATOR}{roundtrip.get('quant_type', '4-bit')} round trip ok on {roundtrip['device']}"
    return line


def _libraries(report: Report, checks: Sequence[CheckResult]) -> str | None:
    versions = library_versions(report.facts) if report.facts else {}
    shown = [
        f"{name} {versions[name] or 'not installed'}"
        for name in ("transformers", "accelerate")
        if name in versions
    ]
    return SEPARATOR.join(shown) or None


def _run_args(report: Report, checks: Sequence[CheckResult]) -> str | None:
    attn, dtype = _summary(checks, "attn-implementation"), _summary(checks, "dtype-choice")
    parts = [
        f"attention {attn.split(' ')[0]}" if attn else None,
        f"dtype {dtype.split(' ')[0]}" if dtype else None,
    ]
    shown = [p for p in parts if p]
    return SEPARATOR.join(shown) or None


def _memory(report: Report, checks: Sequence[CheckResult]) -> str | None:
    """The verdict first (`fits 1× H100-80GB (79.6 GiB)`), then the figures behind it."""
    e = report.attachments.get("estimate") if isinstance(report.attachments, Mapping) else None
    if not isinstance(e, dict) or not e.get("weights_bytes"):
        return None
    parts = [f"weights {gib(e['weights_bytes'])}", f"KV {gib(e.get('kv_bytes'))}"]
    if e.get("activation_peak_bytes"):
        parts.append(f"prefill {gib(e['activation_peak_bytes'])}")
    figures = " + ".join(parts) + f" at {int(e.get('context') or 0):,} tokens"
    gpus = [g for g in e.get("per_gpu") or [] if isinstance(g, dict)]
    if not gpus:
        return f"{figures}; no GPU to compare with"
    names = Counter(f"{g.get('name', '?')} ({gib(g.get('capacity_bytes'))})" for g in gpus)
    where = ", ".join(f"{n}× {name}" for name, n in names.items())
    line = f"{'fits' if e.get('fits') else 'does not fit'} {where}: {figures}"
    if e.get("max_context_tokens"):
        line += f"{SEPARATOR}longest ≈ {int(e['max_context_tokens']):,} tokens"
    return line


# Sections whose raw facts say it shorter than their checks' summaries do; the rest use their first
# passing check (the order in which the section's module registers them puts the headline first).
_FROM_FACTS: dict[str, Callable[[Report, Sequence[CheckResult]], str | None]] = {
    "platform": _platform,
    "gpu": _gpu,
    "torch": _torch,
    "bitsandbytes": _bitsandbytes,
    "libraries": _libraries,
    "run-args": _run_args,
    "memory": _memory,
}
_HEADLINE_CHECK = {"model": "model-resolves", "triton": "triton-installed"}


def section_status(checks: Sequence[CheckResult]) -> Status:
    """The section's glyph: its worst problem, else pass when anything passed, else skip."""
    statuses = {c.status for c in checks}
    for status in (Status.FAIL, Status.ERROR, Status.WARN, Status.PASS):
        if status in statuses:
            return status
    return Status.SKIP


def section_line(report: Report, section: str, checks: Sequence[CheckResult]) -> str:
    """The facts of one section in one line (not cut: the renderer cuts to the terminal's width)."""
    if all(c.status is Status.SKIP for c in checks):
        reason, _ = Counter(c.summary for c in checks).most_common(1)[0]
        return f"skipped: {reason}"
    reader = _FROM_FACTS.get(section)
    line = reader(report, checks) if reader else None
    if line is None:
        headline = _HEADLINE_CHECK.get(section)
        line = (_summary(checks, headline) if headline else None) or next(
            (c.summary for c in checks if c.status is Status.PASS), None
        )
    if line is None:  # nothing passed: the problems above say it all
        line = next(c.summary for c in checks if c.status is not Status.SKIP)
    return line
