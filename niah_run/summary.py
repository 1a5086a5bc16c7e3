"""summary.json and summary.md from results.jsonl (latest row per trial key)."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from niah_run.results import latest_by_key, read_rows

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score 95% interval for a binomial proportion (sane at 0/n and n/n, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)  # exact at the edges, no 0.9999999
    return (low, high)


def _cell(rows: list[dict[str, Any]]) -> dict[str, Any]:
    scored = [r for r in rows if r.get("status") == "ok"]
    correct = sum(1 for r in scored if r.get("correct"))
    low, high = wilson_interval(correct, len(scored))
    statuses = Counter(r.get("status") for r in rows)
    return {
        "n": len(scored),
        "correct": correct,
        "accuracy": correct / len(scored) if scored else None,
        "wilson_low": round(low, 4),
        "wilson_high": round(high, 4),
        "oom": statuses.get("oom", 0),
        "skipped": statuses.get("skipped", 0),
        "errors": statuses.get("error", 0),
        "failure_classes": dict(sorted(Counter(r["failure_class"] for r in rows if r.get("failure_class")).items())),
        "mean_seconds": round(sum(r.get("seconds") or 0 for r in scored) / len(scored), 3) if scored else None,
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    latest = list(latest_by_key(rows).values())
    grid: dict[tuple[int, float], list[dict[str, Any]]] = defaultdict(list)
    controls: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in latest:
        if row.get("control"):
            controls[int(row["context_tokens"])].append(row)
        else:
            grid[(int(row["context_tokens"]), float(row["depth_percent"]))].append(row)
    cells = [{"context_tokens": length, "depth_percent": depth, **_cell(cell_rows)}
             for (length, depth), cell_rows in sorted(grid.items())]
    everything = [r for group in grid.values() for r in group]
    return {
        "lengths": sorted({length for length, _ in grid} | set(controls)),
        "depths": sorted({depth for _, depth in grid}),
        "overall": _cell(everything),
        "per_length": {str(length): _cell([r for (n, _), g in grid.items() if n == length for r in g])
                       for length in sorted({n for n, _ in grid})},
        "cells": cells,
        "controls": {str(length): _cell(group) for length, group in sorted(controls.items())},
        "trials_recorded": len(latest),
    }


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def render_markdown(summary: dict[str, Any], title: str = "NIAH sweep") -> str:
    lengths, depths = summary["lengths"], summary["depths"]
    by_cell = {(c["context_tokens"], c["depth_percent"]): c for c in summary["cells"]}
    overall = summary["overall"]
    lines = [f"# {title}", "",
             (f"Overall strict accuracy: {_pct(overall['accuracy'])} ({overall['correct']}/{overall['n']}, "
              f"Wilson 95% {overall['wilson_low']:.2f}–{overall['wilson_high']:.2f}); "
              f"OOM {overall['oom']}, skipped {overall['skipped']}, errors {overall['errors']}."), "",
             "Accuracy per cell (correct/n); rows = depth %, columns = context tokens.", "",
             "| depth % | " + " | ".join(str(n) for n in lengths) + " |",
             "|---|" + "---|" * len(lengths)]
    for depth in depths:
        row = []
        for length in lengths:
            cell = by_cell.get((length, depth))
            if cell is None:
                row.append("")
            elif cell["n"] == 0:
                row.append("OOM" if cell["oom"] else "skipped" if cell["skipped"] else "error")
            else:
                row.append(f"{_pct(cell['accuracy'])} ({cell['correct']}/{cell['n']})")
        lines.append(f"| {depth:g} | " + " | ".join(row) + " |")
    classes = Counter()
    for cell in summary["cells"]:
        classes.update(cell["failure_classes"])
    if classes:
        lines += ["", "Failure classes: " + ", ".join(f"{k} {v}" for k, v in sorted(classes.items()))]
    if summary["controls"]:
        lines += ["", "No-needle controls (correct = says it is not there, invents no value):"]
        for length, cell in summary["controls"].items():
            lines.append(f"- {length} tokens: {_pct(cell['accuracy'])} ({cell['correct']}/{cell['n']})")
    return "\n".join(lines) + "\n"


def write_summary(run_dir: Path) -> dict[str, Any]:
    summary = summarize(read_rows(run_dir / "results.jsonl"))
    (run_dir / SUMMARY_JSON).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (run_dir / SUMMARY_MD).write_text(render_markdown(summary), encoding="utf-8")
    return summary
