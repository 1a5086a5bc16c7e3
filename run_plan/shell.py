"""Shell-quoting for every command we print (suggested fixes, the report's own command line).

A user pastes what we print into a shell. Any value that came from outside the program (a model
folder, a script path, a URL, a git remote) may hold `;`, `$(...)`, quotes or spaces, so printed
commands are built as argument lists and joined here, never with f-strings around raw values.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable

__all__ = ["quote", "shell_join"]


def quote(value: object) -> str:
    """One argument, quoted so a POSIX shell reads it back as exactly one word with this text."""
    return shlex.quote(str(value))


def shell_join(argv: Iterable[object]) -> str:
    """`argv` as one shell command line: pasting it runs exactly these arguments, nothing else.

    Placeholders the reader is meant to edit (`...`, `MODEL`) are plain words and stay unquoted."""
    return shlex.join(str(arg) for arg in argv)
