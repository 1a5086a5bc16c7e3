"""The sweep with a scripted fake backend: exact lengths, prefix reuse, OOM, skips, resume, kills, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from niah_run.results import read_rows
from niah_run.sweep import RunFolder, Sweep, finish
from niah_run.trials import plan_trials
from run_plan.errors import RunFailed, UsageError
from run_plan.resolved import Decision, DevicePrediction, LengthPlan, ResolvedPlan
from run_plan.spec import RunSpec
from tests.conftest import REPO
from tests.niah.fakes import FakeBackend


def _config(tmp_path: Path, **overrides) -> RunSpec:
    values = {"model": "demo", "lengths": (512, 1024), "depths": (0.0, 50.0, 100.0), "trials": 2}
    values.update(overrides)
    return RunSpec(**values)


def _sweep(
    tmp_path: Path,
    backend: FakeBackend,
    *,
    skip_preflight: bool = True,
    resume: bool = False,
    out: str | None = None,
    plan: ResolvedPlan | None = None,
    **overrides,
) -> tuple[Sweep, dict]:
    folder = RunFolder(
        Path(out) if out else tmp_path, resume=resume, skip_preflight=skip_preflight, quiet=True
    )
    sweep = Sweep(_config(tmp_path, **overrides), folder, plan=plan, backend_factory=lambda c: backend)
    return sweep, sweep.run()


def _rows(run_dir: Path) -> list[dict]:
    return read_rows(run_dir / "results.jsonl")


def test_full_sweep_exact_lengths_and_reuse(tmp_path) -> None:
    backend = FakeBackend()
    _, counts = _sweep(tmp_path, backend, controls=1)
    rows = _rows(tmp_path)
    assert counts["ran"] == len(rows) == 2 * (2 * 3 + 1)
    assert all(r["input_tokens"] == r["context_tokens"] for r in rows)
    assert len({r["trial_key"] for r in rows}) == len(rows)
    needle_rows = [r for r in rows if not r["control"]]
    assert all(r["correct"] and r["status"] == "ok" for r in needle_rows)
    assert all(r["actual_depth_percent"] is not None for r in needle_rows)
    # Consecutive depths of one (length, trial) share the prefix up to the needle: the backend is told.
    assert any(call["reusable"] > 100 for call in backend.calls)
    assert backend.closed
    for key in (
        "context_tokens",
        "input_tokens",
        "depth_percent",
        "actual_depth_percent",
        "needle_value",
        "output_text",
        "correct",
        "status",
        "failure_class",
        "seconds",
        "trial_key",
        "seed",
        "needle_kind",
        "prefill_seconds",
        "reused_prefix_tokens",
        "input_ids_sha256",
    ):
        assert key in rows[0], key
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["config"]["lengths"] == [512, 1024] and config["preflight"]["skipped_by_user"] is True
    assert config["identity"]["tokenizer_sha256"] and config["template_mode"] == "chat"


def test_same_seed_same_prompts(tmp_path) -> None:
    _sweep(tmp_path / "a", FakeBackend(), out=str(tmp_path / "a"))
    _sweep(tmp_path / "b", FakeBackend(), out=str(tmp_path / "b"))
    a = [(r["trial_key"], r["input_ids_sha256"], r["needle_value"]) for r in _rows(tmp_path / "a")]
    b = [(r["trial_key"], r["input_ids_sha256"], r["needle_value"]) for r in _rows(tmp_path / "b")]
    assert a == b
    _sweep(tmp_path / "c", FakeBackend(), out=str(tmp_path / "c"), seed=1)
    assert {r[0] for r in a}.isdisjoint({r["trial_key"] for r in _rows(tmp_path / "c")})


def test_resume_with_an_extra_length_keeps_done_trials(tmp_path) -> None:
    _sweep(tmp_path, FakeBackend(), lengths=(512,))
    first = {r["trial_key"]: r["input_ids_sha256"] for r in _rows(tmp_path)}
    _, counts = _sweep(tmp_path, FakeBackend(), lengths=(512, 2048), resume=True)
    assert counts["already_done"] == 6 and counts["ran"] == 6
    # Rebuilding from scratch with the longer haystack gives the very same prompts for the old trials.
    _sweep(tmp_path / "fresh", FakeBackend(), lengths=(512, 2048), out=str(tmp_path / "fresh"))
    fresh = {r["trial_key"]: r["input_ids_sha256"] for r in _rows(tmp_path / "fresh")}
    assert all(fresh[key] == digest for key, digest in first.items())


def test_oom_is_recorded_and_longer_lengths_skipped(tmp_path) -> None:
    backend = FakeBackend(oom_from=1000)
    _, counts = _sweep(tmp_path, backend, lengths=(512, 1024, 2048), trials=1)
    rows = {(r["context_tokens"], r["depth_percent"]): r for r in _rows(tmp_path)}
    assert rows[(512, 50.0)]["status"] == "ok"
    assert rows[(1024, 50.0)]["status"] == "oom" and rows[(1024, 50.0)]["memory"] == {"peak_bytes": 123}
    assert rows[(1024, 50.0)]["failure_class"] == "oom"
    assert rows[(2048, 50.0)]["status"] == "skipped" and rows[(2048, 50.0)]["skip_reason"] == "after_oom"
    assert counts["oom"] == 3 and counts["skipped"] == 3
    summary = finish(tmp_path, "t")
    cell = next(c for c in summary["cells"] if c["context_tokens"] == 1024)
    assert cell["n"] == 0 and cell["oom"] == 1
    assert (tmp_path / "heatmap.png").stat().st_size > 1000
    # Resume retries the OOM rows and the skips they caused; now memory suffices.
    backend2 = FakeBackend()
    _, counts2 = _sweep(tmp_path, backend2, lengths=(512, 1024, 2048), trials=1, resume=True)
    assert counts2["already_done"] == 3 and counts2["ran"] == 6
    latest = {r["trial_key"]: r for r in _rows(tmp_path)}
    assert all(r["status"] == "ok" for r in latest.values())


def test_preflight_too_long_lengths_are_skipped_up_front(tmp_path, monkeypatch) -> None:
    import niah_run.sweep as sweep_module

    def judged(spec, run_dir, **_):
        plan = ResolvedPlan(
            spec=spec,
            lengths=(LengthPlan(512, True), LengthPlan(1024, False, why_not="too long")),
            max_context_tokens=800,
        )
        return SimpleNamespace(plan=plan, verdict="OK", failing_checks=())

    monkeypatch.setattr(sweep_module, "run_preflight", judged)
    backend = FakeBackend()
    _sweep(tmp_path, backend, skip_preflight=False, trials=1)
    rows = _rows(tmp_path)
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert len(skipped) == 3 and all(r["failure_class"] == "skipped_too_long" for r in skipped)
    assert all(r["context_tokens"] == 1024 and r["skip_reason"] == "estimate" for r in skipped)
    assert all(call["n"] == 512 for call in backend.calls)


def test_preflight_failure_stops_with_cause_and_fix(tmp_path, monkeypatch) -> None:
    import doctor.api
    from doctor.report.model import CheckResult, Fix, Report, Status, ToolInfo

    report = Report(
        tool=ToolInfo("niah-doctor", "0", ()),
        created_at="now",
        target={},
        checks=(
            CheckResult(
                "torch-cuda",
                "t",
                "libs",
                Status.FAIL,
                "torch is a CPU build",
                fix=Fix("Install a CUDA build of torch", ("pip install torch",)),
            ),
        ),
    )
    monkeypatch.setattr(
        doctor.api, "judge", lambda spec, **kw: doctor.api.Judgement(report, ResolvedPlan(spec))
    )
    backend = FakeBackend()
    with pytest.raises(RunFailed, match="torch-cuda: torch is a CPU build") as info:
        _sweep(tmp_path, backend, skip_preflight=False)
    assert "Install a CUDA build" in info.value.hint and "--skip-preflight" in info.value.hint
    assert (tmp_path / "preflight.json").exists() and (tmp_path / "preflight.md").exists()
    assert not backend.calls


def test_memory_fit_failure_skips_only_the_lengths_that_do_not_fit(tmp_path, monkeypatch) -> None:
    import doctor.api
    from doctor.report.model import CheckResult, Report, Status, ToolInfo

    def judged(limit):
        check = CheckResult(
            "memory-fit", "t", "memory", Status.FAIL, f"does not fit; longest that fits {limit}"
        )
        report = Report(tool=ToolInfo("niah-doctor", "0", ()), created_at="now", target={}, checks=(check,))

        def judge(spec, **kw):
            lengths = tuple(LengthPlan(n, n <= limit) for n in spec.lengths)
            return doctor.api.Judgement(report, ResolvedPlan(spec, lengths=lengths, max_context_tokens=limit))

        return judge

    monkeypatch.setattr(doctor.api, "judge", judged(800))
    backend = FakeBackend()
    _sweep(tmp_path / "a", backend, skip_preflight=False, trials=1, out=str(tmp_path / "a"))
    rows = _rows(tmp_path / "a")
    assert {r["context_tokens"] for r in rows if r["status"] == "skipped"} == {1024}
    assert all(r["status"] == "ok" for r in rows if r["context_tokens"] == 512)
    monkeypatch.setattr(doctor.api, "judge", judged(300))  # nothing fits: stop
    with pytest.raises(RunFailed, match="memory-fit"):
        _sweep(tmp_path / "b", FakeBackend(), skip_preflight=False, out=str(tmp_path / "b"))


def test_length_above_max_positions_is_refused(tmp_path) -> None:
    with pytest.raises(UsageError, match="max_position_embeddings"):
        _sweep(tmp_path, FakeBackend(max_position_embeddings=1000))


def test_unexpected_trial_errors_are_recorded_then_stop(tmp_path) -> None:
    class Broken(FakeBackend):
        def generate(self, input_ids, *, max_new_tokens, reusable_prefix_len=0, **hints):
            raise RuntimeError("device lost")

    with pytest.raises(RunFailed, match="3 trials in a row failed"):
        _sweep(tmp_path, Broken())
    rows = _rows(tmp_path)
    assert len(rows) == 3 and all(r["status"] == "error" and "device lost" in r["error"] for r in rows)


def test_plan_order_groups_depths_for_reuse() -> None:
    specs = plan_trials(RunSpec(lengths=(1024, 2048), depths=(0.0, 50.0), trials=2, controls=1))
    assert [(s.length, s.trial, s.depth) for s in specs[:3]] == [
        (1024, 0, 0.0),
        (1024, 0, 50.0),
        (1024, 1, 0.0),
    ]
    assert specs[4].control and len(specs) == 10


# -- real processes: SIGKILL, SIGINT --------------------------------------------------------------------


def _spawn(out: Path, *extra: str, sleep: float = 0.3) -> subprocess.Popen:
    code = "from tests.niah.fakes import subprocess_main; subprocess_main()"
    env = {**os.environ, "NIAH_FAKE_SLEEP": str(sleep)}
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "run",
            "--lengths",
            "512,1024",
            "--depths",
            "0,50,100",
            "--trials",
            "2",
            "--skip-preflight",
            "--out",
            str(out),
            "-q",
            *extra,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_lines(path: Path, count: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.returncode} {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for results")


@pytest.mark.slow
def test_sigkill_then_resume_keeps_everything_once(tmp_path) -> None:
    out = tmp_path / "run"
    results = out / "results.jsonl"
    proc = _spawn(out)
    _wait_for_lines(results, 4, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = results.read_text().splitlines()
    assert len(before) >= 4
    with open(results, "a") as handle:  # as if killed mid-write
        handle.write('{"trial_key": "torn')
    proc = _spawn(out, "--resume", sleep=0)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "torn last line" in stderr
    after = results.read_text().splitlines()
    assert after[: len(before)] == before  # nothing finished was lost or rewritten
    keys = [json.loads(line)["trial_key"] for line in after]
    assert len(keys) == len(set(keys)) == 12  # every trial exactly once
    assert (out / "heatmap.png").exists()


@pytest.mark.slow
def test_ctrl_c_flushes_and_exits_130(tmp_path) -> None:
    out = tmp_path / "run"
    results = out / "results.jsonl"
    proc = _spawn(out)
    _wait_for_lines(results, 3, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    lines = results.read_text().splitlines()
    assert 3 <= len(lines) < 12 and all(json.loads(line)["status"] == "ok" for line in lines)
    assert results.read_text().endswith("\n")
    assert (out / "summary.json").exists()
    assert "resume" in stderr


# -- one plan: predictions per row, identity on resume ------------------------------------------------


def _plan_with_predictions(spec: RunSpec, predicted: int) -> ResolvedPlan:
    lengths = tuple(
        LengthPlan(n, True, (DevicePrediction("cuda:0", predicted, 80 << 30),)) for n in spec.lengths
    )
    return ResolvedPlan(spec=spec, lengths=lengths, max_context_tokens=4096)


def test_every_row_records_predicted_and_measured_peak(tmp_path) -> None:
    class Measured(FakeBackend):
        def generate(self, input_ids, **kw):
            generation = super().generate(input_ids, **kw)
            peak = 1000 if len(input_ids) == 512 else 3000  # the 1024 trials go above the prediction
            return generation.__class__(
                **{**generation.__dict__, "memory": {"per_gpu_peak_bytes": {"cuda:0": peak}}}
            )

    spec = _config(tmp_path, trials=1)
    _sweep(tmp_path, Measured(), plan=_plan_with_predictions(spec, 2000), trials=1)
    rows = _rows(tmp_path)
    assert all(r["predicted_peak_bytes"] == {"cuda:0": 2000} for r in rows)
    assert {r["context_tokens"]: r["exceeded_prediction"] for r in rows} == {512: False, 1024: True}
    assert len({r["identity_sha256"] for r in rows}) == 1
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["preflight"]["plan_source"] == "file" and config["plan"]["lengths"][0]["devices"]


def test_resume_with_a_different_test_is_refused_naming_the_keys(tmp_path) -> None:
    _sweep(tmp_path, FakeBackend(), lengths=(512,), trials=1)
    before = (tmp_path / "results.jsonl").read_bytes()
    with pytest.raises(UsageError, match="needle_kind") as info:
        _sweep(tmp_path, FakeBackend(), lengths=(512,), trials=1, resume=True, needle_kind="uuid")
    assert info.value.exit_code == 2
    assert (tmp_path / "results.jsonl").read_bytes() == before  # nothing appended


def test_a_resume_refused_after_the_load_leaves_the_earlier_run_as_it_was(tmp_path) -> None:
    """The model's own facts are compared once it is loaded: a refusal there must not have written this
    invocation's plan over config.json (its identity gone, the next --resume could not find the test)."""

    class OtherFiles(FakeBackend):
        def describe(self):
            return {**super().describe(), "dtype": "bfloat16"}

    _sweep(tmp_path, FakeBackend(), lengths=(512,), trials=1)
    config_before = (tmp_path / "config.json").read_bytes()
    with pytest.raises(UsageError, match=r"backend\.dtype"):
        _sweep(tmp_path, OtherFiles(), lengths=(512,), trials=1, resume=True, depths=(10.0,))
    assert (tmp_path / "config.json").read_bytes() == config_before
    backend = FakeBackend()
    _, counts = _sweep(tmp_path, backend, lengths=(512,), trials=1, resume=True)
    assert counts["already_done"] == 3 and counts["ran"] == 0 and not backend.calls


def _judged_by(monkeypatch, status: str) -> None:
    """The doctor's judgement of any plan: one check of `status`, the plan as given (no estimate)."""
    import doctor.api
    from doctor.api import Judgement
    from doctor.report.model import CheckResult, Fix, Report, Status, ToolInfo

    def judge(spec, **_):
        summary = f"lengths {spec.lengths}"
        check = CheckResult("lengths-hold-prompt", "t", "model", Status(status), summary, fix=Fix("do this"))
        report = Report(ToolInfo("niah-doctor", "0", "test"), "2026-12-08T00:00:00+00:00", {}, (check,))
        return Judgement(report, ResolvedPlan(spec=spec))

    monkeypatch.setattr(doctor.api, "judge", judge)


def _folder_bytes(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file()}


def test_a_refused_resume_leaves_every_file_of_the_folder_as_it_was(tmp_path, monkeypatch) -> None:
    """Refused after the load (another test), or by its own preflight: the earlier run's preflight report,
    config.json and results (a torn last line included) stay byte for byte; a failing preflight's report
    is written outside the folder, and named."""

    class OtherFiles(FakeBackend):
        def describe(self):
            return {**super().describe(), "dtype": "bfloat16"}

    _judged_by(monkeypatch, "pass")
    _sweep(tmp_path, FakeBackend(), skip_preflight=False, lengths=(512,), trials=1)
    assert (tmp_path / "preflight.md").is_file() and (tmp_path / "preflight.json").is_file()
    with (tmp_path / "results.jsonl").open("ab") as results:
        results.write(b'{"torn": ')  # a run killed mid-line
    before = _folder_bytes(tmp_path)
    with pytest.raises(UsageError, match=r"backend\.dtype"):
        _sweep(tmp_path, OtherFiles(), skip_preflight=False, lengths=(512, 1024), trials=1, resume=True)
    assert _folder_bytes(tmp_path) == before
    _judged_by(monkeypatch, "fail")
    with pytest.raises(RunFailed, match="lengths-hold-prompt") as refused:
        _sweep(tmp_path, FakeBackend(), skip_preflight=False, lengths=(512, 1024), trials=1, resume=True)
    assert _folder_bytes(tmp_path) == before
    elsewhere = Path(str(refused.value).split("Report: ")[1].split(";")[0])
    assert elsewhere.is_file() and elsewhere.parent != tmp_path and "left as it was" in str(refused.value)
    # accepted, the resume writes its own report and cuts the torn line off
    _judged_by(monkeypatch, "pass")
    _, counts = _sweep(
        tmp_path, FakeBackend(), skip_preflight=False, lengths=(512, 1024), trials=1, resume=True
    )
    assert counts["already_done"] == 3 and counts["ran"] == 3
    assert _folder_bytes(tmp_path)["preflight.md"] != before["preflight.md"]
    assert b'{"torn": ' not in (tmp_path / "results.jsonl").read_bytes()


def _as_saved_by_an_auto_run(run_dir: Path) -> None:
    """config.json as a --skip-preflight run left it before auto was decided there: experts="auto"."""
    doc = json.loads((run_dir / "config.json").read_text())
    doc["config"]["experts"] = doc["plan_identity"]["experts"] = doc["identity"]["config"]["experts"] = "auto"
    (run_dir / "config.json").write_text(json.dumps(doc))


def test_a_run_that_left_experts_to_auto_resumes_judged_or_not(tmp_path) -> None:
    """--skip-preflight once saved experts="auto" where a judged run saves what auto decided: the same
    test either way (auto decides alike for the same model files), so neither resume is refused; an
    explicit --experts other than auto's choice still is."""
    _sweep(tmp_path, FakeBackend(), lengths=(512,), trials=1)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["config"]["experts"] == "transformers"  # decided from the loaded model, never "auto"
    _as_saved_by_an_auto_run(tmp_path)
    backend = FakeBackend()
    _, counts = _sweep(tmp_path, backend, lengths=(512, 1024), trials=1, resume=True)
    assert counts["already_done"] == 3 and len(backend.calls) == 3  # only the new length ran
    _as_saved_by_an_auto_run(tmp_path)
    judged = ResolvedPlan(
        spec=_config(tmp_path, lengths=(512, 1024), trials=1, experts="transformers"),
        decisions=(Decision("experts", "transformers", "auto: dense"),),
    )
    _, counts = _sweep(tmp_path, FakeBackend(), plan=judged, lengths=(512, 1024), trials=1, resume=True)
    assert counts["already_done"] == 6 and counts["ran"] == 0
    _as_saved_by_an_auto_run(tmp_path)
    with pytest.raises(UsageError, match=r"config\.experts"):
        _sweep(tmp_path, FakeBackend(), lengths=(512, 2048), trials=1, resume=True, experts="routed")


class _ExpertsPath(FakeBackend):
    """A fake whose loader reports the experts path it put on the model (doctor.runtime.paths)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def describe(self):
        return {**super().describe(), "experts": self.path}


def test_experts_on_a_model_without_moe_layers_is_one_test_whatever_its_value(tmp_path) -> None:
    """--experts changes nothing on a dense model: a run started with one value resumes with any other
    (nothing rerun, the same trial keys), and a new run with another value is the same test."""
    _sweep(tmp_path, _ExpertsPath("dense"), lengths=(512,), trials=1, experts="routed")
    keys = {r["trial_key"] for r in _rows(tmp_path)}
    for value in ("transformers", "auto", "routed"):
        backend = _ExpertsPath("dense")
        _, counts = _sweep(tmp_path, backend, lengths=(512,), trials=1, resume=True, experts=value)
        assert counts["already_done"] == 3 and counts["ran"] == 0 and not backend.calls
    fresh = tmp_path / "fresh"
    _sweep(fresh, _ExpertsPath("dense"), out=str(fresh), lengths=(512,), trials=1, experts="transformers")
    assert {r["trial_key"] for r in _rows(fresh)} == keys
    # on a MoE the value chooses the forward: another one is another test
    moe = tmp_path / "moe"
    routed = "routed: transformers' experts interface, grouped_mm"
    _sweep(moe, _ExpertsPath(routed), out=str(moe), lengths=(512,), trials=1, experts="routed")
    with pytest.raises(UsageError, match=r"experts"):
        _sweep(
            moe,
            _ExpertsPath(routed),
            out=str(moe),
            lengths=(512,),
            trials=1,
            resume=True,
            experts="transformers",
        )


def test_a_dense_run_saved_with_experts_routed_resumes_with_its_trial_keys(tmp_path, monkeypatch) -> None:
    """A run of a dense model that an earlier release saved with experts="routed" in its identity (and a
    hash over it) continues under any value: its saved hash keys the trials, nothing is rerun."""
    import niah_run.identity as identity_module

    with monkeypatch.context() as earlier_release:
        earlier_release.setattr(identity_module, "_what_computes", lambda config, facts: config)
        _sweep(tmp_path, _ExpertsPath("dense"), lengths=(512,), trials=1, experts="routed")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["identity"]["config"]["experts"] == "routed"
    backend = _ExpertsPath("dense")
    _, counts = _sweep(tmp_path, backend, lengths=(512, 1024), trials=1, resume=True)
    assert counts["already_done"] == 3 and len(backend.calls) == 3  # only the new length ran
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["identity_sha256"] == saved["identity_sha256"]
    assert len({r["identity_sha256"] for r in _rows(tmp_path)}) == 1


def test_resume_of_a_folder_without_a_run_is_refused(tmp_path) -> None:
    with pytest.raises(UsageError, match="no earlier run"):
        _sweep(tmp_path / "typo", FakeBackend(), resume=True, out=str(tmp_path / "typo"))


def test_summary_shows_prediction_vs_measured_and_never_pools_identities(tmp_path) -> None:
    from niah_run.summary import write_summary

    class Measured(FakeBackend):
        def generate(self, input_ids, **kw):
            generation = super().generate(input_ids, **kw)
            return generation.__class__(
                **{**generation.__dict__, "memory": {"per_gpu_peak_bytes": {"cuda:0": 3000}}}
            )

    spec = _config(tmp_path, lengths=(512,), trials=1)
    _sweep(tmp_path, Measured(), plan=_plan_with_predictions(spec, 2000), lengths=(512,), trials=1)
    with (tmp_path / "results.jsonl").open("a") as handle:  # a row of another test, as an old run left it
        handle.write(json.dumps({**_rows(tmp_path)[0], "trial_key": "x", "identity_sha256": "other"}) + "\n")
    summary = write_summary(tmp_path)
    assert summary["trials_recorded"] == 3 and summary["rows_of_other_identities"] == 1
    assert all(r["exceeded"] for r in summary["memory_vs_plan"])
    text = (tmp_path / "summary.md").read_text()
    assert "prediction vs measured" in text and "⚠" in text and "another test" in text
