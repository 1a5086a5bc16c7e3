"""Read a run script's model-loading settings with `ast` — never import or execute it.

Whether a run script is committed says little; what the file will *do* is in its text: the model id given to `from_pretrained` (often through a module constant such as
`MODEL_ID`), the `BitsAndBytesConfig` and the flag that switches it (`USE_4BIT = False` guarding an
`if`), `device_map`, `max_memory`, `attn_implementation`, `torch_dtype`/`dtype`, `trust_remote_code`
and context-length constants. This module reads them into `Setting`s named like the doctor's flags
(`model`, `quant`, `max_memory`, `attn`, `dtype`, `trust_remote_code`, `context`, `device_map`), each
with its `file:line`.

Only what the text fixes is resolved: literals, module constants, f-strings and simple arithmetic
over them, `if` branches whose test is such a constant, conditional expressions. A value computed
at run time (command-line arguments, environment variables, function parameters, calls) is reported
as "could not determine", with the reason, never guessed.

For files in git the committed text (`git show HEAD:path`) is read the same way, and a setting whose
committed value differs carries both: a committed script can load a placeholder model id while the
edited copy on disk has the real one, and the run executes whichever copy it is given.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from run_plan.errors import UsageError
from run_plan.options import Layer, check_value
from run_plan.safe_files import read_text_file

SETTING_KEYS: tuple[str, ...] = (
    "model",
    "quant",
    "max_memory",
    "attn",
    "dtype",
    "trust_remote_code",
    "context",
    "device_map",
)
# Loader classes whose from_pretrained takes the model id but not the model's loading settings.
_NOT_MODEL_LOADERS = ("Tokenizer", "Processor", "Config", "FeatureExtractor", "ImageProcessor")
# Module constants that name the model when no from_pretrained call can be read.
_MODEL_CONSTANT = re.compile(r"^(MODEL|CHECKPOINT|REPO)(_?(ID|NAME|PATH|REPO))?$", re.IGNORECASE)
# Module constants that hold a context length in tokens ...
_CONTEXT_CONSTANT = re.compile(
    r"(CONTEXT|CTX|SEQ(UENCE)?_?LEN|MAX_?(INPUT_?|PROMPT_?)?(LENGTH|LEN|TOKENS)|"
    r"(TARGET|HAYSTACK|PROMPT|INPUT|NUM)_?TOKENS?(_?(COUNT|LEN|LENGTH))?)",
    re.IGNORECASE,
)
# ... or in characters, which is not a token count (the tokenizer decides).
_CHAR_CONSTANT = re.compile(r"CHAR", re.IGNORECASE)
_MAX_DEPTH = 24
_DTYPE_NAMES = ("bfloat16", "float16", "float32", "half", "float", "bf16", "fp16", "auto")


@dataclass(frozen=True)
class Revision:
    """The same setting in another version of the file (the committed one)."""

    value: Any
    determined: bool
    line: int | None
    text: str | None  # the expression as written there
    note: str = ""
    revision: str = "HEAD"


@dataclass(frozen=True)
class Setting:
    """One setting the script passes to the libraries, in the terms of the doctor's flag `key`."""

    key: str
    value: Any  # None when not determined
    determined: bool
    file: str
    line: int
    text: str  # the expression as written in the file
    note: str = ""  # how it was derived, or why it could not be
    committed: Revision | None = None  # HEAD's version when it differs from the working tree
    extra: Mapping[str, Any] = field(default_factory=dict)  # e.g. bnb_4bit_type, double_quant for quant

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def source(self) -> str:
        return f"script {self.where}"

    def flag_text(self) -> str | None:
        """The value as it would be typed after the doctor's flag (`--max-memory 0=75GiB,cpu=auto`)."""
        if not self.determined or self.value is None:
            return None
        if self.key == "max_memory" and isinstance(self.value, Mapping):
            return ",".join(f"{k}={v}" for k, v in self.value.items())
        if isinstance(self.value, bool):
            return "true" if self.value else "false"
        if isinstance(self.value, Mapping):
            import json

            return json.dumps(self.value)
        return str(self.value)


@dataclass(frozen=True)
class ScriptReading:
    path: str
    settings: Mapping[str, Setting]
    problem: str | None = None  # the file could not be read or parsed
    committed_problem: str | None = None  # why the committed text was not compared (untracked, no git, ...)


# ---------------------------------------------------------------- values


@dataclass(frozen=True)
class _Unknown:
    reason: str


@dataclass(frozen=True)
class _Dotted:
    """`torch.bfloat16` and other attribute chains on imported modules: kept as their dotted name."""

    name: str


@dataclass(frozen=True)
class _CallValue:
    """A constructor call the settings care about, e.g. BitsAndBytesConfig(load_in_4bit=True)."""

    func: str
    kwargs: tuple[tuple[str, Any], ...]  # values may be _Unknown
    line: int


@dataclass
class _Known:
    value: Any
    notes: list[str] = field(default_factory=list)  # branches that were off, constants that were used


_Value = _Known | _Unknown
_Eval = Callable[[ast.expr], _Value]  # evaluates a sub-expression in the same scope, one level deeper


@dataclass(frozen=True)
class _Assignment:
    name: str
    key: str | None  # `kwargs["quantization_config"] = ...` assigns key "quantization_config" of `kwargs`
    value: ast.expr
    line: int
    guards: tuple[tuple[ast.expr, bool], ...]  # enclosing `if` tests and which branch (True = body)


def _dotted_name(node: ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


class _Reader:
    """One parsed file: its scopes' assignments, and an evaluator for expressions in them."""

    def __init__(self, tree: ast.Module, text: str, filename: str) -> None:
        self.tree, self.text, self.filename = tree, text, filename
        self.parents: dict[int, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                self.parents[id(child)] = node
        self.assignments: dict[int, dict[str, list[_Assignment]]] = {}
        self.parameters: dict[int, set[str]] = {}
        self.imports: set[str] = set()
        self.argparse_defaults: dict[str, Any] = {}
        self._memo: dict[tuple[str, int, int | None], _Value | None] = {}
        self._collect(tree)

    # -- collection

    def _collect(self, tree: ast.Module) -> None:
        scopes: list[ast.AST] = [tree] + [
            n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        for scope in scopes:
            table: dict[str, list[_Assignment]] = {}
            self._collect_block(getattr(scope, "body", []), (), table)
            self.assignments[id(scope)] = table
            if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = scope.args
                names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
                names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
                self.parameters[id(scope)] = set(names)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    self.imports.add((alias.asname or alias.name).split(".")[0])
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument"
            ):
                self._argparse_default(node)

    def _argparse_default(self, call: ast.Call) -> None:
        flags = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        default = next((k.value for k in call.keywords if k.arg == "default"), None)
        if flags and default is not None:
            name = flags[-1].lstrip("-").replace("-", "_")
            self.argparse_defaults[name] = ast.get_source_segment(self.text, default) or ast.unparse(default)

    def _collect_block(
        self,
        body: Iterable[ast.stmt],
        guards: tuple[tuple[ast.expr, bool], ...],
        table: dict[str, list[_Assignment]],
    ) -> None:
        for stmt in body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue  # their own scope
            if isinstance(stmt, ast.If):
                self._collect_block(stmt.body, (*guards, (stmt.test, True)), table)
                self._collect_block(stmt.orelse, (*guards, (stmt.test, False)), table)
                continue
            for target, value in self._assigned(stmt):
                self._record(target, value, stmt.lineno, guards, table)
            for name in ("body", "orelse", "finalbody"):
                inner = getattr(stmt, name, None)
                if isinstance(inner, list) and not isinstance(stmt, ast.If):
                    self._collect_block(inner, guards, table)
            for handler in getattr(stmt, "handlers", []) or []:
                self._collect_block(handler.body, guards, table)

    @staticmethod
    def _assigned(stmt: ast.stmt) -> Iterator[tuple[ast.expr, ast.expr]]:
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                yield target, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            yield stmt.target, stmt.value
        elif isinstance(stmt, ast.AugAssign):
            yield stmt.target, ast.BinOp(left=stmt.target, op=stmt.op, right=stmt.value)

    def _record(
        self,
        target: ast.expr,
        value: ast.expr,
        line: int,
        guards: tuple[tuple[ast.expr, bool], ...],
        table: dict[str, list[_Assignment]],
    ) -> None:
        if isinstance(target, ast.Name):
            table.setdefault(target.id, []).append(_Assignment(target.id, None, value, line, guards))
        elif (
            isinstance(target, ast.Subscript)
            and isinstance(target.value, ast.Name)
            and isinstance(target.slice, ast.Constant)
            and isinstance(target.slice.value, str)
        ):
            name = target.value.id
            table.setdefault(name, []).append(_Assignment(name, target.slice.value, value, line, guards))
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:  # unpacking: each name gets a value we cannot pair up
                if isinstance(element, ast.Name):
                    table.setdefault(element.id, []).append(
                        _Assignment(element.id, None, ast.Name(id="<unpacked>"), line, guards)
                    )

    # -- scopes

    def scope_of(self, node: ast.AST) -> ast.AST:
        current = self.parents.get(id(node))
        while current is not None and not isinstance(
            current, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module)
        ):
            current = self.parents.get(id(current))
        return current or self.tree

    def source(self, node: ast.AST) -> str:
        text = ast.get_source_segment(self.text, node) or ast.unparse(node)
        return " ".join(text.split())[:200]

    # -- evaluation

    def evaluate(self, node: ast.expr | None, scope: ast.AST, before: int, depth: int = 0) -> _Value:
        if node is None:
            return _Known(None)
        if depth > _MAX_DEPTH:
            return _Unknown(f"`{self.source(node)}` refers to itself too deeply to read")

        def ev(sub: ast.expr) -> _Value:
            return self.evaluate(sub, scope, before, depth + 1)

        if isinstance(node, ast.Constant):
            return _Known(node.value)
        if isinstance(node, ast.Name):
            return self._name(node.id, scope, before, depth)
        if isinstance(node, ast.JoinedStr):
            return self._fstring(node, ev)
        if isinstance(node, (ast.List, ast.Tuple)):
            return self._sequence(node, ev)
        if isinstance(node, ast.Dict):
            return self._dict(node, ev)
        if isinstance(node, ast.BinOp):
            return self._binop(node, ev)
        if isinstance(node, ast.UnaryOp):
            return self._unary(node, ev)
        if isinstance(node, ast.BoolOp):
            return self._boolop(node, ev)
        if isinstance(node, ast.Compare):
            return self._compare(node, ev)
        if isinstance(node, ast.IfExp):
            test = ev(node.test)
            if isinstance(test, _Unknown):
                return _Unknown(f"`{self.source(node)}` depends on `{self.source(node.test)}`: {test.reason}")
            chosen = ev(node.body if test.value else node.orelse)
            if isinstance(chosen, _Known):
                chosen.notes = [
                    *test.notes,
                    *chosen.notes,
                    f"`{self.source(node.test)}` is {bool(test.value)} at {self.filename}:{node.lineno}",
                ]
            return chosen
        if isinstance(node, ast.Attribute):
            return self._attribute(node)
        if isinstance(node, ast.Call):
            return self._call(node, ev)
        return _Unknown(f"`{self.source(node)}` is computed at run time")

    def _name(self, name: str, scope: ast.AST, before: int, depth: int) -> _Value:
        if name in ("True", "False", "None"):
            return _Known({"True": True, "False": False, "None": None}[name])
        for where in (scope, self.tree) if scope is not self.tree else (self.tree,):
            # A function runs after the whole module has run: it sees every module assignment. Code at
            # module level sees only the lines above it.
            found = self._from_assignments(name, where, before if where is scope else None, depth)
            if found is not None:
                return found
            if where is scope and name in self.parameters.get(id(scope), set()):
                return _Unknown(
                    f"`{name}` is a parameter of {getattr(scope, 'name', 'a function')}(): "
                    "its value comes from the caller at run time"
                )
        if name in self.imports:
            return _Known(_Dotted(name))
        return _Unknown(f"`{name}` is not assigned in this file")

    def _from_assignments(self, name: str, scope: ast.AST, before: int | None, depth: int) -> _Value | None:
        """The value `name` holds at line `before` of `scope` (module constants: their last assignment).
        Memoised: `x = x + 1` repeated n times would otherwise cost 2^n evaluations."""
        key = (name, id(scope), before)
        if key not in self._memo:
            self._memo[key] = self._from_assignments_uncached(name, scope, before, depth)
        found = self._memo[key]
        return _Known(found.value, list(found.notes)) if isinstance(found, _Known) else found

    def _from_assignments_uncached(
        self, name: str, scope: ast.AST, before: int | None, depth: int
    ) -> _Value | None:
        assignments = [
            a for a in self.assignments.get(id(scope), {}).get(name, []) if before is None or a.line < before
        ]
        if not assignments:
            return None
        result: _Value | None = None
        notes: list[str] = []
        keyed: dict[str, _Value] = {}
        for assignment in assignments:
            active = self._guards_hold(assignment, scope, depth)
            if isinstance(active, _Unknown):
                return _Unknown(
                    f"`{name}` is set at {self.filename}:{assignment.line} only when {active.reason}"
                )
            if not active.value:
                notes.extend(active.notes)
                continue
            notes.extend(active.notes)
            if assignment.key is not None:
                keyed[assignment.key] = self.evaluate(assignment.value, scope, assignment.line, depth + 1)
                continue
            result = self.evaluate(assignment.value, scope, assignment.line, depth + 1)
            keyed = {}
        if result is None:
            if not keyed:
                return _Known(None, notes) if notes else None
            result = _Known({})
        if keyed:
            if isinstance(result, _Unknown) or not isinstance(result.value, dict):
                return _Unknown(f"`{name}` is built at run time")
            result = _Known({**result.value, **keyed}, result.notes)
        if isinstance(result, _Known):
            result.notes = [*notes, *result.notes]
        return result

    def _guards_hold(self, assignment: _Assignment, scope: ast.AST, depth: int) -> _Value:
        notes: list[str] = []
        for test, branch in assignment.guards:
            value = self.evaluate(test, scope, assignment.line, depth + 1)
            if isinstance(value, _Unknown):
                return _Unknown(f"`{self.source(test)}` holds, which is decided at run time ({value.reason})")
            if value.value is None or isinstance(value.value, (_Dotted, _CallValue)):
                return _Unknown(f"`{self.source(test)}` holds, which is decided at run time")
            holds = bool(value.value) == branch
            notes.extend(value.notes)
            notes.append(
                f"`if {self.source(test)}:` at {self.filename}:{test.lineno} is {bool(value.value)}"
                + self._constant_origin(test, scope)
            )
            if not holds:
                return _Known(False, notes)
        return _Known(True, notes)

    def _constant_origin(self, test: ast.expr, scope: ast.AST) -> str:
        """` (USE_4BIT = False at run.py:5)` when the test is a plain module constant."""
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            test = test.operand
        if not isinstance(test, ast.Name):
            return ""
        assignments = self.assignments.get(id(self.tree), {}).get(test.id, [])
        if not assignments:
            return ""
        last = assignments[-1]
        return f" ({test.id} = {self.source(last.value)} at {self.filename}:{last.line})"

    def _fstring(self, node: ast.JoinedStr, ev: _Eval) -> _Value:
        parts: list[str] = []
        for piece in node.values:
            if isinstance(piece, ast.Constant):
                parts.append(str(piece.value))
                continue
            if isinstance(piece, ast.FormattedValue):
                if piece.format_spec is not None or piece.conversion not in (-1, None):
                    return _Unknown(
                        f"f-string `{self.source(node)}` uses a format this reader does not apply"
                    )
                value = ev(piece.value)
                if isinstance(value, _Unknown):
                    return _Unknown(f"f-string `{self.source(node)}`: {value.reason}")
                parts.append(str(value.value))
        return _Known("".join(parts))

    def _sequence(self, node: ast.List | ast.Tuple, ev: _Eval) -> _Value:
        values = [ev(e) for e in node.elts]
        bad = next((v for v in values if isinstance(v, _Unknown)), None)
        if bad is not None:
            return bad
        items = [v.value for v in values if isinstance(v, _Known)]
        return _Known(tuple(items) if isinstance(node, ast.Tuple) else items)

    def _dict(self, node: ast.Dict, ev: _Eval) -> _Value:
        out: dict[Any, Any] = {}
        for key, value in zip(node.keys, node.values, strict=True):
            if key is None:
                return _Unknown(f"`{self.source(node)}` unpacks another mapping")
            k, v = ev(key), ev(value)
            if isinstance(k, _Unknown):
                return k
            if isinstance(v, _Unknown):
                return _Unknown(f"{self.source(key)}: {v.reason}")
            out[k.value] = v.value
        return _Known(out)

    def _binop(self, node: ast.BinOp, ev: _Eval) -> _Value:
        left, right = ev(node.left), ev(node.right)
        if isinstance(left, _Unknown):
            return left
        if isinstance(right, _Unknown):
            return right
        ops = {
            ast.Add: lambda a, b: a + b,
            ast.Sub: lambda a, b: a - b,
            ast.Mult: lambda a, b: a * b,
            ast.FloorDiv: lambda a, b: a // b,
            ast.Pow: lambda a, b: a**b,
            ast.Div: lambda a, b: a / b,
        }
        op = ops.get(type(node.op))
        try:
            if op is None or (isinstance(node.op, ast.Pow) and abs(right.value) > 64):
                raise TypeError
            return _Known(op(left.value, right.value), [*left.notes, *right.notes])
        except (TypeError, ValueError, ZeroDivisionError, OverflowError):
            return _Unknown(f"`{self.source(node)}` is computed at run time")

    def _unary(self, node: ast.UnaryOp, ev: _Eval) -> _Value:
        value = ev(node.operand)
        if isinstance(value, _Unknown):
            return value
        try:
            if isinstance(node.op, ast.Not):
                return _Known(not value.value, value.notes)
            if isinstance(node.op, ast.USub):
                return _Known(-value.value, value.notes)
            if isinstance(node.op, ast.UAdd):
                return _Known(+value.value, value.notes)
        except TypeError:
            pass
        return _Unknown(f"`{self.source(node)}` is computed at run time")

    def _boolop(self, node: ast.BoolOp, ev: _Eval) -> _Value:
        values = [ev(v) for v in node.values]
        bad = next((v for v in values if isinstance(v, _Unknown)), None)
        if bad is not None:
            return bad
        known = [v for v in values if isinstance(v, _Known)]
        plain = [v.value for v in known]
        result = all(plain) if isinstance(node.op, ast.And) else any(plain)
        return _Known(result, [n for v in known for n in v.notes])

    def _compare(self, node: ast.Compare, ev: _Eval) -> _Value:
        left = ev(node.left)
        if isinstance(left, _Unknown):
            return left
        current = left.value
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = ev(comparator)
            if isinstance(right, _Unknown):
                return right
            table = {
                ast.Eq: lambda a, b: a == b,
                ast.NotEq: lambda a, b: a != b,
                ast.Is: lambda a, b: a is b,
                ast.IsNot: lambda a, b: a is not b,
                ast.Lt: lambda a, b: a < b,
                ast.Gt: lambda a, b: a > b,
                ast.LtE: lambda a, b: a <= b,
                ast.GtE: lambda a, b: a >= b,
                ast.In: lambda a, b: a in b,
                ast.NotIn: lambda a, b: a not in b,
            }
            fn = table.get(type(op))
            try:
                if fn is None or not fn(current, right.value):
                    return (
                        _Known(False)
                        if fn is not None
                        else _Unknown(f"`{self.source(node)}` is not readable")
                    )
            except TypeError:
                return _Unknown(f"`{self.source(node)}` is computed at run time")
            current = right.value
        return _Known(True)

    def _attribute(self, node: ast.Attribute) -> _Value:
        dotted = _dotted_name(node)
        if dotted is None:
            return _Unknown(f"`{self.source(node)}` is computed at run time")
        root = dotted.split(".")[0]
        if root in self.imports:
            return _Known(_Dotted(dotted))
        default = self.argparse_defaults.get(node.attr)
        where = f" (argparse default {default})" if default is not None else ""
        return _Unknown(f"`{dotted}` is set at run time{where}")

    def _call(self, node: ast.Call, ev: _Eval) -> _Value:
        func = _dotted_name(node.func) or self.source(node.func)
        short = func.rsplit(".", 1)[-1]
        if func in ("os.environ.get", "os.getenv", "environ.get", "getenv"):
            name = ev(node.args[0]) if node.args else _Unknown("")
            default = self.source(node.args[1]) if len(node.args) > 1 else None
            var = name.value if isinstance(name, _Known) else self.source(node.args[0]) if node.args else "?"
            tail = f"; default {default}" if default is not None else ""
            return _Unknown(f"read from the environment variable {var} at run time{tail}")
        if short in ("BitsAndBytesConfig", "GPTQConfig", "AwqConfig", "HqqConfig", "TorchAoConfig"):
            kwargs = tuple((k.arg, ev(k.value)) for k in node.keywords if k.arg is not None)
            return _Known(_CallValue(short, kwargs, node.lineno))
        if func == "dict" and not node.args:
            return self._dict(
                ast.Dict(
                    keys=[ast.Constant(k.arg) for k in node.keywords], values=[k.value for k in node.keywords]
                ),
                ev,
            )
        if func in ("int", "str", "float", "bool") and len(node.args) == 1:
            value = ev(node.args[0])
            if isinstance(value, _Unknown):
                return value
            try:
                return _Known(
                    {"int": int, "str": str, "float": float, "bool": bool}[func](value.value), value.notes
                )
            except (TypeError, ValueError):
                return _Unknown(f"`{self.source(node)}` fails or is computed at run time")
        return _Unknown(f"`{self.source(node)}` is computed at run time")


# ---------------------------------------------------------------- settings from one text


def _model_loads(reader: _Reader) -> tuple[list[ast.Call], list[ast.Call]]:
    """(model from_pretrained calls, tokenizer/config from_pretrained calls), in file order."""
    models: list[ast.Call] = []
    others: list[ast.Call] = []
    for node in ast.walk(reader.tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "from_pretrained"
        ):
            owner = _dotted_name(node.func.value) or ""
            (others if any(word in owner for word in _NOT_MODEL_LOADERS) else models).append(node)
    key = lambda c: (c.lineno, c.col_offset)
    return sorted(models, key=key), sorted(others, key=key)


def _undetermined(reader: _Reader, key: str, line: int, text: str, reason: str) -> Setting:
    return Setting(key, None, False, reader.filename, line, text, f"could not determine: {reason}")


def _setting(
    reader: _Reader,
    key: str,
    node: ast.AST,
    value: _Value,
    convert: Any = None,
    note: str = "",
    extra: Mapping[str, Any] | None = None,
) -> Setting:
    text = reader.source(node)
    line = getattr(node, "lineno", 0)
    if isinstance(value, _Unknown):
        return _undetermined(reader, key, line, text, value.reason)
    converted = convert(value.value) if convert else value.value
    if isinstance(converted, _Unknown):
        return _undetermined(reader, key, line, text, converted.reason)
    origin = _constant_assignment(reader, node)
    if origin is not None:  # cite the line that sets the value, and keep where it is used in the note
        note = f"{note} at {reader.filename}:{line}" if note else f"used at {reader.filename}:{line}"
        text, line = f"{origin.name} = {reader.source(origin.value)}", origin.line
    notes = "; ".join(dict.fromkeys(n for n in (note, *value.notes) if n))
    return Setting(key, converted, True, reader.filename, line, text, notes, extra=extra or {})


def _constant_assignment(reader: _Reader, node: ast.AST) -> _Assignment | None:
    """The one unconditional module-level assignment a bare name refers to, if that is what it is."""
    if not isinstance(node, ast.Name):
        return None
    scope = reader.scope_of(node)
    if scope is not reader.tree and node.id in reader.assignments.get(id(scope), {}):
        return None
    found = reader.assignments.get(id(reader.tree), {}).get(node.id, [])
    return found[0] if len(found) == 1 and not found[0].guards and found[0].key is None else None


def _as_model_id(value: Any) -> Any:
    return (
        value
        if isinstance(value, str)
        else _Unknown(f"the model argument is {type(value).__name__}, not a string")
    )


def _as_dtype(value: Any) -> Any:
    name = value.name if isinstance(value, _Dotted) else value
    if isinstance(name, str):
        short = name.rsplit(".", 1)[-1]
        return {"half": "float16", "float": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(
            short, short
        )
    return _Unknown(f"dtype {value!r} is not a torch dtype name")


def _as_plain(value: Any) -> Any:
    if isinstance(value, _Dotted):
        return value.name
    if isinstance(value, (str, int, float, bool, dict, list, tuple)) or value is None:
        return value
    return _Unknown(f"{value!r} is not a plain value")


def _kwargs(call: ast.Call) -> dict[str, ast.expr]:
    return {k.arg: k.value for k in call.keywords if k.arg is not None}


def _splat(reader: _Reader, call: ast.Call, scope: ast.AST) -> tuple[dict[str, Any], str | None]:
    """Keyword arguments passed through `**name`: read when `name` is a dict this file builds."""
    merged: dict[str, Any] = {}
    for keyword in call.keywords:
        if keyword.arg is not None:
            continue
        value = reader.evaluate(keyword.value, scope, call.lineno)
        if isinstance(value, _Unknown) or not isinstance(value.value, dict):
            reason = value.reason if isinstance(value, _Unknown) else "not a dict"
            return merged, f"`**{reader.source(keyword.value)}` could not be read ({reason})"
        merged.update(value.value)
    return merged, None


def _quant_setting(
    reader: _Reader,
    call: ast.Call,
    scope: ast.AST,
    kwargs: dict[str, ast.expr],
    splat: dict[str, Any],
    splat_problem: str | None,
) -> Setting:
    node = kwargs.get("quantization_config")
    if node is not None:
        return _quant_from_value(reader, node, reader.evaluate(node, scope, call.lineno))
    for flag, quant in (("load_in_4bit", "bnb-4bit"), ("load_in_8bit", "bnb-8bit")):
        if flag in kwargs:
            value = reader.evaluate(kwargs[flag], scope, call.lineno)
            return _setting(
                reader,
                "quant",
                kwargs[flag],
                value,
                lambda v, q=quant: q if v else "none",
                f"{flag}={reader.source(kwargs[flag])}",
            )
    if "quantization_config" in splat:
        value = splat["quantization_config"]
        return _quant_from_value(reader, call, _Known(value))
    if splat_problem:
        return Setting(
            "quant",
            None,
            False,
            reader.filename,
            call.lineno,
            reader.source(call.func),
            f"could not determine: {splat_problem}",
        )
    return Setting(
        "quant",
        "none",
        True,
        reader.filename,
        call.lineno,
        reader.source(call.func),
        "from_pretrained gets no quantization_config: the weights load unquantized",
    )


def _quant_from_value(reader: _Reader, node: ast.AST, value: _Value) -> Setting:
    if isinstance(value, _Unknown):
        return _setting(reader, "quant", node, value)
    config = value.value
    if config is None:
        off = [n for n in value.notes if " is False" in n or " is True" in n]
        why = "; ".join(off) if off else "quantization_config is None"
        return Setting(
            "quant",
            "none",
            True,
            reader.filename,
            getattr(node, "lineno", 0),
            reader.source(node),
            f"quantization is off: {why}",
        )
    if not isinstance(config, _CallValue):
        return _setting(reader, "quant", node, _Unknown(f"quantization_config is {reader.source(node)}"))
    if config.func != "BitsAndBytesConfig":
        reason = f"{config.func} is not a bitsandbytes quantization the doctor models"
        return _undetermined(reader, "quant", config.line, reader.source(node), reason)
    args = dict(config.kwargs)
    unknown = next((f"{k}: {v.reason}" for k, v in args.items() if isinstance(v, _Unknown)), None)
    flags = {k: v.value for k, v in args.items() if isinstance(v, _Known)}
    if (
        unknown
        and ("load_in_4bit" in args or "load_in_8bit" in args)
        and not (flags.get("load_in_4bit") is True or flags.get("load_in_8bit") is True)
    ):
        return _undetermined(reader, "quant", config.line, reader.source(node), unknown)
    quant = "bnb-4bit" if flags.get("load_in_4bit") else "bnb-8bit" if flags.get("load_in_8bit") else "none"
    extra: dict[str, Any] = {}
    if quant == "bnb-4bit":
        extra = {
            "bnb_4bit_type": flags.get("bnb_4bit_quant_type", "fp4"),
            "double_quant": bool(flags.get("bnb_4bit_use_double_quant", False)),
        }
    notes = "; ".join(value.notes)
    return Setting(
        "quant",
        quant,
        True,
        reader.filename,
        config.line,
        reader.source(node),
        f"BitsAndBytesConfig at {reader.filename}:{config.line}" + (f"; {notes}" if notes else ""),
        extra=extra,
    )


def _context_settings(reader: _Reader) -> list[Setting]:
    out: list[Setting] = []
    for name, assignments in reader.assignments.get(id(reader.tree), {}).items():
        if not _CONTEXT_CONSTANT.search(name) and not _CHAR_CONSTANT.search(name):
            continue
        last = assignments[-1]
        value = reader.evaluate(last.value, reader.tree, last.line + 1)
        text = f"{name} = {reader.source(last.value)}"
        if _CHAR_CONSTANT.search(name):
            shown = value.value if isinstance(value, _Known) else "?"
            out.append(
                Setting(
                    "context",
                    None,
                    False,
                    reader.filename,
                    last.line,
                    text,
                    f"could not determine: {name} = {shown} counts characters, not tokens "
                    "(the tokenizer decides how many tokens that is)",
                )
            )
            continue
        if isinstance(value, _Known) and (not isinstance(value.value, int) or isinstance(value.value, bool)):
            continue  # e.g. MAX_NEW_TOKENS_TEXT = "..." is not a length
        out.append(_setting(reader, "context", last.value, value, note=f"module constant {name}"))
        out[-1] = replace(out[-1], text=text, line=last.line)
    # Token counts beat character counts; among token counts the largest is the longest trial.
    out.sort(key=lambda s: (not s.determined, -(s.value or 0)))
    return out


def read_source(text: str, filename: str) -> tuple[dict[str, Setting], str | None]:
    """Settings of one file's text (no git): ({key: Setting}, problem). Never raises."""
    try:
        tree = ast.parse(text, filename=filename)
    except SyntaxError as exc:
        return {}, f"could not parse {filename}: SyntaxError at line {exc.lineno}: {exc.msg}"
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, absurd nesting
        return {}, f"could not parse {filename}: {type(exc).__name__}: {exc}"
    try:
        return _settings_of(tree, text, filename), None
    except RecursionError:
        return {}, f"could not read {filename}: its expressions nest too deeply"


def _settings_of(tree: ast.Module, text: str, filename: str) -> dict[str, Setting]:
    reader = _Reader(tree, text, filename)
    settings: dict[str, Setting] = {}
    models, others = _model_loads(reader)
    if models:
        settings.update(_from_model_load(reader, models[0]))
    elif others:
        call = others[0]
        first = call.args[0] if call.args else _kwargs(call).get("pretrained_model_name_or_path")
        if first is not None:
            value = reader.evaluate(first, reader.scope_of(call), call.lineno)
            settings["model"] = _setting(
                reader, "model", first, value, _as_model_id, f"given to {_dotted_name(call.func)}"
            )
    if "model" not in settings:
        constant = _model_constant(reader)
        if constant is not None:
            settings["model"] = constant
    contexts = _context_settings(reader)
    if contexts:
        settings["context"] = contexts[0]
    return settings


def _model_constant(reader: _Reader) -> Setting | None:
    for name, assignments in reader.assignments.get(id(reader.tree), {}).items():
        if _MODEL_CONSTANT.match(name):
            last = assignments[-1]
            value = reader.evaluate(last.value, reader.tree, last.line + 1)
            setting = _setting(
                reader,
                "model",
                last.value,
                value,
                _as_model_id,
                f"module constant {name} (no from_pretrained call found)",
            )
            return replace(setting, line=last.line)
    return None


def _from_model_load(reader: _Reader, call: ast.Call) -> dict[str, Setting]:
    scope = reader.scope_of(call)
    kwargs = _kwargs(call)
    splat, splat_problem = _splat(reader, call, scope)
    out: dict[str, Setting] = {}
    first = call.args[0] if call.args else kwargs.get("pretrained_model_name_or_path")
    loader = _dotted_name(call.func) or "from_pretrained"
    if first is not None:
        out["model"] = _setting(
            reader,
            "model",
            first,
            reader.evaluate(first, scope, call.lineno),
            _as_model_id,
            f"given to {loader}",
        )
    out["quant"] = _quant_setting(reader, call, scope, kwargs, splat, splat_problem)
    plain = {
        "device_map": ("device_map",),
        "max_memory": ("max_memory",),
        "attn": ("attn_implementation",),
        "dtype": ("dtype", "torch_dtype"),
        "trust_remote_code": ("trust_remote_code",),
    }
    for key, names in plain.items():
        node_name = next((n for n in names if n in kwargs), None)
        convert = _as_dtype if key == "dtype" else _as_plain
        if node_name is not None:
            node = kwargs[node_name]
            out[key] = _setting(reader, key, node, reader.evaluate(node, scope, call.lineno), convert)
            continue
        splat_name = next((n for n in names if n in splat), None)
        if splat_name is not None:
            out[key] = _setting(
                reader, key, call, _Known(splat[splat_name]), convert, f"passed through **kwargs of {loader}"
            )
        elif splat_problem:
            out[key] = Setting(
                key,
                None,
                False,
                reader.filename,
                call.lineno,
                reader.source(call.func),
                f"could not determine: {splat_problem}",
            )
    return out


# ---------------------------------------------------------------- files, git, merging


def _committed_text(path: Path) -> tuple[str | None, str | None]:
    """(text of the file in HEAD, why not) — through the git helper (timeouts, no prompts)."""
    from doctor.probes.git import git

    rc, out, err = git(path.parent, "show", f"HEAD:./{path.name}")
    if rc == 0:
        return out, None
    if rc == 127:
        return None, "git is not installed"
    message = (err.strip().splitlines() or ["not in git"])[-1]
    if "not a git repository" in message:
        return None, "not in a git repository"
    if "exists on disk, but not in" in message or "does not exist in" in message:
        return None, "not committed (the file is new or untracked)"
    return None, message[:200]


def _same(a: Setting, b: Setting) -> bool:
    return a.determined == b.determined and a.value == b.value and a.extra == b.extra


def read_script(path: str | Path) -> ScriptReading:
    """Read one script file: the working-tree settings, each with HEAD's version where it differs."""
    given = str(path)
    file = Path(path)
    try:
        text = read_text_file(file)
    except (OSError, UnicodeDecodeError) as exc:
        return ScriptReading(given, {}, f"could not read {given}: {getattr(exc, 'strerror', None) or exc}")
    settings, problem = read_source(text, given)
    committed_text, committed_problem = _committed_text(file.resolve())
    if committed_text is None or committed_text == text:
        return ScriptReading(given, settings, problem, committed_problem)
    committed, committed_parse = read_source(committed_text, given)
    if committed_parse:
        return ScriptReading(given, settings, problem, f"committed version: {committed_parse}")
    merged: dict[str, Setting] = {}
    for key in dict.fromkeys([*settings, *committed]):
        now, then = settings.get(key), committed.get(key)
        if now is not None and then is not None and _same(now, then):
            merged[key] = now
            continue
        revision = (
            Revision(then.value, then.determined, then.line, then.text, then.note)
            if then is not None
            else Revision(None, True, None, None, "not set in the committed file")
        )
        if now is None:
            now = Setting(
                key,
                None,
                False,
                given,
                then.line if then else 0,
                "",
                "not set in the working tree (only in the committed file)",
            )
        merged[key] = replace(now, committed=revision)
    return ScriptReading(given, merged, problem, None)


def script_settings(paths: Iterable[str | Path]) -> dict[str, Setting]:
    """Settings across the run's scripts, keyed like the doctor's flags. The first file that
    determines a key wins; a key no file determines keeps its first "could not determine"."""
    chosen: dict[str, Setting] = {}
    for path in paths:
        for key, setting in read_script(path).settings.items():
            current = chosen.get(key)
            if current is None or (not current.determined and setting.determined):
                chosen[key] = setting
    return chosen


def script_layer(paths: Iterable[str | Path]) -> Layer:
    """What the scripts will pass to the libraries, as a plan layer under TOML and flags (flags win).

    Only values the plan can hold are taken; one it cannot (e.g. "auto" in max_memory) stays out and the
    `script-settings` check reports it with its file:line."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, setting in script_settings(paths).items():
        if not setting.determined or setting.value is None:
            continue
        candidates = {
            key: setting.flag_text() if key == "max_memory" else setting.value,
            **dict(setting.extra),
        }
        for name, value in candidates.items():
            try:
                values[name] = check_value(name, value, setting.where)
            except UsageError:
                continue
            sources[name] = setting.source
    return Layer("the run scripts", values, "script", sources)
