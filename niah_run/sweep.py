"""The sweep: lengths × trials × depths (+ no-needle controls), durable and resumable.

Order: for each length (ascending), for each trial, depths ascending — consecutive prompts of one
(length, trial) share the template, intro and haystack up to the needle, so the backend can reuse
the KV prefix (`reusable_prefix_len` = the longest common prefix with the previous prompt). The next
prompt is built before the current one runs, so the backend also learns where the two will diverge
(`snapshot_at`) and can save the state of layers that cannot be cropped back (sliding / chunked windows)
at exactly that position: every depth after the first prefills only from the previous needle on.

Faults: an OOM in one trial is recorded (`status: "oom"` + memory figures) and longer lengths at
that depth are skipped; Ctrl-C flushes (every row is already fsync'd), writes the partial summary
and exits 130; SIGKILL leaves at most a torn line that --resume cuts off.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import random
import re
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from doctor import __version__
from doctor.report.redact import Redactor
from niah_run.backends.base import Backend, BackendOOM, Generation, max_positions
from niah_run.backends.registry import make_backend
from niah_run.config import CONFIG_FILE
from niah_run.haystack import load_haystack, validate_haystack_spec
from niah_run.needles import NeedleSet, make_needles, score_trial
from niah_run.preflight import run_preflight, unjudged_plan
from niah_run.prompt import (
    PROMPT_VERSION,
    BuiltPrompt,
    PromptBuilder,
    TokenizedHaystack,
    ValueCollision,
    chat_frame,
    tokenize_haystack,
    tokenizer_sha256,
)
from niah_run.results import ResultsStore, is_done, latest_by_key
from niah_run.scoring import SCORING_VERSION, prompt_words
from run_plan.errors import RunFailed, UsageError
from run_plan.resolved import ResolvedPlan
from run_plan.server_room import refuse_lengths_without_room
from run_plan.spec import RunSpec, identity_diff
from run_plan.text import inert
from run_plan.units import duration

HARNESS_VERSION = f"niah-doctor {__version__} prompt-{PROMPT_VERSION}"
MAX_CONSECUTIVE_ERRORS = 3
CHARS_PER_TOKEN_GUESS = 6  # generous: the generated prose is ~4.5 chars per token in BPE vocabularies
# describe() fields that decide what the model computes (volatile ones like memory are left out of keys)
_IDENTITY_FIELDS = (
    "backend",
    "model",
    "model_id",
    "source",
    "path",
    "revision",
    "commit_hash",
    "gguf_file",
    "model_class",
    "dtype",
    "quantization_config",
    "attn_implementation",
    "hub_kernels",  # transformers' hub kernels off (use_kernels=False) or on: other code runs
    "base_url",
)


@dataclass(frozen=True)
class TrialSpec:
    length: int
    depth: float | None  # None for a no-needle control
    trial: int
    control: bool

    @property
    def cell(self) -> dict[str, Any]:
        return {
            "context_tokens": self.length,
            "depth_percent": self.depth,
            "trial": self.trial,
            "control": self.control,
        }


def _stable_int(*parts: object) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:16], 16)


def plan_trials(config: RunSpec) -> list[TrialSpec]:
    specs = []
    for length in sorted(config.lengths):
        for trial in range(config.trials):
            specs += [TrialSpec(length, depth, trial, False) for depth in sorted(config.depths)]
        specs += [TrialSpec(length, None, index, True) for index in range(config.controls)]
    return specs


def trial_key(identity_sha256: str, spec: TrialSpec) -> str:
    return hashlib.sha256(f"{identity_sha256}:{json.dumps(spec.cell, sort_keys=True)}".encode()).hexdigest()


def _lcp(a: list[int] | None, b: list[int]) -> int:
    if not a:
        return 0
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    # Atomic (a full disk leaves the old config.json, never a 0-byte one), never through a planted
    # symlink, secrets scrubbed, always valid JSON: niah_run.run_folder is the one writer.
    from niah_run import run_folder

    run_folder.write_json(path, doc)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class _Prepared:
    """A trial whose prompt is built and whose row is filled up to the generation."""

    spec: TrialSpec
    row: dict[str, Any]
    needles: NeedleSet
    prompt: BuiltPrompt
    reusable: int
    started: float
    snapshot_at: int | None = None  # the next prompt shares this many tokens with this one

    def begin(self) -> None:
        """The trial starts now (it may have been built while the previous one ran)."""
        self.started = time.monotonic()
        self.row["started_at"] = _now()


def _call(
    backend: Backend,
    trial: _Prepared,
    max_new_tokens: int,
    on_prefill: Callable[[int, int], None] | None = None,
) -> Generation | BaseException:
    """The backend call, with its exception returned as a value (so a worker thread can hand it back)."""
    trial.begin()
    try:
        return backend.generate(
            trial.prompt.input_ids,
            max_new_tokens=max_new_tokens,
            reusable_prefix_len=trial.reusable,
            snapshot_at=trial.snapshot_at,
            on_prefill=on_prefill,
        )
    except (KeyboardInterrupt, RunFailed, UsageError):
        raise
    except BaseException as exc:  # noqa: BLE001 - recorded per trial by Sweep._finish
        return exc


class Sweep:
    """One `niah run`: preflight, load, build prompts, generate, score, record."""

    def __init__(
        self,
        spec: RunSpec,
        folder: RunFolder,
        *,
        plan: ResolvedPlan | None = None,
        argv: tuple[str, ...] = (),
        backend_factory: Callable[[RunSpec], Backend] | None = None,
    ) -> None:
        self.config = plan.spec if plan is not None else spec  # the plan's spec once judged (see run)
        self.plan = plan
        self.folder = folder
        self.run_dir = folder.path
        self.argv = argv
        self.backend_factory = backend_factory or make_backend
        self.store = ResultsStore(folder.path)
        self.quiet = folder.quiet
        self.on_start: Callable[[], None] | None = None  # called once the run is accepted (not refused)
        self.trials_started = False  # whether this invocation got as far as running trials
        self.doc: dict[str, Any] = {
            "harness_version": HARNESS_VERSION,
            "created_at": _now(),
            "argv": list(argv),
            "config": self.config.to_dict(),
            "plan_identity": self.config.identity(),
        }

    # -- set-up ------------------------------------------------------------------------------------

    def _note(self, message: str) -> None:
        if not self.quiet:
            echo_err(message)

    def _save_config(self) -> None:
        _write_json(self.run_dir / CONFIG_FILE, self.doc)

    def _prepare_haystack(self, tokenizer: Any) -> TokenizedHaystack:
        longest = max(self.config.lengths)
        needed = longest + (longest // 4 + 64 if self.config.trials > 1 else 64)
        chars = needed * CHARS_PER_TOKEN_GUESS
        for _ in range(6):
            haystack = tokenize_haystack(
                tokenizer, load_haystack(self.config.haystack, self.config.seed, chars)
            )
            if len(haystack.ids) >= needed:
                return haystack
            chars = int(chars * max(1.5, 1.2 * needed / max(1, len(haystack.ids))))
        raise RunFailed(f"could not build a haystack of {needed} tokens")  # pragma: no cover

    def _identity(self, backend: Backend, tokenizer: Any, frame: Any, haystack: TokenizedHaystack) -> str:
        facts = backend.describe()
        identity = {
            "harness": HARNESS_VERSION,
            "config": self.config.identity(),
            "backend": {k: facts[k] for k in _IDENTITY_FIELDS if k in facts},
            "tokenizer_sha256": tokenizer_sha256(tokenizer),
            "template_sha256": frame.template_sha256,
            "haystack_sha256": haystack.sha256,
        }
        self.doc.update({"backend": facts, "identity": identity})
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()

    # -- the loop ----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        validate_haystack_spec(self.config.haystack)  # before anything slow is loaded
        saved = self._saved_doc_checked()
        if saved is not None and (finished := self._nothing_left(saved)) is not None:
            return finished  # no preflight, no model load: every planned trial is already done
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if saved is not None:
            self.doc["created_at"] = saved.get("created_at", self.doc["created_at"])
        self._save_config()
        if self.on_start is not None:  # the run is accepted: only now say what it is
            self.on_start()
        plan = self._judged_plan()
        self.plan, self.config = plan, plan.spec
        self.doc.update(config=plan.spec.to_dict(), plan=plan.to_dict(), plan_identity=plan.spec.identity())
        self._save_config()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = self.store.load(repair=True)
        for warning in caught:  # a torn last line from a killed run: say so plainly, once
            echo_err(f"warning: {warning.message}")
        done = {k: r for k, r in latest_by_key(rows).items() if is_done(r)}
        self._note(f"loading {self.config.model}…")
        started = time.monotonic()
        backend = self.backend_factory(self.config)
        self.doc["load_seconds"] = round(time.monotonic() - started, 2)
        try:
            return self._run_loaded(backend, plan, done, saved)
        finally:
            backend.close()

    def _saved_doc_checked(self) -> dict[str, Any] | None:
        """On --resume, the earlier run's config.json — refused when this plan computes different trials."""
        from niah_run.config import read_saved_doc

        if not self.folder.resume:
            return None
        saved = read_saved_doc(self.run_dir)
        if saved is None:
            raise UsageError(
                f"--resume: {self.run_dir} holds no earlier run (no config.json)",
                hint="Check the --out folder, or drop --resume to start a new run there.",
            )
        before = saved.get("plan_identity")
        if isinstance(before, dict):
            # What this spec leaves to the doctor ("auto": attention, experts) is decided by judging the
            # model on these GPUs; the full identity is compared once the plan is judged (_run_loaded).
            current = self.config.identity()
            decided_later = {name for name, value in current.items() if value == "auto"}
            _refuse_changed_identity(
                {k: v for k, v in before.items() if k not in decided_later},
                {k: v for k, v in current.items() if k not in decided_later},
                self.run_dir,
            )
        return saved

    def _nothing_left(self, saved: dict[str, Any]) -> dict[str, Any] | None:
        """On --resume of an unchanged plan: the counts when every planned trial is done, else None.

        Trial keys hash the identity the earlier run recorded (model files, tokenizer, template,
        haystack); the plan's part of it was just checked unchanged, so the same keys name the same
        trials and nothing would be computed."""
        identity = saved.get("identity_sha256")
        if not isinstance(identity, str):
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a torn line is repaired, and reported, by a real run
            rows = self.store.load(repair=False)
        done = {k for k, r in latest_by_key(rows).items() if is_done(r)}
        specs = plan_trials(self.config)
        if not specs or any(trial_key(identity, spec) not in done for spec in specs):
            return None
        echo_err(f"nothing left to run: all {len(specs)} planned trials in {self.run_dir} are done")
        zero = {"ran": 0, "oom": 0, "errors": 0, "skipped": 0}
        return {"planned": len(specs), "already_done": len(specs), **zero}

    def _judged_plan(self) -> ResolvedPlan:
        """The plan this run executes: given (--plan), or judged now by the doctor, in-process."""
        if self.plan is not None:
            self._note(f"plan: executing {self.plan.verdict or 'a saved plan'} as written")
            self.doc["preflight"] = {"ran": False, "verdict": self.plan.verdict, "plan_source": "file"}
            return self.plan
        if self.folder.skip_preflight:
            self._note("preflight: skipped (--skip-preflight; recorded in config.json)")
            self.doc["preflight"] = {
                "ran": False,
                "verdict": "skipped by --skip-preflight",
                "skipped_by_user": True,
            }
            return unjudged_plan(self.config)
        self._note("preflight: the doctor judges this plan…")
        plan = run_preflight(self.config, self.run_dir)
        limit = plan.max_context_tokens
        too_long = plan.too_long()
        self._note(
            f"preflight: {plan.verdict}"
            + (f"; longest context that fits ≈ {limit:,} tokens" if limit else "")
            + (f"; will skip {', '.join(map(str, too_long))} (too long for the plan)" if too_long else "")
        )
        self.doc["preflight"] = {
            "ran": True,
            "verdict": plan.verdict,
            "skipped_by_user": False,
            "max_context_tokens": limit,
            "too_long": list(too_long),
            "failing_checks": list(plan.failing_checks),
        }
        return plan

    def _run_loaded(
        self, backend: Backend, plan: ResolvedPlan, done: dict[str, Any], saved: dict[str, Any] | None
    ) -> dict[str, Any]:
        tokenizer = backend.tokenizer
        limit = max_positions(backend)
        over = [n for n in self.config.lengths if limit is not None and n > limit]
        if over:
            raise UsageError(
                f"length(s) {', '.join(map(str, over))} exceed the model's max_position_embeddings "
                f"({limit}); positions beyond it were never trained and results would be noise",
                hint=f"Use --lengths up to {limit} (or a model with a longer context).",
            )
        # A server cuts an answer that does not fit its max_model_len: such a cell would measure nothing.
        refuse_lengths_without_room(
            self.config.lengths, self.config.max_new_tokens, backend.describe().get("max_model_len")
        )
        frame = chat_frame(tokenizer)
        haystack = self._prepare_haystack(tokenizer)
        builder = PromptBuilder(tokenizer, frame, haystack)
        builder.warn = lambda message: echo_err(f"warning: {message}")
        identity = self._identity(backend, tokenizer, frame, haystack)
        if saved is not None and isinstance(saved.get("identity"), dict):
            _refuse_changed_identity(saved["identity"], self.doc["identity"], self.run_dir)
        self.identity_sha256 = identity
        self.doc.update(
            {
                "identity_sha256": identity,
                "template_mode": frame.mode,
                "haystack": {
                    "source": haystack.source,
                    "sha256": haystack.sha256,
                    "tokens_available": len(haystack.ids),
                    "repetitions": haystack.repetitions,
                },
            }
        )
        self._save_config()
        specs = plan_trials(self.config)
        counts = {"planned": len(specs), "already_done": 0, "ran": 0, "oom": 0, "errors": 0, "skipped": 0}
        oom_floor: dict[float, int] = {}  # depth -> shortest length that ran out of memory
        previous_ids: list[int] | None = None
        consecutive_errors = 0
        in_flight: deque[tuple[_Prepared, Future[Generation | BaseException]]] = deque()
        pool = (
            ThreadPoolExecutor(max_workers=self.config.concurrency) if self.config.concurrency > 1 else None
        )

        def record(row: dict[str, Any]) -> None:
            nonlocal consecutive_errors
            self.store.append(row)
            status = row["status"]
            counts[
                "ran"
                if status == "ok"
                else "skipped"
                if status == "skipped"
                else "oom"
                if status == "oom"
                else "errors"
            ] += 1
            if status == "oom" and row["depth_percent"] is not None:
                depth = row["depth_percent"]
                oom_floor[depth] = min(row["context_tokens"], oom_floor.get(depth, row["context_tokens"]))
            consecutive_errors = consecutive_errors + 1 if status == "error" else 0
            progress.advance(_describe_row(row))
            if consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
                raise RunFailed(
                    f"{consecutive_errors} trials in a row failed; last: {row.get('error')}",
                    hint="Fix the cause (rerun with --debug for details), then --resume.",
                )

        self.trials_started = True

        def drain(keep: int) -> None:
            while len(in_flight) > keep:
                trial, future = in_flight.popleft()
                row = self._finish(backend, trial, future.result())
                row.pop("_ids", None)
                record(row)

        runnable = [
            (spec, trial_key(identity, spec))
            for spec in specs
            if trial_key(identity, spec) not in done and spec.length not in plan.too_long()
        ]
        ahead: dict[str, _Prepared] = {}  # the next trial, built while this one ran
        self._announce_time_plan(runnable)
        try:
            with _progress(len(specs), quiet=self.quiet) as progress:
                for spec in specs:
                    key = trial_key(identity, spec)
                    if key in done:
                        counts["already_done"] += 1
                        progress.advance(f"{spec.length} tok, done earlier")
                        continue
                    if spec.length in plan.too_long():
                        record(self._skipped(spec, key, "estimate", plan.max_context_tokens))
                    elif (
                        spec.depth is not None
                        and spec.depth in oom_floor
                        and spec.length > oom_floor[spec.depth]
                    ):
                        record(self._skipped(spec, key, "after_oom", oom_floor[spec.depth]))
                    elif pool is None:
                        trial = ahead.pop(key, None) or self._prepare(builder, spec, key, previous_ids)
                        following = self._prepare_following(builder, runnable, spec, trial)
                        ahead = {following.row["trial_key"]: following} if following else {}
                        reporter = progress.prefill_reporter(
                            len(trial.prompt.input_ids), plan.predicted_prefill_seconds
                        )
                        row = self._finish(
                            backend, trial, _call(backend, trial, self.config.max_new_tokens, reporter)
                        )
                        previous_ids = row.pop("_ids", None)
                        record(row)
                    else:
                        # Server backends: keep `concurrency` requests in flight; rows are finalized and
                        # appended in plan order as their answers arrive. No prefix reuse across requests.
                        trial = self._prepare(builder, spec, key, None)
                        in_flight.append(
                            (trial, pool.submit(_call, backend, trial, self.config.max_new_tokens))
                        )
                        drain(self.config.concurrency - 1)
                drain(0)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._record_output_path(backend)
        return counts

    def _record_output_path(self, backend: Backend) -> None:
        """A server backend learns from the replies where output ids came from: save what really happened."""
        source = backend.describe().get("output_ids_from")
        if source and isinstance(self.doc.get("backend"), dict):
            self.doc["backend"]["output_ids_from"] = source
            self._save_config()

    def _base_row(self, spec: TrialSpec, key: str) -> dict[str, Any]:
        return {
            "trial_key": key,
            "status": None,
            "correct": False,
            "failure_class": None,
            "context_tokens": spec.length,
            "input_tokens": None,
            "depth_percent": spec.depth,
            "actual_depth_percent": None,
            "trial": spec.trial,
            "control": spec.control,
            "seed": _stable_int(self.config.seed, spec.length, spec.depth, spec.trial, spec.control),
            "needle_kind": self.config.needle_kind,
            "needle_value": None,
            "distractor_values": [],
            "output_text": None,
            "seconds": 0.0,
            "started_at": _now(),
            "identity_sha256": getattr(self, "identity_sha256", None),
            "predicted_peak_bytes": self._predicted(spec.length),
        }

    def _predicted(self, length: int) -> dict[str, int] | None:
        """The plan's predicted allocator peak per device at this length (None without an estimate)."""
        length_plan = self.plan.length_plan(length) if self.plan is not None else None
        return length_plan.predicted_by_device() if length_plan and length_plan.devices else None

    def _skipped(self, spec: TrialSpec, key: str, reason: str, limit: int | None) -> dict[str, Any]:
        row = self._base_row(spec, key)
        row.update(status="skipped", failure_class="skipped_too_long", skip_reason=reason, limit_tokens=limit)
        return row

    def _build(self, builder: PromptBuilder, spec: TrialSpec, seed: int) -> tuple[NeedleSet, BuiltPrompt]:
        rng = random.Random(seed)
        window_rng = random.Random(_stable_int("window", self.config.seed, spec.length, spec.trial))
        starts = builder.window_starts(spec.length)
        window_start = 0 if spec.trial == 0 else window_rng.choice(starts)
        for _ in range(10):  # a value that also occurs in a user haystack is redrawn (pitfall 13)
            needles = make_needles(self.config.needle_kind, rng, control=spec.control)
            try:
                return needles, builder.build(
                    length=spec.length,
                    depth_percent=spec.depth,
                    needles=needles,
                    window_start=window_start,
                    rng=rng,
                )
            except ValueCollision:
                continue
        raise RunFailed("could not draw needle values that occur exactly once in the haystack")

    def _prepare_following(
        self,
        builder: PromptBuilder,
        runnable: list[tuple[TrialSpec, str]],
        spec: TrialSpec,
        trial: _Prepared,
    ) -> _Prepared | None:
        """The trial after `spec` at the same length, built now: `trial` then knows how many tokens the two
        share (its `snapshot_at`), and the backend can keep its state at exactly that position."""
        keys = [key for _, key in runnable]
        index = keys.index(trial.row["trial_key"]) if trial.row["trial_key"] in keys else -1
        if index < 0 or index + 1 >= len(runnable) or runnable[index + 1][0].length != spec.length:
            return None
        next_spec, next_key = runnable[index + 1]
        following = self._prepare(builder, next_spec, next_key, trial.prompt.input_ids)
        trial.snapshot_at = following.reusable or None
        return following

    def _announce_time_plan(self, runnable: list[tuple[TrialSpec, str]]) -> None:
        """Before the sweep: its predicted GPU time (and cost), from the plan's time model."""
        seconds = predicted_sweep_seconds(self.plan, [spec for spec, _ in runnable])
        if seconds is None:
            return
        self.doc["predicted_sweep_seconds"] = round(seconds, 3)
        line = f"time plan: {len(runnable)} trial(s), prefill ≈ {duration(seconds)} of GPU time"
        gpus = max(1, len(self.plan.lengths[0].devices)) if self.plan and self.plan.lengths else 1
        price = self.config.price_per_gpu_hour
        if price:
            line += f" ≈ {price * gpus * seconds / 3600:.2f} at {price:g} per GPU-hour × {gpus} GPU(s)"
        rates = self.plan.prefill_time.rates_source if self.plan and self.plan.prefill_time else ""
        self._note(line + (f" ({rates})" if rates else ""))

    def _prepare(
        self, builder: PromptBuilder, spec: TrialSpec, key: str, previous_ids: list[int] | None
    ) -> _Prepared:
        row = self._base_row(spec, key)
        started = time.monotonic()
        needles, prompt = self._build(builder, spec, row["seed"])
        ids = prompt.input_ids
        reusable = _lcp(previous_ids, ids)
        row.update(
            input_tokens=len(ids),
            actual_depth_percent=prompt.actual_depth_percent,
            needle_value=needles.needle_value,
            distractor_values=list(needles.distractor_values),
            haystack_tokens=prompt.haystack_tokens,
            needle_token_index=prompt.needle_index,
            snap_tokens=prompt.snap_tokens,
            input_ids_sha256=prompt.input_ids_sha256,
            reusable_prefix_tokens=reusable,
        )
        return _Prepared(spec, row, needles, prompt, reusable, started)

    def _predicted_prefill(self, reused: int, total: int) -> float | None:
        seconds = self.plan.predicted_prefill_seconds(reused, total) if self.plan is not None else None
        return round(seconds, 3) if seconds is not None else None

    def _finish(
        self, backend: Backend, trial: _Prepared, outcome: Generation | BaseException
    ) -> dict[str, Any]:
        row, needles, prompt, started = trial.row, trial.needles, trial.prompt, trial.started
        row.update(snap_tolerance_tokens=prompt.snap_tolerance_tokens, depth_snapped=prompt.depth_snapped)
        if isinstance(outcome, BackendOOM):
            row.update(
                status="oom",
                failure_class="oom",
                memory=outcome.memory,
                error=str(outcome),
                seconds=round(time.monotonic() - started, 3),
            )
            return row
        if isinstance(outcome, (KeyboardInterrupt, RunFailed, UsageError)):
            raise outcome
        if isinstance(outcome, BaseException):  # one broken trial is recorded and retried on --resume
            row.update(
                status="error",
                failure_class="other",
                error=f"{type(outcome).__name__}: {outcome}",
                seconds=round(time.monotonic() - started, 3),
            )
            return row
        generation = outcome
        output_ids = list(generation.output_ids)
        text = backend.tokenizer.decode(output_ids, skip_special_tokens=True)
        score = score_trial(
            text,
            needles,
            prompt_text=prompt.body_text,
            stopped_at_eos=generation.stopped_at_eos,
            needle_positions=prompt.needle_positions,
            prompt_words_cache=prompt_words(prompt.body_text),
        )
        row.update(
            status="ok",
            correct=score.correct,
            failure_class=score.failure_class,
            lenient=score.lenient,
            recall=score.recall,
            found_distractors=list(score.found_distractors),
            hallucinated_values=list(score.hallucinated_values),
            extra_values=list(score.extra_values),
            scoring_version=SCORING_VERSION,
            output_text=text,
            output_tokens=len(output_ids),
            stopped_at_eos=generation.stopped_at_eos,
            prefill_seconds=round(generation.prefill_seconds, 4),
            decode_seconds=round(generation.decode_seconds, 4),
            reused_prefix_tokens=generation.reused_prefix_tokens,
            predicted_prefill_seconds=self._predicted_prefill(
                generation.reused_prefix_tokens, len(prompt.input_ids)
            ),
            memory=dict(generation.memory),
            exceeded_prediction=exceeded_prediction(row.get("predicted_peak_bytes"), generation.memory),
            seconds=round(time.monotonic() - started, 3),
            _ids=prompt.input_ids,
        )
        return row


def predicted_sweep_seconds(plan: ResolvedPlan | None, specs: list[TrialSpec]) -> float | None:
    """The sweep's prefill GPU time by the plan's time model: each trial of a length prefills from where
    the previous one's needle was (the prefix reuse), the first from its first token."""
    if plan is None or plan.prefill_time is None:
        return None
    total, previous = 0.0, None
    for spec in specs:
        same_cell = previous is not None and previous.length == spec.length and previous.trial == spec.trial
        start = int(spec.length * (previous.depth or 0) / 100) if same_cell and previous is not None else 0
        total += plan.predicted_prefill_seconds(start, spec.length) or 0.0
        previous = spec
    return total


def exceeded_prediction(predicted: dict[str, int] | None, memory: dict[str, Any]) -> bool | None:
    """Whether any device's measured allocator peak went above the plan's prediction (None: nothing to compare)."""
    measured = memory.get("per_gpu_peak_bytes") if isinstance(memory, dict) else None
    if not predicted or not isinstance(measured, dict):
        return None
    return any(int(measured.get(device, 0)) > int(bytes_) for device, bytes_ in predicted.items())


def _refuse_changed_identity(before: dict[str, Any], now: dict[str, Any], run_dir: Path) -> None:
    """--resume must not mix two different tests in one folder: name what changed and stop (exit 2)."""
    changed = identity_diff(before, now)
    if changed:
        raise UsageError(
            f"--resume: this run would compute different trials than the one in {run_dir} "
            f"(changed: {', '.join(changed)})",
            hint="Resume with the original settings, or start a new --out folder for the new test.",
        )


def _describe_row(row: dict[str, Any]) -> str:
    where = "control" if row.get("control") else f"depth {row['depth_percent']:g}%"
    if row["status"] == "ok":
        verdict = "correct" if row["correct"] else f"miss ({row['failure_class']})"
    else:
        verdict = row["status"] + (f" ({row.get('skip_reason')})" if row.get("skip_reason") else "")
    return f"{row['context_tokens']} tok, {where}, trial {row['trial']}: {verdict} in {row['seconds']:.1f}s"


class _progress:
    """A rich progress bar on stderr with the ETA, plus one log line per finished trial."""

    def __init__(self, total: int, *, quiet: bool) -> None:
        self.total = total
        self.quiet = quiet
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _progress:  # noqa: PYI034
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
        if self._progress is None:  # quiet: the one line per trial, no bar
            print(inert(Redactor().scrub(message)), file=sys.stderr, flush=True)
            return
        self._progress.update(self._task, description="")
        self._progress.console.print(inert(Redactor().scrub(message)), markup=False)
        self._progress.advance(self._task)

    def prefill_reporter(
        self, prompt_tokens: int, time_plan: Callable[[int, int], float | None] | None
    ) -> Callable[[int, int], None] | None:
        """A callback for one trial's prefill (chunks done, tokens/s, ETA on the bar's line), or None where
        nobody would see it: with -q, and when stderr is not a terminal."""
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


def _prefill_eta(
    time_plan: Callable[[int, int], float | None] | None, start: int, at: int, end: int, elapsed: float
) -> float | None:
    """Seconds left: the time plan's share of the rest, scaled by how this prefill kept to the plan so far
    (a prefill slows down as the context grows: tokens/s alone would promise too early an end)."""
    if time_plan is None or at <= start:
        return None
    done, rest = time_plan(start, at), time_plan(at, end)
    if not done or rest is None:
        return None
    return rest * elapsed / done


def default_out_dir(model: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name or model).strip("-") or "model"
    return Path("niah-runs") / f"{slug}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


@dataclass(frozen=True)
class RunFolder:
    """Where one `niah run` invocation writes and how it talks: not part of the plan (never in its identity)."""

    path: Path
    resume: bool = False
    skip_preflight: bool = False
    quiet: bool = False


def prepare_run_dir(out: Path, *, resume: bool) -> Path:
    """Create/validate/lock --out (niah_run.run_folder.prepare): a folder we can write that is new, empty
    or a niah run; never `/` or someone else's folder; an existing results file needs --resume, and
    --resume needs a run; one `niah run` at a time per folder."""
    from niah_run import run_folder

    return run_folder.prepare(out, resume=resume)


def finish(run_dir: Path, title: str) -> dict[str, Any]:
    """Write summary.json, summary.md and the heatmap from whatever results exist."""
    from niah_run import run_folder
    from niah_run.heatmap import HEATMAP_PNG, render_heatmap
    from niah_run.summary import write_summary

    run_folder.refuse_planted_symlinks(run_dir)  # a received folder may hold summary.json -> ~/.bashrc
    with run_folder.warnings_as_lines():  # malformed rows are skipped (niah_run.results.row_problem)
        summary = write_summary(run_dir)
    if summary["cells"]:
        render_heatmap(summary, run_dir / HEATMAP_PNG, title=Redactor().scrub(title))
    run_folder.unlock(run_dir)  # the run is over: another run may use the folder now
    return summary


def echo_err(message: str) -> None:
    """A note on stderr: secrets scrubbed, and anything from outside (a server's error text, a file name)
    made inert, so it cannot drive the terminal."""
    print(inert(Redactor().scrub(message)), file=sys.stderr, flush=True)
