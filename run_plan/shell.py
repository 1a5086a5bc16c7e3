"""Shell-quoting for every command we print (suggested fixes, the report's own command line).

A user pastes what we print into a shell. Any value that came from outside the program (a model
folder, a script path, a URL, a git remote) may hold `;`, `$(...)`, quotes or spaces, so printed
commands are built as argument lists and joined here, never with f-strings around raw values.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

__all__ = ["quote", "shell_join", "shell_line_problem"]


def quote(value: object) -> str:
    """One argument, quoted so a POSIX shell reads it back as exactly one word with this text."""
    return shlex.quote(str(value))


def shell_join(argv: Iterable[object]) -> str:
    """`argv` as one shell command line: pasting it runs exactly these arguments, nothing else.

    Placeholders the reader is meant to edit (`...`, `MODEL`) are plain words and stay unquoted."""
    return shlex.join(str(arg) for arg in argv)


# Words that separate one simple command from the next in a line we print.
_COMMAND_SEPARATORS = frozenset({";", "&&", "||", "|", "&"})
_PROGRAM = re.compile(r"^[A-Za-z0-9_./~+][A-Za-z0-9_./~+@:=,-]*$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _without_substitutions(line: str) -> tuple[str, list[str]]:
    """`line` with each top-level `$( ... )` replaced by one word, and the commands they held."""
    out: list[str] = []
    inner: list[str] = []
    i, quote_char = 0, ""
    while i < len(line):
        ch = line[i]
        if quote_char:
            quote_char = "" if ch == quote_char else quote_char
        elif ch in "'\"":
            quote_char = ch
        elif line.startswith("$(", i):
            end = _closing_paren(line, i + 2)
            if end is None:
                return line, inner  # unbalanced: let the lexer report it
            inner.append(line[i + 2 : end])
            out.append("SUBSTITUTED")
            i = end + 1
            continue
        out.append(ch)
        i += 1
    return "".join(out), inner


def _closing_paren(line: str, start: int) -> int | None:
    depth, quote_char = 1, ""
    for j in range(start, len(line)):
        ch = line[j]
        if quote_char:
            quote_char = "" if ch == quote_char else quote_char
        elif ch in "'\"":
            quote_char = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return j
    return None


def shell_line_problem(line: str) -> str | None:
    """Why `line` would not run as it is when pasted into a POSIX shell, or None when it would.

    A printed `$ ...` line is a promise that pasting it runs what it says. This catches the ways a fix
    breaks that promise: a bare flag (`--attn sdpa`: no program), Python code (`from_pretrained(...)`), a
    placeholder to fill in (`<index>`, `...`), an unbalanced quote. It reads the shell's grammar only; it
    cannot know whether a program is installed."""
    line, inner = _without_substitutions(line)
    for command in inner:  # what `$( ... )` runs must be a command too
        problem = shell_line_problem(command)
        if problem:
            return f"runs $( {command} ), which {problem}"
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError as exc:  # "No closing quotation" and friends
        return f"does not parse as a shell line ({exc})"
    if not tokens:
        return "is empty"
    expect_program = True
    previous = ""
    for token in tokens:
        if token in ("(", ")", "()"):
            return "holds Python or subshell syntax ( ), not a shell command"
        if token.startswith("<") or token in ("…", "...") or "…" in token:
            return "holds a placeholder to fill in, not a value"
        if token in _COMMAND_SEPARATORS:
            if expect_program:
                return f"has {token!r} with no command before it"
            expect_program = True
        elif token.startswith(">") or token.endswith(">"):
            pass  # a redirection: the next word is its file
        elif previous.endswith(">") and previous not in _COMMAND_SEPARATORS:
            pass
        elif expect_program:
            if _ASSIGNMENT.match(token):
                pass  # VAR=value before the program
            elif token.startswith("-") or not _PROGRAM.match(token):
                return f"starts with {token!r}, which is not a program"
            else:
                expect_program = False
        previous = token
    if expect_program:
        return "ends without a command"
    return None
