"""How long does a memory estimate take, cold and cached, for every model whose config ships with doctor?

Usage:
    python benchmarks/estimate_speed.py [--runs 5] [--cached-runs 3] [--write-docs docs/benchmarks.md]

Each run is the whole command in a fresh interpreter, wall clock:
    doctor --model M --quant bnb-4bit --gpus 1xH100-80GB --context 128k --only memory --no-live
"cold" (after one untimed run that reads the libraries' files into the page cache) sets
NIAH_DOCTOR_SIZING_CACHE=0 (the sizing child imports torch + transformers + bitsandbytes,
builds the model on the meta device, runs the KV forward and the traced layer forwards, prepares the
quantizer); "cached" runs after one warming run and reads the child's answer from the sizing cache.
The table shows median, min and max; raw seconds go to benchmarks/results/estimate_speed_<date>.json.
`--write-docs` replaces the "## Memory estimate: every embedded model" section. Not a test: timings are
not asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from doctor_startup import REPO, cpu_model, version, write_section

HEADING = "## Memory estimate: every embedded model"
CONFIGS = REPO / "doctor" / "memory" / "configs"


def embedded_models() -> list[tuple[str, int]]:
    """(model id, decoder layers) of every config shipped in doctor/memory/configs."""
    out = []
    for path in sorted(CONFIGS.glob("*.json")):
        config = json.loads(path.read_text(encoding="utf-8"))
        text = config.get("text_config") or config
        out.append((path.stem.replace("__", "/", 1), int(text.get("num_hidden_layers") or 0)))
    return out


def time_estimate(model: str, cold: bool) -> tuple[float, int]:
    argv = [sys.executable, "-m", "doctor", "--model", model, "--quant", "bnb-4bit", "--gpus", "1xH100-80GB"]
    argv += ["--context", "128k", "--only", "memory", "--no-live"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "NIAH_DOCTOR_SIZING_CACHE": "0" if cold else "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
    )
    return time.perf_counter() - start, proc.returncode


def spread(seconds: list[float]) -> str:
    return f"{statistics.median(seconds):.2f} | {min(seconds):.2f} | {max(seconds):.2f}"


def measure(runs: int, cached_runs: int) -> list[dict[str, object]]:
    """Round-robin: every round times every model once, so a slow minute of a shared box is spread over
    all models instead of landing on one."""
    models = embedded_models()
    time_estimate(models[0][0], cold=True)  # untimed: the libraries' files into the page cache first
    cold: dict[str, list[float]] = {m: [] for m, _ in models}
    cached: dict[str, list[float]] = {m: [] for m, _ in models}
    codes: dict[str, int] = {}
    for round_ in range(runs):
        for model, _ in models:
            seconds, codes[model] = time_estimate(model, cold=True)
            cold[model].append(seconds)
        print(f"cold round {round_ + 1}/{runs} done", flush=True)
    for model, _ in models:
        time_estimate(model, cold=False)  # warms the sizing cache
    for _ in range(cached_runs):
        for model, _ in models:
            cached[model].append(time_estimate(model, cold=False)[0])
    rows: list[dict[str, object]] = []
    for model, layers in models:
        rows.append(
            {
                "model": model,
                "layers": layers,
                "cold_s": cold[model],
                "cached_s": cached[model],
                "exit_code": codes[model],
            }
        )
        print(f"{model:50s} {layers:3d} layers  cold {spread(cold[model])}  cached {spread(cached[model])}")
    return rows


def section(rows: list[dict[str, object]], runs: int, loads: tuple[str, str]) -> str:
    lines = [
        HEADING,
        "",
        "Measured with `python benchmarks/estimate_speed.py --write-docs docs/benchmarks.md`: the whole",
        "`doctor --model M --quant bnb-4bit --gpus 1xH100-80GB --context 128k --only memory --no-live` command",
        f"in a fresh interpreter, wall clock, {runs} rounds of cold runs (`NIAH_DOCTOR_SIZING_CACHE=0`; the files of",
        "torch and transformers already in the page cache; each round times every model once) and cached",
        "runs after one warming run.",
        "Target: a cold estimate ≤ 5 s (median) for every embedded model.",
        "",
        f"- Machine: {os.cpu_count()} CPUs ({cpu_model()}), no GPU; load average before / after: "
        f"{loads[0]} / {loads[1]}",
        f"- Python {sys.version.split()[0]}, torch {version('torch')}, transformers {version('transformers')}, "
        f"bitsandbytes {version('bitsandbytes')}, accelerate {version('accelerate')}",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        "| model | layers | cold median (s) | min | max | cached median (s) | min | max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cold, cached = r["cold_s"], r["cached_s"]
        assert isinstance(cold, list) and isinstance(cached, list)
        lines.append(f"| {r['model']} | {r['layers']} | {spread(cold)} | {spread(cached)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cached-runs", type=int, default=3)
    parser.add_argument("--write-docs", type=Path)
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    before = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    rows = measure(args.runs, args.cached_runs)
    after = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    text = section(rows, args.runs, (before, after))
    print()
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"estimate_speed_{dt.date.today():%Y-%m-%d}.json"
    out.write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows}, indent=1) + "\n", encoding="utf-8")
    if args.write_docs:
        write_section(args.write_docs, text, HEADING)


if __name__ == "__main__":
    main()
