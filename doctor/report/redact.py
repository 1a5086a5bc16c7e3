"""Scrub secrets and the home directory from everything before any renderer or file sees it.

Rules (docs/report-format.md lists them too):
- the value of every environment variable whose name contains TOKEN, SECRET, KEY, PASSWORD,
  PASSWD, AUTH or CREDENTIAL is replaced by `<redacted:NAME>` wherever it appears;
- the Hugging Face token stored by `hf auth login` is replaced the same way;
- Hugging Face (`hf_…`) and OpenAI-style (`sk-…`) tokens are replaced wherever they appear;
- credentials in URLs (`https://user:token@host`) are replaced;
- the home directory becomes `~`.
The report lists which kinds of thing were replaced, never the values.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

SECRET_NAME = re.compile(r"TOKEN|SECRET|KEY|PASSWORD|PASSWD|AUTH|CREDENTIAL", re.IGNORECASE)
# Values this short are too likely to collide with ordinary text ("1", "true") to scrub blindly.
_MIN_SECRET_LEN = 6
_PATTERNS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("hf-token", re.compile(r"hf_[A-Za-z0-9]{16,}"), "<redacted:hf-token>"),
    ("api-key", re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"), "<redacted:api-key>"),
    ("url-credentials", re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/@\s:]+(?::[^/@\s]*)?@"),
     r"\g<scheme><redacted>@"),
)


def _stored_hf_token() -> str | None:
    """The token `hf auth login` saved, read as a file: no import of huggingface_hub needed."""
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    path = os.environ.get("HF_TOKEN_PATH") or os.path.join(hf_home, "token")
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None


class Redactor:
    """Replaces secrets in strings and remembers which kinds it replaced."""

    def __init__(self, environ: Mapping[str, str] | None = None, home: str | None = None,
                 extra_secrets: Iterable[tuple[str, str]] = ()) -> None:
        env = os.environ if environ is None else environ
        secrets = [(f"env:{name}", value) for name, value in env.items()
                   if SECRET_NAME.search(name) and len(value) >= _MIN_SECRET_LEN]
        if environ is None:
            stored = _stored_hf_token()
            if stored and len(stored) >= _MIN_SECRET_LEN:
                secrets.append(("hf-token-file", stored))
        secrets.extend(extra_secrets)
        # Longest first, so a value that contains another is replaced whole.
        self._secrets = sorted(secrets, key=lambda kv: -len(kv[1]))
        home_dir = os.path.expanduser("~") if home is None else home
        self._home = home_dir.rstrip("/") if home_dir and home_dir not in ("/", "~") else None
        self.found: set[str] = set()

    def scrub(self, text: str) -> str:
        for label, value in self._secrets:
            if value in text:
                text = text.replace(value, f"<redacted:{label.removeprefix('env:')}>")
                self.found.add(label)
        for label, pattern, replacement in _PATTERNS:
            text, n = pattern.subn(replacement, text)
            if n:
                self.found.add(label)
        if self._home and self._home in text:
            text = re.sub(re.escape(self._home) + r"(?=/|\b|$)", "~", text)
            self.found.add("home-directory")
        return text

    def apply(self, obj: T) -> T:
        """Return a copy of a dataclass / mapping / sequence tree with every string scrubbed."""
        return _walk(obj, self.scrub)

    def summary(self) -> tuple[str, ...]:
        return tuple(sorted(self.found))


def _walk(obj: Any, fn: Any) -> Any:
    if isinstance(obj, Enum) or obj is None or isinstance(obj, (int, float, bool)):
        return obj  # before str: Status is a str Enum and must stay one
    if isinstance(obj, str):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: _walk(getattr(obj, f.name), fn) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **changes)
    if isinstance(obj, Mapping):
        return {(fn(k) if isinstance(k, str) else k): _walk(v, fn) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_walk(v, fn) for v in obj)
    if isinstance(obj, list):
        return [_walk(v, fn) for v in obj]
    return obj


def redact_report(report: Any, redactor: Redactor | None = None) -> Any:
    """Scrub a Report and record what kinds were replaced in its `redactions` field."""
    redactor = redactor or Redactor()
    cleaned = redactor.apply(report)
    return dataclasses.replace(cleaned, redactions=tuple(sorted(set(cleaned.redactions) | redactor.found)))
