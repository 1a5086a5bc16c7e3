"""Preflight: the doctor judges this run's plan, in-process, before anything is loaded.

The report is saved into the run directory (preflight.json + preflight.md; on --resume once the resumed
run is accepted) and the ResolvedPlan the doctor judged is what the sweep executes. Any FAIL stops the run with the doctor's cause and fix —
except `memory-fit` when some lengths fit: those run and the rest become `skipped_too_long` rows.
`--skip-preflight` overrides and is recorded.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from niah_run.backends.registry import backend_entry
from run_plan.errors import RunFailed
from run_plan.resolved import ResolvedPlan
from run_plan.spec import RunSpec

if TYPE_CHECKING:
    from doctor.api import Judgement
    from doctor.report.model import Report

PREFLIGHT_JSON = "preflight.json"
PREFLIGHT_MD = "preflight.md"
MEMORY_FIT = "memory-fit"  # the estimator's check (doctor/checks/memory.py)


def run_preflight(spec: RunSpec, run_dir: Path, *, save: bool = True) -> Judgement:
    """The doctor's judgement of `spec`. Its report goes into the run folder when `save` (the run is
    accepted: a new run); a --resume saves it only once it is accepted (`save_report`), so a refused one
    leaves the folder as it was, and a failing preflight's report goes to a folder of its own then."""
    from doctor.api import judge
    from doctor.report.model import Status

    only = backend_entry(spec.backend).preflight_sections
    judgement = judge(spec, only=only, argv=("niah", "run", "--preflight"))
    report, plan = judgement.report, judgement.plan
    some_fit = any(length.fits for length in plan.lengths)
    failed = [c for c in report.checks if c.status is Status.FAIL and not (c.id == MEMORY_FIT and some_fit)]
    if save or failed:
        where = run_dir if save else Path(tempfile.mkdtemp(prefix="niah-preflight-"))
        save_report(report, where)
    if failed:
        first = failed[0]
        fix = first.fix.summary if first.fix else "see the report"
        commands = "; ".join(first.fix.commands) if first.fix and first.fix.commands else ""
        more = f" (also failing: {', '.join(c.id for c in failed[1:])})" if len(failed) > 1 else ""
        kept = "" if save else f"; {run_dir} is left as it was"
        raise RunFailed(
            f"preflight: {first.id}: {first.summary}{more}. Report: {where / PREFLIGHT_MD}{kept}",
            hint=f"{fix}{' — ' + commands if commands else ''}. Or rerun with --skip-preflight.",
        )
    return judgement


def save_report(report: Report, folder: Path) -> None:
    """The doctor's report as preflight.json and preflight.md in `folder`."""
    from doctor.report.render_json import render_json
    from doctor.report.render_markdown import render_markdown
    from niah_run.run_folder import write_text

    write_text(folder / PREFLIGHT_JSON, render_json(report))
    write_text(folder / PREFLIGHT_MD, render_markdown(report))


def unjudged_plan(spec: RunSpec) -> ResolvedPlan:
    """The plan when the user skipped the doctor: the same auto rules, no estimate (nothing skipped as too long)."""
    from doctor.plan import plan_without_estimate, settle_static_choices

    settled, decisions = settle_static_choices(spec)
    return plan_without_estimate(settled, decisions, "preflight skipped")
