"""CLI contract: exit codes, stdout carries only the report, no traceback without --debug."""

from __future__ import annotations

import json

from click.testing import CliRunner

from doctor.boundary import run_cli
from doctor.cli import doctor_command
from tests.conftest import run_module


def test_json_report_parses_and_has_schema_version() -> None:
    proc = run_module("-m", "doctor", "--only", "platform", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema_version"] == 1
    assert {c["id"] for c in doc["checks"]} >= {"cpu-architecture", "host-memory"}
    assert "facts" in doc and "host" in doc["facts"]


def test_unknown_check_is_usage_error_with_suggestion(capsys) -> None:  # noqa: ANN001
    code = run_cli(doctor_command, ["--only", "host-memroy"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown check" in err and "host-memory" in err
    assert "Traceback" not in err


def test_bad_context_is_usage_error(capsys) -> None:  # noqa: ANN001
    assert run_cli(doctor_command, ["--context", "lots"]) == 2
    assert run_cli(doctor_command, ["--context", "0"]) == 2


def test_list_shows_ids() -> None:
    result = CliRunner().invoke(doctor_command, ["--list"], standalone_mode=False)
    assert "cpu-architecture" in result.output


def test_report_to_file_keeps_stdout_empty(tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "r.md"
    proc = run_module("-m", "doctor", "--only", "platform", "--format", "markdown", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert out.read_text().startswith("## niah-doctor")
