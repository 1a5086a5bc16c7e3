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
    """The report and the plan it judged. The verdict is the report's, not the plan's."""

    report: Report
    plan: ResolvedPlan

    @property
    def verdict(self) -> str:
        """The report's one line: `PROBLEMS FOUND: 1 fail (memory-fit), …` names every failing and warning
        check."""
        return verdict_line(self.report)

    @property
    def failing_checks(self) -> tuple[str, ...]:
        """The ids of the checks that failed, in report order."""
        return tuple(c.id for c in self.report.checks if c.status is Status.FAIL)


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
    )
    from doctor.registry import load_checks, select
    from doctor.report.redact import redact_report
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
    report = dataclasses.replace(report, attachments={**report.attachments, "plan": plan.to_dict()})
    # The plan holds paths and URLs too: scrub it like the rest (build_report redacted before it was added).
    return Judgement(redact_report(report), plan)
