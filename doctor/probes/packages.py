"""Installed distributions, read from their metadata files without importing them.

`import torch` costs ~4 s and `import bitsandbytes` ~9 s on a small CPU box, and either can crash
on a broken install. Versions, wheel tags, install provenance and a package's own files are all on
disk, so the static tier reads them through importlib.metadata and plain file reads.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from doctor.probes import Probe, probe
from run_plan.spec import RunSpec

# Distributions whose versions matter for a long-context HF + bnb run, in report order.
TRACKED = (
    "torch",
    "bitsandbytes",
    "triton",
    "pytorch-triton",
    "transformers",
    "accelerate",
    "huggingface-hub",
    "safetensors",
    "nvidia-ml-py",
)


@dataclass(frozen=True)
class DistInfo:
    """One installed distribution, from its .dist-info (PEP 376/427/610 files)."""

    name: str
    version: str
    location: str  # the site-packages directory holding it
    installer: str | None  # INSTALLER file: pip, uv, conda...
    wheel_tags: tuple[str, ...]  # WHEEL "Tag:" lines, e.g. cp311-cp311-manylinux_2_28_aarch64
    direct_url: str | None  # PEP 610: "editable <url>", "<url>" for local/VCS installs; None = from an index
    copies: int = 1  # distributions of this name on sys.path; >1 means one shadows another


def normalize_machine(machine: str) -> str:
    """platform.machine() spellings differ by OS; bitsandbytes and wheels use these two names."""
    lowered = machine.lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(lowered, lowered)


def this_machine() -> str:
    return normalize_machine(platform.machine())


def find_dist(name: str) -> metadata.Distribution | None:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None


def _count_copies(name: str) -> int:
    try:
        return max(1, sum(1 for _ in metadata.distributions(name=name)))
    except Exception:  # odd path entries (zip files, broken eggs) must not break the probe
        return 1


def _direct_url(dist: metadata.Distribution) -> str | None:
    raw = dist.read_text("direct_url.json")
    if not raw:
        return None
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError:
        return "unreadable direct_url.json"
    url = str(doc.get("url", ""))
    return f"editable {url}" if doc.get("dir_info", {}).get("editable") else url or None


def dist_info(name: str) -> DistInfo | None:
    """Facts about distribution `name`, or None when it is not installed."""
    dist = find_dist(name)
    if dist is None:
        return None
    wheel = dist.read_text("WHEEL") or ""
    tags = tuple(line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:"))
    installer = (dist.read_text("INSTALLER") or "").strip() or None
    return DistInfo(
        name=dist.metadata["Name"] or name,
        version=dist.version,
        location=str(dist.locate_file("")),
        installer=installer,
        wheel_tags=tags,
        direct_url=_direct_url(dist),
        copies=_count_copies(name),
    )


def package_dir(dist: metadata.Distribution, package: str) -> Path:
    """Directory of import package `package` shipped by `dist` (same site dir, not imported)."""
    return Path(str(dist.locate_file(package)))


def requirements_of(name: str) -> tuple[str, ...]:
    """The distribution's Requires-Dist lines, markers included."""
    dist = find_dist(name)
    return tuple(dist.requires or ()) if dist is not None else ()


@dataclass(frozen=True)
class PackageVersions:
    versions: dict[str, str | None]  # distribution name -> version, None when not installed
    nvidia_runtime: dict[str, str]  # nvidia-*-cuXY wheels torch pulls in (CUDA runtime from pip)


def _nvidia_runtime_dists() -> dict[str, str]:
    """nvidia-*-cuXY wheels, from .dist-info directory names (reading every METADATA costs ~0.2 s)."""
    out: dict[str, str] = {}
    for entry in dict.fromkeys(sys.path):
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.startswith("nvidia_") and name.endswith(".dist-info") and "-" in name:
                dist, _, version = name[: -len(".dist-info")].partition("-")
                dist = dist.replace("_", "-").lower()
                if dist != "nvidia-ml-py":
                    out.setdefault(dist, version)
    return dict(sorted(out.items()))


PACKAGES: Probe[PackageVersions] = Probe("packages")


@probe(PACKAGES)
def packages_probe(target: RunSpec) -> PackageVersions:
    versions: dict[str, str | None] = {}
    for name in TRACKED:
        dist = find_dist(name)
        versions[name] = dist.version if dist is not None else None
    return PackageVersions(versions=versions, nvidia_runtime=_nvidia_runtime_dists())
