"""What makes two runs the same test: the run's identity, and --resume refusing a run that differs.

The identity is everything that changes what a trial computes: the plan's identity settings
(`RunSpec.identity()`), the backend's model facts (files, revision, dtype, quantization, attention,
kernels, server), the tokenizer, the chat template and the haystack. Its SHA-256 is part of every trial
key, so a changed test never takes an earlier test's rows for its own.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from doctor import __version__
from niah_run.prompt import PROMPT_VERSION, TokenizedHaystack, tokenizer_sha256
from run_plan.errors import UsageError
from run_plan.prompt_frame import ChatFrame
from run_plan.spec import (
    EXPERTS_WITHOUT_EFFECT,
    RunSpec,
    experts_setting_has_effect,
    identity_diff,
)

HARNESS_VERSION = f"niah-doctor {__version__} prompt-{PROMPT_VERSION}"
# describe() fields that decide what the model computes (volatile ones like memory are left out of keys)
_IDENTITY_FIELDS = (
    "backend",
    "model",
    "model_id",
    "source",
    "path",
    "revision",
    "commit_hash",
    "gguf_file",
    "model_class",
    "dtype",
    "quantization_config",
    "attn_implementation",
    "hub_kernels",  # transformers' hub kernels off (use_kernels=False) or on: other code runs
    "base_url",
)


def run_identity(
    spec: RunSpec,
    backend_facts: dict[str, Any],
    tokenizer: Any,
    frame: ChatFrame,
    haystack: TokenizedHaystack,
) -> tuple[dict[str, Any], str]:
    """The run's identity (saved in config.json) and its SHA-256 (in every trial key)."""
    identity = {
        "harness": HARNESS_VERSION,
        "config": _what_computes(spec.identity(), backend_facts),
        "backend": {k: backend_facts[k] for k in _IDENTITY_FIELDS if k in backend_facts},
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
        "template_sha256": frame.template_sha256,
        "haystack_sha256": haystack.sha256,
    }
    return identity, hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _what_computes(config: dict[str, Any], backend_facts: dict[str, Any]) -> dict[str, Any]:
    """The plan's identity settings, with --experts at the one value it has where it changes nothing (a
    model without MoE layers, or with ones niah does not recognise): there every value is the same test."""
    if "experts" in config and not experts_setting_has_effect(backend_facts.get("experts")):
        return {**config, "experts": EXPERTS_WITHOUT_EFFECT}
    return config


def refuse_changed_identity(before: dict[str, Any], now: dict[str, Any], run_dir: Path) -> None:
    """--resume must not mix two different tests in one folder: name what changed and stop (exit 2).
    Nested identities are compared key by key, and a key added after a run was saved reads as the
    value that run had (run_plan.spec.identity_diff)."""
    changed = identity_diff(before, now)
    if changed:
        raise UsageError(
            f"--resume: this run would compute different trials than the one in {run_dir} "
            f"(changed: {', '.join(changed)})",
            hint="Resume with the original settings, or start a new --out folder for the new test.",
        )


def saved_auto_as_decided(saved: dict[str, Any], now: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """An earlier run's identity where its plan recorded "auto" for a setting (`names`) this run also left
    to auto (a --skip-preflight run saved experts="auto"): auto decides alike for the same model files,
    which the rest of the identity compares, so the earlier "auto" reads as what auto decided now."""
    config, current = saved.get("config"), now.get("config")
    if not isinstance(config, dict) or not isinstance(current, dict):
        return saved
    same = {name: current.get(name) for name in names if config.get(name) == "auto" and name in current}
    return {**saved, "config": {**config, **same}} if same else saved


def settings_without_effect(backend_facts: dict[str, Any]) -> set[str]:
    """Identity settings that change nothing on the model these facts describe (--experts on a model
    without MoE layers it can route)."""
    return set() if experts_setting_has_effect(backend_facts.get("experts")) else {"experts"}


def saved_without_effect_as_now(
    saved: dict[str, Any], now: dict[str, Any], names: set[str]
) -> dict[str, Any]:
    """An earlier run's identity with the settings that change nothing on this model (`names`) read as
    this run's: whatever it saved for them (an --experts routed on a dense model), it computed the same
    trials, and the rest of the identity (the model files) is still compared."""
    config, current = saved.get("config"), now.get("config")
    if not names or not isinstance(config, dict) or not isinstance(current, dict):
        return saved
    return {**saved, "config": {**config, **{name: current.get(name) for name in names if name in current}}}


def resumed_identity_sha256(saved_doc: dict[str, Any], computed: str) -> str:
    """On --resume of the same test (refuse_changed_identity found no change): the earlier run's identity
    hash, so the trial keys it wrote name the same trials. An earlier release's identity may lack a setting
    added since, at the value that release computed with: the same test, but another hash."""
    saved = saved_doc.get("identity_sha256")
    return saved if isinstance(saved, str) and saved else computed


def refuse_changed_plan(
    saved_plan_identity: object, spec: RunSpec, run_dir: Path, saved_backend: object = None
) -> None:
    """Before anything is loaded: the saved run's plan identity against this spec's. What this spec leaves
    to the doctor ("auto": attention, experts) is decided by judging the model on these GPUs; the full
    identity is compared once the plan is judged and the model loaded (refuse_changed_identity).
    `saved_backend`: the facts the earlier run's loader reported; a setting that changed nothing on that
    model is compared once this run's model is loaded (the same files change nothing either)."""
    if not isinstance(saved_plan_identity, dict):
        return
    current = spec.identity()
    # also decided then: a saved "auto" (a --skip-preflight run once saved experts="auto") where this run
    # leaves the setting to the plan too (not chosen now on the command line or in a file)
    decided_later = {
        name
        for name, value in current.items()
        if value == "auto"
        or (saved_plan_identity.get(name) == "auto" and spec.source_of(name) in ("default", "saved run"))
    }
    if isinstance(saved_backend, dict):
        decided_later |= settings_without_effect(saved_backend)
    refuse_changed_identity(
        {k: v for k, v in saved_plan_identity.items() if k not in decided_later},
        {k: v for k, v in current.items() if k not in decided_later},
        run_dir,
    )
