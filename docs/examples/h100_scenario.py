"""The seed's command as the doctor judges it on a healthy H100 box: the machine is the fake-hardware
scenario `healthy-h100` of the test suite, the model, its config and the memory estimate come from the
real probes on the machine that runs this. For docs/examples/capture.sh."""

import sys

from doctor.context import DoctorContext
from doctor.registry import load_checks
from doctor.report.render_text import render_text
from doctor.runner import build_report
from run_plan.spec import RunSpec
from tests.fakes import scenarios as sc

SEED = RunSpec(model=sc.SCOUT, quant="bnb-4bit", context=131072, gpus="1xH100-80GB")
argv = ("doctor", "--model", sc.SCOUT, "--quant", "bnb-4bit", "--context", "128k", "--gpus", "1xH100-80GB")

if __name__ == "__main__":
    real = {name: DoctorContext(SEED).probe(name) for name in ("model", "config-load", "memory")}
    scenario = sc.healthy_h100().with_facts(**{k.replace("-", "_"): v for k, v in real.items()})
    report = build_report(load_checks(), DoctorContext.from_snapshot(SEED, scenario.snapshot), argv)
    sys.stdout.write(render_text(report, color=False, verbose="-v" in sys.argv))
