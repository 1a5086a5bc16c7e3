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

This module is the loop; the trials and their rows are niah_run/trials.py's, the run's identity
niah_run/identity.py's, what it prints niah_run/progress.py's.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import time
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from doctor.report.redact import Redactor
from niah_run import run_folder
from niah_run.backends.base import Backend, Generation, max_positions
from niah_run.backends.registry import make_backend
from niah_run.config import CONFIG_FILE
from niah_run.haystack import load_haystack, validate_haystack_spec
from niah_run.heatmap import HEATMAP_PNG, render_heatmap
from niah_run.identity import (
    HARNESS_VERSION,
    refuse_changed_identity,
    refuse_changed_plan,
    resumed_identity_sha256,
    run_identity,
    saved_auto_as_decided,
    saved_without_effect_as_now,
    settings_without_effect,
)
from niah_run.preflight import run_preflight, save_report, unjudged_plan
from niah_run.progress import SweepProgress, describe_row, echo_err
from niah_run.prompt import PromptBuilder, TokenizedHaystack, tokenize_haystack
from niah_run.results import ResultsStore, latest_by_key
from niah_run.rows import TrialRow
from niah_run.summary import Summary, write_summary
from niah_run.trials import (
    PreparedTrial,
    RowBuilder,
    plan_trials,
    predicted_sweep_seconds,
    trial_key,
)
from run_plan.errors import RunFailed, UsageError
from run_plan.prompt_frame import TrialSpec, chat_frame
from run_plan.resolved import ResolvedPlan
from run_plan.server_room import refuse_lengths_without_room
from run_plan.spec import RunSpec, experts_setting
from run_plan.units import duration

if TYPE_CHECKING:
    from doctor.report.model import Report

MAX_CONSECUTIVE_ERRORS = 3
CHARS_PER_TOKEN_GUESS = 6  # generous: the generated prose is ~4.5 chars per token in BPE vocabularies


class Counts(TypedDict):
    """What one invocation did with the planned trials."""

    planned: int
    already_done: int
    ran: int
    oom: int
    errors: int
    skipped: int


@dataclass(frozen=True)
class RunFolder:
    """Where one `niah run` invocation writes and how it talks: not part of the plan (never in its identity)."""

    path: Path
    resume: bool = False
    skip_preflight: bool = False
    quiet: bool = False


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _call(
    backend: Backend,
    trial: PreparedTrial,
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
    except BaseException as exc:  # noqa: BLE001 - recorded per trial by RowBuilder.finished
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
        self._accepted = False  # config.json is written only then: a refused --resume leaves the earlier one
        # a --resume's preflight report, saved into the folder once the run is accepted (like config.json)
        self._unsaved_report: Report | None = None
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
        # Atomic (a full disk leaves the old config.json, never a 0-byte one), never through a planted
        # symlink, secrets scrubbed, always valid JSON: niah_run.run_folder is the one writer.
        if self._accepted:
            run_folder.write_json(self.run_dir / CONFIG_FILE, self.doc)

    def _accept(self) -> None:
        """The run is accepted: a new run at once, a --resume once its identity is the earlier run's (until
        then the earlier config.json, identity and all, is what a later --resume must find). From here on
        config.json is this run's, and the run says what it is, once."""
        first = not self._accepted
        self._accepted = True
        self._save_config()
        if self._unsaved_report is not None:
            save_report(self._unsaved_report, self.run_dir)
            self._unsaved_report = None
        if first and self.folder.resume:  # a torn last line of the earlier run: cut off now, not before
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # said once already, when the rows were read
                self.store.load_rows(repair=True)
        if first and self.on_start is not None:
            self.on_start()

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

    # -- the loop ----------------------------------------------------------------------------------

    def run(self) -> Counts:
        validate_haystack_spec(self.config.haystack)  # before anything slow is loaded
        saved = self._saved_doc_checked()
        if saved is not None and (finished := self._nothing_left(saved)) is not None:
            return finished  # no preflight, no model load: every planned trial is already done
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if saved is not None:
            self.doc["created_at"] = saved.get("created_at", self.doc["created_at"])
        else:
            self._accept()
        plan = self._judged_plan()
        self.plan, self.config = plan, plan.spec
        self.doc.update(config=plan.spec.to_dict(), plan=plan.to_dict(), plan_identity=plan.spec.identity())
        self._save_config()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = self.store.load_rows(repair=self._accepted)  # a --resume repairs once accepted
        for warning in caught:  # a torn last line from a killed run: say so plainly, once
            echo_err(f"warning: {warning.message}")
        done = {k: r for k, r in latest_by_key(rows).items() if r.done}
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
        refuse_changed_plan(saved.get("plan_identity"), self.config, self.run_dir, saved.get("backend"))
        return saved

    def _nothing_left(self, saved: dict[str, Any]) -> Counts | None:
        """On --resume of an unchanged plan: the counts when every planned trial is done, else None.

        Trial keys hash the identity the earlier run recorded (model files, tokenizer, template,
        haystack); the plan's part of it was just checked unchanged, so the same keys name the same
        trials and nothing would be computed."""
        identity = saved.get("identity_sha256")
        if not isinstance(identity, str):
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a torn line is repaired, and reported, by a real run
            rows = self.store.load_rows(repair=False)
        done = {k for k, r in latest_by_key(rows).items() if r.done}
        specs = plan_trials(self.config)
        if not specs or any(trial_key(identity, spec) not in done for spec in specs):
            return None
        echo_err(f"nothing left to run: all {len(specs)} planned trials in {self.run_dir} are done")
        return Counts(planned=len(specs), already_done=len(specs), ran=0, oom=0, errors=0, skipped=0)

    def _judged_plan(self) -> ResolvedPlan:
        """The plan this run executes: given (--plan), or judged now by the doctor, in-process."""
        if self.plan is not None:
            self._note("plan: executing a saved plan as written")
            self.doc["preflight"] = {"ran": False, "verdict": None, "plan_source": "file"}
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
        judgement = run_preflight(self.config, self.run_dir, save=self._accepted)
        if not self._accepted:
            self._unsaved_report = judgement.report
        plan = judgement.plan
        limit = plan.max_context_tokens
        too_long = plan.too_long()
        self._note(
            f"preflight: {judgement.verdict}"
            + (f"; longest context that fits ≈ {limit:,} tokens" if limit else "")
            + (f"; will skip {', '.join(map(str, too_long))} (too long for the plan)" if too_long else "")
        )
        self.doc["preflight"] = {
            "ran": True,
            "verdict": judgement.verdict,
            "skipped_by_user": False,
            "max_context_tokens": limit,
            "too_long": list(too_long),
            "failing_checks": list(judgement.failing_checks),
        }
        return plan

    def _run_loaded(
        self, backend: Backend, plan: ResolvedPlan, done: dict[str, TrialRow], saved: dict[str, Any] | None
    ) -> Counts:
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
        facts = backend.describe()
        decided_by_auto = {d.name for d in plan.decisions if d.name == "experts" and d.why.startswith("auto")}
        if (
            self.config.experts == "auto"
        ):  # --skip-preflight: the path the loader put on, as the doctor names it
            decided_by_auto.add("experts")
            self.config = dataclasses.replace(self.config, experts=experts_setting(facts.get("experts")))
            self.doc.update(config=self.config.to_dict(), plan_identity=self.config.identity())
        identity_doc, identity = run_identity(self.config, facts, tokenizer, frame, haystack)
        self.doc.update({"backend": facts, "identity": identity_doc})
        if saved is not None and isinstance(saved.get("identity"), dict):
            earlier = saved_auto_as_decided(saved["identity"], identity_doc, decided_by_auto)
            earlier = saved_without_effect_as_now(earlier, identity_doc, settings_without_effect(facts))
            refuse_changed_identity(earlier, identity_doc, self.run_dir)
            identity = resumed_identity_sha256(saved, identity)
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
        self._accept()
        trials = RowBuilder(self.config, plan, identity, builder)
        specs = plan_trials(self.config)
        counts = Counts(planned=len(specs), already_done=0, ran=0, oom=0, errors=0, skipped=0)
        oom_floor: dict[float, int] = {}  # depth -> shortest length that ran out of memory
        previous_ids: list[int] | None = None
        consecutive_errors = 0
        in_flight: deque[tuple[PreparedTrial, Future[Generation | BaseException]]] = deque()
        pool = (
            ThreadPoolExecutor(max_workers=self.config.concurrency) if self.config.concurrency > 1 else None
        )

        def record(row: TrialRow) -> None:
            nonlocal consecutive_errors
            self.store.append(row)
            status = row.status
            if status == "ok":
                counts["ran"] += 1
            elif status == "skipped":
                counts["skipped"] += 1
            elif status == "oom":
                counts["oom"] += 1
            else:
                counts["errors"] += 1
            if status == "oom" and row.depth_percent is not None:
                depth = row.depth_percent
                oom_floor[depth] = min(row.context_tokens, oom_floor.get(depth, row.context_tokens))
            consecutive_errors = consecutive_errors + 1 if status == "error" else 0
            progress.advance(describe_row(row))
            if consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
                raise RunFailed(
                    f"{consecutive_errors} trials in a row failed; last: {row.error}",
                    hint="Fix the cause (rerun with --debug for details), then --resume.",
                )

        self.trials_started = True

        def drain(keep: int) -> None:
            while len(in_flight) > keep:
                trial, future = in_flight.popleft()
                record(trials.finished(trial, future.result(), tokenizer))

        keyed = [(spec, trial_key(identity, spec)) for spec in specs]
        runnable = [
            (spec, key) for spec, key in keyed if key not in done and spec.length not in plan.too_long()
        ]
        # which trial runs after each one, for building it ahead (a trial skipped after an OOM is built in vain)
        after = {key: runnable[i + 1] for i, (_, key) in enumerate(runnable[:-1])}
        ahead: dict[str, PreparedTrial] = {}  # the next trial, built while this one ran
        self._announce_time_plan(runnable)
        try:
            with SweepProgress(len(specs), quiet=self.quiet) as progress:
                for spec, key in keyed:
                    if key in done:
                        counts["already_done"] += 1
                        progress.advance(f"{spec.length} tok, done earlier")
                        continue
                    if spec.length in plan.too_long():
                        record(trials.skipped(spec, key, "estimate", plan.max_context_tokens))
                    elif (
                        spec.depth is not None
                        and spec.depth in oom_floor
                        and spec.length > oom_floor[spec.depth]
                    ):
                        record(trials.skipped(spec, key, "after_oom", oom_floor[spec.depth]))
                    elif pool is None:
                        trial = ahead.pop(key, None) or trials.prepare(spec, key, previous_ids)
                        following = trials.prepare_following(trial, after.get(key))
                        ahead = {following.key: following} if following else {}
                        reporter = progress.prefill_reporter(
                            len(trial.prompt.input_ids), plan.predicted_prefill_seconds
                        )
                        row = trials.finished(
                            trial, _call(backend, trial, self.config.max_new_tokens, reporter), tokenizer
                        )
                        # Only an answered prompt leaves its prefix in the backend's cache for the next one.
                        previous_ids = trial.prompt.input_ids if row.status == "ok" else None
                        record(row)
                    else:
                        # Server backends: keep `concurrency` requests in flight; rows are finalized and
                        # appended in plan order as their answers arrive. No prefix reuse across requests.
                        trial = trials.prepare(spec, key, None)
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

    def _announce_time_plan(self, runnable: list[tuple[TrialSpec, str]]) -> None:
        """Before the sweep: its predicted GPU time (and cost), from the plan's time model."""
        seconds = predicted_sweep_seconds(self.plan, [spec for spec, _ in runnable])
        if seconds is None or not math.isfinite(seconds):  # rates a plan file made tiny: no time to announce
            return
        self.doc["predicted_sweep_seconds"] = round(seconds, 3)
        line = f"time plan: {len(runnable)} trial(s), prefill ≈ {duration(seconds)} of GPU time"
        gpus = max(1, len(self.plan.lengths[0].devices)) if self.plan and self.plan.lengths else 1
        price = self.config.price_per_gpu_hour
        if price:
            line += f" ≈ {price * gpus * seconds / 3600:.2f} at {price:g} per GPU-hour × {gpus} GPU(s)"
        rates = self.plan.prefill_time.rates_source if self.plan and self.plan.prefill_time else ""
        self._note(line + (f" ({rates})" if rates else ""))


def finish(run_dir: Path, title: str) -> Summary:
    """Write summary.json, summary.md and the heatmap from whatever results exist."""
    run_folder.refuse_planted_symlinks(run_dir)  # a received folder may hold summary.json -> ~/.bashrc
    with run_folder.warnings_as_lines():  # malformed rows are skipped (niah_run.rows.TrialRow.from_json)
        summary = write_summary(run_dir)
    if summary["cells"]:
        render_heatmap(summary, run_dir / HEATMAP_PNG, title=Redactor().scrub(title))
    run_folder.unlock(run_dir)  # the run is over: another run may use the folder now
    return summary
