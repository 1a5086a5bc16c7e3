"""`ResolvedPlan`: a RunSpec with every "auto" decided, plus what the doctor predicts for each length.

The doctor builds it (doctor.plan), prints it, and writes it with `--plan-out`; `niah run` executes it
(`--plan FILE` verbatim, or the object the in-process doctor just judged). One JSON form both ways.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from run_plan.errors import UsageError
from run_plan.safe_files import read_text_file
from run_plan.spec import RunSpec
from run_plan.timing import PrefillTimeModel

PLAN_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class DevicePrediction:
    """One device at one length: the allocator peak the run should reach, and the cap it runs under."""

    device: str  # "cuda:0"
    predicted_peak_bytes: int  # weights + KV + prefill activations: what torch.cuda.max_memory_allocated sees
    limit_bytes: (
        int  # what the caching allocator may use there (the --max-memory budget, or the card's usable)
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "predicted_peak_bytes": self.predicted_peak_bytes,
            "limit_bytes": self.limit_bytes,
        }


@dataclass(frozen=True)
class LengthPlan:
    tokens: int
    fits: bool
    devices: tuple[DevicePrediction, ...] = ()
    why_not: str | None = None  # set when fits is False
    prefill_seconds: float | None = None  # predicted for a prefill from the first token (no reuse)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "fits": self.fits,
            "devices": [d.to_dict() for d in self.devices],
            "why_not": self.why_not,
            "prefill_seconds": self.prefill_seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LengthPlan:
        devices = tuple(
            DevicePrediction(str(d["device"]), int(d["predicted_peak_bytes"]), int(d["limit_bytes"]))
            for d in data.get("devices") or []
        )
        seconds = data.get("prefill_seconds")
        if not isinstance(data["fits"], bool):  # bool("false") is True: a length would run that does not fit
            raise ValueError(f"lengths: fits is {data['fits']!r}, not true or false")
        return cls(
            int(data["tokens"]),
            data["fits"],
            devices,
            data.get("why_not"),
            float(seconds) if seconds is not None else None,
        )

    def predicted_by_device(self) -> dict[str, int]:
        return {d.device: d.predicted_peak_bytes for d in self.devices}


@dataclass(frozen=True)
class Decision:
    """What one "auto" became, and why (shown in the report and saved with the plan)."""

    name: str
    value: Any
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "why": self.why}


@dataclass(frozen=True)
class ResolvedPlan:
    spec: RunSpec  # concrete: attn, prefill_chunk are decided
    lengths: tuple[LengthPlan, ...] = ()  # one per spec.lengths entry, when an estimate exists
    max_context_tokens: int | None = None
    decisions: tuple[Decision, ...] = ()
    estimate_method: str | None = None
    prefill_time: PrefillTimeModel | None = None  # how long a prefill of any token range takes

    def predicted_prefill_seconds(self, start: int, end: int) -> float | None:
        """The time plan for prefilling positions [start, end) at the plan's chunk (None: no time plan)."""
        if self.prefill_time is None:
            return None
        seconds = self.prefill_time.seconds(start, end, self.spec.prefill_chunk)
        # an overflow (a plan file's tiny rate) predicts nothing: no row, ETA or time plan carries inf
        return seconds if math.isfinite(seconds) else None

    # -- questions the sweep asks ------------------------------------------------------------------

    def length_plan(self, tokens: int) -> LengthPlan | None:
        return next((lp for lp in self.lengths if lp.tokens == tokens), None)

    def too_long(self) -> tuple[int, ...]:
        """Requested lengths the plan rules out before loading (they become skipped_too_long rows)."""
        return tuple(lp.tokens for lp in self.lengths if not lp.fits)

    # -- JSON --------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": PLAN_SCHEMA_VERSION,
            "spec": self.spec.to_dict(),
            "lengths": [lp.to_dict() for lp in self.lengths],
            "max_context_tokens": self.max_context_tokens,
            "decisions": [d.to_dict() for d in self.decisions],
            "estimate_method": self.estimate_method,
            "prefill_time": self.prefill_time.to_dict() if self.prefill_time else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResolvedPlan:
        if not isinstance(data, dict) or data.get("schema_version") != PLAN_SCHEMA_VERSION:
            raise UsageError(
                "not a niah-doctor plan (schema_version 1)",
                hint="Write one with `doctor ... --plan-out plan.json`.",
            )
        from run_plan.options import spec_from_saved

        try:
            return cls(
                spec=spec_from_saved(data["spec"], "the plan"),
                lengths=tuple(LengthPlan.from_dict(x) for x in data.get("lengths") or []),
                max_context_tokens=_optional_count(data.get("max_context_tokens"), "max_context_tokens"),
                decisions=tuple(
                    Decision(str(d["name"]), d.get("value"), str(d.get("why", "")))
                    for d in data.get("decisions") or []
                ),
                estimate_method=data.get("estimate_method"),
                prefill_time=PrefillTimeModel.from_dict(data["prefill_time"])
                if data.get("prefill_time")
                else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(
                f"the plan is malformed: {type(exc).__name__}: {exc}",
                hint="Write the plan again with `doctor ... --plan-out FILE`.",
            ) from None

    def write(self, path: Path) -> None:
        from run_plan.safe_files import write_atomic_text

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        except OSError as exc:
            raise UsageError(f"cannot write the plan to {path}: {exc.strerror or exc}") from None

    @classmethod
    def read(cls, path: Path) -> ResolvedPlan:
        try:
            data = json.loads(read_text_file(path))
        except FileNotFoundError:
            raise UsageError(f"--plan {path} does not exist") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise UsageError(
                f"cannot read --plan {path}: {exc}",
                hint="Give the file `doctor ... --plan-out FILE` wrote (a regular file, not a pipe).",
            ) from None
        return cls.from_dict(data)


def _optional_count(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} is {value!r}, not a number of tokens")
    return value
