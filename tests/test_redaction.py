"""Secrets never reach a report: a full `doctor --model ... --script ...` run in a real process, with
planted HF_TOKEN, OPENAI_API_KEY, an hf_ token inside an innocently named variable, a token in the
git remote URL, and a home directory that every path sits under. Text, markdown and JSON, stdout,
stderr and the -o file are all searched."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_module

HF_TOKEN = "hf_" + "PlantedToken" * 3
OPENAI_KEY = "sk-" + "plantedOpenAIkey" * 2
HIDDEN_HF = "hf_" + "HiddenInsideValue" * 2  # inside a variable whose NAME looks harmless
REMOTE_TOKEN = "hf_" + "RemoteUrlSecret" * 2
SECRETS = (HF_TOKEN, OPENAI_KEY, HIDDEN_HF, REMOTE_TOKEN)
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


@pytest.fixture()
def planted(tmp_path: Path) -> tuple[Path, dict[str, str], list[str]]:
    home = tmp_path / "home" / "alice-private"
    project = home / "project"
    project.mkdir(parents=True)
    env = {
        **os.environ,
        **GIT_ENV,
        "HOME": str(home),
        "GIT_CONFIG_GLOBAL": os.devnull,
        "HF_TOKEN": HF_TOKEN,
        "OPENAI_API_KEY": OPENAI_KEY,
        "EXTRA_ARGS": f"--flag {HIDDEN_HF} --x",
    }
    for args in (
        ["init", "-q", "-b", "main"],
        ["remote", "add", "origin", f"https://alice:{REMOTE_TOKEN}@example.invalid/o/r.git"],
    ):
        subprocess.run(["git", *args], cwd=project, env=env, check=True, capture_output=True)
    (project / "run.py").write_text("print('hi')\n")
    subprocess.run(["git", "add", "run.py"], cwd=project, env=env, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "c"], cwd=project, env=env, check=True)
    # a tracking ref, so the remote URL is part of the evidence
    subprocess.run(
        ["git", "update-ref", "refs/remotes/origin/main", "HEAD"], cwd=project, env=env, check=True
    )
    subprocess.run(
        ["git", "branch", "-u", "origin/main"], cwd=project, env=env, check=True, capture_output=True
    )
    (project / "run.py").write_text("print('edited')\n")
    model = home / "models" / "tiny"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    argv = ["--model", str(model), "--script", str(project / "run.py"), "--fetch", "--no-live", "-v"]
    return home, env, argv


@pytest.mark.parametrize("fmt", ["text", "markdown", "json"])
def test_no_secret_or_home_in_any_format(
    planted: tuple[Path, dict[str, str], list[str]], fmt: str, tmp_path: Path
) -> None:
    """One full run per format (every check), the report written with -o; stderr checked too."""
    home, env, argv = planted
    out = tmp_path / f"report.{fmt}"
    proc = run_module("-m", "doctor", *argv, "--format", fmt, "-o", str(out), env=env)
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr
    report = out.read_text()
    for stream in (report, proc.stdout, proc.stderr):
        for secret in SECRETS:
            assert secret not in stream
        assert str(home) not in stream
    assert "~/project/run.py" in report  # about the planted files, with the home directory shown as ~
    if fmt == "json":
        _check_json(json.loads(report))


def _check_json(doc: dict) -> None:
    assert "home-directory" in doc["redactions"]
    remotes = [e["value"] for c in doc["checks"] for e in c["evidence"] if e["key"].endswith(".remote")]
    assert remotes == ["https://example.invalid/o/r.git"]
    hub = next(c for c in doc["checks"] if c["id"] == "hf-hub-access")
    assert "present (from HF_TOKEN env)" in hub["summary"]


def test_the_stored_token_is_read_from_a_regular_file_only(tmp_path, monkeypatch) -> None:
    """HF_TOKEN_PATH naming a pipe hung every doctor run (the Redactor reads the token to scrub it) and
    /dev/zero never ended; a regular file's token is still scrubbed."""
    import os

    from doctor.report.redact import Redactor, _stored_hf_token

    pipe = tmp_path / "token-pipe"
    os.mkfifo(pipe)
    for path in (pipe, "/dev/zero"):
        monkeypatch.setenv("HF_TOKEN_PATH", str(path))
        assert _stored_hf_token() is None
    token = tmp_path / "token"
    token.write_text("hf_" + "q" * 34 + "\n")
    monkeypatch.setenv("HF_TOKEN_PATH", str(token))
    assert "q" * 34 not in Redactor().scrub("the token is " + "hf_" + "q" * 34)
