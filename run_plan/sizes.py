"""`--max-memory` parsing with accelerate's own rules, without importing accelerate (it imports torch).

`parse_max_memory("0=70GiB,1=70GiB,cpu=200GiB")` returns the dict that `from_pretrained(max_memory=...)`
takes: GPU keys as ints, values as the user wrote them (accelerate converts them itself later).
Every value is first checked with `size_to_bytes`, a replica of
`accelerate.utils.modeling.convert_file_size_to_int` (accelerate 1.x):
- units GiB/MiB/KiB (powers of 2) and GB/MB/KB (powers of 10), case-insensitive;
- a trailing lowercase "b" on GB/MB/KB means BITS ("75Gb" is 75e9 / 8 bytes = 9.4 GB);
- anything else ("auto", "75G", "75 gigs") is "not in a valid format".
The run-args check confirms the same values with accelerate itself in a child process
(`accelerate_sizes`), so the replica only decides when accelerate is missing.
"""

from __future__ import annotations

import math
import re
from typing import Any

from run_plan.errors import UsageError

MaxMemory = dict[int | str, int | str]

# Non-GPU keys accelerate's get_max_memory accepts; everything else must be a GPU index (int).
NAMED_DEVICES: tuple[str, ...] = ("cpu", "disk", "mps")
_UNITS: tuple[tuple[str, int], ...] = (
    ("GIB", 2**30),
    ("MIB", 2**20),
    ("KIB", 2**10),
    ("GB", 10**9),
    ("MB", 10**6),
    ("KB", 10**3),
)
_CUDA_KEY = re.compile(r"^(?:cuda|gpu)\s*:?\s*(\d+)$", re.IGNORECASE)
_ASCII_INT = re.compile(r"[0-9]+")
_HINT = "Use sizes like 70GiB or 75GB (an integer is bytes); GPUs by index: 0=70GiB,1=70GiB,cpu=200GiB."


def is_bits(value: str) -> bool:
    """accelerate reads a lowercase trailing b on GB/MB/KB as bits: '75Gb' is 9.4 GB, not 75."""
    return value.upper().endswith(("GB", "MB", "KB")) and value.endswith("b")


def size_to_bytes(value: str | int) -> int:
    """Bytes for one size, by accelerate's rules; UsageError where accelerate raises ValueError."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise UsageError(f"size {value} is negative", hint=_HINT)
        return value
    text = str(value)
    if _ASCII_INT.fullmatch(text.strip()):
        return int(text.strip())  # we pass digit strings as int bytes, which accelerate accepts
    for unit, scale in _UNITS:
        if text.upper().endswith(unit):
            return _scaled(text, text[: -len(unit)], scale)
    raise UsageError(
        f"size {text!r} is not in a valid format (accelerate would raise ValueError)", hint=_HINT
    )


def _scaled(text: str, number: str, scale: int) -> int:
    try:
        amount = float(number)
    except ValueError:
        raise UsageError(
            f"size {text!r} is not in a valid format (accelerate would raise ValueError)", hint=_HINT
        ) from None
    if not math.isfinite(amount):
        raise UsageError(f"size {text!r} is not a finite number", hint=_HINT)
    size = int(amount * scale)
    if is_bits(text):
        size //= 8
    if size < 0:
        raise UsageError(f"size {text!r} is negative", hint=_HINT)
    return size


def parse_device_key(key: str) -> int | str:
    """'0' -> 0, 'cpu' -> 'cpu'. 'cuda:0' is what torch calls it, but accelerate rejects it."""
    name = key.strip()
    if _ASCII_INT.fullmatch(name):
        return int(name)
    if name.lower() in NAMED_DEVICES:
        return name.lower()
    cuda = _CUDA_KEY.match(name)
    if cuda:
        raise UsageError(
            f"--max-memory key {name!r} is not valid for accelerate: use {cuda.group(1)} "
            f"(GPUs are plain integers)",
            hint=_HINT,
        )
    raise UsageError(
        f"--max-memory key {name!r} is not a device accelerate knows "
        f"(integers for GPUs, 'cpu', 'disk', 'mps')",
        hint=_HINT,
    )


def max_memory_pairs(text: str) -> list[tuple[str, str]]:
    """(device, size) texts of either form: `0=70GiB,cpu=200GiB`, or the dict a run script passes to
    from_pretrained (`{0: "75GiB", "cpu": "auto"}`, or JSON `{"0": "75GiB"}`), read with
    ast.literal_eval: literals only, nothing is executed."""
    stripped = str(text).strip()
    if stripped.startswith("{"):
        import ast

        try:
            mapping = ast.literal_eval(stripped)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise UsageError(
                f"--max-memory {stripped[:80]!r} is not a dict of literals "
                '(expected {0: "70GiB", "cpu": "200GiB"})',
                hint=_HINT,
            ) from None
        if not isinstance(mapping, dict):
            raise UsageError("--max-memory must be a dict of device to size", hint=_HINT)
        return [(str(key), str(value)) for key, value in mapping.items()]
    pairs = []
    for item in (item.strip() for item in stripped.split(",") if item.strip()):
        key_text, sep, value_text = item.partition("=")
        if not sep:
            raise UsageError(f"--max-memory entry {item!r} has no '=' (expected DEVICE=SIZE)", hint=_HINT)
        pairs.append((key_text, value_text))
    return pairs


def parse_max_memory(text: str) -> MaxMemory:
    """'0=70GiB,cpu=200GiB' (or the dict form `{0: "70GiB", "cpu": "200GiB"}`) -> {0: '70GiB', 'cpu': '200GiB'};
    UsageError naming the bad key or size ("auto" is one: accelerate raises ValueError on it)."""
    result: MaxMemory = {}
    items = max_memory_pairs(text)
    if not items:
        raise UsageError("--max-memory is empty", hint=_HINT)
    for key_text, value_text in items:
        key = parse_device_key(key_text)
        value = value_text.strip()
        try:
            size_to_bytes(value)
        except UsageError as exc:
            raise UsageError(f"--max-memory {key_text.strip()}={value}: {exc.message}", hint=_HINT) from None
        if key in result:
            raise UsageError(f"--max-memory key {key_text.strip()!r} is given twice", hint=_HINT)
        result[key] = int(value) if _ASCII_INT.fullmatch(value) else value
    return result


def max_memory_bytes(budget: MaxMemory) -> dict[int | str, int]:
    """Bytes per device by the replica rules (see module doc)."""
    return {key: size_to_bytes(value) for key, value in budget.items()}


def format_max_memory(budget: MaxMemory) -> str:
    """The inverse of parse_max_memory (used for round-trip tests and report evidence)."""
    return ",".join(f"{key}={value}" for key, value in budget.items())


def accelerate_sizes(args: dict[str, Any]) -> dict[str, Any]:
    """CHILD-PROCESS function: ask accelerate itself to convert each value (it imports torch).

    Returns {"accelerate_version", "sizes": {value: bytes | None}, "errors": {value: message}}.
    """
    try:
        import accelerate
        from accelerate.utils import convert_file_size_to_int
    except Exception as exc:  # missing or broken accelerate: the parent falls back to the replica
        return {"accelerate_version": None, "import_error": f"{type(exc).__name__}: {exc}"}
    sizes: dict[str, int | None] = {}
    errors: dict[str, str] = {}
    for value in args.get("values", []):
        try:
            sizes[value] = int(convert_file_size_to_int(int(value) if _ASCII_INT.fullmatch(value) else value))
        except Exception as exc:  # OverflowError for "infGB" too, not only ValueError
            sizes[value] = None
            errors[value] = f"{type(exc).__name__}: {exc}"
    return {"accelerate_version": accelerate.__version__, "sizes": sizes, "errors": errors}
