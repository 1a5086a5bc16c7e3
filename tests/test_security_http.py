"""Hostile servers (issue 10): the one HTTP client (run_plan.http) used by `niah run --backend openai`
and by the doctor's server probe keeps the API key on its origin, bounds the whole request in time and
size, never turns a POST into a GET, and classifies a wrong reply as a bad reply, never a crash.

The servers are real sockets on 127.0.0.1 (`FakeServer` below, also used by tests/test_fuzz_cli.py).

`FakeServer(routes)`: a scriptable HTTP server (stdlib only).

`FakeServer(routes)`: each route maps "METHOD /path" (or "/path" for any method) to a function
(handler, body_bytes) -> None that writes the whole reply. Every request is recorded (method, path,
headers, body), so a test can assert what reached the server, e.g. that no Authorization header did.
"""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Route = Callable[[http.server.BaseHTTPRequestHandler, bytes], None]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _any(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        server: _Server = self.server  # type: ignore[assignment]
        server.seen.append(
            Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        )
        route = server.routes.get(f"{self.command} {self.path}") or server.routes.get(self.path)
        try:
            if route is None:
                send_json(self, {"error": "no such route"}, status=404)
            else:
                route(self, body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (that is often the point of the test)

    do_GET = do_POST = do_PUT = _any


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    routes: dict[str, Route]
    seen: list[Seen]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up mid-reply is often the point of the test; stay quiet


class FakeServer:
    def __init__(self, routes: dict[str, Route] | None = None) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.routes = dict(routes or {})
        self._server.seen = []
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def routes(self) -> dict[str, Route]:
        return self._server.routes

    @property
    def seen(self) -> list[Seen]:
        return self._server.seen

    def __enter__(self) -> FakeServer:  # noqa: PYI034 - not subclassed
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def send_bytes(
    handler: http.server.BaseHTTPRequestHandler,
    body: bytes,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> None:
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def send_json(handler: http.server.BaseHTTPRequestHandler, doc: Any, *, status: int = 200) -> None:
    send_bytes(handler, json.dumps(doc).encode(), status=status, headers={"Content-Type": "application/json"})


def json_route(doc: Any, status: int = 200) -> Route:
    return lambda handler, body: send_json(handler, doc, status=status)


def raw_route(body: bytes, status: int = 200) -> Route:
    return lambda handler, _: send_bytes(
        handler, body, status=status, headers={"Content-Type": "application/json"}
    )


def redirect_route(location: str, status: int = 302) -> Route:
    return lambda handler, body: send_bytes(handler, b"", status=status, headers={"Location": location})


def drip_route(total: int = 10_000, every_s: float = 0.2) -> Route:
    """A 200 whose body arrives one byte every `every_s` seconds (a slowloris server)."""

    def route(handler: http.server.BaseHTTPRequestHandler, _: bytes) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(total))
        handler.end_headers()
        for _i in range(total):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(every_s)

    return route


def endless_route(chunk: bytes = b"[" * 65536) -> Route:
    """A 200 without Content-Length whose body never ends (until the client hangs up)."""

    def route(handler: http.server.BaseHTTPRequestHandler, _: bytes) -> None:
        handler.send_response(200)
        handler.send_header("Connection", "close")
        handler.end_headers()
        while True:
            handler.wfile.write(chunk)

    return route


# ================================================================ the tests

import pytest

from niah_run.backends.openai import OpenAIBackend, ServerRequestError
from run_plan.http import HttpFailure, request_json
from run_plan.openai_http import BadReply, list_models, token_ids_of

KEY = "sk-" + "K" * 40


class WordTokenizer:
    """Enough of a tokenizer for the server backend: 100 ids, `encode` of text."""

    def __len__(self) -> int:
        return 100

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [len(word) % 100 for word in text.split()]


def backend(
    url: str, monkeypatch: pytest.MonkeyPatch, *, timeout_s: float = 5, retries: int = 0
) -> OpenAIBackend:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return OpenAIBackend(url, "m", WordTokenizer(), timeout_s=timeout_s, retries=retries, backoff_s=0.0)


def completion(ids: list[int] | None = None, text: str = "42", prompt_tokens: int = 3) -> dict[str, Any]:
    choice: dict[str, Any] = {"text": text, "finish_reason": "stop"}
    if ids is not None:
        choice["token_ids"] = ids
    return {"choices": [choice], "usage": {"prompt_tokens": prompt_tokens}}


def test_cross_origin_redirect_is_refused_and_the_key_stays_home(monkeypatch) -> None:
    with FakeServer() as elsewhere, FakeServer() as server:
        elsewhere.routes["/v1/models"] = json_route({"data": [{"id": "m"}]})
        elsewhere.routes["/v1/completions"] = json_route(completion())
        server.routes["/v1/models"] = redirect_route(elsewhere.url + "/v1/models")
        server.routes["/v1/completions"] = redirect_route(elsewhere.url + "/v1/completions", status=307)
        client = backend(server.url, monkeypatch)
        with pytest.raises(ServerRequestError, match="redirected"):
            client.server_models()
        with pytest.raises(ServerRequestError, match="redirected") as info:
            client.generate([1, 2, 3], max_new_tokens=2)
        assert info.value.retryable is False and KEY not in str(info.value)
        assert elsewhere.seen == []  # nothing at all reached the other origin, let alone the key
        assert all(s.headers.get("authorization") == f"Bearer {KEY}" for s in server.seen)


def test_the_doctor_probe_refuses_the_redirect_too(monkeypatch) -> None:
    from doctor.probes.server import server_probe
    from run_plan.spec import RunSpec

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeServer() as elsewhere, FakeServer() as server:
        server.routes["/v1/models"] = redirect_route(elsewhere.url + "/v1/models", status=301)
        facts = server_probe(RunSpec(model="m", base_url=server.url))
        assert elsewhere.seen == [] and facts.models == ()
        assert "redirected" in (facts.error or "") and KEY not in (facts.error or "")


def test_a_post_is_never_silently_turned_into_a_get(monkeypatch) -> None:
    with FakeServer() as server:
        server.routes["POST /v1/completions"] = redirect_route("/v2/completions", status=302)
        server.routes["/v2/completions"] = json_route(completion())
        with pytest.raises(ServerRequestError, match="redirected"):
            backend(server.url, monkeypatch).generate([1, 2, 3], max_new_tokens=2)
        assert [s.method for s in server.seen] == ["POST"]


def test_a_same_origin_307_keeps_method_body_and_key(monkeypatch) -> None:
    with FakeServer() as server:
        server.routes["POST /v1/completions"] = redirect_route("/v2/completions", status=307)
        server.routes["POST /v2/completions"] = json_route(completion(ids=[5, 6]))
        out = backend(server.url, monkeypatch).generate([1, 2, 3], max_new_tokens=2)
        assert out.output_ids == (5, 6)
        second = server.seen[1]
        assert second.method == "POST" and second.headers["authorization"] == f"Bearer {KEY}"
        assert json.loads(second.body)["prompt"] == [1, 2, 3]


def test_a_dripping_body_cannot_outlast_the_total_timeout(monkeypatch) -> None:
    # 10,000 bytes at one per 0.2 s would take over half an hour; the whole request has 1 s.
    with FakeServer({"/v1/completions": drip_route(), "/v1/models": drip_route()}) as server:
        with pytest.raises(ServerRequestError, match="within 1 s") as info:
            backend(server.url, monkeypatch, timeout_s=1).generate([1, 2, 3], max_new_tokens=2)
        assert info.value.retryable
        with pytest.raises(HttpFailure) as failure:
            list_models(server.url, timeout_s=1)
        assert failure.value.kind == "timeout"


def test_the_doctor_probe_is_bounded_on_a_dripping_server(monkeypatch) -> None:
    from doctor.probes.server import server_probe
    from run_plan.spec import RunSpec

    with FakeServer({"/v1/models": drip_route()}) as server:
        facts = server_probe(RunSpec(model="m", base_url=server.url, probe_timeout_s=1))
        assert facts.status is None and "within 1 s" in (facts.error or "")


def test_a_never_ending_body_stops_at_the_size_cap() -> None:
    with FakeServer({"/v1/models": endless_route()}) as server:
        with pytest.raises(HttpFailure) as info:
            request_json("GET", server.url + "/v1/models", timeout_s=30, max_bytes=1 << 20)
        assert info.value.kind == "too-large" and not info.value.retryable


@pytest.mark.parametrize(
    "reply, why",
    [
        (b'{"data": [{"id": "m", "max_model_len": Infinity}]}', "Infinity"),
        (b'{"data": [{"id": "m", "max_model_len": NaN}]}', "NaN"),
        (b"<html>oops</html>", "not valid JSON"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON"),
        (b'{"data": 5}', "data"),
        (b"[]", "data"),
        (b"", "empty"),
    ],
)
def test_bad_model_lists_are_bad_replies(reply: bytes, why: str) -> None:
    with FakeServer({"/v1/models": raw_route(reply)}) as server:
        with pytest.raises(HttpFailure, match=why) as info:
            list_models(server.url, timeout_s=10)
        assert info.value.kind == "bad-reply"


def test_odd_max_model_len_values_mean_unknown() -> None:
    doc = {
        "data": [
            {"id": "a", "max_model_len": 2**70},
            {"id": "b", "max_model_len": "big"},
            {"id": "c", "max_model_len": -1},
            {"id": "d", "max_model_len": True},
            {"id": 5},
            {"id": "e", "max_model_len": 4096},
        ]
    }
    with FakeServer({"/v1/models": json_route(doc)}) as server:
        models = {m.id: m.max_model_len for m in list_models(server.url, timeout_s=10)}
    assert models == {"a": None, "b": None, "c": None, "d": None, "e": 4096}


@pytest.mark.parametrize(
    "reply",
    [
        completion(ids=[2**70]),
        completion(ids=[-1]),
        completion(ids=[100]),
        completion(ids=["7"]),
        completion(ids=[True]),
        {"choices": "x"},
        {"choices": []},
        {"choices": [5]},
        [],
        None,
        "text",
        {"choices": [{"text": 5}]},
        {"choices": [{"token_ids": {"a": 1}}]},
        {"choices": [{"text": "x"}], "usage": {"prompt_tokens": 10**400}},
    ],
)
def test_bad_completions_are_trial_errors_never_crashes(reply: Any, monkeypatch) -> None:
    with FakeServer({"/v1/completions": json_route(reply)}) as server:
        with pytest.raises(ServerRequestError) as info:
            backend(server.url, monkeypatch).generate([1, 2, 3], max_new_tokens=2)
        assert info.value.retryable is False


def test_token_ids_are_checked() -> None:
    assert token_ids_of(None) is None and token_ids_of([0, 5]) == (0, 5)
    for bad in ([2**70], [1.5], "12", [None]):
        with pytest.raises(BadReply):
            token_ids_of(bad)


def test_an_echoed_key_in_an_error_body_is_scrubbed(monkeypatch) -> None:
    with FakeServer() as server:
        server.routes["/v1/completions"] = lambda handler, body: send_json(
            handler, {"error": f"bad key {handler.headers.get('authorization')}"}, status=401
        )
        with pytest.raises(ServerRequestError) as info:
            backend(server.url, monkeypatch).generate([1, 2, 3], max_new_tokens=2)
        assert info.value.status == 401 and KEY not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://h/x",
        "http://",
        "http://h:99999",
        "h:8000",
        "http://h:8000/?key=x",
        "http://[::1",
    ],
)
def test_base_urls_that_name_no_http_server_are_usage_errors(url: str) -> None:
    from niah_run.backends.openai import normalize_base_url
    from run_plan.errors import UsageError

    with pytest.raises(UsageError):
        normalize_base_url(url)
