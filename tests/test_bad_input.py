"""Bad input through the real CLI. The rule (docs/reliability.md):

- a malformed FLAG VALUE (--context 0/-5/abc, --max-memory auto / cuda:0 / 75G) is a usage error:
  one `error:` line (plus at most one `hint:` line) on stderr, exit 2, no traceback, empty stdout;
- a bad MODEL or SCRIPT (folder without config.json, malformed config.json, unknown model_type,
  --script that does not exist) is something the doctor diagnoses: a FAIL row in the report, exit 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from doctor.boundary import run_cli
from doctor.cli import doctor_command
from tests.conftest import run_module


def assert_one_line_usage_error(code: int, out: str, err: str, words: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    assert len([line for line in lines if line.startswith("error:")]) == 1, err
    assert len(lines) <= 2 and all(line.startswith(("error:", "hint:")) for line in lines), err
    assert words in lines[0], err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--context", "0"], "positive"),
        (["--context", "-5"], "not a token count"),
        (["--context", "abc"], "not a token count"),
        (["--context", "1.5"], "whole number"),
        (["--prefill-chunk", "0"], "positive"),
        (["--max-memory", "cpu=auto"], "'auto' is not in a valid format"),
        (["--max-memory", "cuda:0=70GiB"], "use 0"),
        (["--max-memory", "0=75G"], "not in a valid format"),
        (["--max-memory", ""], "empty"),
    ],
)
def test_bad_flag_value_is_one_line_and_exit_2(
    argv: list[str], words: str, capsys: pytest.CaptureFixture
) -> None:
    code = run_cli(doctor_command, [*argv, "--only", "platform"])
    captured = capsys.readouterr()
    assert_one_line_usage_error(code, captured.out, captured.err, words)


def test_bad_flag_value_in_a_real_process() -> None:
    proc = run_module("-m", "doctor", "--max-memory", "cpu=auto")
    assert_one_line_usage_error(proc.returncode, proc.stdout, proc.stderr, "auto")


def _report(argv: list[str]) -> tuple[int, dict]:
    proc = run_module("-m", "doctor", *argv, "--format", "json", "--no-live")
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def _row(doc: dict, check_id: str) -> dict:
    return next(c for c in doc["checks"] if c["id"] == check_id)


def test_missing_script_is_a_fail_row(tmp_path: Path) -> None:
    code, doc = _report(["--script", str(tmp_path / "nonexistent.py"), "--only", "git"])
    assert code == 1
    row = _row(doc, "script-matches-head")
    assert row["status"] == "fail" and "file not found" in row["summary"]


@pytest.mark.parametrize(
    "config, words",
    [
        (None, "no config.json"),
        ('{"model_type": "llama", "hidden_si', "not valid JSON"),
    ],
)
def test_bad_model_folder_is_a_fail_row(tmp_path: Path, config: str | None, words: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(config)
    code, doc = _report(["--model", str(folder), "--only", "model"])
    assert code == 1
    row = _row(doc, "model-resolves")
    assert row["status"] == "fail" and words in row["summary"]


@pytest.mark.slow
def test_unknown_model_type_is_a_fail_row(tmp_path: Path) -> None:
    """model-resolves accepts any model_type; transformers (asked in a child) is the judge."""
    folder = tmp_path / "model"
    folder.mkdir()
    # The sizes the estimate needs are valid (a missing one is its own FAIL, tests/test_fuzz_cli.py).
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "no-such-architecture",
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
            }
        )
    )
    proc = run_module(
        "-m", "doctor", "--model", str(folder), "--live", "--only", "model,libraries", "--format", "json"
    )
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert _row(doc, "model-resolves")["status"] == "pass"
    assert _row(doc, "model-type-supported")["status"] == "fail"
    assert "no-such-architecture" in _row(doc, "model-type-supported")["summary"]


def _fifo(tmp_path: Path, name: str) -> Path:
    import os

    path = tmp_path / name
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("flag", ["--config", "--report"])
def test_a_pipe_or_a_device_named_as_a_file_is_a_usage_error_not_a_hang(
    tmp_path: Path, capsys: pytest.CaptureFixture, flag: str
) -> None:
    """A FIFO blocked the open (and the read) forever and /dev/zero never ended: the doctor must neither
    crash nor hang, whatever a flag names."""
    from doctor.explain import explain_command

    for named in (_fifo(tmp_path, f"x{flag}"), Path("/dev/zero")):
        if flag == "--config":
            code = run_cli(doctor_command, ["--config", str(named), "--only", "platform"])
        else:
            code = run_cli(explain_command, ["memory-fit", "--report", str(named)])
        captured = capsys.readouterr()
        assert code == 2 and "not a regular file" in captured.err and "hint:" in captured.err, captured.err


def test_a_model_folder_whose_config_is_a_pipe_is_a_fail_row(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    _fifo(folder, "config.json")
    code, doc = _report(["--model", str(folder), "--only", "model"])
    assert code == 1 and "config.json" in _row(doc, "model-resolves")["summary"]  # and no hang
