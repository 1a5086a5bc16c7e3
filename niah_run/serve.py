"""`niah serve`: a small OpenAI-compatible server (starlette + uvicorn) around OUR local backend.

It exists so the server path (`niah run --backend openai`) can be tested end to end on a laptop and
compared token for token with the local path, and so a model can be loaded once and shared by
several sweeps. It is not a serving engine: one request decodes at a time, greedy only. For 1M–10M
tokens use vLLM or SGLang (docs/scaling.md).

Endpoints, shaped like vLLM's:
- GET  /health
- GET  /v1/models          → {"data": [{"id", "max_model_len", ...}]}
- POST /v1/completions     → prompt: a string or a list of token ids (or a one-element batch of
                             either); max_tokens; temperature 0 only; `return_token_ids: true` adds
                             per-choice `token_ids` and `prompt_token_ids`, as vLLM and SGLang do.

It binds 127.0.0.1 unless told otherwise; with `api_key` set, requests must carry
`Authorization: Bearer <key>`.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import click

from doctor.boundary import debug_option
from niah_run.backends.base import BackendOOM, max_positions
from run_plan.errors import UsageError

log = logging.getLogger(__name__)
_DEFAULT_MAX_TOKENS = 16  # the OpenAI completions default
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0


def _error(status: int, message: str, kind: str = "invalid_request_error") -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def max_model_len_of(backend: Any) -> int | None:
    """The longest sequence the backend's model takes, from what the backend or tokenizer says."""
    value = backend.describe().get("max_model_len")
    if isinstance(value, int) and value > 0:
        return value
    value = max_positions(backend)
    if value is not None:
        return value
    length = getattr(backend.tokenizer, "model_max_length", None)
    # Tokenizers without a limit report a huge sentinel (int(1e30)): that is not a real length.
    return length if isinstance(length, int) and 0 < length < 10**9 else None


def create_app(
    backend: Any, *, model_name: str, max_model_len: int | None = None, api_key: str | None = None
) -> Any:
    """The ASGI app. `backend` follows niah_run.backends.base.Backend; its generate() is blocking and
    not re-entrant, so requests take turns on one lock in a worker thread."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    turn = threading.Lock()
    created = int(time.time())
    tokenizer = backend.tokenizer

    def authorized(request: Request) -> bool:
        if not api_key:
            return True
        given = request.headers.get("authorization", "")
        return secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode())

    async def health(request: Request) -> Any:
        return JSONResponse({"status": "ok"})

    async def models(request: Request) -> Any:
        if not authorized(request):
            return _error(401, "missing or wrong API key", "authentication_error")
        card = {
            "id": model_name,
            "object": "model",
            "created": created,
            "owned_by": "niah-doctor",
            "root": model_name,
            "max_model_len": max_model_len,
        }
        return JSONResponse({"object": "list", "data": [card]})

    async def completions(request: Request) -> Any:
        if not authorized(request):
            return _error(401, "missing or wrong API key", "authentication_error")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        if body.get("model") not in (None, model_name):
            return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        if body.get("stream"):
            return _error(400, "stream is not supported by niah serve")
        if body.get("temperature") not in (None, 0, 0.0):
            return _error(400, "niah serve decodes greedily only: send temperature 0")
        if body.get("n") not in (None, 1):
            return _error(400, "niah serve returns one choice: send n=1")
        prompt_ids, problem = _prompt_ids(body.get("prompt"), tokenizer)
        if problem:
            return _error(400, problem)
        max_tokens = body.get("max_tokens", _DEFAULT_MAX_TOKENS)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            return _error(400, f"max_tokens must be a positive integer, got {max_tokens!r}")
        if max_model_len is not None and len(prompt_ids) + max_tokens > max_model_len:
            # vLLM's wording, so clients and people recognise it.
            return _error(
                400,
                f"This model's maximum context length is {max_model_len} tokens. However, you "
                f"requested {len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the "
                f"messages, {max_tokens} in the completion).",
            )

        def run() -> Any:
            with turn:
                return backend.generate(prompt_ids, max_new_tokens=max_tokens)

        try:
            gen = await run_in_threadpool(run)
        except BackendOOM as exc:
            return _error(500, f"out of memory: {exc}", "BackendOOM")
        output_ids = [int(t) for t in gen.output_ids]
        skip_special = bool(body.get("skip_special_tokens", True))  # vLLM's default
        choice: dict[str, Any] = {
            "index": 0,
            "text": tokenizer.decode(output_ids, skip_special_tokens=skip_special),
            "logprobs": None,
            "finish_reason": "stop" if gen.stopped_at_eos else "length",
        }
        if body.get("return_token_ids"):
            choice["token_ids"] = output_ids
            choice["prompt_token_ids"] = prompt_ids
        return JSONResponse(
            {
                "id": f"cmpl-{secrets.token_hex(8)}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": model_name,
                "choices": [choice],
                "usage": {
                    "prompt_tokens": len(prompt_ids),
                    "completion_tokens": len(output_ids),
                    "total_tokens": len(prompt_ids) + len(output_ids),
                },
            }
        )

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    return Starlette(routes=routes)


def _prompt_ids(prompt: Any, tokenizer: Any) -> tuple[list[int], str | None]:
    """A string (tokenized like vLLM does: with the BOS the tokenizer adds), a list of ids, or a
    batch of exactly one of those."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return list(tokenizer.encode(prompt)), None
    is_ids = isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    if is_ids and prompt:
        vocab = len(tokenizer)
        bad = next((t for t in prompt if not 0 <= t < vocab), None)
        if bad is not None:
            return [], f"token id {bad} is outside the vocabulary (0..{vocab - 1})"
        return prompt, None
    return [], (
        "prompt must be a non-empty string or a list of token ids "
        "(batches of more than one are not supported)"
    )


@dataclass
class RunningServer:
    """A server on a background thread. Use as a context manager, or call stop()."""

    host: str
    port: int
    _server: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout_s: float) -> None:
        """Block up to `timeout_s` while the server runs (the CLI loops on it; Ctrl-C interrupts)."""
        self._thread.join(timeout=timeout_s)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=_STOP_TIMEOUT_S)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="Pick another --port (0 = any free port).",
        ) from None
    return sock


def _uvicorn_server(app: Any, log_level: str) -> Any:
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=log_level in ("debug", "info"),
        lifespan="off",
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)


def serve_app(
    app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
) -> RunningServer:
    """Start `app` on a background thread; returns once it accepts connections. Port 0 = any free
    port (read it back from `.port`)."""
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    server = _uvicorn_server(app, log_level)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"niah-serve-{bound_port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        server.should_exit = True
        thread.join(timeout=_STOP_TIMEOUT_S)
        raise RuntimeError(f"the server on {host}:{bound_port} did not start within {_START_TIMEOUT_S:g} s")
    return RunningServer(host, bound_port, server, thread)


def serve(
    backend: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    model_name: str | None = None,
    max_model_len: int | None = None,
    api_key: str | None = None,
    log_level: str = "warning",
) -> RunningServer:
    """Serve a loaded backend in the background; `.port` is the bound port, `.stop()` ends it."""
    name = model_name or str(backend.describe().get("model") or "model")
    app = create_app(
        backend, model_name=name, max_model_len=max_model_len or max_model_len_of(backend), api_key=api_key
    )
    return serve_app(app, host=host, port=port, log_level=log_level)


def _load_local_backend(model: str, opts: dict[str, Any]) -> Any:
    """The same local backend, loaded the same way, as `niah run --model ...` (niah_run.backends.loading)."""
    from niah_run.backends.loading import load_backend
    from run_plan.spec import RunSpec

    given = {k: v for k, v in opts.items() if v is not None}
    return load_backend(RunSpec(model=model, **given))


@click.command("serve", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--model", required=True, help="Hub id, local folder, or 'demo'; loaded with the local backend."
)
@click.option("--gguf-file", help="GGUF file name inside the --model folder/repo.")
@click.option("--quant", type=click.Choice(["none", "bnb-8bit", "bnb-4bit"]), help="As `niah run --quant`.")
@click.option(
    "--dtype", type=click.Choice(["auto", "bfloat16", "float16", "float32"]), help="As `niah run --dtype`."
)
@click.option("--device-map", help="As `niah run --device-map` (auto, cpu, cuda:0, ...).")
@click.option("--served-model-name", help="Name clients send as `model` (default: --model).")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Anything but loopback exposes the model to the network.",
)
@click.option("--port", type=int, default=8000, show_default=True, help="0 = any free port.")
@click.option(
    "--max-model-len", type=int, help="Longest prompt + completion accepted (default: the model's)."
)
@click.option(
    "--api-key-env",
    default="NIAH_SERVE_API_KEY",
    show_default=True,
    help="If this environment variable is set, clients must send its value as a Bearer token.",
)
@click.option(
    "--log-level", type=click.Choice(["warning", "info", "debug"]), default="info", show_default=True
)
@debug_option()
def serve_command(
    model: str,
    gguf_file: str | None,
    quant: str | None,
    dtype: str | None,
    device_map: str | None,
    served_model_name: str | None,
    host: str,
    port: int,
    max_model_len: int | None,
    api_key_env: str,
    log_level: str,
) -> int:
    """Serve a local model over an OpenAI-compatible API (greedy, one request at a time)."""
    import os

    if not _is_loopback(host):
        advice = "" if os.environ.get(api_key_env) else f" (set {api_key_env} to require a key)"
        click.echo(
            f"warning: listening on {host}: anyone who can reach it can use the model{advice}", err=True
        )
    backend = _load_local_backend(
        model, {"gguf_file": gguf_file, "quant": quant, "dtype": dtype, "device_map": device_map}
    )
    running = serve(
        backend,
        host,
        port,
        model_name=served_model_name or model,
        max_model_len=max_model_len,
        api_key=os.environ.get(api_key_env) or None,
        log_level=log_level,
    )
    click.echo(f"serving {served_model_name or model} on {running.url}/v1 (Ctrl-C to stop)", err=True)
    try:
        while running.running:
            running.wait(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()
        backend.close()
    return 0
