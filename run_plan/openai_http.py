"""The OpenAI-compatible API as both tools see it: base URLs, GET /v1/models, and reading replies.

Built on run_plan.http (total deadline, size cap, no cross-origin redirects). Everything a server
sends is checked against the shape we need before use, so a wrong reply is a `BadReply` naming what
was wrong, never an AttributeError or an OverflowError later on.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

from run_plan.http import HttpFailure, request_json

__all__ = [
    "MAX_TOKEN_ID",
    "BadBaseUrl",
    "BadReply",
    "ServerModel",
    "list_models",
    "normalize_base_url",
    "parse_models",
    "public_url",
    "token_ids_of",
]

# Far above any real vocabulary (the largest are ~10^6) and below what a tokenizer's C++/Rust side
# overflows on: a server answering token id 2**70 is broken, and we say so.
MAX_TOKEN_ID = 2**31 - 1
# Longest sequence length taken at face value; larger (or non-integer) max_model_len means "unknown".
MAX_SEQUENCE_LEN = 2**40


class BadBaseUrl(ValueError):
    """The --base-url the user gave cannot name a server."""


class BadReply(HttpFailure):
    """The server answered 2xx, but not with the shape the API defines."""

    def __init__(self, message: str) -> None:
        super().__init__("bad-reply", message)


@dataclass(frozen=True)
class ServerModel:
    """One entry of GET /v1/models."""

    id: str
    max_model_len: int | None  # vLLM and SGLang report it; other servers may not


def normalize_base_url(base_url: str) -> str:
    """`http://host:8000`, `http://host:8000/` and `http://host:8000/v1` all mean the same server."""
    url = str(base_url).strip().rstrip("/")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:  # e.g. "http://[::1"
        raise BadBaseUrl(f"--base-url cannot be parsed: {exc}") from None
    if not parts.scheme:
        raise BadBaseUrl(f"--base-url {public_url(base_url)!r} has no scheme")
    if parts.scheme.lower() not in ("http", "https"):
        raise BadBaseUrl(f"--base-url must be http:// or https://, got {parts.scheme}://")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise BadBaseUrl(f"--base-url {public_url(base_url)!r} has an invalid port") from None
    if not parts.hostname:
        raise BadBaseUrl(f"--base-url {public_url(base_url)!r} has no host")
    if parts.query or parts.fragment:
        raise BadBaseUrl("--base-url must not have a ?query or #fragment (put keys in $OPENAI_API_KEY)")
    return url.removesuffix("/v1")


def public_url(base_url: str) -> str:
    """The URL without any `user:password@` part, query or fragment: safe to print and to store."""
    try:
        parts = urllib.parse.urlsplit(str(base_url))
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    netloc = f"[{host}]" if ":" in host else host
    if port:
        netloc += f":{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _int_or_none(value: Any, upper: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 < value <= upper else None


def parse_models(doc: Any) -> list[ServerModel]:
    """GET /v1/models' body -> models. Raises BadReply when it is not `{"data": [...]}`."""
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise BadReply(f'/v1/models did not answer with {{"data": [...]}}: {str(doc)[:200]}')
    out = []
    for entry in doc["data"]:
        if isinstance(entry, dict) and isinstance(entry.get("id"), str) and entry["id"]:
            out.append(
                ServerModel(entry["id"][:500], _int_or_none(entry.get("max_model_len"), MAX_SEQUENCE_LEN))
            )
    return out


def list_models(base_url: str, *, api_key: str | None = None, timeout_s: float = 5.0) -> list[ServerModel]:
    """GET /v1/models. Raises HttpFailure (BadReply for a wrong shape)."""
    url = normalize_base_url(base_url) + "/v1/models"
    return parse_models(request_json("GET", url, bearer=api_key, timeout_s=timeout_s).doc)


def token_ids_of(value: Any) -> tuple[int, ...] | None:
    """A reply's `token_ids`: None when absent; BadReply when present but not a list of token ids."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadReply(f"token_ids is a {type(value).__name__}, not a list")
    for token in value:
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token <= MAX_TOKEN_ID:
            raise BadReply(f"token_ids holds {str(token)[:40]!r}, not a token id (0 … {MAX_TOKEN_ID})")
    return tuple(value)
