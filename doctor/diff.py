"""`doctor diff A.json B.json`: what differs between two saved reports.

The question every ticket asks: the job works on machine A and fails on machine B, what is different?
Compares the planned run, the check verdicts, library versions, GPUs and driver, the environment
variables the probes recorded, and the platform. Only differences are printed; exit 0 (a difference
is an answer, not a failure), 2 when a file is not a doctor JSON report.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from doctor.boundary import debug_option
from doctor.report.environment import environment_variables, library_versions
from doctor.report.load import read_report_document
from doctor.report.render_markdown import md_cell
from doctor.report.render_text import terminal_width
from run_plan.text import inert
from run_plan.units import gib

MISSING = "—"  # the key is absent from one report (an older doctor, a probe that did not run)


@dataclass(frozen=True)
class Difference:
    section: str  # "checks", "libraries", ...
    key: str
    a: str
    b: str
    note: str = ""  # e.g. B's summary of a check whose status changed


def _text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value) or "none"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


def _facts(doc: Mapping[str, Any], probe: str) -> dict[str, Any]:
    value = (doc.get("facts") or {}).get(probe)
    return value if isinstance(value, dict) else {}


def _platform(doc: Mapping[str, Any]) -> dict[str, Any]:
    host = _facts(doc, "host")
    keys = ("system", "os_release", "machine", "libc", "python_version", "virtualenv", "cpu_count")
    out = {k: host[k] for k in keys if k in host}
    if "ram_total_bytes" in host:
        out["ram_total"] = gib(host["ram_total_bytes"])
    out["niah-doctor"] = (doc.get("tool") or {}).get("version")
    return out


def _libraries(doc: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict(library_versions(doc.get("facts") or {}))
    build = _facts(doc, "torch-build")
    if build:
        out["torch build"] = (build.get("cuda") and f"CUDA {build['cuda']}") or (
            f"ROCm {build['hip']}" if build.get("hip") else ("CPU-only" if build.get("installed") else None)
        )
    bnb = _facts(doc, "bnb-files")
    if "cuda_versions" in bnb:
        out["bitsandbytes CUDA libraries"] = bnb["cuda_versions"]
    runtime = _facts(doc, "packages").get("nvidia_runtime") or {}
    out.update({name: version for name, version in runtime.items()})
    return out


def _gpu(doc: Mapping[str, Any]) -> dict[str, Any]:
    nvml = _facts(doc, "nvml")
    out: dict[str, Any] = {}
    if not nvml:
        return out
    gpus = nvml.get("gpus") or []
    out["GPU count"] = len(gpus)
    for g in gpus:
        i = g.get("index")
        cc = g.get("compute_capability")
        out[f"GPU {i}"] = f"{g.get('name')} ({gib(g.get('memory_total_bytes'))}" + (
            f", sm_{''.join(str(x) for x in cc)})" if cc else ")"
        )
        if g.get("mig_enabled") is not None:
            out[f"GPU {i} MIG"] = "on" if g["mig_enabled"] else "off"
    out["NVIDIA driver"] = nvml.get("driver_version")
    cuda = nvml.get("cuda_driver_version")
    out["driver supports CUDA ≤"] = ".".join(str(x) for x in cuda) if isinstance(cuda, list) else cuda
    live = _facts(doc, "torch-live")
    if "cuda_available" in live:
        out["torch.cuda.is_available()"] = live["cuda_available"]
    return out


def _checks(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in doc.get("checks") or () if isinstance(c, dict) and "id" in c}


def _compare(section: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[list[Difference], int]:
    diffs, same = [], 0
    for key in [*a, *(k for k in b if k not in a)]:
        va = _text(a[key]) if key in a else MISSING
        vb = _text(b[key]) if key in b else MISSING
        if va == vb:
            same += 1
        else:
            diffs.append(Difference(section, key, va, vb))
    return diffs, same


_RANK = {"fail": 4, "error": 3, "warn": 2, "skip": 1, "pass": 0}


def _fold_runtime_wheels(diffs: list[Difference]) -> list[Difference]:
    """NVIDIA's CUDA runtime wheels present on one side only (a CUDA vs a CPU torch): one row, not fifteen."""
    one_sided = [
        d for d in diffs if d.key.startswith("nvidia-") and d.key != "nvidia-ml-py" and MISSING in (d.a, d.b)
    ]
    if len(one_sided) < 2:
        return diffs
    count = lambda side: sum(getattr(d, side) != MISSING for d in one_sided)
    folded = Difference(
        one_sided[0].section,
        "nvidia-* CUDA runtime wheels",
        f"{count('a')} installed",
        f"{count('b')} installed",
        ", ".join(d.key for d in one_sided),
    )
    return [d for d in diffs if d not in one_sided] + [folded]


def diff_reports(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Every difference between two report documents, grouped by section, plus how much was the same."""
    diffs: list[Difference] = []
    same = 0
    summary_a, summary_b = a.get("summary") or {}, b.get("summary") or {}
    if summary_a.get("verdict") != summary_b.get("verdict"):
        diffs.append(
            Difference("verdict", "verdict", _text(summary_a.get("verdict")), _text(summary_b.get("verdict")))
        )
    checks_a, checks_b = _checks(a), _checks(b)
    changed = []
    for check_id in [*checks_a, *(k for k in checks_b if k not in checks_a)]:
        ca, cb = checks_a.get(check_id), checks_b.get(check_id)
        sa, sb = (ca or {}).get("status", MISSING), (cb or {}).get("status", MISSING)
        if sa == sb:
            same += 1
            continue
        # The note explains the worse side (why it fails); between equals, B's (why it was skipped there).
        worse = ca if _RANK.get(sa, 0) > _RANK.get(sb, 0) else cb or ca
        changed.append(Difference("checks", check_id, sa, sb, _text((worse or {}).get("summary", ""))))
    diffs += sorted(changed, key=lambda d: -max(_RANK.get(d.a, 0), _RANK.get(d.b, 0)))  # failures first
    for section, extract in (
        ("planned run", lambda d: d.get("target") or {}),
        ("libraries", _libraries),
        ("GPU and driver", _gpu),
        ("environment variables", lambda d: environment_variables(d.get("facts") or {})),
        ("platform", _platform),
    ):
        found, n_same = _compare(section, extract(a), extract(b))
        diffs += _fold_runtime_wheels(found)
        same += n_same
    return {"differences": [d.__dict__ for d in diffs], "same": same}


def _label(path: str, doc: Mapping[str, Any]) -> str:
    verdict = str((doc.get("summary") or {}).get("verdict", "?")).split(":", 1)[0]
    return f"{path} ({str(doc.get('created_at', '?'))[:10]}, {verdict})"


def render_diff_text(result: Mapping[str, Any], a_label: str, b_label: str, width: int | None = None) -> str:
    width = terminal_width(width)
    diffs = result["differences"]
    lines = textwrap.wrap(f"A = {a_label}", width, subsequent_indent="    ") + textwrap.wrap(
        f"B = {b_label}", width, subsequent_indent="    "
    )
    lines.append(
        f"{len(diffs)} difference{'s' if len(diffs) != 1 else ''}; {result['same']} compared items the same."
    )
    section = None
    key_width = min(max((len(d["key"]) for d in diffs), default=0), 30)
    for d in diffs:
        if d["section"] != section:
            section = d["section"]
            lines += ["", section]
        row = f"  {d['key'].ljust(key_width)}  {d['a']} → {d['b']}"
        if len(row) <= width:
            lines.append(row)
        else:
            lines.append(f"  {d['key']}")
            for side in ("a", "b"):
                lines += textwrap.wrap(
                    f"{side.upper()}: {d[side]}",
                    width,
                    initial_indent="      ",
                    subsequent_indent="         ",
                    break_on_hyphens=False,
                )
        if d["note"]:
            lines += textwrap.wrap(
                d["note"], width, initial_indent="      ", subsequent_indent="      ", break_on_hyphens=False
            )
    if not diffs:
        lines.append("The two reports agree on everything compared.")
    return inert("\n".join(lines)) + "\n"  # names and errors from outside: inert


def render_diff_markdown(result: Mapping[str, Any], a_label: str, b_label: str) -> str:
    diffs = result["differences"]
    lines = [
        f"## doctor diff: {len(diffs)} difference{'s' if len(diffs) != 1 else ''}",
        "",
        f"- A: {md_cell(a_label)}",
        f"- B: {md_cell(b_label)}",
        f"- {result['same']} compared items are the same",
        "",
    ]
    if diffs:
        lines += ["| Section | What | A | B | Note |", "| --- | --- | --- | --- | --- |"]
        lines += [
            f"| {md_cell(d['section'])} | {md_cell(d['key'])} | {md_cell(d['a'])} | {md_cell(d['b'])} | "
            f"{md_cell(d['note'])} |"
            for d in diffs
        ]
    return inert("\n".join(lines)) + "\n"  # names and errors from outside: inert


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.argument("a_path", metavar="A.json")
@click.argument("b_path", metavar="B.json")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text", show_default=True
)
@debug_option()
def diff_command(a_path: str, b_path: str, fmt: str) -> int:
    """What differs between two `doctor --format json` reports: versions, libraries, GPU, driver,
    environment variables, and the checks' verdicts.

    \b
    Example (the job works on machine A, fails on machine B):
      doctor --model M --context 128k --format json -o a.json     # on A
      doctor --model M --context 128k --format json -o b.json     # on B
      doctor diff a.json b.json --format markdown                 # paste into the ticket
    Exit codes: 0 compared (differences are the answer, not a failure), 2 a file is not a report.
    """
    a, b = read_report_document(Path(a_path)), read_report_document(Path(b_path))
    result = diff_reports(a, b)
    if fmt == "json":
        doc = {
            "a": {"file": a_path, "created_at": a.get("created_at")},
            "b": {"file": b_path, "created_at": b.get("created_at")},
            **result,
        }
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
    elif fmt == "markdown":
        click.echo(render_diff_markdown(result, _label(a_path, a), _label(b_path, b)), nl=False)
    else:
        click.echo(render_diff_text(result, _label(a_path, a), _label(b_path, b)), nl=False)
    return 0
