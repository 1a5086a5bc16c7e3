"""Text from outside made inert before a terminal or a Markdown viewer sees it.

Model ids a server lists, config.json fields, file names, git output, a server's error text: any of
them may hold terminal control sequences (`ESC[2J` clears the screen, `ESC]0;title BEL` retitles the
window, `ESC]8;;url` plants a link, a bare CR overwrites the line) or bidirectional overrides that make
the text read differently from what it is. Every such character is shown as its escape (`\\x1b`,
`\\u202e`), so the reader sees that it was there and the terminal acts on none of it. Newlines and tabs
stay: the renderers lay them out.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping
from enum import Enum
from typing import Any, TypeVar, cast

__all__ = ["inert", "inert_tree", "is_inert"]

T = TypeVar("T")

# C0 controls but TAB and LF, DEL, C1 controls; the Unicode format characters that reorder or hide text
# (bidi embeddings, overrides and isolates, zero-width characters, the line and paragraph separators).
_ACTIVE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def inert(text: str) -> str:
    """`text` with every character a terminal or a bidi algorithm would act on written as its escape."""
    return _ACTIVE.sub(_escape, text)


def is_inert(text: str) -> bool:
    return _ACTIVE.search(text) is None


def inert_tree(obj: T) -> T:
    """A copy of a dataclass / mapping / sequence tree with every string (keys too) made inert."""
    return cast(T, _walk(obj))  # _walk rebuilds the tree in its own shape


def _walk(obj: Any) -> Any:
    if isinstance(obj, Enum) or obj is None or isinstance(obj, (int, float, bool)):
        return obj  # before str: a str Enum (a status) must stay one
    if isinstance(obj, str):
        return inert(obj) if _ACTIVE.search(obj) else obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        # A copy with its fields set as they are, not rebuilt through __init__: a custom __init__ would
        # re-derive them (a Fix quotes and checks its commands), and what is shown must be what was said.
        clean = copy.copy(obj)
        for f in dataclasses.fields(obj):
            object.__setattr__(clean, f.name, _walk(getattr(obj, f.name)))
        return clean
    if isinstance(obj, Mapping):
        return {_walk(k): _walk(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_walk(v) for v in obj)
    if isinstance(obj, list):
        return [_walk(v) for v in obj]
    return obj
