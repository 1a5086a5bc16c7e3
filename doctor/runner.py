"""Run selected checks against a context: timing, probe-availability rules, exception isolation."""

from __future__ import annotations

import datetime as _dt
import time
import traceback
from collections.abc import Sequence
from typing import Any

from doctor import __version__
from doctor.context import DoctorContext
from doctor.probes import Unavailable
from doctor.registry import CheckSpec, Outcome
from doctor.report.model import CheckResult, Evidence, Report, Status, ToolInfo
from doctor.report.redact import Redactor, redact_report


def _unavailable_outcome(spec: CheckSpec, ctx: DoctorContext) -> Outcome | None:
    for name in spec.needs:
        facts = ctx.probe(name)
        if isinstance(facts, Unavailable):
            evidence = (Evidence(f"probe.{name}", facts.reason, "doctor"),)
            if facts.kind in ("error", "timeout"):
                return Outcome(Status.ERROR, f"could not check: {facts.reason}", evidence)
            return Outcome.skip(facts.reason, evidence)
    return None


def run_check(
    spec: CheckSpec, ctx: DoctorContext, *, debug: bool = False
) -> tuple[CheckResult, dict[str, Any]]:
    start = time.monotonic()
    error: str | None = None
    try:
        outcome = _unavailable_outcome(spec, ctx) or spec.run(ctx)
    except Exception as exc:  # one broken check must not sink the report
        error = f"{type(exc).__name__}: {exc}"
        if debug:
            error += "\n" + traceback.format_exc()
        outcome = Outcome(Status.ERROR, "the check itself failed (a bug in niah-doctor; please report it)")
    if outcome.status is Status.ERROR and error is None:
        error = next((str(e.value) for e in outcome.evidence if e.key.startswith("probe.")), None)
    result = CheckResult(
        id=spec.id,
        title=spec.title,
        section=spec.section,
        status=outcome.status,
        summary=outcome.summary,
        evidence=outcome.evidence,
        fix=outcome.fix,
        duration_ms=int((time.monotonic() - start) * 1000),
        error=error,
    )
    return result, dict(outcome.attachments)


def build_report(
    specs: Sequence[CheckSpec],
    ctx: DoctorContext,
    argv: Sequence[str],
    *,
    debug: bool = False,
    redactor: Redactor | None = None,
) -> Report:
    """Run the checks, gather facts and attachments, and return the *redacted* report."""
    needed = {name for spec in specs for name in (*spec.needs, *spec.wants)}
    ctx.prefetch(sorted(needed))
    results: list[CheckResult] = []
    attachments: dict[str, Any] = {}
    for spec in specs:
        result, extra = run_check(spec, ctx, debug=debug)
        results.append(result)
        attachments.update(extra)
    report = Report(
        tool=ToolInfo("niah-doctor", __version__, tuple(argv)),
        created_at=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        target=ctx.target.describe(),
        checks=tuple(results),
        facts=ctx.facts(),
        attachments=attachments,
    )
    return redact_report(report, redactor)
