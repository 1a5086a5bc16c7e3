"""A results row: one trial of the sweep, as one line of results.jsonl holds it.

`TrialRow` is the one type the sweep writes and resume, the summary, `niah report`, `niah compare` and
the benchmarks read; `TrialRow.from_json` is the one validator. A row that is JSON but not a result row
(wrong types, a hand edit, a row from something else) raises `RowProblem`, naming the field.

Rows written by an earlier release lack the fields added since (`predicted_prefill_seconds`,
`depth_snapped`, ...): those read as None, meaning "not recorded", never as a made-up value. Keys this
version does not know are kept in `extra` and written back unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard

Status = Literal["ok", "oom", "error", "skipped"]
STATUSES: frozenset[str] = frozenset({"ok", "oom", "error", "skipped"})
RETRY_STATUSES: frozenset[str] = frozenset({"oom", "error"})
_MAX_TOKENS = 2**40


class RowProblem(ValueError):
    """Why a JSON object is not a result row: one line, naming the field."""


@dataclass(frozen=True)
class TrialRow:
    """One trial's row. Field groups follow the trial's life: the cell and its plan; the built prompt
    (absent for a trial skipped before it was built); the outcome (by status)."""

    # -- the cell, and what the plan said about it
    trial_key: str
    status: Status
    context_tokens: int
    depth_percent: float | None  # None for a no-needle control
    control: bool = False
    trial: int | None = None
    correct: bool = False  # strict
    failure_class: str | None = None
    seconds: float | None = None  # the trial's wall time
    seed: int | None = None
    needle_kind: str | None = None
    started_at: str | None = None
    identity_sha256: str | None = None
    predicted_peak_bytes: dict[str, int] | None = None  # the plan's allocator peak per device
    # -- the prompt, once built
    input_tokens: int | None = None
    actual_depth_percent: float | None = None
    needle_value: str | None = None
    distractor_values: tuple[str, ...] = ()
    haystack_tokens: int | None = None
    needle_token_index: int | None = None
    snap_tokens: float | None = None
    input_ids_sha256: str | None = None
    reusable_prefix_tokens: int | None = None  # the prefix shared with the previous prompt
    snap_tolerance_tokens: float | None = None
    depth_snapped: bool | None = None
    # -- a skip
    skip_reason: str | None = None  # "estimate" (the plan rules the length out) | "after_oom"
    limit_tokens: int | None = None
    # -- an OOM or error
    error: str | None = None
    memory: dict[str, Any] | None = None  # measured figures (per-GPU peaks, or the state at the OOM)
    # -- a scored answer
    output_text: str | None = None
    lenient: bool | None = None
    recall: float | None = None
    found_distractors: tuple[str, ...] = ()
    hallucinated_values: tuple[str, ...] = ()
    extra_values: tuple[str, ...] = ()
    scoring_version: int | None = None
    output_tokens: int | None = None
    stopped_at_eos: bool | None = None
    prefill_seconds: float | None = None
    decode_seconds: float | None = None
    reused_prefix_tokens: int | None = None  # the tokens whose KV came from a cached prefix
    predicted_prefill_seconds: float | None = None  # the plan's time model for what was prefilled
    exceeded_prediction: bool | None = None
    # -- keys this version does not know, kept as they were
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def done(self) -> bool:
        """Whether --resume keeps this trial: OOMs, errors and skips caused by an OOM are retried."""
        if self.status in RETRY_STATUSES:
            return False
        return not (self.status == "skipped" and self.skip_reason == "after_oom")

    def to_json(self) -> dict[str, Any]:
        """The row as results.jsonl stores it: the keys its status has, in the order the sweep fills them."""
        keys = list(_CELL_KEYS)
        if self.status == "skipped":
            keys += _SKIP_KEYS
        else:
            keys += _PROMPT_KEYS
            keys += _OUTCOME_KEYS[self.status]
        out = {key: _jsonable(getattr(self, key)) for key in keys}
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, doc: object, *, keyed: bool = True) -> TrialRow:
        """The row a JSON object describes; RowProblem when it is not a result row. `keyed=False` takes the
        fields of a trial that is not in a results file (no trial key: it reads as "")."""
        if not isinstance(doc, Mapping):
            raise RowProblem("not a JSON object")
        problem = _first_problem(doc, keyed=keyed or "trial_key" in doc)
        if problem is not None:
            raise RowProblem(problem)
        known = {name: doc[name] for name in _FIELDS if name in doc}
        known.setdefault("trial_key", "")
        for name in _TEXT_LISTS:
            if known.get(name) is not None:
                known[name] = tuple(known[name])
            else:
                known.pop(name, None)
        extra = {key: value for key, value in doc.items() if key not in _FIELDS}
        return cls(**known, extra=extra)


def as_row(row: TrialRow | Mapping[str, Any], *, keyed: bool = True) -> TrialRow:
    """A row, typed: a JSON object (a results.jsonl line, a literal) is checked by TrialRow.from_json."""
    return row if isinstance(row, TrialRow) else TrialRow.from_json(row, keyed=keyed)


# -- the JSON shape ------------------------------------------------------------------------------------

_CELL_KEYS = (
    "trial_key",
    "status",
    "correct",
    "failure_class",
    "context_tokens",
    "input_tokens",
    "depth_percent",
    "actual_depth_percent",
    "trial",
    "control",
    "seed",
    "needle_kind",
    "needle_value",
    "distractor_values",
    "output_text",
    "seconds",
    "started_at",
    "identity_sha256",
    "predicted_peak_bytes",
)
_SKIP_KEYS = ("skip_reason", "limit_tokens")
_PROMPT_KEYS = (
    "haystack_tokens",
    "needle_token_index",
    "snap_tokens",
    "input_ids_sha256",
    "reusable_prefix_tokens",
    "snap_tolerance_tokens",
    "depth_snapped",
)
_OUTCOME_KEYS: dict[str, tuple[str, ...]] = {
    "oom": ("memory", "error"),
    "error": ("error",),
    "ok": (
        "lenient",
        "recall",
        "found_distractors",
        "hallucinated_values",
        "extra_values",
        "scoring_version",
        "output_tokens",
        "stopped_at_eos",
        "prefill_seconds",
        "decode_seconds",
        "reused_prefix_tokens",
        "predicted_prefill_seconds",
        "memory",
        "exceeded_prediction",
    ),
}
_FIELDS = frozenset(f.name for f in dataclasses.fields(TrialRow)) - {"extra"}
_TEXT_LISTS = ("distractor_values", "found_distractors", "hallucinated_values", "extra_values")


def _jsonable(value: object) -> object:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_text_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_bytes_by_device(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and _is_int(v) for k, v in value.items())


# What each optional field must be when present and not null: (test, the words of the problem).
_OPTIONAL: dict[str, tuple[Any, str]] = {
    "seed": (_is_int, "an integer"),
    "needle_kind": (lambda v: isinstance(v, str), "a string"),
    "started_at": (lambda v: isinstance(v, str), "a string"),
    "identity_sha256": (lambda v: isinstance(v, str), "a string"),
    "predicted_peak_bytes": (_is_bytes_by_device, "a map of device to bytes"),
    "input_tokens": (_is_int, "an integer"),
    "actual_depth_percent": (_is_number, "a number"),
    "needle_value": (lambda v: isinstance(v, str), "a string"),
    "distractor_values": (_is_text_list, "a list of strings"),
    "haystack_tokens": (_is_int, "an integer"),
    "needle_token_index": (_is_int, "an integer"),
    "snap_tokens": (_is_number, "a number"),
    "input_ids_sha256": (lambda v: isinstance(v, str), "a string"),
    "reusable_prefix_tokens": (_is_int, "an integer"),
    "snap_tolerance_tokens": (_is_number, "a number"),
    "depth_snapped": (lambda v: isinstance(v, bool), "true/false"),
    "skip_reason": (lambda v: isinstance(v, str), "a string"),
    "limit_tokens": (_is_int, "an integer"),
    "error": (lambda v: isinstance(v, str), "a string"),
    "memory": (lambda v: isinstance(v, dict), "a JSON object"),
    "output_text": (lambda v: isinstance(v, str), "a string"),
    "lenient": (lambda v: isinstance(v, bool), "true/false"),
    "recall": (_is_number, "a number"),
    "found_distractors": (_is_text_list, "a list of strings"),
    "hallucinated_values": (_is_text_list, "a list of strings"),
    "extra_values": (_is_text_list, "a list of strings"),
    "scoring_version": (_is_int, "an integer"),
    "output_tokens": (_is_int, "an integer"),
    "stopped_at_eos": (lambda v: isinstance(v, bool), "true/false"),
    "prefill_seconds": (_is_number, "a number"),
    "decode_seconds": (_is_number, "a number"),
    "reused_prefix_tokens": (_is_int, "an integer"),
    "predicted_prefill_seconds": (_is_number, "a number"),
    "exceeded_prediction": (lambda v: isinstance(v, bool), "true/false"),
}


def _first_problem(row: Mapping[str, Any], *, keyed: bool) -> str | None:
    """The first field of `row` that a result row cannot have (None when every field is right)."""
    if keyed and (not isinstance(row.get("trial_key"), str) or not row["trial_key"]):
        return "trial_key is not a string"
    if row.get("status") not in STATUSES:
        return f"status {str(row.get('status'))[:40]!r} is not one of {', '.join(sorted(STATUSES))}"
    length = row.get("context_tokens")
    if not (_is_int(length) and 0 < length < _MAX_TOKENS):
        return "context_tokens is not a positive integer"
    control = row.get("control", False)
    if not isinstance(control, bool):
        return "control is not true/false"
    depth = row.get("depth_percent")
    if (not control or depth is not None) and not (_is_number(depth) and 0 <= depth <= 100):
        return "depth_percent is not a number in 0-100"
    if not isinstance(row.get("correct", False), bool):
        return "correct is not true/false"
    if row.get("failure_class") is not None and not isinstance(row["failure_class"], str):
        return "failure_class is not a string"
    if row.get("seconds") is not None and not _is_number(row["seconds"]):
        return "seconds is not a number"
    if row.get("trial") is not None and not _is_int(row["trial"]):
        return "trial is not an integer"
    for name, (test, what) in _OPTIONAL.items():
        if row.get(name) is not None and not test(row[name]):
            return f"{name} is not {what}"
    return None
