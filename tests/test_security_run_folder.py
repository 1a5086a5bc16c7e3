"""Run folders are shared, received or mistyped (issue 10): one gate (niah_run.run_folder) decides
what may be written there, one writer (run_plan.safe_files) writes atomically and never through a
symlink, and the inputs that used to escape (an empty --haystack, a huge haystack file, malformed rows)
are one-line errors or warnings."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from doctor.boundary import run_cli
from niah_run import run_folder
from niah_run.cli import niah_command
from niah_run.results import ResultsStore, read_rows
from run_plan import safe_files
from run_plan.errors import RunFailed, UsageError

REPO = Path(__file__).resolve().parents[1]
BASE = ("run", "--skip-preflight", "-q", "--lengths", "512", "--depths", "50")
GOOD_ROW = {
    "trial_key": "k1",
    "status": "ok",
    "correct": True,
    "failure_class": None,
    "context_tokens": 512,
    "depth_percent": 50.0,
    "trial": 0,
    "control": False,
    "seconds": 0.1,
}


def niah(*args: str) -> int:
    return run_cli(niah_command, list(args), prog_name="niah")


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch):
    import niah_run.sweep as sweep_module
    from tests.niah.fakes import FakeBackend

    backend = FakeBackend()
    monkeypatch.setattr(sweep_module, "make_backend", lambda config: backend)
    return backend


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


# ---------------------------------------------------------------- which folders may be written


def test_a_foreign_folder_is_refused_and_left_untouched(tmp_path: Path, fake, capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"\xff\xd8 precious")
    (folder / "results.txt").write_text("mine")
    assert niah(*BASE, "--out", str(folder)) == 2
    assert "not a niah run folder" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in folder.iterdir()) == ["holiday.jpg", "results.txt"]
    assert (folder / "holiday.jpg").read_bytes() == b"\xff\xd8 precious" and not fake.calls


def test_the_filesystem_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="root"):
        run_folder.prepare(Path("/"), resume=False)
    with pytest.raises(UsageError, match="root"):
        run_folder.prepare(Path("/tmp/.."), resume=True)


@pytest.mark.parametrize("make", ["missing", "empty", "foreign"])
def test_resume_without_a_run_says_so_instead_of_starting_anew(
    tmp_path: Path, fake, capsys, make: str
) -> None:
    folder = tmp_path / "typo"
    if make != "missing":
        folder.mkdir()
    if make == "foreign":
        (folder / "notes.txt").write_text("x")
    assert niah(*BASE, "--resume", "--out", str(folder)) == 2
    assert "holds no niah run" in one_error_line(capsys.readouterr().err)
    assert not fake.calls and (make == "missing") == (not folder.exists())


def test_a_run_folder_is_resumable_and_an_empty_folder_usable(tmp_path: Path, fake) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    assert niah(*BASE, "--out", str(folder)) == 0
    assert run_folder.holds_a_run(folder)
    assert niah(*BASE, "--resume", "--out", str(folder)) == 0


def test_two_processes_cannot_run_into_one_folder(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pathlib import Path; from niah_run import run_folder; "
                "run_folder.prepare(Path(sys.argv[1]), resume=False); print('locked', flush=True); "
                "time.sleep(60)"
            ),
            str(folder),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFailed, match="another niah run"):
            run_folder.prepare(folder, resume=False)
    finally:
        holder.kill()
        holder.wait()
    run_folder.prepare(folder, resume=False)  # the lock died with its process
    run_folder.unlock(folder)


# ---------------------------------------------------------------- symlinks planted in a received folder


def _received_run(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "received"
    folder.mkdir()
    (folder / "results.jsonl").write_text(json.dumps(GOOD_ROW) + "\n")
    victim = tmp_path / "bashrc"
    victim.write_text("original\n")
    return folder, victim


@pytest.mark.parametrize("name", ["summary.json", "summary.md", "heatmap.png"])
def test_niah_report_never_writes_through_a_planted_symlink(tmp_path: Path, capsys, name: str) -> None:
    folder, victim = _received_run(tmp_path)
    (folder / name).symlink_to(victim)
    assert niah("report", str(folder)) == 2
    assert "symbolic link" in one_error_line(capsys.readouterr().err)
    assert victim.read_text() == "original\n"


def test_results_are_never_appended_through_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("original\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.jsonl").symlink_to(victim)
    with pytest.raises(RunFailed, match="symbolic link"):
        ResultsStore(tmp_path / "run").append(dict(GOOD_ROW))
    with pytest.raises(RunFailed, match="symbolic link"):
        read_rows(tmp_path / "run" / "results.jsonl")
    assert victim.read_text() == "original\n"


def test_run_writes_replace_a_symlink_instead_of_following_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("original\n")
    (tmp_path / "config.json").symlink_to(victim)
    run_folder.write_json(tmp_path / "config.json", {"a": 1})
    assert victim.read_text() == "original\n"
    assert not (tmp_path / "config.json").is_symlink() and json.loads(
        (tmp_path / "config.json").read_text()
    ) == {"a": 1}


# ---------------------------------------------------------------- atomic writes


def test_a_full_disk_leaves_the_old_config_not_a_zero_byte_one(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "config.json"
    run_folder.write_json(path, {"version": 1})

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safe_files.os, "write", full)
    with pytest.raises(RunFailed, match="No space left"):
        run_folder.write_json(path, {"version": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # no temp file left behind


def test_json_we_write_is_always_valid_json(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    run_folder.write_json(path, {"a": float("inf"), "b": [float("nan")], "c": "hf_" + "x" * 20})
    doc = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert doc["a"] == "inf" and "hf_" not in json.dumps(doc)


# ---------------------------------------------------------------- malformed rows


@pytest.mark.parametrize(
    "bad",
    [
        {"trial_key": "k2", "status": "ok", "context_tokens": "abc", "depth_percent": 50.0},
        {"trial_key": "k2", "status": "ok", "context_tokens": 512, "depth_percent": "deep"},
        {"trial_key": "k2", "status": "weird", "context_tokens": 512, "depth_percent": 50.0},
        {"trial_key": 7, "status": "ok", "context_tokens": 512, "depth_percent": 50.0},
        {
            "trial_key": "k2",
            "status": "ok",
            "context_tokens": 512,
            "depth_percent": 50.0,
            "failure_class": ["x"],
        },
        {"trial_key": "k2", "status": "ok", "context_tokens": True, "depth_percent": 50.0},
        [1, 2, 3],
    ],
)
def test_a_malformed_row_is_skipped_with_a_warning_never_exit_3(tmp_path: Path, capsys, bad) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "results.jsonl").write_text(json.dumps(bad) + "\n" + json.dumps(GOOD_ROW) + "\n")
    assert niah("report", str(folder)) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "warning:" in captured.err and "line 1" in captured.err
    assert json.loads((folder / "summary.json").read_text())["cells"][0]["n"] == 1


# ---------------------------------------------------------------- haystacks


@pytest.mark.parametrize("spec", ["", "   "])
def test_an_empty_haystack_is_a_usage_error_not_the_current_folder(
    tmp_path: Path, spec: str, fake, capsys, monkeypatch
) -> None:
    from niah_run.haystack import load_haystack, validate_haystack_spec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "private.txt").write_text("My bank PIN is 1234. Do not share.")
    with pytest.raises(UsageError, match="--haystack is empty"):
        validate_haystack_spec(spec)
    with pytest.raises(UsageError, match="--haystack is empty"):
        load_haystack(spec, 0, 100)
    assert niah(*BASE, "--haystack", spec, "--out", str(tmp_path / "r")) == 2
    assert "--haystack is empty" in one_error_line(capsys.readouterr().err)
    assert not fake.calls and not (tmp_path / "r").exists()  # refused before the run folder is made


def test_a_huge_haystack_is_read_only_as_far_as_the_prompt_needs(tmp_path: Path, monkeypatch) -> None:
    from niah_run import haystack as hay

    big = tmp_path / "big.txt"
    sentence = "The quick brown fox jumps over the lazy dog. " * 1000
    big.write_text(sentence * 20, encoding="utf-8")  # ~900 kB, "huge" once the limit below is lowered
    monkeypatch.setattr(hay, "FULL_READ_BYTES", 10_000)
    reads: list[int | None] = []
    real = hay._read_bytes
    monkeypatch.setattr(hay, "_read_bytes", lambda path, limit: reads.append(limit) or real(path, limit))
    short = hay.load_haystack_files(big, min_chars=5_000)
    longer = hay.load_haystack_files(big, min_chars=50_000)
    assert all(limit is not None and limit < 300_000 for limit in reads)
    assert 5_000 <= len(short.text) < 100_000
    assert longer.text.startswith(short.text[:4_000])
    assert short.sha256 == longer.sha256  # the identity does not depend on how much was read (resume keys)
    with pytest.raises(UsageError, match="not UTF-8"):
        (tmp_path / "bad.txt").write_bytes(b"ok " * 10 + b"\xff")
        hay.validate_haystack_spec(str(tmp_path / "bad.txt"))


def test_a_prefix_cut_inside_a_multibyte_character_is_not_an_error(tmp_path: Path, monkeypatch) -> None:
    from niah_run import haystack as hay

    path = tmp_path / "u.txt"
    path.write_text("é" * 50_000, encoding="utf-8")
    monkeypatch.setattr(hay, "FULL_READ_BYTES", 1_000)
    text = hay.load_haystack_files(path, min_chars=1_001).text
    assert set(text.replace("\n", "")) == {"é"}


# ---------------------------------------------------------------- the output side of the environment


def test_stdout_on_dev_full_is_one_line_exit_1(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "doctor", "--only", "platform", "--no-live"],
            cwd=tmp_path,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            check=False,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    assert proc.returncode == 1, proc.stderr
    assert "No space left on device" in one_error_line(proc.stderr) and "Exception ignored" not in proc.stderr


def test_an_output_encoding_without_the_glyphs_still_prints(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "doctor", "--only", "platform", "--no-live"],
        cwd=tmp_path,
        capture_output=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "latin-1"},
    )
    assert proc.returncode in (0, 1), proc.stderr
    assert b"Traceback" not in proc.stderr and proc.stdout


def test_a_read_only_report_destination_is_one_line(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "doctor", "--only", "platform", "--no-live", "-o", str(target / "report.txt")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode in (1, 2)
    one_error_line(proc.stderr)
