"""The live probes' speed-ups must not change what they report: a bytecode cache only where the image
has none, bitsandbytes imported without its CPU backend's compile wrappers, and has_triton() in a
worker of its own whose answer still lands in the Triton facts."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from doctor.children.bnb_import import compile_decorators_skipped
from doctor.children.child import ChildResult, bytecode_cache_env
from doctor.probes import live_batch
from doctor.probes.triton_live import triton_stage


def _package(root: Path, name: str, compiled: bool) -> None:
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("X = 1\n")
    if compiled:
        cache = pkg / "__pycache__"
        cache.mkdir()
        tag = sys.implementation.cache_tag
        (cache / f"__init__.{tag}.pyc").write_bytes(b"")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def test_shipped_bytecode_needs_no_cache(site: Path) -> None:
    _package(site, "ndt_compiled_pkg", compiled=True)
    env = {"PYTHONDONTWRITEBYTECODE": "1"}
    assert bytecode_cache_env(env, ("ndt_compiled_pkg",)) == {}


def test_no_bytecode_and_no_writes_gets_the_doctors_own_cache(site: Path) -> None:
    _package(site, "ndt_bare_pkg", compiled=False)
    changes = bytecode_cache_env({"PYTHONDONTWRITEBYTECODE": "1"}, ("ndt_bare_pkg",))
    assert changes == {
        "PYTHONPYCACHEPREFIX": str(site / "cache" / "niah-doctor" / "pycache"),
        "PYTHONDONTWRITEBYTECODE": None,  # removed for the child only
    }


def test_no_bytecode_but_writable_is_left_to_python(site: Path) -> None:
    _package(site, "ndt_writable_pkg", compiled=False)
    assert bytecode_cache_env({}, ("ndt_writable_pkg",)) == {}  # the first import writes it in place


def test_the_user_can_turn_the_cache_off_or_bring_their_own(site: Path) -> None:
    _package(site, "ndt_bare_pkg2", compiled=False)
    off = {"PYTHONDONTWRITEBYTECODE": "1", "NIAH_DOCTOR_PYCACHE": "0"}
    assert bytecode_cache_env(off, ("ndt_bare_pkg2",)) == {}
    own = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": "/somewhere"}
    assert bytecode_cache_env(own, ("ndt_bare_pkg2",)) == {}
    assert bytecode_cache_env({"PYTHONDONTWRITEBYTECODE": "1"}, ("ndt_not_installed",)) == {}


def test_bitsandbytes_imports_with_compile_as_identity_and_gets_it_back() -> None:
    fake_torch = types.SimpleNamespace(compile=lambda model=None, **kw: ("compiled", model))
    real = fake_torch.compile

    def op(x: int) -> int:
        return x + 1

    with compile_decorators_skipped(fake_torch):
        assert fake_torch.compile(op) is op  # @torch.compile
        assert fake_torch.compile(dynamic=False)(op) is op  # @torch.compile(dynamic=False)
    assert fake_torch.compile is real


def test_has_triton_runs_beside_the_kernel_and_joins_the_triton_facts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    def fake_stages(stages: dict[str, Any], **_kw: Any) -> dict[str, ChildResult]:
        seen.update(stages)
        return {
            "triton-live": ChildResult(True, {"version": "3.6.0", "kernel_ran": True}, None, 0, "", 1.0),
            "triton-live.inductor": ChildResult(True, {"torch_has_triton": False}, None, 0, "", 2.0),
        }

    monkeypatch.setattr(live_batch, "run_stages_in_child", fake_stages)
    answers = live_batch.LIVE_BATCH.run(object(), {"triton-live": triton_stage(fresh_cache=False)})
    assert seen["triton-live"][1]["inductor_elsewhere"] is True
    assert seen["triton-live.inductor"][0].endswith(":inductor_child")
    assert answers == {"triton-live": {"version": "3.6.0", "kernel_ran": True, "torch_has_triton": False}}


def test_a_failed_inductor_worker_leaves_has_triton_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_stages(stages: dict[str, Any], **_kw: Any) -> dict[str, ChildResult]:
        return {
            "triton-live": ChildResult(True, {"version": "3.6.0", "kernel_ran": True}, None, 0, "", 1.0),
            "triton-live.inductor": ChildResult(False, None, "crashed with SIGSEGV", -11, "", 2.0),
        }

    monkeypatch.setattr(live_batch, "run_stages_in_child", fake_stages)
    answers = live_batch.LIVE_BATCH.run(object(), {"triton-live": triton_stage(fresh_cache=False)})
    assert answers["triton-live"] == {"version": "3.6.0", "kernel_ran": True, "torch_has_triton": None}
