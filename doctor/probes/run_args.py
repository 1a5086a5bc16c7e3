"""Facts the run-argument checks need: installed versions of the attention back-ends, and
accelerate's own verdict on each `--max-memory` size (in a child: accelerate imports torch)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

from doctor.probes import Probe, Unavailable, probe
from run_plan.spec import RunSpec

if TYPE_CHECKING:
    from doctor.probes.script_reader import ScriptReading

_SIZES_TIMEOUT_S = 60.0  # importing accelerate imports torch: seconds on a cold disk


@dataclass(frozen=True)
class RunArgFacts:
    versions: dict[str, str | None]  # torch, accelerate, triton, flash-attn, transformers
    flash_attn_importable: bool  # importlib.util.find_spec("flash_attn"), without importing it
    # accelerate.utils.convert_file_size_to_int on each value, from a child process; None = not asked
    # (no --max-memory) or accelerate missing / child failed (see `accelerate_error`).
    accelerate_sizes: dict[str, int | None] | None = None
    accelerate_errors: dict[str, str] = field(default_factory=dict)
    accelerate_error: str | None = None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def accelerate_verdicts(
    values: list[str], timeout_s: float
) -> tuple[dict[str, int | None] | None, dict[str, str], str | None]:
    from doctor.children.child import run_in_child

    result = run_in_child("run_plan.sizes:accelerate_sizes", {"values": values}, timeout_s=timeout_s)
    data: dict[str, Any] = result.data or {}
    if not result.ok:
        return None, {}, result.error
    if data.get("accelerate_version") is None:
        return None, {}, data.get("import_error") or "accelerate is not installed"
    return dict(data.get("sizes") or {}), dict(data.get("errors") or {}), None


def max_memory_values(text: str) -> list[str]:
    """The size texts of a --max-memory value, in either accepted form, for accelerate to judge."""
    from run_plan.errors import UsageError
    from run_plan.sizes import max_memory_pairs

    try:
        return [value.strip() for _, value in max_memory_pairs(text)]
    except UsageError:
        return []  # the check reports the parse error itself


RUN_ARGS: Probe[RunArgFacts] = Probe("run-args")


@probe(RUN_ARGS)
def run_args_probe(target: RunSpec) -> RunArgFacts:
    versions = {n: _version(n) for n in ("torch", "accelerate", "triton", "flash-attn", "transformers")}
    facts = RunArgFacts(
        versions=versions, flash_attn_importable=importlib.util.find_spec("flash_attn") is not None
    )
    text = target.max_memory
    if not text:
        return facts
    values = max_memory_values(str(text))
    sizes, errors, problem = accelerate_verdicts(values, min(_SIZES_TIMEOUT_S, target.probe_timeout_s))
    return RunArgFacts(versions, facts.flash_attn_importable, sizes, errors, problem)


@dataclass(frozen=True)
class ScriptSettingsFacts:
    """What each `--script` passes to transformers/accelerate, read with ast (doctor.probes.script_reader)."""

    readings: tuple[ScriptReading, ...]  # one per --script, in the order given


SCRIPT_SETTINGS: Probe[ScriptSettingsFacts] = Probe("script-settings")


@probe(SCRIPT_SETTINGS)
def script_settings_probe(target: RunSpec) -> ScriptSettingsFacts | Unavailable:
    scripts = tuple(target.scripts)
    if not scripts:
        return Unavailable("no --script given: no run script to read", "not-applicable")
    from doctor.probes.script_reader import read_script

    return ScriptSettingsFacts(tuple(read_script(path) for path in scripts))
