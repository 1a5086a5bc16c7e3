"""One place per backend: every name the plan accepts has a registered factory and preflight scope."""

from __future__ import annotations

import pytest

from niah_run.backends.registry import BACKENDS, backend_entry, make_backend
from run_plan.errors import UsageError
from run_plan.spec import BACKEND_CHOICES, CONCURRENT_BACKENDS, RunSpec


def test_every_declared_backend_has_an_entry_and_every_entry_a_declared_name() -> None:
    assert sorted(BACKENDS) == sorted(BACKEND_CHOICES)
    assert set(CONCURRENT_BACKENDS) <= set(BACKEND_CHOICES)


def test_a_server_backend_is_judged_on_the_machine_and_the_server_the_local_one_on_everything() -> None:
    assert backend_entry("openai").preflight_sections == ("platform", "server")
    assert backend_entry("transformers").preflight_sections == ()


def test_the_server_backend_needs_a_base_url_before_anything_is_loaded() -> None:
    with pytest.raises(UsageError, match="needs --base-url"):
        make_backend(RunSpec(model="served", backend="openai"))
