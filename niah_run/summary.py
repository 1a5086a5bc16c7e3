"""summary.json and summary.md from results.jsonl (latest row per trial key).

What a long-context report needs besides accuracy per cell:
- the effective context length per needle kind: the longest length L such that every tested length
  up to L has a Wilson 95% lower bound ≥ a threshold (default 0.85, RULER's bar) — a lower bound,
  so three lucky trials do not certify a length;
- per cell: prefill tokens/s, time to first token (= prefill seconds: the first token comes out of
  the prefill's logits), peak accelerator memory from the rows' `memory` figures, GPU-seconds
  (trial wall time × GPUs holding the model) and, with a price per GPU-hour, money;
- depth honesty: a cell whose needle snapped further than the tolerance from its requested depth
  (a haystack with few sentence ends) is labelled with the depth actually tested.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypedDict, cast

from niah_run.results import latest_by_key, read_trial_rows
from niah_run.rows import TrialRow, as_row
from run_plan.errors import UsageError
from run_plan.options import check_value
from run_plan.safe_files import read_text_file
from run_plan.text import inert

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
DEFAULT_EFFECTIVE_THRESHOLD = 0.85
GIB = 1024**3
_GPU_KEY = re.compile(r"^(cuda|gpu|rocm|xpu):?\d+$|^\d+$", re.IGNORECASE)


# -- the summary's shape (summary.json) ---------------------------------------------------------------


class Performance(TypedDict):
    prefill_tokens_per_s: float | None
    ttft_seconds: float | None
    ttft_seconds_max: float | None
    peak_memory_bytes: int | None  # the largest one device reached
    peak_memory_total_bytes: int | None  # all devices together
    gpu_seconds: float | None  # None: how many GPUs ran the model is unknown
    cost: float | None


class CellStats(Performance):
    """What a group of trials (a cell, a length, the controls, the whole run) measured."""

    n: int  # scored trials
    correct: int
    accuracy: float | None
    wilson_low: float
    wilson_high: float
    oom: int
    skipped: int
    errors: int
    failure_classes: dict[str, int]
    mean_seconds: float | None
    actual_depth_percent: float | None
    actual_depth_range: list[float] | None
    depth_snapped: int  # trials whose needle sits further from the requested depth than the tolerance


class GridCell(CellStats):
    context_tokens: int
    depth_percent: float


class LengthPass(TypedDict):
    context_tokens: int
    n: int
    correct: int
    wilson_low: float
    passes: bool


class EffectiveLength(TypedDict):
    threshold: float
    tokens: int | None  # None: below the shortest length tested
    per_length: list[LengthPass]
    trials_needed_per_length: int | None


class Cost(TypedDict):
    gpu_seconds: float | None
    money: float | None
    note: str


class TimeVsPlan(TypedDict):
    context_tokens: int
    depth_percent: float | None
    trial: int | None
    reused_prefix_tokens: int
    predicted_seconds: float
    measured_seconds: float
    measured_over_predicted: float
    flagged: bool


class MemoryVsPlan(TypedDict):
    context_tokens: int
    depth_percent: float | None
    trial: int | None
    status: str
    predicted_bytes: dict[str, int]
    measured_bytes: dict[str, int]
    exceeded: bool


class RunFacts(TypedDict, total=False):
    """What config.json says about the run (each only when known), and the summary's own settings."""

    model: str
    quant: str
    dtype: str
    needle_kind: str
    backend: str
    attn: str
    dtype_loaded: str
    created_at: str
    identity_sha256: str
    gpu_count: int | None
    price_per_gpu_hour: float | None
    effective_threshold: float


class Summary(TypedDict):
    run: RunFacts
    lengths: list[int]
    depths: list[float]
    overall: CellStats
    per_length: dict[str, CellStats]
    cells: list[GridCell]
    controls: dict[str, CellStats]
    effective_length: dict[str, EffectiveLength]  # per needle kind
    cost: Cost
    depth_snapped_cells: int
    trials_recorded: int
    rows_of_other_identities: int
    memory_vs_plan: list[MemoryVsPlan]
    time_vs_plan: list[TimeVsPlan]


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


def trials_needed(threshold: float, limit: int = 10_000) -> int | None:
    """The fewest trials whose all-correct Wilson lower bound reaches `threshold` (None: unreachable)."""
    for n in range(1, limit + 1):
        if wilson_interval(n, n)[0] >= threshold:
            return n
    return None


# -- per-row facts ------------------------------------------------------------------------------------


def peak_memory(memory: Any) -> dict[str, int]:
    """Peak bytes per device from a row's `memory` dict, whatever its shape.

    Shapes in use: {"per_gpu_peak_bytes": {"cuda:0": n}} (a finished trial), {"at_failure": {"cuda:0":
    {"peak_bytes": n, …}}, "after_free": …} (an OOM), {"peak_bytes": n} (one unnamed device). The
    figures taken after freeing memory are not peaks of the trial and are ignored."""
    peaks: dict[str, int] = {}

    def walk(node: Any, device: str | None, under_peak: bool) -> None:
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            key = str(key)
            if key == "after_free":
                continue
            here = key if _GPU_KEY.match(key) else device
            peak = under_peak or "peak" in key
            if isinstance(value, dict):
                walk(value, here, peak)
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and peak:
                name = here or "device"
                peaks[name] = max(peaks.get(name, 0), int(value))

    walk(memory, None, False)
    return peaks


def _depth_snapped(row: TrialRow) -> bool:
    if row.depth_snapped is not None:
        return row.depth_snapped
    snap, haystack = row.snap_tokens, row.haystack_tokens
    if snap is None or not haystack:  # rows written before the flag existed: same rule, from their fields
        return False
    from niah_run.prompt import snap_tolerance_tokens

    return abs(float(snap)) > snap_tolerance_tokens(int(haystack))


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _performance(rows: list[TrialRow], gpu_count: int | None, price: float | None) -> Performance:
    timed = [r for r in rows if r.status == "ok" and (r.prefill_seconds or 0) > 0]
    prefilled = sum(int(r.input_tokens or 0) - int(r.reused_prefix_tokens or 0) for r in timed)
    ttfts = [float(r.prefill_seconds or 0.0) for r in timed]
    prefill_s = sum(ttfts)
    peaks = [peak for peak in (peak_memory(r.memory) for r in rows) if peak]
    ran = [r for r in rows if r.status in ("ok", "oom", "error")]
    gpu_seconds: float | None = 0.0
    for row in ran:
        # the model's placement first: a row's memory figures list every visible GPU, used or not
        gpus = gpu_count if gpu_count is not None else (len(peak_memory(row.memory)) or None)
        if gpus is None or gpu_seconds is None:
            gpu_seconds = None
            break
        gpu_seconds += float(row.seconds or 0.0) * gpus
    return {
        "prefill_tokens_per_s": round(prefilled / prefill_s, 1) if prefill_s > 0 else None,
        "ttft_seconds": _round(sum(ttfts) / len(ttfts), 4) if ttfts else None,
        "ttft_seconds_max": _round(max(ttfts), 4) if ttfts else None,
        "peak_memory_bytes": max(max(p.values()) for p in peaks) if peaks else None,
        "peak_memory_total_bytes": max(sum(p.values()) for p in peaks) if peaks else None,
        "gpu_seconds": _round(gpu_seconds, 3) if ran else 0.0,
        "cost": (
            _round(gpu_seconds / 3600.0 * price, 6) if gpu_seconds is not None and price is not None else None
        ),
    }


def _cell(rows: list[TrialRow], gpu_count: int | None = None, price: float | None = None) -> CellStats:
    scored = [r for r in rows if r.status == "ok"]
    correct = sum(1 for r in scored if r.correct)
    low, high = wilson_interval(correct, len(scored))
    statuses = Counter(r.status for r in rows)
    actual = [float(r.actual_depth_percent) for r in rows if r.actual_depth_percent is not None]
    return {
        "n": len(scored),
        "correct": correct,
        "accuracy": correct / len(scored) if scored else None,
        "wilson_low": round(low, 4),
        "wilson_high": round(high, 4),
        "oom": statuses.get("oom", 0),
        "skipped": statuses.get("skipped", 0),
        "errors": statuses.get("error", 0),
        "failure_classes": dict(sorted(Counter(r.failure_class for r in rows if r.failure_class).items())),
        "mean_seconds": round(sum(r.seconds or 0 for r in scored) / len(scored), 3) if scored else None,
        "actual_depth_percent": round(sum(actual) / len(actual), 2) if actual else None,
        "actual_depth_range": [round(min(actual), 2), round(max(actual), 2)] if actual else None,
        "depth_snapped": sum(1 for r in rows if _depth_snapped(r)),
        **_performance(rows, gpu_count, price),
    }


def effective_length(per_length: Mapping[int, CellStats], threshold: float) -> int | None:
    """Longest length such that it and every shorter tested length have wilson_low ≥ threshold.

    A length with no scored trial (all OOM/skipped) ends the run of passing lengths: what was not
    measured is not certified."""
    best = None
    for length in sorted(per_length):
        cell = per_length[length]
        if cell["n"] == 0 or cell["wilson_low"] < threshold:
            break
        best = length
    return best


def _effective_lengths(grid_rows: list[TrialRow], threshold: float) -> dict[str, EffectiveLength]:
    by_kind: dict[str, dict[int, list[TrialRow]]] = defaultdict(lambda: defaultdict(list))
    for row in grid_rows:
        by_kind[str(row.needle_kind or "unknown")][int(row.context_tokens)].append(row)
    out: dict[str, EffectiveLength] = {}
    for kind, lengths in sorted(by_kind.items()):
        cells = {length: _cell(rows) for length, rows in lengths.items()}
        out[kind] = {
            "threshold": threshold,
            "tokens": effective_length(cells, threshold),
            "per_length": [
                {
                    "context_tokens": length,
                    "n": c["n"],
                    "correct": c["correct"],
                    "wilson_low": c["wilson_low"],
                    "passes": c["n"] > 0 and c["wilson_low"] >= threshold,
                }
                for length, c in sorted(cells.items())
            ],
            "trials_needed_per_length": trials_needed(threshold),
        }
    return out


# -- run facts (from config.json) --------------------------------------------------------------------


def gpu_count_from_facts(backend: Mapping[str, Any] | None) -> int | None:
    """GPUs holding the model, from the backend facts in config.json (None when unknown, e.g. a server)."""
    if not isinstance(backend, Mapping) or backend.get("backend") not in (None, "transformers", "hf"):
        return None
    placement = backend.get("placement")
    if isinstance(placement, dict) and placement:
        return sum(1 for device in placement if _GPU_KEY.match(str(device)))
    device_map = backend.get("device_map")
    if isinstance(device_map, str):
        return 0 if device_map.startswith(("cpu", "mps")) else 1 if _GPU_KEY.match(device_map) else None
    return None


_RUN_TEXT_FACTS = ("model", "quant", "dtype", "needle_kind", "backend", "attn")


def run_info(run_dir: Path) -> RunFacts:
    """Model, quantization, dtype, date, backend and pricing settings of a run directory (best effort)."""
    try:
        doc = json.loads(read_text_file(run_dir / "config.json"))
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    config: dict[str, Any] = doc["config"] if isinstance(doc.get("config"), dict) else {}
    backend: dict[str, Any] = doc["backend"] if isinstance(doc.get("backend"), dict) else {}
    facts: dict[str, Any] = {key: config.get(key) for key in _RUN_TEXT_FACTS}
    facts["dtype_loaded"] = backend.get("dtype")
    facts["created_at"] = doc.get("created_at")
    facts["identity_sha256"] = doc.get("identity_sha256")
    facts["gpu_count"] = gpu_count_from_facts(backend)
    for key in ("price_per_gpu_hour", "effective_threshold"):
        if config.get(key) is None:
            continue
        try:  # the rules of the flags of the same names: a value no flag accepts is not used
            facts[key] = check_value(key, config[key], "config.json")
        except UsageError as exc:
            warnings.warn(f"{exc.message}: not used", stacklevel=2)
    # config.json is a file from outside: these are its values as read, each only when given
    return cast(RunFacts, {k: v for k, v in facts.items() if v is not None})


# -- the summary --------------------------------------------------------------------------------------


def summarize(
    rows: Iterable[TrialRow | Mapping[str, Any]],
    *,
    threshold: float = DEFAULT_EFFECTIVE_THRESHOLD,
    price_per_gpu_hour: float | None = None,
    gpu_count: int | None = None,
    run: RunFacts | None = None,
) -> Summary:
    """The summary of these rows (typed, or the JSON objects results.jsonl holds)."""
    typed = [as_row(row) for row in rows]
    identity = (run or {}).get("identity_sha256")
    # One summary is one test: rows written under another identity (an older plan) are never pooled in.
    other = [r for r in typed if identity and r.identity_sha256 not in (None, identity)]
    latest = [
        r for r in latest_by_key(typed).values() if not identity or r.identity_sha256 in (None, identity)
    ]
    grid: dict[tuple[int, float], list[TrialRow]] = defaultdict(list)
    controls: dict[int, list[TrialRow]] = defaultdict(list)
    for row in latest:
        if row.control or row.depth_percent is None:  # only a control has no depth (TrialRow.from_json)
            controls[int(row.context_tokens)].append(row)
        else:
            grid[(int(row.context_tokens), float(row.depth_percent))].append(row)

    def cell(group: list[TrialRow]) -> CellStats:
        return _cell(group, gpu_count, price_per_gpu_hour)

    cells: list[GridCell] = [
        {"context_tokens": length, "depth_percent": depth, **cell(cell_rows)}
        for (length, depth), cell_rows in sorted(grid.items())
    ]
    everything = [r for group in grid.values() for r in group]
    total = cell(latest)
    return {
        "run": {
            **(run or {}),
            "effective_threshold": threshold,
            "price_per_gpu_hour": price_per_gpu_hour,
            "gpu_count": gpu_count,
        },
        "lengths": sorted({length for length, _ in grid} | set(controls)),
        "depths": sorted({depth for _, depth in grid}),
        "overall": cell(everything),
        "per_length": {
            str(length): cell([r for (n, _), g in grid.items() if n == length for r in g])
            for length in sorted({n for n, _ in grid})
        },
        "cells": cells,
        "controls": {str(length): cell(group) for length, group in sorted(controls.items())},
        "effective_length": _effective_lengths(everything, threshold),
        "cost": {
            "gpu_seconds": total["gpu_seconds"],
            "money": total["cost"],
            "note": "trial wall time × GPUs (model loading not included)",
        },
        "depth_snapped_cells": sum(1 for c in cells if c["depth_snapped"]),
        "trials_recorded": len(latest),
        "rows_of_other_identities": len(other),
        "memory_vs_plan": memory_vs_plan(latest),
        "time_vs_plan": time_vs_plan(latest),
    }


# A trial's prefill further than this from the plan's time model is flagged: the time plan (or the path that
# ran) is not what the plan said, and the sweep's predicted total cannot be trusted either.
TIME_TOLERANCE = 0.25


def _in_grid_order(rows: Iterable[TrialRow]) -> list[TrialRow]:
    return sorted(rows, key=lambda r: (r.context_tokens, r.depth_percent or 0, r.trial or 0))


def time_vs_plan(rows: Iterable[TrialRow | Mapping[str, Any]]) -> list[TimeVsPlan]:
    """Per trial that ran: the plan's predicted prefill seconds (for the tokens it really prefilled, after
    any reused prefix) and the measured ones; `flagged` beyond ±25 %. A row needs no trial key here."""
    out: list[TimeVsPlan] = []
    for row in _in_grid_order(as_row(r, keyed=False) for r in rows):
        predicted, measured = row.predicted_prefill_seconds, row.prefill_seconds
        if row.status != "ok" or not predicted or measured is None:
            continue
        ratio = float(measured) / float(predicted)
        out.append(
            {
                "context_tokens": row.context_tokens,
                "depth_percent": row.depth_percent,
                "trial": row.trial,
                "reused_prefix_tokens": row.reused_prefix_tokens or 0,
                "predicted_seconds": float(predicted),
                "measured_seconds": float(measured),
                "measured_over_predicted": round(ratio, 3),
                "flagged": abs(ratio - 1) > TIME_TOLERANCE,
            }
        )
    return out


def memory_vs_plan(rows: Iterable[TrialRow | Mapping[str, Any]]) -> list[MemoryVsPlan]:
    """Per trial that ran (or ran out of memory): the plan's predicted peak per GPU and the measured one.
    A row needs no trial key here."""
    out: list[MemoryVsPlan] = []
    for row in _in_grid_order(as_row(r, keyed=False) for r in rows):
        predicted = row.predicted_peak_bytes
        if predicted is None or row.status not in ("ok", "oom"):
            continue
        out.append(
            {
                "context_tokens": row.context_tokens,
                "depth_percent": row.depth_percent,
                "trial": row.trial,
                "status": row.status,
                "predicted_bytes": predicted,
                "measured_bytes": peak_memory(row.memory),
                "exceeded": bool(row.exceeded_prediction) or row.status == "oom",
            }
        )
    return out


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _cell_text(cell: GridCell | None) -> str:
    if cell is None:
        return ""
    if cell["n"] == 0:
        text = "OOM" if cell["oom"] else "skipped" if cell["skipped"] else "error"
    else:
        text = f"{_pct(cell['accuracy'])} ({cell['correct']}/{cell['n']})"
    if cell.get("depth_snapped") and cell.get("actual_depth_percent") is not None:
        text += f" † at {cell['actual_depth_percent']:g}%"
    return text


def _performance_lines(summary: Summary) -> list[str]:
    price = summary.get("run", {}).get("price_per_gpu_hour")
    header = "| tokens | depth % | prefill tok/s | TTFT s (mean/max) | peak GiB (1 GPU / all) | GPU-s |"
    lines = [
        "",
        "Per cell: prefill throughput, time to first token (= prefill), peak memory, GPU time"
        + (f", cost at {price:g} per GPU-hour" if price is not None else "")
        + ".",
        "",
        header + (" cost |" if price is not None else ""),
        "|---|---|---|---|---|---|" + ("---|" if price is not None else ""),
    ]
    for cell in summary["cells"]:
        peak = cell.get("peak_memory_bytes")
        total = cell.get("peak_memory_total_bytes")
        memory = "—" if peak is None or total is None else f"{peak / GIB:.2f} / {total / GIB:.2f}"
        row = (
            f"| {cell['context_tokens']} | {cell['depth_percent']:g} | {_num(cell.get('prefill_tokens_per_s'), ',.0f')}"
            f" | {_num(cell.get('ttft_seconds'), '.3f')} / {_num(cell.get('ttft_seconds_max'), '.3f')} | {memory}"
            f" | {_num(cell.get('gpu_seconds'), ',.1f')} |"
        )
        if price is not None:
            row += f" {_num(cell.get('cost'), ',.4f')} |"
        lines.append(row)
    cost = summary.get("cost") or {}
    if cost.get("gpu_seconds") is not None:
        lines += [
            "",
            f"Total: {cost['gpu_seconds']:,.1f} GPU-seconds"
            + (f", cost {cost['money']:,.4f}" if cost.get("money") is not None else "")
            + " (trial time only; model loading not included).",
        ]
    else:
        lines += [
            "",
            (
                "GPU-seconds unknown: config.json does not say how many GPUs ran the model "
                "(e.g. a server backend); `niah report RUN --gpu-count N` sets it."
            ),
        ]
    return lines


def render_markdown(summary: Summary, title: str = "NIAH sweep") -> str:
    lengths, depths = summary["lengths"], summary["depths"]
    by_cell = {(c["context_tokens"], c["depth_percent"]): c for c in summary["cells"]}
    overall = summary["overall"]
    lines = [
        f"# {title}",
        "",
        (
            f"Overall strict accuracy: {_pct(overall['accuracy'])} ({overall['correct']}/{overall['n']}, "
            f"Wilson 95% {overall['wilson_low']:.2f}–{overall['wilson_high']:.2f}); "
            f"OOM {overall['oom']}, skipped {overall['skipped']}, errors {overall['errors']}."
        ),
        "",
        "Accuracy per cell (correct/n); rows = depth %, columns = context tokens.",
        "",
        "| depth % | " + " | ".join(str(n) for n in lengths) + " |",
        "|---|" + "---|" * len(lengths),
    ]
    for depth in depths:
        lines.append(
            f"| {depth:g} | " + " | ".join(_cell_text(by_cell.get((n, depth))) for n in lengths) + " |"
        )
    if summary.get("depth_snapped_cells"):
        lines += [
            "",
            (
                f"† {summary['depth_snapped_cells']} cell(s) could not put the needle near the requested "
                "depth (the haystack has few sentence boundaries there); the depth actually tested is shown. "
                "Compare those cells by their actual depth, not their row."
            ),
        ]
    classes: Counter[str] = Counter()
    for cell in summary["cells"]:
        classes.update(cell["failure_classes"])
    if classes:
        lines += ["", "Failure classes: " + ", ".join(f"{k} {v}" for k, v in sorted(classes.items()))]
    for kind, eff in (summary.get("effective_length") or {}).items():
        passing = ", ".join(
            f"{p['context_tokens']}: {p['correct']}/{p['n']} (low {p['wilson_low']:.2f})"
            for p in eff["per_length"]
        )
        verdict = (
            f"{eff['tokens']:,} tokens" if eff["tokens"] is not None else "below the shortest length tested"
        )
        lines += [
            "",
            f"Effective context length ({kind}, Wilson 95% lower bound ≥ {eff['threshold']:g}): "
            f"{verdict}. Per length: {passing}."
            + (
                f" (All-correct needs ≥ {eff['trials_needed_per_length']} scored trials per length to pass.)"
                if eff["tokens"] is None and eff.get("trials_needed_per_length")
                else ""
            ),
        ]
    if summary["controls"]:
        lines += ["", "No-needle controls (correct = says it is not there, invents no value):"]
        for length, group in summary["controls"].items():
            lines.append(f"- {length} tokens: {_pct(group['accuracy'])} ({group['correct']}/{group['n']})")
    if summary["cells"]:
        lines += _performance_lines(summary)
    lines += _memory_vs_plan_lines(summary)
    lines += _time_vs_plan_lines(summary)
    if summary.get("rows_of_other_identities"):
        lines += [
            "",
            f"{summary['rows_of_other_identities']} row(s) in results.jsonl belong to another test "
            "(a different plan identity) and are not counted here.",
        ]
    return inert("\n".join(lines)) + "\n"  # names and errors from outside: inert


def _memory_vs_plan_lines(summary: Summary) -> list[str]:
    rows = summary.get("memory_vs_plan") or []
    if not rows:
        return []
    lines = [
        "",
        "Peak GPU memory, the plan's prediction vs measured (GiB; ⚠ = above the prediction):",
        "",
        "| tokens | depth % | device | predicted | measured | measured / predicted |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        for device, predicted in sorted(row["predicted_bytes"].items()):
            measured = row["measured_bytes"].get(device)
            ratio = f"{measured / predicted:.3f}" if measured and predicted else "—"
            flag = " ⚠" if row["exceeded"] else ""
            depth = "control" if row["depth_percent"] is None else f"{row['depth_percent']:g}"
            lines.append(
                f"| {row['context_tokens']} | {depth} | {device} | {predicted / GIB:.2f} | "
                f"{_gib_or_status(measured, row['status'])}{flag} | {ratio} |"
            )
    exceeded = sum(1 for r in rows if r["exceeded"])
    if exceeded:
        lines += [
            "",
            f"⚠ {exceeded} trial(s) went above the plan's predicted peak: please report it with this "
            "summary and config.json.",
        ]
    return lines


def _time_vs_plan_lines(summary: Summary) -> list[str]:
    rows = summary.get("time_vs_plan") or []
    if not rows:
        return []
    lines = [
        "",
        f"Prefill seconds, the plan's time model vs measured (⚠ = beyond ±{TIME_TOLERANCE:.0%}):",
        "",
        "| tokens | depth % | reused tokens | predicted s | measured s | measured / predicted |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        depth = "control" if row["depth_percent"] is None else f"{row['depth_percent']:g}"
        flag = " ⚠" if row["flagged"] else ""
        lines.append(
            f"| {row['context_tokens']} | {depth} | {row['reused_prefix_tokens']} | "
            f"{row['predicted_seconds']:.1f} | {row['measured_seconds']:.1f} | "
            f"{row['measured_over_predicted']:.2f}{flag} |"
        )
    flagged = sum(1 for r in rows if r["flagged"])
    if flagged:
        lines += ["", f"⚠ {flagged} trial(s) took more than {TIME_TOLERANCE:.0%} more or less than planned."]
    return lines


def _gib_or_status(measured: int | None, status: str) -> str:
    return "OOM" if status == "oom" else "—" if measured is None else f"{measured / GIB:.2f}"


def write_summary(
    run_dir: Path,
    *,
    price_per_gpu_hour: float | None = None,
    threshold: float | None = None,
    gpu_count: int | None = None,
) -> Summary:
    """Summarize a run directory. Settings not given come from its config.json (when the run saved them)."""
    info = run_info(run_dir)
    price = price_per_gpu_hour if price_per_gpu_hour is not None else info.pop("price_per_gpu_hour", None)
    info.pop("price_per_gpu_hour", None)
    bar = threshold if threshold is not None else info.pop("effective_threshold", DEFAULT_EFFECTIVE_THRESHOLD)
    info.pop("effective_threshold", None)
    gpus = gpu_count if gpu_count is not None else info.pop("gpu_count", None)
    info.pop("gpu_count", None)
    summary = summarize(
        read_trial_rows(run_dir / "results.jsonl"),
        threshold=bar,
        price_per_gpu_hour=price,
        gpu_count=gpus,
        run=info,
    )
    from niah_run import run_folder  # atomic, never through a symlink, secrets scrubbed

    run_folder.write_json(run_dir / SUMMARY_JSON, summary)
    run_folder.write_text(run_dir / SUMMARY_MD, render_markdown(summary, title=_title(info)))
    return summary


def _title(info: RunFacts) -> str:
    if not info.get("model"):
        return "NIAH sweep"
    return " · ".join(str(p) for p in (info.get("model"), info.get("needle_kind"), _quant_label(info)) if p)


def _quant_label(info: RunFacts) -> str:
    quant = info.get("quant")
    dtype = info.get("dtype_loaded") or info.get("dtype")
    return ", ".join(p for p in ((quant if quant and quant != "none" else ""), str(dtype or "")) if p)
