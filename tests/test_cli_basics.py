"""CLI contract: exit codes, stdout carries only the report, no traceback without --debug."""

from __future__ import annotations

import json

from click.testing import CliRunner

from doctor.boundary import run_cli
from doctor.cli import doctor_command
from tests.conftest import REPO, run_module


def test_json_report_parses_and_has_schema_version() -> None:
    proc = run_module("-m", "doctor", "--only", "platform", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema_version"] == 1
    assert {c["id"] for c in doc["checks"]} >= {"cpu-architecture", "host-memory"}
    assert "facts" in doc and "host" in doc["facts"]


def test_unknown_check_is_usage_error_with_suggestion(capsys) -> None:
    code = run_cli(doctor_command, ["--only", "host-memroy"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown check" in err and "host-memory" in err
    assert "Traceback" not in err


def test_bad_context_is_usage_error(capsys) -> None:
    assert run_cli(doctor_command, ["--context", "lots"]) == 2
    assert run_cli(doctor_command, ["--context", "0"]) == 2


def test_list_shows_ids() -> None:
    result = CliRunner().invoke(doctor_command, ["--list"], standalone_mode=False)
    assert "cpu-architecture" in result.output


def test_report_to_file_keeps_stdout_empty(tmp_path) -> None:
    out = tmp_path / "r.md"
    proc = run_module("-m", "doctor", "--only", "platform", "--format", "markdown", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert out.read_text().startswith("## niah-doctor")


def test_unreadable_gpus_is_usage_error_listing_accepted_forms(capsys) -> None:
    for bad in ("2xfoo", "0xH100", "1xH100-40GB"):
        assert run_cli(doctor_command, ["--gpus", bad, "--only", "platform"]) == 2, bad
        err = capsys.readouterr().err
        assert f"--gpus '{bad}'" in err and "2x80GiB" in err and "A6000" in err and "Traceback" not in err


def test_doctor_diff_subcommand_dispatches(tmp_path) -> None:
    golden = REPO / "tests" / "golden"
    proc = run_module(
        "-m", "doctor", "diff", str(golden / "h100-healthy.json"), str(golden / "scout-cpu.json")
    )
    assert proc.returncode == 0, proc.stderr
    assert "nvidia-driver" in proc.stdout and "pass → fail" in proc.stdout
    assert run_module("-m", "doctor", "diff", str(tmp_path / "none.json"), "x.json").returncode == 2
