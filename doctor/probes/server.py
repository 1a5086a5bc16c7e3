"""Server facts: is the configured OpenAI-compatible server (vLLM, SGLang, `niah serve`) reachable,
which models does it list, and how long a sequence does each take (GET /v1/models).

Runs only when the user gave `--base-url` (asking for the check is asking for this one request, to
that one server); a short timeout keeps the doctor from hanging on a firewalled host. The API key is
read from OPENAI_API_KEY, sent only in the Authorization header, and never part of the facts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from doctor.probes import Probe, Unavailable, probe
from doctor.report.redact import Redactor
from run_plan.http import HttpFailure
from run_plan.openai_http import BadBaseUrl, list_models, normalize_base_url, public_url
from run_plan.spec import RunSpec

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


SERVER: Probe[ServerFacts] = Probe("server")


@probe(SERVER)
def server_probe(target: RunSpec) -> ServerFacts | Unavailable:
    base_url = target.base_url
    if not base_url:
        return Unavailable("no --base-url given: no server to check", "not-applicable")
    # The shared client (run_plan.http): one total deadline, a size cap, no cross-origin redirects.
    try:
        timeout_s = min(_MAX_TIMEOUT_S, float(target.probe_timeout_s))
    except (TypeError, ValueError):
        timeout_s = _MAX_TIMEOUT_S
    if not timeout_s > 0:
        timeout_s = _MAX_TIMEOUT_S
    api_key = os.environ.get(API_KEY_ENV) or None
    redactor = Redactor(extra_secrets=[(API_KEY_ENV, api_key)] if api_key else ())
    try:
        url = normalize_base_url(base_url)
    except BadBaseUrl as exc:  # reported as a fact; the check says what to fix
        return ServerFacts(
            public_url(str(base_url)),
            False,
            None,
            redactor.scrub(str(exc)),
            (),
            API_KEY_ENV,
            api_key is not None,
            0,
        )
    start = time.monotonic()
    status: int | None = None
    error: str | None = None
    models: tuple[ServedModel, ...] = ()
    try:
        models = tuple(
            ServedModel(m.id, m.max_model_len) for m in list_models(url, api_key=api_key, timeout_s=timeout_s)
        )
        status = 200
    except HttpFailure as exc:
        # An HTTP status (401, 404, 500) means the server answered; a bad 2xx reply is "answered wrongly".
        status = exc.status
        if exc.kind == "status":
            error = f"HTTP {exc.status}: {exc.body[:120] or 'no detail'}"
        else:  # the checks say "cannot reach URL: <error>": the reason without the address again
            error = exc.reason if exc.kind in ("connect", "timeout", "protocol") else exc.message
    return ServerFacts(
        base_url=public_url(url),
        reachable=status is not None,
        status=status,
        error=redactor.scrub(error) if error else None,
        models=models,
        api_key_env=API_KEY_ENV,
        api_key_set=api_key is not None,
        elapsed_ms=int((time.monotonic() - start) * 1000),
    )
