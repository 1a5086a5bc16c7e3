"""Security classes of issue 10: printed commands are shell-quoted, secrets of every common shape are
scrubbed, and the doctor never imports niah_run (it talks HTTP through run_plan only).

The quoting test runs the real `doctor` on a model folder named `m4; touch PWNED #` (and a run
script named like it), takes every command the three formats print, and pastes each into a real
`bash` whose PATH starts with stubs for the tools we name (doctor, hf, git, rm, ...). Had any value
been printed unquoted, bash would run `touch` and the PWNED file would exist.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from doctor.report.model import Evidence, Fix, ToolInfo
from doctor.report.redact import Redactor
from run_plan.shell import quote, shell_join

REPO = Path(__file__).resolve().parents[1]
HOSTILE = "m4; touch PWNED #"
GITHUB_TOKEN = "ghp_" + "Z9" * 18  # 36 characters after the prefix, as GitHub issues them
GITLAB_TOKEN = "glpat-" + "Ab3_" * 5
STUBBED = ("doctor", "hf", "git", "rm", "ls", "pip", "python", "vllm", "curl", "nvidia-smi", "niah")


# ---------------------------------------------------------------- the quoting helper and the model


@pytest.mark.parametrize(
    "value", [HOSTILE, "a b", "$(touch X)", "`touch X`", "it's", "x\ny", "--flag", "", "~/m"]
)
def test_shell_join_round_trips_through_a_real_shell(value: str, tmp_path: Path) -> None:
    line = shell_join(["printf", "%s", value])
    out = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout == value
    assert list(tmp_path.iterdir()) == []
    assert quote(value) == shell_join([value])


def test_fix_and_evidence_quote_argument_lists_and_keep_literal_lines() -> None:
    fix = Fix("do it", (("doctor", "--model", HOSTILE), "nvidia-smi -L"))
    assert fix.commands == (f"doctor --model {quote(HOSTILE)}", "nvidia-smi -L")
    assert Evidence("k", 1, "os", ("ls", HOSTILE)).how == f"ls {quote(HOSTILE)}"
    assert (
        ToolInfo("doctor", "0", ("doctor", "--model", HOSTILE)).command_line
        == f"doctor --model {quote(HOSTILE)}"
    )


# ---------------------------------------------------------------- a real doctor run, pasted into bash


def _stub_bin(folder: Path, log: Path) -> Path:
    folder.mkdir()
    for name in STUBBED:
        stub = folder / name
        stub.write_text(
            f'#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done >> {quote(str(log))}\n'
            f'printf "\\n" >> {quote(str(log))}\n'
        )
        stub.chmod(0o755)
    return folder


def _hostile_model(root: Path) -> Path:
    folder = root / HOSTILE
    folder.mkdir()
    config = json.loads((REPO / "doctor/memory/configs/meta-llama__Llama-3.1-8B-Instruct.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    # Secrets in less common shapes inside the config: they must not be echoed by any format.
    config["hub_token"] = "not-a-known-shape-but-a-secret-field"
    config["note"] = (
        f"pushed with {GITHUB_TOKEN} from https://gitlab.example/x.git?private_token={GITLAB_TOKEN}"
    )
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _hostile_script(root: Path) -> Path:
    repo = root / "proj"
    repo.mkdir()
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
    (repo / "README").write_text("x\n")
    subprocess.run(["git", "-C", str(repo), "add", "README"], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "init"], check=True, env=env)
    script = repo / "r; touch PWNED #.py"
    script.write_text("print('hi')\n")  # untracked: the fix is `git -C REPO add -- SCRIPT`
    return script


def _commands_of(fmt: str, text: str) -> list[str]:
    if fmt == "json":
        doc = json.loads(text)
        out = [doc["tool"]["command"]]
        for check in doc["checks"]:
            out += (check.get("fix") or {}).get("commands") or []
            out += [ev["how"] for ev in check.get("evidence") or [] if ev.get("how")]
        return out
    if fmt == "markdown":
        out = re.findall(r"^- Command: `+ ?(.*?) ?`+$", text, flags=re.MULTILINE)
        out += [
            line
            for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
            for line in block.splitlines()
            if line.strip()
        ]
        return out
    return [line.strip()[2:] for line in text.splitlines() if line.strip().startswith("$ ")]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("git") is None, reason="needs bash and git")
@pytest.mark.parametrize("fmt", ["json", "markdown", "text"])
def test_pasting_any_printed_command_runs_nothing_else(fmt: str, tmp_path: Path) -> None:
    model = _hostile_model(tmp_path)
    script = _hostile_script(tmp_path)
    out = tmp_path / f"report.{fmt}"
    env = {
        **os.environ,
        "COLUMNS": "400",
        "NO_COLOR": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "PYTHONPATH": str(REPO),
    }
    assert model.parent == tmp_path  # given relative, as users type it: `--model 'm4; touch PWNED #'`
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "doctor",
            "--model",
            model.name,
            "--gpus",
            "1x24GiB",
            "--context",
            "1M",
            "--script",
            str(script),
            "--only",
            "memory,model,git",
            "--no-live",
            "-v",
            "--format",
            fmt,
            "-o",
            str(out),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    text = out.read_text(encoding="utf-8")
    assert GITHUB_TOKEN not in text and GITLAB_TOKEN not in text and "not-a-known-shape" not in text
    commands = _commands_of(fmt, text)
    # The model folder and the script reach printed commands (else this test would prove nothing).
    assert any(f"--model {quote(HOSTILE)}" in c for c in commands), commands
    if fmt != "text":  # the text format shows fixes of failing checks only
        assert any("touch PWNED #.py'" in c for c in commands), commands
    log = tmp_path / "stub.log"
    stubs = _stub_bin(tmp_path / "stubs", log)
    paste_dir = tmp_path / "paste"
    paste_dir.mkdir()
    for command in commands:
        subprocess.run(
            ["bash", "-c", command],
            cwd=paste_dir,
            capture_output=True,
            timeout=30,
            check=False,
            env={"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(tmp_path)},
        )
    assert not list(paste_dir.rglob("PWNED*")) and not list(tmp_path.glob("PWNED*"))
    # ... and the stubs saw the hostile name as ONE argument.
    received = [line.split("\0") for line in log.read_text().splitlines()] if log.exists() else []
    assert any(any(arg.endswith(HOSTILE) for arg in args) for args in received), received


# ---------------------------------------------------------------- secret shapes


SHAPES = {
    "github classic": "ghp_" + "a1B2" * 9,
    "github oauth": "gho_" + "a1B2" * 9,
    "github fine-grained": "github_pat_11ABCDEFG0" + "x1" * 20,
    "gitlab": GITLAB_TOKEN,
    "slack bot": "xoxb-123456789012-abcdefABCDEF",
    "slack user": "xoxp-123456789012-abcdefABCDEF",
    "aws access key id": "AKIAIOSFODNN7EXAMPLE",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "hf": "hf_" + "abcdEFGH" * 4,
    "openai": "sk-proj-" + "abcdEFGH" * 4,
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_token_shape_is_scrubbed_wherever_it_appears(name: str) -> None:
    secret = SHAPES[name]
    redactor = Redactor(environ={}, home="/home/u")
    for text in (secret, f"token={secret}", f"'{secret}'", f"x {secret}. y", json.dumps({"v": secret})):
        assert secret not in redactor.scrub(text)


@pytest.mark.parametrize(
    "url, secret",
    [
        ("https://gitlab.com/g/p.git?private_token=s3cr3tvalue&ref=main", "s3cr3tvalue"),
        ("http://h:8000/v1?token=abcdef123", "abcdef123"),
        ("https://api.example/x?key=AIzaSyD-xyz123&alt=json", "AIzaSyD-xyz123"),
        ("https://bucket.s3/obj?X-Amz-Signature=deadbeef42&X-Amz-Credential=AKIDXYZ", "deadbeef42"),
        ("https://user:pa55word@host/repo.git", "pa55word"),
    ],
)
def test_secret_url_parts_are_scrubbed_and_the_rest_kept(url: str, secret: str) -> None:
    scrubbed = Redactor(environ={}, home="/home/u").scrub(f"remote {url} here")
    assert secret not in scrubbed
    assert scrubbed.startswith("remote http") and scrubbed.endswith(" here")


@pytest.mark.parametrize(
    "name", ["GITHUB_PAT", "GITLAB_PAT", "MY_SERVICE_TOKEN", "DEPLOY_KEY", "DB_PASSWORD"]
)
def test_secret_named_variables_are_scrubbed_by_value_and_by_assignment(name: str) -> None:
    value = "v4lue-of-some-secret"
    redactor = Redactor(environ={name: value}, home="/home/u")
    assert value not in redactor.scrub(f"the value {value} leaked")
    assert value not in Redactor(environ={}, home="/home/u").scrub(f"export {name}={value}")


def test_secret_named_fields_are_scrubbed_and_data_fields_kept() -> None:
    doc = {
        "hub_token": "anything-at-all",
        "api_key": "k3y-value-x",
        "password": "hunter2hunter2",
        "tokenizer": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "trial_key": "ab" * 32,
        "api_key_env": "OPENAI_API_KEY",
        "max_new_tokens": 32,
        "nested": [{"client_secret": "zzzzzzzz"}],
    }
    out = Redactor(environ={}, home="/home/u").apply(doc)
    assert "anything-at-all" not in json.dumps(out) and "k3y-value-x" not in json.dumps(out)
    assert "hunter2hunter2" not in json.dumps(out) and "zzzzzzzz" not in json.dumps(out)
    for kept in ("tokenizer", "trial_key", "api_key_env", "max_new_tokens"):
        assert out[kept] == doc[kept]


def test_quoted_home_paths_still_paste_after_redaction() -> None:
    line = shell_join(["ls", "/home/u/my models/x"])
    assert Redactor(environ={}, home="/home/u").scrub(line) == "ls ~/'my models/x'"


def test_server_echoing_the_key_never_reaches_results_jsonl(tmp_path: Path, monkeypatch) -> None:
    from niah_run.results import ResultsStore

    key = "sk-" + "Q" * 40
    monkeypatch.setenv("OPENAI_API_KEY", key)
    store = ResultsStore(tmp_path)
    store.append(
        {
            "trial_key": "k",
            "status": "ok",
            "context_tokens": 10,
            "depth_percent": 0.0,
            "control": False,
            "correct": False,
            "output_text": f"Bearer {key} / {SHAPES['github classic']}",
        }
    )
    text = (tmp_path / "results.jsonl").read_text()
    assert key not in text and SHAPES["github classic"] not in text and "<redacted" in text


# ---------------------------------------------------------------- layering


def test_the_doctor_never_imports_niah_run() -> None:
    offenders = []
    for path in sorted((REPO / "doctor").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] == "niah_run"]
    assert offenders == []


def test_run_plan_modules_of_this_issue_import_neither_tool() -> None:
    for name in ("shell", "http", "openai_http", "safe_files"):
        tree = ast.parse((REPO / "run_plan" / f"{name}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = (
                    [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                )
                assert not any(m.split(".")[0] in ("doctor", "niah_run") for m in modules), (name, modules)
