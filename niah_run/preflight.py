"""Preflight: run the doctor for the same target before anything is loaded.

The report is saved into the run directory (preflight.json + preflight.md). Any FAIL stops the run
with the doctor's own cause and fix; `--skip-preflight` overrides and is recorded. Lengths the
memory estimator says cannot fit are returned so the sweep marks them `skipped_too_long` up front.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from doctor.errors import RunFailed
from doctor.target import Target
from niah_run.config import RunConfig

PREFLIGHT_JSON = "preflight.json"
PREFLIGHT_MD = "preflight.md"
MEMORY_FIT = "memory-fit"  # the estimator's check (doctor/checks/memory.py)


@dataclass(frozen=True)
class PreflightResult:
    ran: bool
    verdict: str
    max_context_tokens: int | None = None  # from the estimator, when it could tell
    too_long: tuple[int, ...] = ()  # requested lengths above max_context_tokens
    failures: tuple[str, ...] = field(default_factory=tuple)


def target_for(config: RunConfig) -> Target:
    return Target(model=config.model, context=max(config.lengths), quant=config.quant, dtype=config.dtype,
                  attn=config.attn, prefill_chunk=config.prefill_chunk, max_memory=config.max_memory,
                  device_map=config.device_map, trust_remote_code=config.trust_remote_code, online=config.online,
                  base_url=config.base_url if config.backend == "openai" else None)


def _max_context(attachments: Any) -> int | None:
    estimate = attachments.get("estimate") if hasattr(attachments, "get") else None
    value = estimate.get("max_context_tokens") if isinstance(estimate, dict) else None
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def run_preflight(config: RunConfig, run_dir: Path) -> PreflightResult:
    if config.skip_preflight:
        return PreflightResult(ran=False, verdict="skipped by --skip-preflight")
    from doctor.cli import run_doctor
    from doctor.report.model import Status
    from doctor.report.render_json import render_json
    from doctor.report.render_markdown import render_markdown

    # A server run needs no local GPU: judge this machine's basics and the server, not local memory.
    only = ("platform", "server") if config.backend == "openai" else ()
    report = run_doctor(target_for(config), only=only, argv=("niah", "run", "--preflight"))
    (run_dir / PREFLIGHT_JSON).write_text(render_json(report), encoding="utf-8")
    (run_dir / PREFLIGHT_MD).write_text(render_markdown(report), encoding="utf-8")
    limit = _max_context(report.attachments)
    too_long = tuple(n for n in config.lengths if limit is not None and n > limit)
    some_fit = limit is not None and len(too_long) < len(config.lengths)
    # "Does not fit at the longest length" is what per-length skipping is for: the shorter lengths
    # still run and the rest become `skipped_too_long`. Every other FAIL stops the run.
    failed = [c for c in report.checks if c.status is Status.FAIL and not (c.id == MEMORY_FIT and some_fit)]
    if failed:
        first = failed[0]
        fix = first.fix.summary if first.fix else "see the report"
        commands = "; ".join(first.fix.commands) if first.fix and first.fix.commands else ""
        more = f" (and {len(failed) - 1} more failing check(s))" if len(failed) > 1 else ""
        raise RunFailed(f"preflight: {first.id}: {first.summary}{more}. Report: {run_dir / PREFLIGHT_MD}",
                        hint=f"{fix}{' — ' + commands if commands else ''}. Or rerun with --skip-preflight.")
    return PreflightResult(ran=True, verdict=report.verdict(), max_context_tokens=limit, too_long=too_long)
