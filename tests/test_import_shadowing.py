"""A `torch/` earlier on sys.path shadows the installed torch: the static report must say so."""

from __future__ import annotations

import json
import os
import sys
from importlib import metadata
from pathlib import Path

import pytest

from doctor.context import DoctorContext
from doctor.probes.libs_static import import_origin, import_origins_facts
from doctor.registry import load_checks
from doctor.report.model import Status
from doctor.runner import run_check
from run_plan.spec import RunSpec
from tests.conftest import run_module


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


needs_torch = pytest.mark.skipif(not _installed("torch"), reason="torch is not installed")


def _fake_torch(folder: Path) -> Path:
    pkg = folder / "torch"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise SystemExit(17)  # the stray copy was imported\n")
    return pkg


def _judge(facts: object) -> object:
    spec = next(s for s in load_checks() if s.id == "import-shadowing")
    ctx = DoctorContext.from_snapshot(RunSpec(), {"import-origins": facts})
    return run_check(spec, ctx)[0]


@needs_torch
def test_fake_torch_on_pythonpath_is_flagged_without_importing_it(tmp_path: Path) -> None:
    _fake_torch(tmp_path)
    found = import_origin(
        "torch", search_path=[str(tmp_path), *sys.path], environ={"PYTHONPATH": str(tmp_path)}, cwd="/"
    )
    assert found.verdict == "shadowed"
    assert found.origin == os.path.realpath(tmp_path / "torch" / "__init__.py")
    assert found.expected and found.expected.endswith(os.path.join("site-packages", "torch", "__init__.py"))
    assert found.via == f"PYTHONPATH ({tmp_path})"
    assert "torch" not in sys.modules or sys.modules["torch"].__file__ != found.origin  # nothing imported


@needs_torch
def test_shadowed_torch_fails_the_check_with_both_paths(tmp_path: Path) -> None:
    _fake_torch(tmp_path)
    facts = import_origins_facts(
        search_path=[str(tmp_path), *sys.path], environ={"PYTHONPATH": str(tmp_path)}, cwd="/"
    )
    result = _judge(facts)
    assert result.status is Status.FAIL
    assert f"`import torch` loads {os.path.realpath(tmp_path)}" in result.summary
    assert "not the installed torch" in result.summary and "PYTHONPATH" in result.summary
    assert result.fix is not None and any("print(torch.__file__)" in c for c in result.fix.commands)


@needs_torch
def test_a_torch_py_in_the_current_directory_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "torch.py").write_text("print('my experiment')\n")  # the classic: a script named torch.py
    facts = import_origins_facts(search_path=list(sys.path), cwd=str(tmp_path))
    torch_origin = next(m for m in facts.modules if m.name == "torch")
    assert torch_origin.verdict == "ok" and torch_origin.front_copies == (
        os.path.realpath(tmp_path / "torch.py"),
    )
    result = _judge(facts)
    assert result.status is Status.WARN and "torch.py" in result.summary


def test_a_bare_folder_named_like_the_package_does_not_shadow(tmp_path: Path) -> None:
    (tmp_path / "transformers").mkdir()  # a namespace folder loses to any regular package
    facts = import_origins_facts(search_path=list(sys.path), cwd=str(tmp_path))
    assert all(not m.front_copies for m in facts.modules)


def test_clean_environment_passes() -> None:
    result = _judge(import_origins_facts())
    assert result.status is Status.PASS


@needs_torch
def test_doctor_run_with_a_stray_torch_on_pythonpath_exits_1(tmp_path: Path) -> None:
    _fake_torch(tmp_path)
    proc = run_module(
        "-m",
        "doctor",
        "--only",
        "import-shadowing",
        "--format",
        "json",
        env={"PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parents[1])])},
    )
    assert proc.returncode == 1, proc.stderr
    row = next(c for c in json.loads(proc.stdout)["checks"] if c["id"] == "import-shadowing")
    assert row["status"] == "fail" and "the installed torch" in row["summary"]
