"""CLI contract: exit codes, stdout carries only the report, no traceback without --debug."""

from __future__ import annotations

import json

import pytest
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


def _commands() -> dict[str, object]:
    from doctor.diff import diff_command
    from doctor.explain import explain_command
    from niah_run.cli import niah_command

    out: dict[str, object] = {"doctor": doctor_command, "doctor diff": diff_command}
    out["doctor explain"] = explain_command
    out.update({f"niah {name}": cmd for name, cmd in niah_command.commands.items()})
    return out


def test_every_command_takes_debug() -> None:
    """Every error hint may say "rerun with --debug": every command must accept it."""
    for name, command in _commands().items():
        flags = {opt for param in command.params for opt in getattr(param, "opts", ())}
        assert "--debug" in flags, name


def test_explain_shows_one_check_in_full_from_the_last_report(tmp_path, capsys, monkeypatch) -> None:
    from doctor.explain import explain_command, last_report_path, remember_report

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert run_cli(explain_command, ["memory-fit"]) == 2  # nothing printed yet: a usage error, said so
    assert "no report to explain yet" in capsys.readouterr().err
    remember_report((REPO / "tests" / "golden" / "scout-cpu.json").read_text(encoding="utf-8"))
    assert last_report_path().is_relative_to(tmp_path)
    assert run_cli(explain_command, ["memory-fit"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("✗ FAIL memory-fit — ") and "evidence:" in out and "estimate.weights_bytes" in out
    assert "$ doctor --model meta-llama/Llama-4-Scout-17B-16E-Instruct" in out
    assert run_cli(explain_command, ["memry-fit"]) == 2
    assert "Did you mean memory-fit?" in capsys.readouterr().err


def test_explain_reads_a_saved_report(capsys) -> None:
    from doctor.explain import explain_command

    report = str(REPO / "tests" / "golden" / "h100-healthy.json")
    assert run_cli(explain_command, ["gpu-devices", "--report", report]) == 0
    assert "PASS gpu-devices" in capsys.readouterr().out


def _mangled(tmp_path, change) -> str:
    doc = json.loads((REPO / "tests" / "golden" / "h100-healthy.json").read_text(encoding="utf-8"))
    change(doc)
    path = tmp_path / "mangled.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return str(path)


def _set_first_check(key: str, value: object):
    return lambda doc: doc["checks"][0].__setitem__(key, value)


@pytest.mark.parametrize(
    "change",
    [
        _set_first_check("status", "weird"),
        _set_first_check("evidence", 5),
        _set_first_check("duration_ms", "x"),
        lambda doc: doc["checks"].__setitem__(0, {"id": "x"}),
        lambda doc: doc.__setitem__("schema_version", "abc"),
        lambda doc: doc.__setitem__("tool", 5),
        lambda doc: doc.__setitem__("target", [1]),
    ],
)
def test_a_json_file_that_is_not_a_reports_shape_is_a_usage_error(tmp_path, capsys, change) -> None:
    """explain and diff read files from outside: any shape but a report's is exit 2 naming the file."""
    from doctor.diff import diff_command
    from doctor.explain import explain_command

    path = _mangled(tmp_path, change)
    assert run_cli(explain_command, ["gpu-devices", "--report", path]) == 2
    assert run_cli(diff_command, [path, str(REPO / "tests" / "golden" / "scout-cpu.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("is not a doctor JSON report") == 2 and "Traceback" not in err and "bug" not in err


@pytest.mark.parametrize(
    "check_id, words",
    [
        ("GPU_DEVICES", "Did you mean gpu-devices?"),
        ("", "doctor --list"),
        ("a" * 5000, "'" + "a" * 60 + "'…"),
        ("\x1b[31mred", "doctor --list"),
    ],
    ids=["upper-snake", "empty", "5000-chars", "escape"],
)
def test_explain_of_an_unknown_id_says_so_briefly_with_the_closest(capsys, check_id: str, words: str) -> None:
    from doctor.explain import explain_command

    report = str(REPO / "tests" / "golden" / "h100-healthy.json")
    assert run_cli(explain_command, [check_id, "--report", report]) == 2
    err = capsys.readouterr().err
    assert words in err and "a" * 61 not in err and "\x1b" not in err  # never drives the terminal


def test_doctor_keeps_its_report_for_explain(tmp_path) -> None:
    proc = run_module("-m", "doctor", "--only", "platform", env={"XDG_CACHE_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "doctor explain cpu-architecture" in proc.stdout.replace("\n  ", " ")
    proc = run_module("-m", "doctor", "explain", "host-memory", env={"XDG_CACHE_HOME": str(tmp_path)})
    assert proc.returncode == 0 and "host-memory" in proc.stdout, proc.stderr


def test_tests_never_touch_the_users_cache() -> None:
    from run_plan.safe_files import tool_cache_dir
    from tests.conftest import TEST_CACHE_HOME

    assert tool_cache_dir("sizing").is_relative_to(TEST_CACHE_HOME)
