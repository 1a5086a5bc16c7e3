"""Does `import torch` load the torch the report describes?

The static checks read torch/bitsandbytes/triton/transformers from their distribution metadata. A
`torch/` folder (or a `torch.py`) earlier on `sys.path` — through PYTHONPATH, the current directory,
a script's own folder, or a stray source checkout — shadows the installed copy: the report would say
"torch 2.x installed, pass" while `import torch` loads, or hangs on, the other copy. The probe
compares `importlib.util.find_spec(name).origin` (nothing is imported) with the distribution's own
files; see doctor.probes.libs_static.import_origin.
"""

from __future__ import annotations

from doctor.context import DoctorContext
from doctor.probes.libs_static import IMPORT_ORIGINS, ImportOrigin
from doctor.registry import Outcome, check
from doctor.report.model import Evidence, Fix

HOW = "python -c 'import {name}; print({name}.__file__)'"


def _evidence(module: ImportOrigin) -> Evidence:
    value: dict[str, object] = {
        "distribution": module.dist,
        "installed_file": module.expected,
        "import_loads": module.origin,
        "verdict": module.verdict,
    }
    if module.front_copies:
        value["run_from_cwd_or_script_dir_loads"] = list(module.front_copies)
    return Evidence(
        f"import.{module.name}", value, "importlib.util.find_spec (no import)", HOW.format(name=module.name)
    )


@check(
    "import-shadowing",
    title="`import` loads the installed torch/triton/bitsandbytes/transformers",
    section="libraries",
    needs=(IMPORT_ORIGINS,),
)
def import_shadowing(ctx: DoctorContext) -> Outcome:
    facts = ctx.needed(IMPORT_ORIGINS)
    evidence = [_evidence(m) for m in facts.modules]
    fix = Fix(
        "Remove or rename the stray copy (or drop its folder from PYTHONPATH), so `import` finds the installed one",
        ('echo "$PYTHONPATH"', *(HOW.format(name=m.name) for m in facts.problems[:2])),
    )
    shadowed = [m for m in facts.modules if m.verdict == "shadowed"]
    stray = [m for m in facts.modules if m.verdict == "no-distribution"]
    if shadowed or stray:
        parts = [
            f"`import {m.name}` loads {m.origin or 'a namespace folder'} (via {m.via}), not the installed "
            f"{m.dist} at {m.expected}"
            for m in shadowed
        ]
        parts += [
            f"`import {m.name}` loads {m.origin or 'a namespace folder'} (via {m.via}), which no "
            "installed distribution owns"
            for m in stray
        ]
        return Outcome.fail(
            "; ".join(parts) + " — the versions this report checked are not the ones a run would use",
            evidence,
            fix,
        )
    fronts = [m for m in facts.modules if m.front_copies]
    if fronts:
        parts = [
            f"a run started from {facts.cwd} (or a --script's folder) would import {m.name} from "
            f"{m.front_copies[0]}, not the installed {m.dist}"
            for m in fronts
        ]
        return Outcome.warn("; ".join(parts), evidence, fix)
    found = [m.name for m in facts.modules if m.origin]
    unknown = [m.name for m in facts.modules if m.verdict == "unknown"]
    note = f"; {', '.join(unknown)} installed in develop mode, not compared" if unknown else ""
    return Outcome.ok(f"{', '.join(found) or 'none of them'} resolve to the installed files{note}", evidence)
