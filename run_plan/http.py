"""The one HTTP client both tools use to talk to a server the user named (OpenAI-compatible APIs).

A server is input like any other and may be hostile or broken, so every call here has:
- a **total deadline** over connect, send, headers and the whole body. httpx's own timeouts apply to
  each socket operation, so a body dripping one byte a second would never trip them; a watchdog
  shuts the socket down at the deadline instead, which wakes any blocked read;
- a **size cap** on the body (counted after content decoding, so a gzip bomb stops at the cap too);
- **no redirect that changes origin**: the Authorization header would follow it to another host.
  A same-origin redirect keeps method and body; one that would turn a POST into a GET is refused;
- **strict JSON**: `NaN`/`Infinity` and undecodable bytes are a bad reply, never a Python float inf.
Every failure is one `HttpFailure` with a `kind` and whether a retry could help. Messages never hold
the bearer token (it is only ever put into a header); callers still scrub them.

Uses httpx2 (the maintained httpx line that huggingface_hub depends on) or httpx, whichever is
installed; both have the same API.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Literal


def _httpx() -> Any:
    """httpx2 or httpx, imported on first use: the doctor imports this module at start-up and most runs
    never talk to a server (the import costs ~50 ms)."""
    try:  # pragma: no cover - which one is installed depends on huggingface_hub's version
        import httpx2

        return httpx2
    except ImportError:  # pragma: no cover
        pass
    try:  # pragma: no cover
        import httpx

        return httpx
    except ImportError:  # pragma: no cover
        raise HttpFailure("no-client", "no HTTP client is installed: pip install httpx") from None


__all__ = ["DEFAULT_MAX_BYTES", "HttpFailure", "JsonReply", "origin_of", "request_json"]

DEFAULT_MAX_BYTES = 32 << 20  # a completion or a model list is kilobytes; 32 MiB is far beyond honest
MAX_REDIRECTS = 5
_ERROR_SNIPPET = 300  # characters of an error body worth quoting
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})

FailureKind = Literal[
    "connect", "timeout", "status", "redirect", "too-large", "bad-reply", "protocol", "bad-url", "no-client"
]


class HttpFailure(Exception):
    """A request that did not give a usable JSON reply. `retryable`: a retry could help (connection
    refused/reset, timeout, 408/429/5xx); not for a wrong reply or a refused redirect."""

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        body: str = "",
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message  # a whole sentence naming the server
        self.reason = reason or message  # the same without the server's address (for "cannot reach X: …")
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.body = body


@dataclass(frozen=True)
class JsonReply:
    status: int
    doc: Any


_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def origin_of(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with default ports filled in: what "same server" means for a redirect."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:  # "http://[::1/x", a port out of range: no origin anything can match
        return "", "", None
    scheme = (parts.scheme or "").lower()
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def _where(url: str) -> str:
    """scheme://host:port of a URL, never its user:password part nor its query."""
    scheme, host, port = origin_of(url)
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}" if port else f"{scheme}://{shown}"


class _Watchdog:
    """Shuts the request's socket down at the deadline, waking a read blocked on a dripping server.

    The socket is taken from httpcore's `trace` extension when the TCP connection is made (each call
    uses its own client, so there is always a fresh connection to see)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer: threading.Timer | None = None

    def trace(self, name: str, info: dict[str, Any]) -> None:
        if name in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                with self._lock:
                    self._sockets.append(sock)
                    if self._timer is None:
                        self._timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), self._fire)
                        self._timer.daemon = True
                        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed: nothing left to wake

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json_strict(raw: bytes) -> Any:
    """JSON as RFC 8259 defines it: UTF-8, no NaN/Infinity. Raises ValueError with a short reason."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, the int-digits limit, our NaN/Infinity refusal
        raise ValueError(str(exc).splitlines()[0][:200]) from None


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: the caller's own backoff applies
    return min(60.0, max(0.0, seconds)) if math.isfinite(seconds) else None


def _read_capped(response: Any, max_bytes: int, url: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise HttpFailure(
            "too-large",
            f"{_where(url)} announced a {int(declared):,}-byte reply, over the {max_bytes:,}-byte limit",
        )
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise HttpFailure(
                "too-large", f"{_where(url)} sent more than {max_bytes:,} bytes; stopped reading"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def request_json(
    method: str,
    url: str,
    *,
    body: Any = None,
    bearer: str | None = None,
    timeout_s: float,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_redirects: int = MAX_REDIRECTS,
) -> JsonReply:
    """One JSON request under a total deadline of `timeout_s` seconds. Returns the parsed 2xx reply;
    raises HttpFailure for everything else (never another exception for anything the server does)."""
    if not timeout_s > 0:
        raise HttpFailure("bad-url", f"the timeout must be positive, got {timeout_s}")
    scheme, host, _port = origin_of(url)
    if not host:
        raise HttpFailure("bad-url", "the URL names no server (no host, or it cannot be parsed)")
    if scheme not in ("http", "https"):
        raise HttpFailure(
            "bad-url", f"only http:// and https:// servers are supported, got {scheme or 'no'} scheme"
        )
    data = None if body is None else json.dumps(body, allow_nan=False).encode("utf-8")
    headers = {"Accept": "application/json", "Accept-Encoding": "gzip, deflate"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    deadline = time.monotonic() + timeout_s
    first_origin = origin_of(url)
    for _hop in range(max_redirects + 1):
        reply_or_next = _one_request(method, url, data, headers, deadline, timeout_s, max_bytes)
        if isinstance(reply_or_next, JsonReply):
            return reply_or_next
        status, location = reply_or_next
        try:
            target = urllib.parse.urljoin(url, location)
        except ValueError:  # an unparsable Location: no server we could name, so none we would follow to
            target = ""
        if origin_of(target) != first_origin:
            raise HttpFailure(
                "redirect",
                f"{_where(url)} redirected (HTTP {status}) to another server "
                f"{_where(target)}; not followed, so the API key is not sent there",
                status=status,
            )
        if method.upper() != "GET" and status in (301, 302, 303):
            raise HttpFailure(
                "redirect",
                f"{_where(url)} redirected the {method.upper()} with HTTP {status}, "
                "which would turn it into a GET without its body; not followed "
                "(point --base-url at the final address)",
                status=status,
            )
        url = target
    raise HttpFailure("redirect", f"{_where(url)} redirected more than {max_redirects} times; stopped")


def _one_request(
    method: str,
    url: str,
    data: bytes | None,
    headers: dict[str, str],
    deadline: float,
    timeout_s: float,
    max_bytes: int,
) -> JsonReply | tuple[int, str]:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise HttpFailure(
            "timeout", f"no complete answer from {_where(url)} within {timeout_s:g} s", retryable=True
        )
    httpx = _httpx()
    watchdog = _Watchdog(deadline)
    timeout = httpx.Timeout(remaining)
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            request = client.build_request(
                method, url, content=data, headers=headers, extensions={"trace": watchdog.trace}
            )
            response = client.send(request, stream=True)
            try:
                if response.status_code in _REDIRECT_CODES and response.headers.get("location"):
                    return response.status_code, response.headers["location"]
                if not 200 <= response.status_code < 300:
                    try:
                        raw = _read_capped(response, min(max_bytes, 64 << 10), url)
                    except (HttpFailure, httpx.HTTPError):
                        raw = b""  # the body of an error is only a courtesy
                    snippet = raw[: _ERROR_SNIPPET * 4].decode("utf-8", "replace")[:_ERROR_SNIPPET].strip()
                    status = response.status_code
                    raise HttpFailure(
                        "status",
                        f"HTTP {status} from {_where(url)}: {snippet or response.reason_phrase}",
                        status=status,
                        retryable=status in _RETRY_STATUS,
                        retry_after=_retry_after(response.headers.get("retry-after")),
                        body=snippet,
                    )
                raw = _read_capped(response, max_bytes, url)
                status = response.status_code
            finally:
                response.close()
    except HttpFailure as failure:
        if watchdog.fired and failure.kind != "status":
            raise _timed_out(url, timeout_s) from None
        raise
    except httpx.TimeoutException:
        raise _timed_out(url, timeout_s) from None
    except httpx.HTTPError as exc:  # refused, reset, DNS, TLS, a reply cut short, bad framing
        if watchdog.fired or time.monotonic() >= deadline:
            raise _timed_out(url, timeout_s) from None
        kind: FailureKind = "connect" if isinstance(exc, httpx.ConnectError) else "protocol"
        verb = "cannot reach" if kind == "connect" else "the connection to"
        tail = "" if kind == "connect" else " broke"
        reason = f"{type(exc).__name__}: {_first_line(exc)}"
        raise HttpFailure(
            kind, f"{verb} {_where(url)}{tail}: {reason}", retryable=True, reason=reason
        ) from None
    except OSError as exc:  # a socket error httpx did not wrap
        if watchdog.fired:
            raise _timed_out(url, timeout_s) from None
        raise HttpFailure(
            "connect",
            f"cannot reach {_where(url)}: {exc.strerror or exc}",
            retryable=True,
            reason=str(exc.strerror or exc),
        ) from None
    except httpx.InvalidURL as exc:
        raise HttpFailure("bad-url", f"{_where(url)}: not a usable URL: {_first_line(exc)}") from None
    except (
        ValueError,
        UnicodeError,
        httpx.StreamError,
    ) as exc:  # a malformed header or stream from the server
        raise HttpFailure("protocol", f"{_where(url)}: {type(exc).__name__}: {_first_line(exc)}") from None
    finally:
        watchdog.cancel()
    if watchdog.fired:
        raise _timed_out(url, timeout_s)
    if not raw.strip():
        raise HttpFailure(
            "bad-reply", f"{_where(url)} answered HTTP {status} with an empty body", status=status
        )
    try:
        return JsonReply(status, parse_json_strict(raw))
    except ValueError as exc:
        raise HttpFailure(
            "bad-reply", f"{_where(url)} answered with something that is not valid JSON: {exc}", status=status
        ) from None


def _timed_out(url: str, timeout_s: float) -> HttpFailure:
    reason = f"no complete answer within {timeout_s:g} s (the whole request, body included)"
    return HttpFailure(
        "timeout",
        f"no complete answer from {_where(url)} within {timeout_s:g} s (the whole request, body included)",
        retryable=True,
        reason=reason,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:200] if text else ""
