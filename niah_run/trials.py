"""The sweep's trials: which ones a plan asks for, their keys and seeds, and the row each one becomes.

A trial is a cell (length, depth, trial number, or a no-needle control). Its needle values and haystack
window come from seeds derived from the plan's seed and the cell, so a trial is rebuilt byte for byte on
--resume. `RowBuilder` builds a trial's prompt (`prepare`), and turns what the backend returned into its
`TrialRow` (`finished`); a trial the plan or an earlier OOM rules out becomes a skipped row (`skipped`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from niah_run.backends.base import BackendOOM, Generation
from niah_run.needles import NeedleSet, make_needles, score_trial
from niah_run.prompt import BuiltPrompt, PromptBuilder, ValueCollision
from niah_run.rows import TrialRow
from niah_run.scoring import SCORING_VERSION, prompt_words
from run_plan.errors import RunFailed, UsageError
from run_plan.prompt_frame import TrialSpec, stable_int, trial_seed, trials_at
from run_plan.resolved import ResolvedPlan
from run_plan.spec import RunSpec

# A needle value must occur exactly once in the body; a draw that a user haystack also holds is redrawn.
_VALUE_DRAWS = 10


def plan_trials(config: RunSpec) -> list[TrialSpec]:
    """Every trial the plan asks for, in the order they run: lengths ascending, then each trial's depths
    ascending (consecutive prompts share their prefix up to the needle), then the controls."""
    specs = []
    for length in sorted(config.lengths):
        specs += trials_at(length, config.depths, config.trials, config.controls)
    return specs


def trial_key(identity_sha256: str, spec: TrialSpec) -> str:
    """The trial's name in results.jsonl: the run's identity and the cell, hashed."""
    return hashlib.sha256(f"{identity_sha256}:{json.dumps(spec.cell, sort_keys=True)}".encode()).hexdigest()


def predicted_sweep_seconds(plan: ResolvedPlan | None, specs: list[TrialSpec]) -> float | None:
    """The sweep's prefill GPU time by the plan's time model: each trial of a length prefills from where
    the previous one's needle was (the prefix reuse), the first from its first token."""
    if plan is None or plan.prefill_time is None:
        return None
    total, previous = 0.0, None
    for spec in specs:
        same_cell = previous is not None and previous.length == spec.length and previous.trial == spec.trial
        start = int(spec.length * (previous.depth or 0) / 100) if same_cell and previous is not None else 0
        seconds = plan.predicted_prefill_seconds(start, spec.length)
        if seconds is None:  # one trial the time model cannot predict: no total to announce
            return None
        total += seconds
        previous = spec
    return total


def exceeded_prediction(predicted: dict[str, int] | None, memory: dict[str, Any]) -> bool | None:
    """Whether any device's measured allocator peak went above the plan's prediction (None: nothing to compare)."""
    measured = memory.get("per_gpu_peak_bytes") if isinstance(memory, dict) else None
    if not predicted or not isinstance(measured, dict):
        return None
    return any(int(measured.get(device, 0)) > int(bytes_) for device, bytes_ in predicted.items())


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _lcp(a: Sequence[int] | None, b: Sequence[int]) -> int:
    if not a:
        return 0
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class PreparedTrial:
    """A trial whose prompt is built, waiting for (or in) its backend call."""

    spec: TrialSpec
    key: str
    seed: int
    needles: NeedleSet
    prompt: BuiltPrompt
    reusable: int  # tokens shared with the previous prompt
    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=_now)
    snapshot_at: int | None = None  # the next prompt shares this many tokens with this one

    def begin(self) -> None:
        """The trial starts now (it may have been built while the previous one ran)."""
        self.started = time.monotonic()
        self.started_at = _now()


class RowBuilder:
    """How one sweep's trials become rows: its plan, its identity, and its prompt builder."""

    def __init__(
        self, spec: RunSpec, plan: ResolvedPlan | None, identity_sha256: str, prompts: PromptBuilder
    ) -> None:
        self.spec = spec
        self.plan = plan
        self.identity_sha256 = identity_sha256
        self.prompts = prompts

    def seed(self, trial: TrialSpec) -> int:
        return trial_seed(self.spec.seed, trial)

    def predicted_peaks(self, length: int) -> dict[str, int] | None:
        """The plan's predicted allocator peak per device at this length (None without an estimate)."""
        length_plan = self.plan.length_plan(length) if self.plan is not None else None
        return length_plan.predicted_by_device() if length_plan and length_plan.devices else None

    def predicted_prefill(self, reused: int, total: int) -> float | None:
        seconds = self.plan.predicted_prefill_seconds(reused, total) if self.plan is not None else None
        return round(seconds, 3) if seconds is not None else None

    # -- before the backend call --------------------------------------------------------------------

    def prepare(self, trial: TrialSpec, key: str, previous_ids: Sequence[int] | None) -> PreparedTrial:
        """Build the trial's prompt; `previous_ids`, the prompt before it, says how much of it is reusable."""
        seed = self.seed(trial)
        started = time.monotonic()
        needles, prompt = self._build(trial, seed)
        return PreparedTrial(
            trial, key, seed, needles, prompt, _lcp(previous_ids, prompt.input_ids), started=started
        )

    def prepare_following(
        self, trial: PreparedTrial, following: tuple[TrialSpec, str] | None
    ) -> PreparedTrial | None:
        """The trial that runs after `trial` (`following`: its spec and key, None for none), built now if it
        is at the same length: `trial` then knows how many tokens the two share (its `snapshot_at`), and the
        backend can keep its state at exactly that position."""
        if following is None or following[0].length != trial.spec.length:
            return None
        prepared = self.prepare(*following, trial.prompt.input_ids)
        trial.snapshot_at = prepared.reusable or None
        return prepared

    def _build(self, trial: TrialSpec, seed: int) -> tuple[NeedleSet, BuiltPrompt]:
        rng = random.Random(seed)
        window_rng = random.Random(stable_int("window", self.spec.seed, trial.length, trial.trial))
        starts = self.prompts.window_starts(trial.length)
        window_start = 0 if trial.trial == 0 else window_rng.choice(starts)
        for _ in range(_VALUE_DRAWS):
            needles = make_needles(self.spec.needle_kind, rng, control=trial.control)
            try:
                return needles, self.prompts.build(
                    length=trial.length,
                    depth_percent=trial.depth,
                    needles=needles,
                    window_start=window_start,
                    rng=rng,
                )
            except ValueCollision:
                continue
        raise RunFailed("could not draw needle values that occur exactly once in the haystack")

    # -- the rows -----------------------------------------------------------------------------------

    def skipped(self, trial: TrialSpec, key: str, reason: str, limit: int | None) -> TrialRow:
        """A trial that does not run: the plan rules its length out ("estimate"), or an OOM at a shorter
        length and the same depth did ("after_oom")."""
        return TrialRow(
            trial_key=key,
            status="skipped",
            failure_class="skipped_too_long",
            context_tokens=trial.length,
            depth_percent=trial.depth,
            trial=trial.trial,
            control=trial.control,
            seed=self.seed(trial),
            needle_kind=self.spec.needle_kind,
            seconds=0.0,
            started_at=_now(),
            identity_sha256=self.identity_sha256,
            predicted_peak_bytes=self.predicted_peaks(trial.length),
            skip_reason=reason,
            limit_tokens=limit,
        )

    def finished(self, trial: PreparedTrial, outcome: Generation | BaseException, tokenizer: Any) -> TrialRow:
        """The row of a trial the backend ran: scored, or the OOM / error it met (recorded, retried on
        --resume). An interrupt or a run-level failure is raised again, never recorded as a trial's."""
        prompt = trial.prompt
        seconds = round(time.monotonic() - trial.started, 3)
        cell = TrialRow(
            trial_key=trial.key,
            status="error",
            context_tokens=trial.spec.length,
            depth_percent=trial.spec.depth,
            trial=trial.spec.trial,
            control=trial.spec.control,
            seed=trial.seed,
            needle_kind=self.spec.needle_kind,
            started_at=trial.started_at,
            identity_sha256=self.identity_sha256,
            predicted_peak_bytes=self.predicted_peaks(trial.spec.length),
            input_tokens=len(prompt.input_ids),
            actual_depth_percent=prompt.actual_depth_percent,
            needle_value=trial.needles.needle_value,
            distractor_values=trial.needles.distractor_values,
            haystack_tokens=prompt.haystack_tokens,
            needle_token_index=prompt.needle_index,
            snap_tokens=prompt.snap_tokens,
            input_ids_sha256=prompt.input_ids_sha256,
            reusable_prefix_tokens=trial.reusable,
            snap_tolerance_tokens=prompt.snap_tolerance_tokens,
            depth_snapped=prompt.depth_snapped,
        )
        if isinstance(outcome, BackendOOM):
            return replace(
                cell,
                status="oom",
                failure_class="oom",
                memory=outcome.memory,
                error=str(outcome),
                seconds=seconds,
            )
        if isinstance(outcome, (KeyboardInterrupt, RunFailed, UsageError)):
            raise outcome
        if isinstance(outcome, BaseException):  # one broken trial is recorded and retried on --resume
            error = f"{type(outcome).__name__}: {outcome}"
            return replace(cell, failure_class="other", error=error, seconds=seconds)
        output_ids = list(outcome.output_ids)
        text = tokenizer.decode(output_ids, skip_special_tokens=True)
        score = score_trial(
            text,
            trial.needles,
            prompt_text=prompt.body_text,
            stopped_at_eos=outcome.stopped_at_eos,
            needle_positions=prompt.needle_positions,
            prompt_words_cache=prompt_words(prompt.body_text),
        )
        predicted = cell.predicted_peak_bytes
        return replace(
            cell,
            status="ok",
            correct=score.correct,
            failure_class=score.failure_class,
            lenient=score.lenient,
            recall=score.recall,
            found_distractors=score.found_distractors,
            hallucinated_values=score.hallucinated_values,
            extra_values=score.extra_values,
            scoring_version=SCORING_VERSION,
            output_text=text,
            output_tokens=len(output_ids),
            stopped_at_eos=outcome.stopped_at_eos,
            prefill_seconds=round(outcome.prefill_seconds, 4),
            decode_seconds=round(outcome.decode_seconds, 4),
            reused_prefix_tokens=outcome.reused_prefix_tokens,
            predicted_prefill_seconds=self.predicted_prefill(
                outcome.reused_prefix_tokens, len(prompt.input_ids)
            ),
            memory=dict(outcome.memory),
            exceeded_prediction=exceeded_prediction(predicted, outcome.memory),
            seconds=round(time.monotonic() - trial.started, 3),
        )
