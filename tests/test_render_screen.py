"""Every machine of the fake-hardware catalogue, rendered at 60, 80 and 120 columns: the default text
report fits one screen (LINE_BUDGET lines), every line but a command, a link or the code of an edit fits
the width, and every command shown is whole and pastes into a shell."""

from __future__ import annotations

import pytest

from doctor.context import DoctorContext
from doctor.registry import load_checks
from doctor.report.model import Report, Status
from doctor.report.render_text import LINE_BUDGET, render_text
from doctor.runner import build_report
from run_plan.shell import shell_line_problem
from run_plan.spec import RunSpec
from tests.fakes import scenarios as sc

WIDTHS = (60, 80, 120)
# The README's first model command (the seed's run): Llama 4 Scout, bnb 4-bit, 128k, one H100.
SEED = RunSpec(model=sc.SCOUT, quant="bnb-4bit", context=131072, gpus="1xH100-80GB")


def report_for(scenario: sc.Scenario, target: RunSpec) -> Report:
    ctx = DoctorContext.from_snapshot(target, scenario.snapshot)
    return build_report(load_checks(), ctx, ("doctor",))


def _unbreakable(line: str, report: Report) -> bool:
    body = line.strip()
    code = {e.code for c in report.checks if c.fix for e in c.fix.edits}
    return body.startswith(("$ ", "http")) or body in code


@pytest.mark.parametrize("name", sorted(sc.SCENARIOS))
def test_every_scenario_fits_one_screen_at_every_width(name: str) -> None:
    scenario = sc.SCENARIOS[name]()
    for target in (scenario.target, SEED):
        report = report_for(scenario, target)
        for cols in WIDTHS:
            lines = render_text(report, color=False, width=cols).splitlines()
            assert len(lines) <= LINE_BUDGET, (name, target.model, cols, len(lines))
            too_wide = [line for line in lines if len(line) > cols and not _unbreakable(line, report)]
            assert not too_wide, (name, cols, too_wide)
            shown = [line.strip()[2:] for line in lines if line.strip().startswith("$ ")]
            firsts = {c.fix.commands[0] for c in report.checks if c.fix and c.fix.commands}
            assert set(shown) <= firsts  # each shown whole, as the check wrote it
            assert all(shell_line_problem(cmd) is None for cmd in shown)
            assert lines[0].split(":")[0] in ("OK", "OK with warnings", "PROBLEMS FOUND")  # verdict first


def test_the_seed_case_on_a_healthy_h100_names_each_problem_in_two_lines() -> None:
    """The machine from the catalogue; the model, its config and the memory estimate from the real probes."""
    ctx = DoctorContext(SEED)
    real = {name: ctx.probe(name) for name in ("model", "config-load", "memory")}
    scenario = sc.healthy_h100().with_facts(**{k.replace("-", "_"): v for k, v in real.items()})
    report = report_for(scenario, SEED)
    lines = render_text(report, color=False, width=80).splitlines()
    assert len(lines) <= LINE_BUDGET
    assert {"memory-fit", "quantized-weights"} <= {c.id for c in report.checks if c.status is not Status.PASS}
    found = [c for c in report.checks if c.status in (Status.FAIL, Status.ERROR, Status.WARN)]
    for check in found:
        at = next(i for i, line in enumerate(lines) if line.split(":")[0].endswith(f" {check.id}"))
        assert lines[at + 1].startswith(("  $ ", "  fix: ", "  in "))
    gpu = next(line for line in lines if line.startswith("✓ gpu "))
    assert "NVIDIA H100 80GB HBM3" in gpu and "driver 570.124.06" in gpu
    memory = next(line for line in lines if line.startswith("✗ memory "))
    assert "does not fit 1× H100-80GB" in memory
