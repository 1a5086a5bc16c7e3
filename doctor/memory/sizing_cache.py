"""On-disk cache of the skeleton child's answer (weights inventory, measured KV layout, traced activation
model), so a repeated estimate for the same model does not pay for importing torch/transformers,
building the meta model and tracing its forward again (seconds on a small CPU box).

The key is everything the answer depends on: the sizing arguments (config, quantization, dtype,
attention), the installed torch / transformers / bitsandbytes versions (and the recurrent-layer kernel
packages, which decide the path those layers take), and the source of the modules that produce the
answer. Light to import: no torch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from run_plan.safe_files import tool_cache_dir

_PRODUCERS = (
    "skeleton.py",
    "trace.py",
    "storage.py",
    "module_tree.py",
    "../children/forked.py",
    # the paths the sizing child builds and traces (niah runs the same code)
    "../runtime/attention.py",
    "../runtime/cache.py",
    "../runtime/experts.py",
    "../runtime/paths.py",
)


def cache_dir() -> Path:
    return tool_cache_dir("sizing")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def sizing_key(args: dict[str, Any]) -> str:
    here = Path(__file__).parent
    digest = hashlib.sha256()
    digest.update(json.dumps(args, sort_keys=True, default=str).encode())
    # mamba-ssm / causal-conv1d / flash-linear-attention decide whether recurrent layers run a kernel or
    # transformers' reference code (doctor.memory.recurrent); `kernels` whether hub kernels can load
    for dist in (
        "torch",
        "transformers",
        "bitsandbytes",
        "accelerate",
        "mamba-ssm",
        "causal-conv1d",
        "flash-linear-attention",
        "kernels",
    ):
        digest.update(f"{dist}={_version(dist)};".encode())
    for name in _PRODUCERS:
        path = here / name
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:32]


def cached_sizing(
    args: dict[str, Any], compute: Callable[[dict[str, Any]], dict[str, Any]], directory: Path | None = None
) -> dict[str, Any]:
    """`compute(args)`, remembered on disk; only complete skeleton answers are kept (a fallback caused
    by a timeout or a missing library is recomputed next time). Never fails on the cache itself."""
    directory = directory or cache_dir()
    path = directory / f"{sizing_key(args)}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    result = compute(args)
    if result.get("method") == "meta-skeleton":
        try:
            directory.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(result))
            tmp.replace(path)
        except OSError:
            pass
    return result
