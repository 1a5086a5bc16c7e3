"""`niah run` / `niah report` through the one error boundary: exit codes, bad inputs, outputs."""

from __future__ import annotations

import errno
import json
import os

import pytest

from doctor.boundary import run_cli
from niah_run.cli import niah_command
from tests.conftest import run_module
from tests.niah.fakes import FakeBackend


@pytest.fixture()
def fake(monkeypatch):
    import niah_run.sweep as sweep_module

    backend = FakeBackend()
    monkeypatch.setattr(sweep_module, "make_backend", lambda config: backend)
    return backend


def niah(*args: str) -> int:
    return run_cli(niah_command, list(args), prog_name="niah")


BASE = ("run", "--lengths", "512", "--depths", "10,90", "--skip-preflight", "-q")


def test_run_writes_every_output(tmp_path, fake, capsys) -> None:
    out = tmp_path / "run"
    assert niah(*BASE, "--out", str(out), "--needle-kind", "multikey", "--controls", "1") == 0
    captured = capsys.readouterr()
    assert "| 10 | 100% (1/1) |" in captured.out
    assert "niah run: model=demo" in captured.err and "needle=multikey" in captured.err
    assert (
        len([line for line in captured.err.splitlines() if "niah run:" in line]) == 1
    )  # one line, not a dump
    for name in ("config.json", "results.jsonl", "summary.json", "summary.md", "heatmap.png"):
        assert (out / name).exists(), name
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["needle_kind"] == "multikey" and config["preflight"]["skipped_by_user"] is True
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert all(len(r["distractor_values"]) == 3 for r in rows if not r["control"])


def test_report_rerenders(tmp_path, fake, capsys) -> None:
    out = tmp_path / "run"
    assert niah(*BASE, "--out", str(out)) == 0
    (out / "summary.md").unlink()
    (out / "heatmap.png").unlink()
    capsys.readouterr()
    assert niah("report", str(out)) == 0
    assert (out / "heatmap.png").exists() and "| 90 |" in capsys.readouterr().out
    assert niah("report", str(tmp_path)) == 2


def test_existing_results_need_resume(tmp_path, fake, capsys) -> None:
    out = tmp_path / "run"
    assert niah(*BASE, "--out", str(out)) == 0
    assert niah(*BASE, "--out", str(out)) == 2
    assert "--resume" in capsys.readouterr().err
    assert niah(*BASE, "--out", str(out), "--resume") == 0
    assert "2 done earlier" in capsys.readouterr().err


def test_out_is_a_file_or_unwritable(tmp_path, fake, capsys) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert niah(*BASE, "--out", str(a_file)) == 2
    assert "is a file" in capsys.readouterr().err
    assert niah(*BASE, "--out", str(a_file / "sub")) == 2
    assert "not writable" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (("--depths", "150"), "outside 0-100"),
        (("--depths", "-5"), "outside 0-100"),
        (("--lengths", "0"), "positive"),
        (("--lengths", "lots"), "not a token count"),
        (("--trials", "0"), "trials"),
        (("--lengths", "16"), "cannot hold"),
    ],
)
def test_bad_flags_exit_2_without_traceback(tmp_path, fake, capsys, args, message) -> None:
    code = niah("run", "--skip-preflight", "-q", "--out", str(tmp_path / "r"), *args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err


def test_bad_haystack_exits_2(tmp_path, fake, capsys) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\xfa")
    assert niah(*BASE, "--out", str(tmp_path / "r"), "--haystack", str(bad)) == 2
    assert "not UTF-8" in capsys.readouterr().err
    assert not fake.calls


def test_bad_toml_exits_2(tmp_path, fake, capsys) -> None:
    config = tmp_path / "run.toml"
    config.write_text("lenghts = [1024]\n")
    assert niah("run", "--config", str(config), "--out", str(tmp_path / "r")) == 2
    assert "lenghts" in capsys.readouterr().err


def test_user_haystack_folder(tmp_path, fake) -> None:
    folder = tmp_path / "hay"
    folder.mkdir()
    (folder / "one.txt").write_text("The river ran past the mill. Children played by the water. " * 80)
    out = tmp_path / "run"
    assert niah(*BASE, "--out", str(out), "--haystack", str(folder)) == 0
    config = json.loads((out / "config.json").read_text())
    assert "one.txt" in config["haystack"]["source"]


def test_disk_full_during_sweep_exits_1_and_keeps_valid_lines(tmp_path, fake, monkeypatch, capsys) -> None:
    out = tmp_path / "run"
    real_write = os.write
    written = []

    def flaky(fd, data):
        if bytes(data).startswith(b'{"trial_key":'):
            written.append(1)
            if len(written) == 2:
                real_write(fd, bytes(data[:10]))
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", flaky)
    assert niah(*BASE, "--out", str(out)) == 1
    assert "disk full" in capsys.readouterr().err
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["status"] == "ok"


@pytest.mark.parametrize(
    "flags",
    [
        ("--price-per-gpu-hour", "nan"),
        ("--price-per-gpu-hour", "inf"),
        ("--price-per-gpu-hour", "1e309"),
        ("--price-per-gpu-hour", "1e308"),
        ("--price-per-gpu-hour", "-1"),
        ("--price-per-gpu-hour", "2 USD"),
        ("--effective-threshold", "nan"),
        ("--gpu-count", str(10**400)),
    ],
)
def test_report_refuses_what_run_refuses_with_exit_2(tmp_path, fake, capsys, flags) -> None:
    """`niah report` takes the same price and threshold as `niah run`: positive and finite, within range."""
    out = tmp_path / "run"
    assert niah(*BASE, "--out", str(out)) == 0
    capsys.readouterr()
    assert niah("report", str(out), *flags) == 2
    err = capsys.readouterr().err
    assert flags[0] in err and "Traceback" not in err


def test_price_flags_beyond_any_price_are_usage_errors(tmp_path, fake, capsys) -> None:
    assert niah(*BASE, "--out", str(tmp_path / "r"), "--price-per-gpu-hour", "1e308") == 2
    captured = capsys.readouterr()
    assert "out of range" in captured.err and "hint:" in captured.err
    assert niah(*BASE, "--out", str(tmp_path / "r"), "--price-per-gpu-hour", "2.5") == 0


@pytest.mark.parametrize("flag", ["--config", "--plan"])
def test_a_pipe_named_as_the_run_file_is_a_usage_error_not_a_hang(tmp_path, capsys, flag) -> None:
    pipe = tmp_path / "run-file"
    os.mkfifo(pipe)
    assert niah("run", flag, str(pipe), "--out", str(tmp_path / "r")) == 2
    err = capsys.readouterr().err
    assert "not a regular file" in err and "hint:" in err and not (tmp_path / "r").exists()


def test_help_lists_every_flag() -> None:
    proc = run_module("-m", "niah_run", "run", "--help")
    assert proc.returncode == 0
    for flag in (
        "--config",
        "--model",
        "--gguf-file",
        "--quant",
        "--dtype",
        "--device-map",
        "--max-memory",
        "--attn",
        "--lengths",
        "--depths",
        "--trials",
        "--needle-kind",
        "--haystack",
        "--prefill-chunk",
        "--max-new-tokens",
        "--out",
        "--resume",
        "--skip-preflight",
        "--seed",
        "--plan",
    ):
        assert flag in proc.stdout, flag


def test_plan_file_runs_verbatim_and_refuses_other_plan_flags(tmp_path, fake, capsys) -> None:
    from run_plan.resolved import ResolvedPlan
    from run_plan.spec import RunSpec

    plan = ResolvedPlan(
        spec=RunSpec(model="demo", lengths=(512,), depths=(10.0,), attn="sdpa", prefill_chunk=256),
    )
    plan.write(tmp_path / "plan.json")
    assert (
        niah("run", "--plan", str(tmp_path / "plan.json"), "--lengths", "1024", "--out", str(tmp_path / "x"))
        == 2
    )
    assert "--lengths" in capsys.readouterr().err
    out = tmp_path / "run"
    assert niah("run", "--plan", str(tmp_path / "plan.json"), "--out", str(out), "-q") == 0
    config = json.loads((out / "config.json").read_text())
    assert config["plan"]["spec"]["prefill_chunk"] == 256 and config["preflight"]["plan_source"] == "file"


def test_a_refused_resume_says_only_why(tmp_path, fake, capsys) -> None:
    out = tmp_path / "run"
    assert niah(*BASE, "--out", str(out)) == 0
    capsys.readouterr()
    assert niah(*BASE, "--out", str(out), "--resume", "--needle-kind", "multikey") == 2
    err = capsys.readouterr().err
    assert "needle_kind" in err
    assert "plan saved" not in err and "partial results" not in err and "niah run:" not in err
    assert niah(*BASE, "--out", str(out), "--resume") == 0  # the folder is free again


def test_a_resume_with_nothing_left_loads_nothing(tmp_path, fake, capsys, monkeypatch) -> None:
    import niah_run.sweep as sweep_module

    out = tmp_path / "run"
    assert niah(*BASE, "--out", str(out)) == 0
    capsys.readouterr()

    def must_not(*_args: object) -> None:
        raise AssertionError("nothing is left: no preflight, no model load")

    monkeypatch.setattr(sweep_module, "make_backend", must_not)
    monkeypatch.setattr(sweep_module, "run_preflight", must_not)
    resumed = [a for a in BASE if a != "--skip-preflight"]
    assert niah(*resumed, "--out", str(out), "--resume") == 0
    captured = capsys.readouterr()
    assert "nothing left to run: all 2 planned trials" in captured.err
    assert "| 10 | 100% (1/1) |" in captured.out  # the summary, as before
    assert (
        niah(*resumed, "--out", str(out), "--resume", "--lengths", "512,1024") != 0
    )  # more to run: it loads
