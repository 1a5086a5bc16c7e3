"""How long does `doctor` take to start and finish, next to `python -m torch.utils.collect_env`?

Usage:
    python benchmarks/doctor_startup.py [--runs 5] [--collect-env-runs 3] [--write-docs docs/benchmarks.md]
    python benchmarks/doctor_startup.py --live [--runs 5] [--write-docs FILE]   # on a GPU machine

Each command runs in a fresh interpreter (wall clock, subprocess start included); the table shows
median, min and max. `--write-docs` replaces the "## doctor start-up" section of the given file
(creating it if needed) and leaves every other section alone. Not a test: timings are not asserted.

`--live` times the whole doctor with its live probes (torch, the known-answer GEMM, bitsandbytes,
Triton) against `--no-live`, and breaks one extra in-process run down by probe; it writes the
"## doctor with live probes" section instead.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the in-process parts import this checkout's doctor, installed or not
    sys.path.insert(0, str(REPO))
HEADING = "## doctor start-up"
LIVE_HEADING = "## doctor with live probes"


def time_command(argv: list[str], runs: int) -> tuple[list[float], int]:
    seconds: list[float] = []
    code = 0
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(
            argv,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            check=False,  # the exit code is reported, not raised
        )
        seconds.append(time.perf_counter() - start)
        code = proc.returncode
    return seconds, code


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown"
    match = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
    return match.group(1).strip() if match else "unknown"


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def gpu_line() -> str:
    try:
        from doctor.probes.nvml import nvml_facts

        facts = nvml_facts()
    except Exception as exc:  # the benchmark must run wherever the doctor does
        return f"unknown ({exc})"
    return ", ".join(g.name for g in facts.gpus) or "none (NVML: no NVIDIA driver/GPU visible)"


def row(label: str, seconds: list[float], code: int) -> str:
    return (
        f"| `{label}` | {len(seconds)} | {statistics.median(seconds):.2f} | {min(seconds):.2f} | "
        f"{max(seconds):.2f} | {code} |"
    )


def build_section(runs: int, env_runs: int) -> str:
    load_before = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    doctor_s, doctor_code = time_command([sys.executable, "-m", "doctor", "--format", "json"], runs)
    env_s, env_code = time_command([sys.executable, "-m", "torch.utils.collect_env"], env_runs)
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        HEADING,
        "",
        (
            "Measured with `python benchmarks/doctor_startup.py --write-docs docs/benchmarks.md` "
            "(wall clock of a fresh interpreter per run, seconds). Target: `doctor` median ≤ 1.5 s on a "
            "2-core CPU box with torch installed."
        ),
        "",
        f"- date: {today}; load average before the runs: {load_before} (other work inflates times)",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; GPU: {gpu_line()}",
        (
            f"- Python {platform.python_version()}, {platform.system()} {platform.machine()}; "
            f"torch {version('torch')}, bitsandbytes {version('bitsandbytes')}, "
            f"transformers {version('transformers')}, niah-doctor {version('niah-doctor')}"
        ),
        "",
        "| command | runs | median s | min s | max s | exit code |",
        "|---|---|---|---|---|---|",
        row("python -m doctor --format json", doctor_s, doctor_code),
        row("python -m torch.utils.collect_env", env_s, env_code),
        "",
        (
            "`doctor` imports neither torch nor bitsandbytes on a machine without a GPU (the live probes "
            "that import them run in child processes only with `--live` or when NVML sees a GPU), which is "
            "why it beats `collect_env`, which imports torch. Exit code 0 = no check failed (the no-GPU "
            "warning is allowed)."
        ),
        "",
    ]
    return "\n".join(lines)


def gpu_stack_line() -> str:
    try:
        from doctor.probes.nvml import nvml_facts

        facts = nvml_facts()
    except Exception as exc:  # the benchmark must run wherever the doctor does
        return f"GPU unknown ({exc})"
    names = ", ".join(g.name for g in facts.gpus) or "none"
    return f"GPU: {names}; driver {facts.driver_version} (CUDA {facts.cuda_driver_text})"


def probe_breakdown() -> list[str]:
    """One in-process doctor run: wall seconds per probe (they overlap) and per live stage."""
    from doctor.context import DoctorContext
    from doctor.probes.live_batch import LIVE_BATCH
    from doctor.registry import load_checks
    from doctor.runner import build_report
    from run_plan.spec import RunSpec

    ctx = DoctorContext(RunSpec(live=True))
    start = time.perf_counter()
    report = build_report(load_checks(), ctx, ["doctor", "--live"])
    total = time.perf_counter() - start
    slow = sorted(ctx.probe_seconds.items(), key=lambda kv: -kv[1])[:8]
    torch_live = ctx.probe("torch-live")
    lines = [
        f"- one in-process run: {total:.2f} s for all checks ({report.verdict()}); slowest probes (they run "
        "concurrently): " + ", ".join(f"{name} {sec:.2f} s" for name, sec in slow),
        f"- the shared live child: `import torch` once, {getattr(torch_live, 'import_seconds', None)} s; then "
        "each stage after the fork: "
        + ", ".join(f"{name} {sec:.2f} s" for name, sec in sorted(LIVE_BATCH.last_seconds.items())),
    ]
    return lines


def bytecode_line() -> str:
    """Whether torch's bytecode ships with the install: without it every import compiles source again."""
    from doctor.children.child import bytecode_cache_env, has_shipped_bytecode, package_source

    source = package_source("torch")
    shipped = source is not None and has_shipped_bytecode(source)
    own_cache = bool(bytecode_cache_env(os.environ))
    return (
        f"- bytecode: torch's `.pyc` shipped: {'yes' if shipped else 'no'}; "
        f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE') or '(unset)'}; "
        f"the doctor's children use its own bytecode cache: {'yes' if own_cache else 'no'}"
    )


def build_live_section(runs: int) -> str:
    load_before = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    live_argv = [sys.executable, "-m", "doctor", "--live", "--format", "json"]
    # The first run on a machine builds what later runs reuse (Triton's C helper, the bytecode cache
    # where the image has none): shown on its own, not mixed into the median.
    first_s, first_code = time_command(live_argv, 1)
    live_s, live_code = time_command(live_argv, runs)
    static_s, static_code = time_command(
        [sys.executable, "-m", "doctor", "--no-live", "--format", "json"], runs
    )
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        LIVE_HEADING,
        "",
        (
            "Measured with `python benchmarks/doctor_startup.py --live --runs "
            f"{runs}` (wall clock of a fresh interpreter per run, seconds). Target: the whole doctor with live "
            "probes ≤ 4 s on a 1-GPU H200."
        ),
        "",
        f"- date: {today}; load average before the runs: {load_before}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; {gpu_stack_line()}",
        (
            f"- Python {platform.python_version()}, {platform.system()} {platform.machine()}; "
            f"torch {version('torch')}, triton {version('triton')}, bitsandbytes {version('bitsandbytes')}, "
            f"transformers {version('transformers')}, nvidia-ml-py {version('nvidia-ml-py')}"
        ),
        bytecode_line(),
        "",
        "| command | runs | median s | min s | max s | exit code |",
        "|---|---|---|---|---|---|",
        row("python -m doctor --live --format json (first run)", first_s, first_code),
        row("python -m doctor --live --format json", live_s, live_code),
        row("python -m doctor --no-live --format json", static_s, static_code),
        "",
        *probe_breakdown(),
        "",
    ]
    return "\n".join(lines)


def write_section(path: Path, section: str, heading: str = HEADING) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--collect-env-runs", type=int, default=3)
    parser.add_argument(
        "--write-docs", type=Path, help="Markdown file whose '## doctor start-up' section to replace"
    )
    parser.add_argument("--live", action="store_true", help="Time the doctor with its live probes (GPU box)")
    args = parser.parse_args()
    if args.live:
        section, heading = build_live_section(args.runs), LIVE_HEADING
    else:
        section, heading = build_section(args.runs, args.collect_env_runs), HEADING
    print(section)
    if args.write_docs:
        write_section(args.write_docs, section, heading)
        print(f"wrote {args.write_docs}", file=sys.stderr)


if __name__ == "__main__":
    main()
