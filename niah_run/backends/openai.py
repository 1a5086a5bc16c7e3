"""The server backend: each trial is one `/v1/completions` request to an OpenAI-compatible server
(vLLM, SGLang, `transformers serve`, or `niah serve`).

The prompt is sent as the **token ids** the sweep built (vLLM and SGLang accept a list of ints as
`prompt`), so the server never re-tokenizes it and lengths stay exact; the server's
`usage.prompt_tokens` is checked against what we sent. Decoding is greedy (`temperature: 0`).
Generated ids come from the server when it returns them (`return_token_ids`, vLLM ≥ 0.10.2 and
SGLang); otherwise only the generated *text* is re-encoded with our tokenizer, which is enough
because the scorer only ever scores the generated text.

HTTP goes through run_plan.http (shared with the doctor's server probe): a total deadline per request
(a dripping body cannot outlast --request-timeout), a size cap, no redirect to another origin (the
Authorization header would follow it), strict JSON. Every reply is shape-checked (run_plan.openai_http)
before use, so a broken server is a trial error naming what was wrong, never a crash.
The API key is read from an environment variable, sent only in the Authorization header, and never
stored in describe(), exceptions or logs.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from doctor.report.redact import Redactor
from niah_run.backends.base import Generation
from run_plan import http as _http
from run_plan.errors import UsageError
from run_plan.http import HttpFailure
from run_plan.openai_http import BadBaseUrl, BadReply, ServerModel, parse_models, public_url, token_ids_of
from run_plan.openai_http import normalize_base_url as _normalize_base_url
from run_plan.server_room import classify_server_finish, output_ids_source

__all__ = [
    "OpenAIBackend",
    "ServerModel",
    "ServerRequestError",
    "list_models",
    "make_openai_backend",
    "normalize_base_url",
    "public_url",
    "request_json",
]

log = logging.getLogger(__name__)

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
# Long prefills are slow: 1M tokens on vLLM TP=8 can take minutes, so the default is generous.
DEFAULT_TIMEOUT_S = 1800.0
DEFAULT_RETRIES = 3
_MAX_BACKOFF_S = 60.0
_BODY_SNIPPET = 300  # characters of an error body worth quoting


class ServerRequestError(RuntimeError):
    """A trial could not be completed by the server (after retries, or a non-retryable 4xx).

    The sweep records the trial as status "error" and retries it on resume. `retryable` says whether
    the cause looked transient (connection, timeout, 5xx, 429) or permanent (other 4xx, bad reply)."""

    def __init__(
        self, message: str, *, status: int | None = None, retryable: bool = False, attempts: int = 1
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.attempts = attempts


def normalize_base_url(base_url: str) -> str:
    """`http://host:8000`, `…/` and `…/v1` mean the same server; a URL that names none is a usage error."""
    try:
        return _normalize_base_url(base_url)
    except BadBaseUrl as exc:
        raise UsageError(str(exc), hint="Use e.g. http://127.0.0.1:8000") from None


def request_json(
    method: str, url: str, *, body: Any = None, api_key: str | None = None, timeout_s: float
) -> tuple[int, Any]:
    """One JSON request through the shared client; returns (status, parsed JSON), raises HttpFailure."""
    reply = _http.request_json(method, url, body=body, bearer=api_key, timeout_s=timeout_s)
    return reply.status, reply.doc


def list_models(base_url: str, *, api_key: str | None = None, timeout_s: float = 5.0) -> list[ServerModel]:
    """GET /v1/models. Raises HttpFailure (BadReply when the body has the wrong shape)."""
    _, doc = request_json(
        "GET", normalize_base_url(base_url) + "/v1/models", api_key=api_key, timeout_s=timeout_s
    )
    return parse_models(doc)


class OpenAIBackend:
    """Implements niah_run.backends.base.Backend over HTTP. Thread-safe: generate() may run from
    several threads at once (generate_many does that)."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        tokenizer: Any,
        *,
        tokenizer_id: str | None = None,
        api_key_env: str = DEFAULT_API_KEY_ENV,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        concurrency: int = 1,
        backoff_s: float = 1.0,
    ) -> None:
        if timeout_s <= 0:
            raise UsageError(f"--request-timeout must be positive, got {timeout_s}")
        if retries < 0:
            raise UsageError(f"--retries must be 0 or more, got {retries}")
        if concurrency < 1:
            raise UsageError(f"--concurrency must be at least 1, got {concurrency}")
        self._base_url = normalize_base_url(base_url)
        self.model = model
        self._tokenizer = tokenizer
        self._tokenizer_id = tokenizer_id
        self._api_key_env = api_key_env
        # Read once; kept only in this private attribute and the Authorization header.
        self.__api_key = os.environ.get(api_key_env) or None
        self._redactor = Redactor(extra_secrets=[("api-key", self.__api_key)] if self.__api_key else ())
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.concurrency = int(concurrency)
        self.backoff_s = float(backoff_s)
        # Which path each reply's output ids came from (config.json says which the run really used).
        self._ids_lock = threading.Lock()
        self._ids_from_server = 0
        self._ids_reencoded = 0
        self._max_model_len: int | None = None
        self._max_model_len_known = False  # asked the server successfully once

    def __repr__(self) -> str:  # never the key
        return f"OpenAIBackend({public_url(self._base_url)!r}, model={self.model!r})"

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def url(self) -> str:
        return public_url(self._base_url)

    def describe(self) -> dict[str, Any]:
        cap = self.max_model_len()
        return {
            "backend": self.name,
            "base_url": public_url(self._base_url),
            "model": self.model,
            "tokenizer": self._tokenizer_id or getattr(self._tokenizer, "name_or_path", None),
            "api_key_env": self._api_key_env,
            "api_key_set": self.__api_key is not None,  # whether one was sent, never its value
            "request_timeout_s": self.timeout_s,
            "retries": self.retries,
            "concurrency": self.concurrency,
            "decoding": "greedy (temperature 0)",
            "prompt": "token ids",
            # Counted per reply; the sweep saves this again after its last trial.
            "output_ids_from": output_ids_source(self._ids_from_server, self._ids_reencoded),
            # The server's cap is what limits the run's lengths (the sweep reads this key).
            "max_model_len": cap,
            "max_position_embeddings": cap,
        }

    def max_model_len(self) -> int | None:
        """The served model's max_model_len from GET /v1/models (asked once; None if unknown)."""
        if not self._max_model_len_known:
            try:
                served = {m.id: m.max_model_len for m in self.server_models()}
            except ServerRequestError:
                return None  # unreachable now: ask again next time; the trials will say what is wrong
            self._max_model_len, self._max_model_len_known = served.get(self.model), True
        return self._max_model_len

    def server_models(self, timeout_s: float = 10.0) -> list[ServerModel]:
        """GET /v1/models with this backend's key (for preflight: model listed, max_model_len)."""
        try:
            return list_models(self._base_url, api_key=self.__api_key, timeout_s=timeout_s)
        except HttpFailure as exc:
            raise ServerRequestError(
                self._describe_failure(exc), status=exc.status, retryable=exc.retryable
            ) from None

    # -- the protocol ---------------------------------------------------------------------------

    def generate(
        self,
        input_ids: list[int],
        *,
        max_new_tokens: int,
        reusable_prefix_len: int = 0,
        snapshot_at: int | None = None,
        on_prefill: Callable[[int, int], None] | None = None,
    ) -> Generation:
        """One greedy completion. The prefix hints are ignored: vLLM/SGLang cache prefixes themselves
        (automatic prefix caching), greedy output does not depend on it, and a server reports no progress
        inside a request."""
        del reusable_prefix_len, snapshot_at, on_prefill
        prompt = [int(t) for t in input_ids]
        body = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": int(max_new_tokens),
            "temperature": 0.0,
            "top_p": 1.0,
            "n": 1,
            "stream": False,
            "return_token_ids": True,  # vLLM (#22587) and SGLang (#30917); ignored by others
            "skip_special_tokens": False,  # so a re-encoded text still shows a stray special token
        }
        start = time.monotonic()
        doc = self._post_with_retries("/v1/completions", body)
        seconds = time.monotonic() - start
        return self._generation_from(doc, prompt, seconds, int(max_new_tokens))

    def generate_many(
        self, prompts: Iterable[list[int]], *, max_new_tokens: int
    ) -> Iterator[tuple[int, Generation | ServerRequestError]]:
        """Send up to `concurrency` trials at once; yield (index into prompts, Generation or the
        trial's ServerRequestError) in completion order, so the caller can save each as it lands.
        `prompts` may be a lazy iterable: a prompt is only built when a slot frees (10M-token prompts
        are big). Other exceptions (bugs) propagate. Stops submitting when the consumer stops."""
        pending: dict[Future[Generation], int] = {}
        queue = iter(enumerate(prompts))
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="niah-openai") as pool:
            try:
                for index, ids in queue:
                    pending[pool.submit(self.generate, ids, max_new_tokens=max_new_tokens)] = index
                    if len(pending) >= self.concurrency:
                        break
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        index = pending.pop(future)
                        try:
                            result: Generation | ServerRequestError = future.result()
                        except ServerRequestError as exc:
                            result = exc
                        nxt = next(queue, None)
                        if nxt is not None:
                            future = pool.submit(self.generate, nxt[1], max_new_tokens=max_new_tokens)
                            pending[future] = nxt[0]
                        yield index, result
            finally:
                for future in pending:
                    future.cancel()

    def close(self) -> None:
        """Nothing to free locally: the server owns the model."""

    # -- HTTP with retries ----------------------------------------------------------------------

    def _post_with_retries(self, path: str, body: dict[str, Any]) -> Any:
        url = self._base_url + path
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                _, doc = request_json(
                    "POST", url, body=body, api_key=self.__api_key, timeout_s=self.timeout_s
                )
                return doc
            except HttpFailure as exc:
                # Retried: refused/reset connections, timeouts, 408/429/5xx. Not retried: other 4xx, a
                # refused redirect, a reply that is not JSON or too large (the server answered, wrongly).
                status = exc.status
                message = self._describe_failure(exc)
                retryable = exc.retryable
                retry_after = exc.retry_after
            if not retryable or attempt == attempts:
                raise ServerRequestError(
                    f"{message} (after {attempt} attempt{'s' if attempt > 1 else ''})",
                    status=status,
                    retryable=retryable,
                    attempts=attempt,
                )
            delay = retry_after if retry_after is not None else self._backoff(attempt)
            log.warning("%s; retrying in %.1f s (attempt %d of %d)", message, delay, attempt + 1, attempts)
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, attempt: int) -> float:
        # Exponential with jitter, so N concurrent trials do not hammer a recovering server in step.
        base = min(_MAX_BACKOFF_S, self.backoff_s * 2.0 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)

    def _describe_failure(self, exc: HttpFailure) -> str:
        text = exc.message
        detail = exc.body
        if exc.status in (400, 422) and "prompt" in detail and "string" in detail:
            # e.g. `transformers serve` (5.x): "prompt must be a string." Sending text instead would
            # make the server re-tokenize and lengths inexact, so we do not fall back.
            text += " — this server does not take token-id prompts; use vLLM, SGLang or `niah serve`"
        return self._redactor.scrub(text)  # a server may echo what we sent

    # -- reading the reply ----------------------------------------------------------------------

    def _generation_from(
        self, doc: Any, prompt: list[int], seconds: float, max_new_tokens: int
    ) -> Generation:
        try:
            return self._read_completion(doc, prompt, seconds, max_new_tokens)
        except BadReply as exc:  # the server answered 2xx with the wrong shape: a permanent trial error
            raise ServerRequestError(
                self._redactor.scrub(f"{self.url} sent a bad reply: {exc.message}")
            ) from None

    def _read_completion(
        self, doc: Any, prompt: list[int], seconds: float, max_new_tokens: int
    ) -> Generation:
        choices = doc.get("choices") if isinstance(doc, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise BadReply(f"no choices: {str(doc)[:_BODY_SNIPPET]}")
        choice = choices[0]
        usage = doc.get("usage")
        prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        if (
            isinstance(prompt_tokens, int)
            and not isinstance(prompt_tokens, bool)
            and prompt_tokens != len(prompt)
        ):
            # The server did not take our ids as they are (it re-tokenized or truncated): the trial's
            # length would be wrong, so it must not be scored.
            raise ServerRequestError(
                f"{self.url} counted {str(prompt_tokens)[:40]} prompt tokens, we sent {len(prompt)}: the server "
                "does not accept token-id prompts as they are (use vLLM, SGLang or `niah serve`)"
            )
        server_ids = token_ids_of(choice.get("token_ids"))
        vocab = _vocab_size(self._tokenizer)
        if server_ids and vocab and max(server_ids) >= vocab:
            raise BadReply(
                f"token id {max(server_ids)} is outside the tokenizer's vocabulary ({vocab} ids): "
                "the server runs a different tokenizer or sent garbage"
            )
        if server_ids is not None:
            output_ids = server_ids
            with self._ids_lock:
                self._ids_from_server += 1
        else:
            text = choice.get("text")
            if text is not None and not isinstance(text, str):
                raise BadReply(f"choices[0].text is a {type(text).__name__}, not a string")
            output_ids = tuple(self._tokenizer.encode(text, add_special_tokens=False)) if text else ()
            with self._ids_lock:
                self._ids_reencoded += 1
        completion_tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        finish = classify_server_finish(
            choice.get("finish_reason"),
            completion_tokens if isinstance(completion_tokens, int) else len(output_ids),
            max_new_tokens,
        )
        if not finish.measured:  # cut by the server, not by the model or our limit: never scored
            raise ServerRequestError(self._redactor.scrub(f"{self.url}: {finish.reason}"))
        return Generation(
            output_ids=output_ids,
            stopped_at_eos=finish.stopped_at_eos,
            # The server does not split prefill from decode: the whole request's wall time is
            # reported as prefill (it dominates at long context), decode as 0.
            prefill_seconds=seconds,
            decode_seconds=0.0,
        )


def _vocab_size(tokenizer: Any) -> int | None:
    try:
        size = len(tokenizer)
    except Exception:  # noqa: BLE001 - a tokenizer without a working __len__: the id range check is skipped
        return None
    return size if isinstance(size, int) and size > 0 else None


# -- construction -------------------------------------------------------------------------------


def load_tokenizer(spec: str, *, online: bool = False) -> Any:
    """The tokenizer for prompts: a hub id or local folder (offline unless `online`), or "demo"."""
    if spec == "demo":
        return _demo_tokenizer()
    from transformers import AutoTokenizer  # heavy: only when a run starts

    try:
        return AutoTokenizer.from_pretrained(spec, local_files_only=not online)
    except (OSError, ValueError) as exc:
        hint = (
            "Pass --tokenizer with a local folder or a cached hub id, or add --online to download it."
            if not online
            else "Check the id (or pass --tokenizer); gated repos need `hf auth login`."
        )
        raise UsageError(
            f"cannot load the tokenizer {spec!r}: {str(exc).splitlines()[0][:200]}", hint=hint
        ) from None


def _demo_tokenizer() -> Any:
    """The demo model's tokenizer, read from its GGUF (the file the local backend loads)."""
    from transformers import AutoTokenizer

    from niah_run.backends.loading import demo_gguf_path

    path = demo_gguf_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def make_openai_backend(
    base_url: str,
    model: str,
    tokenizer: Any = None,
    *,
    api_key_env: str = DEFAULT_API_KEY_ENV,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    retries: int = DEFAULT_RETRIES,
    concurrency: int = 1,
    online: bool = False,
    backoff_s: float = 1.0,
) -> OpenAIBackend:
    """THE constructor `niah run --backend openai` calls.

    `tokenizer`: a hub id / local folder / "demo" (None = the served `model` name, which is usually the
    hub id), or an already loaded tokenizer object (tests)."""
    if not model:
        raise UsageError("--backend openai needs --model (the name the server serves)")
    base = normalize_base_url(base_url)
    tokenizer_id: str | None
    if tokenizer is None or isinstance(tokenizer, str):
        tokenizer_id = tokenizer or model
        tok = load_tokenizer(tokenizer_id, online=online)
    else:
        tokenizer_id, tok = getattr(tokenizer, "name_or_path", None), tokenizer
    return OpenAIBackend(
        base,
        model,
        tok,
        tokenizer_id=tokenizer_id,
        api_key_env=api_key_env,
        timeout_s=timeout_s,
        retries=retries,
        concurrency=concurrency,
        backoff_s=backoff_s,
    )
