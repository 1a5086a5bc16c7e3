"""Every backend `niah run` can drive, by the name `RunSpec.backend` holds: how to make it, and what of
this machine the doctor's preflight judges for it.

The names themselves are declared in `run_plan/spec.py: BACKEND_CHOICES` (the plan validates `--backend`
with them, and run_plan imports nothing above it); tests/niah/test_backends_registry.py checks that every
declared name has an entry here and every entry a declared name. A new backend is one module in this
folder implementing `base.Backend` plus one entry below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from niah_run.backends.base import Backend
from run_plan.errors import RunFailed, UsageError
from run_plan.spec import RunSpec


@dataclass(frozen=True)
class BackendEntry:
    """One backend: its factory (torch, HTTP clients and the like are imported only when it is called)."""

    make: Callable[[RunSpec], Backend]
    # The doctor's sections the preflight runs for it; () = every section (the local model's GPUs, memory,
    # libraries). A server backend needs no local GPU: the machine's basics and the server are what count.
    preflight_sections: tuple[str, ...] = ()


def _local_model(spec: RunSpec) -> Backend:
    try:
        from niah_run.backends.loading import load_backend
    except ImportError as exc:  # pragma: no cover - only when the optional extras are missing
        raise RunFailed(
            f"the local model backend is not available: {exc}",
            hint="Install the extras: python3 install.py (in the niah-doctor checkout).",
        ) from None
    return load_backend(spec)


def _openai_server(spec: RunSpec) -> Backend:
    from niah_run.backends.openai import make_openai_backend

    if not spec.base_url:
        raise UsageError("--backend openai needs --base-url", hint="e.g. --base-url http://127.0.0.1:8000")
    return make_openai_backend(
        spec.base_url,
        spec.model or "",
        spec.tokenizer,
        timeout_s=spec.request_timeout,
        retries=spec.retries,
        concurrency=spec.concurrency,
        online=spec.online,
    )


BACKENDS: dict[str, BackendEntry] = {
    "transformers": BackendEntry(_local_model),
    "openai": BackendEntry(_openai_server, preflight_sections=("platform", "server")),
}


def backend_entry(name: str) -> BackendEntry:
    """The entry of a backend the plan names (RunSpec has already refused any other name)."""
    return BACKENDS[name]


def make_backend(spec: RunSpec) -> Backend:
    """Load the backend the plan names. Tests replace `niah_run.sweep.make_backend` with a fake."""
    return backend_entry(spec.backend).make(spec)
