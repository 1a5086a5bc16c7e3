"""Scrub secrets and the home directory from everything before any renderer or file sees it.

Rules (docs/report-format.md lists them too):
- the value of every environment variable whose name contains TOKEN, SECRET, KEY, PASSWORD,
  PASSWD, AUTH or CREDENTIAL is replaced by `<redacted:NAME>` wherever it appears;
- the Hugging Face token stored by `hf auth login` is replaced the same way;
- the value of every environment variable named like `*_PAT` (GitHub/GitLab personal access tokens);
- token shapes wherever they appear: Hugging Face (`hf_…`), OpenAI-style (`sk-…`), GitHub (`ghp_…`,
  `gho_…`, `ghu_…`, `ghs_…`, `ghr_…`, `github_pat_…`), GitLab (`glpat-…`), Slack (`xoxb-…`, `xoxa-…`,
  `xoxp-…`), AWS access key ids (`AKIA…`, `ASIA…`), JWT-looking strings (`eyJ….eyJ….…`);
- `NAME=value` text where NAME looks like a secret (`GITHUB_TOKEN=…`, `MY_PAT=…`, `AWS_SECRET_ACCESS_KEY=…`);
- credentials in URLs (`https://user:token@host`) and secret-looking query parameters
  (`?private_token=…`, `&access_token=…`, `?key=…`, `?sig=…`) are replaced;
- in a mapping (config.json, results rows, facts), the value of a secret-named field (`token`,
  `hub_token`, `api_key`, `password`, `*_secret`, `*_pat`, ...) is replaced whatever its shape;
- the home directory becomes `~` (a shell-quoted `'/home/me/x'` becomes `~/'x'`, which still pastes).
The report lists which kinds of thing were replaced, never the values.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any, TypeVar

from run_plan.safe_files import read_text_file

T = TypeVar("T")

SECRET_NAME = re.compile(r"TOKEN|SECRET|KEY|PASSWORD|PASSWD|AUTH|CREDENTIAL|(?:^|_)PAT(?:_|$)", re.IGNORECASE)
# Field names inside documents (config.json, rows): stricter than SECRET_NAME, because data fields such
# as `tokenizer`, `trial_key`, `max_new_tokens` or `api_key_env` must survive. A whole final word only.
SECRET_FIELD = re.compile(
    r"(?:^|[_\-.])(?:token|access_?token|auth_?token|private_?token|secret|client_?secret|password|passwd|pat"
    r"|api_?key|access_?key|secret_?key|private_?key|credentials?)$",
    re.IGNORECASE,
)
# Query parameters worth hiding in any URL: the name contains one of these words.
_SECRET_QUERY = (
    r"[A-Za-z0-9_.\-]*(?:token|key|secret|password|passwd|auth|credential|signature|sig)"
    r"[A-Za-z0-9_.\-]*"
)
# Values this short are too likely to collide with ordinary text ("1", "true") to scrub blindly.
_MIN_SECRET_LEN = 6
_PATTERNS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("hf-token", re.compile(r"hf_[A-Za-z0-9]{16,}"), "<redacted:hf-token>"),
    ("api-key", re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"), "<redacted:api-key>"),
    (
        "github-token",
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"),
        "<redacted:github-token>",
    ),
    ("gitlab-token", re.compile(r"\bglpat-[A-Za-z0-9_\-]{16,}"), "<redacted:gitlab-token>"),
    ("slack-token", re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"), "<redacted:slack-token>"),
    ("aws-access-key", re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), "<redacted:aws-access-key>"),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*"), "<redacted:jwt>"),
    (
        "secret-assignment",
        re.compile(
            r"\b(?P<name>[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)*_(?:TOKEN|KEY|PAT|SECRET|PASSWORD|PASSWD))"
            r"=(?P<q>[\"']?)(?!<redacted)[^\s\"'&]{6,}(?P=q)",
            re.IGNORECASE,
        ),
        r"\g<name>=<redacted>",
    ),
    (
        "url-credentials",
        re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/@\s:]+(?::[^/@\s]*)?@"),
        r"\g<scheme><redacted>@",
    ),
    (
        "url-query-secret",
        re.compile(rf"(?P<lead>[?&;]{_SECRET_QUERY}=)(?!<redacted)[^&#\s\"'<>]+", re.IGNORECASE),
        r"\g<lead><redacted>",
    ),
)


def _stored_hf_token() -> str | None:
    """The token `hf auth login` saved, read as a file: no import of huggingface_hub needed."""
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    path = os.environ.get("HF_TOKEN_PATH") or os.path.join(hf_home, "token")
    try:  # HF_TOKEN_PATH may name a pipe or /dev/zero: read only a small regular file, never wait
        token = read_text_file(path, limit=1 << 16).strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None


class Redactor:
    """Replaces secrets in strings and remembers which kinds it replaced."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        home: str | None = None,
        extra_secrets: Iterable[tuple[str, str]] = (),
    ) -> None:
        env = os.environ if environ is None else environ
        secrets = [
            (f"env:{name}", value)
            for name, value in env.items()
            if SECRET_NAME.search(name) and len(value) >= _MIN_SECRET_LEN
        ]
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
            # A shell-quoted path must still paste: '/home/me/a b' -> ~/'a b' (a tilde inside quotes
            # would not expand).
            text = text.replace(f"'{self._home}/", "~/'").replace(f"'{self._home}'", "~")
            text = re.sub(re.escape(self._home) + r"(?=/|\b|$)", "~", text)
            self.found.add("home-directory")
        return text

    def scrub_field(self, name: str, value: str) -> str:
        """A string stored under `name`: a secret-named field is hidden whatever the value looks like."""
        if SECRET_FIELD.search(name) and len(value) >= _MIN_SECRET_LEN and not value.startswith("<redacted"):
            self.found.add("secret-field")
            return f"<redacted:{name}>"
        return self.scrub(value)

    def apply(self, obj: T) -> T:
        """Return a copy of a dataclass / mapping / sequence tree with every string scrubbed."""
        return _walk(obj, self.scrub, self.scrub_field)

    def summary(self) -> tuple[str, ...]:
        return tuple(sorted(self.found))


def _walk(obj: Any, fn: Any, field_fn: Any = None) -> Any:
    if isinstance(obj, Enum) or obj is None or isinstance(obj, (int, float, bool)):
        return obj  # before str: Status is a str Enum and must stay one
    if isinstance(obj, str):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {
            f.name: _walk(getattr(obj, f.name), fn, field_fn) for f in dataclasses.fields(obj) if f.init
        }
        return dataclasses.replace(obj, **changes)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if field_fn is not None and isinstance(k, str) and isinstance(v, str):
                out[fn(k)] = field_fn(k, v)
            else:
                out[fn(k) if isinstance(k, str) else k] = _walk(v, fn, field_fn)
        return out
    if isinstance(obj, tuple):
        return tuple(_walk(v, fn, field_fn) for v in obj)
    if isinstance(obj, list):
        return [_walk(v, fn, field_fn) for v in obj]
    return obj


def redact_report(report: Any, redactor: Redactor | None = None) -> Any:
    """Scrub a Report and record what kinds were replaced in its `redactions` field."""
    redactor = redactor or Redactor()
    cleaned = redactor.apply(report)
    return dataclasses.replace(cleaned, redactions=tuple(sorted(set(cleaned.redactions) | redactor.found)))
