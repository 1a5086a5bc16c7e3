"""`Unavailable`: why a probe, or the child process it ran in, has no facts.

Missing hardware or a missing library is a value, not an exception: every probe answers its facts or
one of these, and the checks turn it into a SKIP or an ERROR row. It lives on the ground floor because
the child-process machinery (doctor.children) already speaks it when a child hangs or crashes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

UnavailableKind = Literal["missing", "not-applicable", "error", "timeout"]


@dataclass(frozen=True)
class Unavailable:
    """Why a probe has no facts. `error`/`timeout` turn the checks that need it into ERROR rows;
    `missing`/`not-applicable` turn them into SKIP rows."""

    reason: str
    kind: UnavailableKind = "missing"
    detail: str | None = None  # e.g. the child's stderr tail, a traceback's last line
