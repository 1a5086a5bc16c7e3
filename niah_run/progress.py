"""What a sweep says while it runs, on stderr: one line per finished trial, a progress bar with the ETA
(and the prefill's own progress within a trial, on a terminal), and notes. Everything printed is scrubbed
of secrets and made inert: a server's error text or a file name cannot drive the terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from doctor.report.redact import Redactor
from niah_run.rows import TrialRow
from run_plan.text import inert
from run_plan.units import duration

# The plan's time model for prefilling from one position to another (ResolvedPlan.predicted_prefill_seconds).
TimePlan = Callable[[int, int], float | None]
# Narrower than this (a small pane, COLUMNS=0 or 10) the bar has no room: the trials' lines as with -q.
MIN_BAR_COLUMNS = 40


def echo_err(message: str) -> None:
    """A note on stderr: secrets scrubbed, and anything from outside (a server's error text, a file name)
    made inert, so it cannot drive the terminal."""
    print(inert(Redactor().scrub(message)), file=sys.stderr, flush=True)


def describe_row(row: TrialRow) -> str:
    """The one line a finished trial gets."""
    where = "control" if row.control else f"depth {row.depth_percent or 0:g}%"
    if row.status == "ok":
        verdict = "correct" if row.correct else f"miss ({row.failure_class})"
    else:
        verdict = row.status + (f" ({row.skip_reason})" if row.skip_reason else "")
    return f"{row.context_tokens} tok, {where}, trial {row.trial}: {verdict} in {row.seconds or 0:.1f}s"


class SweepProgress:
    """A rich progress bar on stderr with the ETA, plus one log line per finished trial."""

    def __init__(self, total: int, *, quiet: bool) -> None:
        self.total = total
        self.quiet = quiet
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> SweepProgress:  # noqa: PYI034
        if self.quiet:
            return self
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(stderr=True, highlight=False)
        if console.width < MIN_BAR_COLUMNS:  # COLUMNS=0 made rich print nothing at all, trial lines included
            return self
        self._progress = Progress(
            TextColumn("niah"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            console=console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task("", total=self.total)
        return self

    def advance(self, message: str) -> None:
        if self._progress is None:  # quiet, or no room for a bar: the one line per trial
            print(inert(Redactor().scrub(message)), file=sys.stderr, flush=True)
            return
        self._progress.update(self._task, description="")
        self._progress.console.print(inert(Redactor().scrub(message)), markup=False)
        self._progress.advance(self._task)

    def prefill_reporter(
        self, prompt_tokens: int, time_plan: TimePlan | None
    ) -> Callable[[int, int], None] | None:
        """A callback for one trial's prefill (chunks done, tokens/s, ETA on the bar's line), or None where
        nobody would see it: with -q, when stderr is not a terminal, and without room for the bar."""
        if self._progress is None or not sys.stderr.isatty():
            return None
        started = time.monotonic()
        progress, task = self._progress, self._task

        def report(done: int, total: int) -> None:
            elapsed = time.monotonic() - started
            start = prompt_tokens - total  # the reused prefix is not prefilled
            rate = done / elapsed if elapsed > 0 else 0.0
            eta = _prefill_eta(time_plan, start, start + done, prompt_tokens, elapsed)
            progress.update(
                task,
                description=f"prefill {done:,}/{total:,} tok · {rate / 1000:.1f}k tok/s"
                + (f" · ETA {duration(eta)}" if eta is not None else ""),
            )

        return report

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def _prefill_eta(time_plan: TimePlan | None, start: int, at: int, end: int, elapsed: float) -> float | None:
    """Seconds left: the time plan's share of the rest, scaled by how this prefill kept to the plan so far
    (a prefill slows down as the context grows: tokens/s alone would promise too early an end)."""
    if time_plan is None or at <= start:
        return None
    done, rest = time_plan(start, at), time_plan(at, end)
    if not done or rest is None:
        return None
    return rest * elapsed / done
