"""Server facts: is the configured OpenAI-compatible server (vLLM, SGLang, `niah serve`) reachable,
which models does it list, and how long a sequence does each take (GET /v1/models).

Runs only when the user gave `--base-url` (asking for the check is asking for this one request, to
that one server); a short timeout keeps the doctor from hanging on a firewalled host. The API key is
read from OPENAI_API_KEY, sent only in the Authorization header, and never part of the facts.
"""

from __future__ import annotations

import http.client
import os
import time
import urllib.error
from dataclasses import dataclass

from doctor.probes import Unavailable, probe

API_KEY_ENV = "OPENAI_API_KEY"
_MAX_TIMEOUT_S = 5.0  # a healthy server answers /v1/models in milliseconds


@dataclass(frozen=True)
class ServedModel:
    id: str
    max_model_len: int | None


@dataclass(frozen=True)
class ServerFacts:
    base_url: str  # without credentials
    reachable: bool
    status: int | None  # HTTP status of GET /v1/models, None when nothing answered
    error: str | None  # why it is unreachable or refused us, already free of secrets
    models: tuple[ServedModel, ...]
    api_key_env: str
    api_key_set: bool
    elapsed_ms: int


@probe("server")
def server_probe(target: object) -> ServerFacts | Unavailable:
    base_url = getattr(target, "base_url", None)
    if not base_url:
        return Unavailable("no --base-url given: no server to check", "not-applicable")
    # Lazy: the HTTP helpers live with the server backend (stdlib only, no heavy imports).
    from niah_run.backends.openai import list_models, normalize_base_url, public_url

    timeout_s = min(_MAX_TIMEOUT_S, float(getattr(target, "probe_timeout_s", _MAX_TIMEOUT_S)))
    api_key = os.environ.get(API_KEY_ENV) or None
    try:
        url = normalize_base_url(base_url)
    except Exception as exc:  # a UsageError: report it as a fact, the check says what to fix
        return ServerFacts(str(base_url), False, None, str(getattr(exc, "message", exc)), (), API_KEY_ENV,
                           api_key is not None, 0)
    start = time.monotonic()
    status: int | None = None
    error: str | None = None
    models: tuple[ServedModel, ...] = ()
    try:
        models = tuple(ServedModel(m.id, m.max_model_len)
                       for m in list_models(url, api_key=api_key, timeout_s=timeout_s))
        status = 200
    except urllib.error.HTTPError as exc:
        status, error = exc.code, f"HTTP {exc.code} {exc.reason}"
    except urllib.error.URLError as exc:
        error = f"{exc.reason}"
    except TimeoutError:  # socket.timeout is an alias of it since Python 3.10
        error = f"no answer within {timeout_s:g} s"
    except (OSError, http.client.HTTPException, ValueError) as exc:  # a reply cut short, or not JSON
        error = f"{type(exc).__name__}: {exc}"
    if error and api_key:
        error = error.replace(api_key, f"<redacted:{API_KEY_ENV}>")
    return ServerFacts(
        base_url=public_url(url), reachable=status is not None, status=status, error=error, models=models,
        api_key_env=API_KEY_ENV, api_key_set=api_key is not None,
        elapsed_ms=int((time.monotonic() - start) * 1000),
    )
