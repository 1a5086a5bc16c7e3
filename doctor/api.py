"""What other tools call: judge a RunSpec and get the report and the ResolvedPlan it judged.

`niah run` calls `judge` in-process and executes the returned plan; `doctor` prints the same report.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

from doctor.report.model import Report, Status
from doctor.report.render_text import verdict_line
from run_plan.resolved import ResolvedPlan
from run_plan.spec import RunSpec


@dataclasses.dataclass(frozen=True)
class Judgement:
    report: Report
    plan: ResolvedPlan


def _refusals(spec: RunSpec) -> dict[str, str | None] | None:
    """The attention implementations the model's class refuses, where attn=auto must choose one."""
    if spec.attn != "auto" or not spec.model or spec.backend != "transformers":
        return None
    from doctor.probes.config_load import attention_refusals

    return attention_refusals(spec)


def judge(
    spec: RunSpec,
    *,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    debug: bool = False,
    argv: Sequence[str] | None = None,
) -> Judgement:
    """Settle the plan's choices, run the selected checks against it, and return both."""
    from doctor.context import DoctorContext
    from doctor.plan import (
        planned_gpus_or_none,
        remember_static_decisions,
        resolve_plan,
        settle_static_choices,
        with_verdict,
    )
    from doctor.registry import load_checks, select
    from doctor.runner import build_report

    ctx = DoctorContext(spec)
    settled, decisions = settle_static_choices(spec, planned_gpus_or_none(ctx), _refusals(spec))
    ctx.target = settled  # the probes that read the plan run later, on the settled spec
    remember_static_decisions(ctx, decisions)
    report = build_report(
        select(load_checks(), tuple(only), tuple(skip)),
        ctx,
        tuple(argv or ("doctor", *sys.argv[1:])),
        debug=debug,
    )
    plan = resolve_plan(ctx)  # the object the memory checks judged (cached on ctx), or made now
    failing = tuple(c.id for c in report.checks if c.status is Status.FAIL)
    plan = with_verdict(plan, verdict_line(report), failing)  # names every failing and warning check
    report = dataclasses.replace(report, attachments={**report.attachments, "plan": plan.to_dict()})
    # The plan holds paths and URLs too: scrub it like the rest (build_report redacted before it was added).
    from doctor.report.redact import redact_report

    report = redact_report(report)
    return Judgement(report, plan)
