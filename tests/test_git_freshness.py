"""Git freshness on real repositories in tmp_path: clean, edited-not-committed, staged, committed-not-
pushed, behind upstream (the seed's case), --fetch, untracked, outside git, missing file, stale and
unchecked-hash bytecode, an installed copy shadowing the checkout, and a token in the remote URL."""

from __future__ import annotations

import json
import os
import py_compile
import subprocess
import sys
from pathlib import Path

import pytest

from doctor.api import judge
from doctor.probes.git import parse_status_v2, pyc_facts, script_facts, strip_url_credentials
from doctor.report.model import Status
from run_plan.spec import RunSpec

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}
TOKEN = "hf_" + "Q" * 34


def sh(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def commit(repo: Path, name: str, text: str, message: str) -> None:
    (repo / name).write_text(text)
    sh(repo, "add", name)
    sh(repo, "commit", "-q", "-m", message)


@pytest.fixture()
def clone(tmp_path: Path) -> tuple[Path, Path]:
    """origin (with run.py) and a clone tracking origin/main."""
    origin = tmp_path / "origin"
    origin.mkdir()
    sh(origin, "init", "-q", "-b", "main")
    commit(origin, "run.py", 'MODEL = "meta-llama/Llama-4-Scout-10M-hf"\n', "first")
    commit(origin, "other.py", "x = 1\n", "helper")
    sh(tmp_path, "clone", "-q", str(origin), "work")
    return origin, tmp_path / "work"


def git_rows(*scripts: Path, fetch: bool = False) -> dict[str, object]:
    report = judge(RunSpec(scripts=tuple(str(s) for s in scripts), fetch=fetch), only=("git",)).report
    return {c.id: c for c in report.checks}


def test_clean_checkout_passes(clone: tuple[Path, Path]) -> None:
    _, work = clone
    rows = git_rows(work / "run.py")
    assert rows["script-matches-head"].status is Status.PASS
    assert rows["script-upstream"].status is Status.PASS
    head = next(e.value for e in rows["script-matches-head"].evidence if e.key.endswith(".head"))
    assert head.endswith("helper")  # short sha + subject as evidence


def test_edited_not_committed(clone: tuple[Path, Path]) -> None:
    _, work = clone
    (work / "run.py").write_text('MODEL = "meta-llama/Llama-4-Scout-17B-16E-Instruct"\n')
    row = git_rows(work / "run.py")["script-matches-head"]
    assert row.status is Status.WARN
    assert "the file on disk differs from HEAD" in row.summary and "unstaged: 1 file changed" in row.summary
    assert any("restore" in c for c in row.fix.commands)


def test_staged_edit_is_reported_as_staged(clone: tuple[Path, Path]) -> None:
    _, work = clone
    (work / "run.py").write_text("MODEL = 'x'\n")
    sh(work, "add", "run.py")
    facts = script_facts(str(work / "run.py"))
    assert facts.index_vs_head and not facts.worktree_vs_index


def test_committed_not_pushed(clone: tuple[Path, Path]) -> None:
    _, work = clone
    commit(work, "run.py", "MODEL = 'fixed'\n", "fix model id")
    row = git_rows(work / "run.py")["script-upstream"]
    assert row.status is Status.WARN and "1 commit not pushed to origin/main" in row.summary


def test_behind_upstream_that_changes_the_file_fails(clone: tuple[Path, Path]) -> None:
    """The seed: the fix was pushed from another machine; this checkout still runs the placeholder."""
    origin, work = clone
    commit(origin, "run.py", 'MODEL = "meta-llama/Llama-4-Scout-17B-16E-Instruct"\n', "real id")
    commit(origin, "run.py", 'MODEL = "meta-llama/Llama-4-Scout-17B-16E-Instruct"  # ok\n', "comment")
    sh(work, "fetch", "-q")
    (work / "run.py").write_text("MODEL = 'edited here'\n")
    rows = git_rows(work / "run.py")
    assert rows["script-upstream"].status is Status.FAIL
    assert "HEAD is 2 commits behind origin/main" in rows["script-upstream"].summary
    assert "changes this file" in rows["script-upstream"].summary
    assert "the file on disk differs from HEAD" in rows["script-matches-head"].summary
    commands = rows["script-upstream"].fix.commands  # the local edit must be parked before the pull
    assert commands == (f"git -C {work} stash", f"git -C {work} pull --ff-only", f"git -C {work} stash pop")


def test_behind_on_other_files_only_warns(clone: tuple[Path, Path]) -> None:
    origin, work = clone
    commit(origin, "other.py", "x = 2\n", "unrelated")
    sh(work, "fetch", "-q")
    row = git_rows(work / "run.py")["script-upstream"]
    assert row.status is Status.WARN and "1 commit behind" in row.summary


def test_fetch_flag_refreshes_the_tracking_ref(clone: tuple[Path, Path]) -> None:
    origin, work = clone
    commit(origin, "run.py", "MODEL = 'new'\n", "newer")
    assert git_rows(work / "run.py")["script-upstream"].status is Status.PASS  # stale knowledge
    row = git_rows(work / "run.py", fetch=True)["script-upstream"]
    assert row.status is Status.FAIL and "1 commit behind" in row.summary


def test_untracked_and_outside_git_and_missing(clone: tuple[Path, Path], tmp_path: Path) -> None:
    _, work = clone
    (work / "new.py").write_text("print(1)\n")
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "s.py").write_text("print(2)\n")
    row = git_rows(work / "new.py")["script-matches-head"]
    assert row.status is Status.WARN and "not committed" in row.summary
    row = git_rows(loose / "s.py")["script-matches-head"]
    assert row.status is Status.WARN and "not under version control" in row.summary
    row = git_rows(tmp_path / "nope.py")["script-matches-head"]
    assert row.status is Status.FAIL and "file not found" in row.summary


def test_several_scripts_take_the_worst_status(clone: tuple[Path, Path]) -> None:
    _, work = clone
    (work / "other.py").write_text("x = 3\n")
    row = git_rows(work / "run.py", work / "other.py")["script-matches-head"]
    assert row.status is Status.WARN and "other.py" in row.summary and "run.py" not in row.summary


# ---------------------------------------------------------------- bytecode and shadowing


def _same_size_edit(src: Path, new_text: str) -> None:
    """Replace the source keeping size and mtime, as copy tools that preserve mtimes do."""
    st = src.stat()
    assert len(new_text.encode()) == st.st_size
    src.write_text(new_text)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_stale_timestamp_pyc_that_python_trusts(tmp_path: Path) -> None:
    src = tmp_path / "mod.py"
    src.write_text("VALUE = 1\n")
    py_compile.compile(str(src), doraise=True)
    assert pyc_facts(src).state == "fresh"
    _same_size_edit(src, "VALUE = 2\n")
    facts = pyc_facts(src)
    assert facts.state == "stale-trusted" and "OLD code" in facts.detail


def test_unchecked_hash_pyc(tmp_path: Path) -> None:
    src = tmp_path / "mod.py"
    src.write_text("VALUE = 1\n")
    py_compile.compile(
        str(src), doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH
    )
    assert pyc_facts(src).state == "unchecked-hash-ok"
    src.write_text("VALUE = 22\n")
    assert pyc_facts(src).state == "stale-trusted"


def test_rewritten_pyc_is_harmless(tmp_path: Path) -> None:
    src = tmp_path / "mod.py"
    src.write_text("VALUE = 1\n")
    py_compile.compile(str(src), doraise=True)
    src.write_text("VALUE = 100\n")  # new size: Python notices and recompiles
    assert pyc_facts(src).state == "stale-rewritten"


def test_stale_bytecode_fails_the_report(clone: tuple[Path, Path]) -> None:
    _, work = clone
    py_compile.compile(str(work / "other.py"), doraise=True)
    _same_size_edit(work / "other.py", "x = 9\n")
    row = git_rows(work / "other.py")["script-bytecode"]
    assert row.status is Status.FAIL and "rm " in row.fix.commands[0]


def test_installed_copy_shadows_the_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkout = tmp_path / "checkout" / "mypkg"
    checkout.mkdir(parents=True)
    (checkout / "__init__.py").write_text("")
    (checkout / "run.py").write_text("print('checkout')\n")
    site = tmp_path / "site-packages" / "mypkg"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("")
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path / "site-packages")])
    row = git_rows(checkout / "run.py")["script-import-origin"]
    assert row.status is Status.WARN and "installed copy" in row.summary
    assert "pip install -e ." in row.fix.commands


# ---------------------------------------------------------------- secrets in remotes


def test_strip_url_credentials() -> None:
    assert strip_url_credentials(f"https://user:{TOKEN}@example.com/r.git") == "https://example.com/r.git"
    assert strip_url_credentials("git@github.com:org/r.git") == "git@github.com:org/r.git"


def test_token_in_remote_url_never_reaches_any_format(clone: tuple[Path, Path]) -> None:
    """Also with --fetch: git's own error text about that remote goes through the redactor."""
    from doctor.report.render_json import render_json
    from doctor.report.render_markdown import render_markdown
    from doctor.report.render_text import render_text

    _, work = clone
    sh(work, "remote", "set-url", "origin", f"https://user:{TOKEN}@example.invalid/org/repo.git")
    report = judge(RunSpec(scripts=(str(work / "run.py"),), fetch=True), only=("git",)).report
    remote = [e.value for c in report.checks for e in c.evidence if e.key.endswith(".remote")]
    assert remote == ["https://example.invalid/org/repo.git"]
    for text in (
        render_text(report, verbose=True, color=False),
        render_markdown(report),
        render_json(report),
        json.dumps(report.facts, default=str),
    ):
        assert TOKEN not in text and f"user:{TOKEN[:8]}" not in text


def test_parse_status_v2() -> None:
    text = (
        "# branch.oid abc\n# branch.head main\n# branch.upstream origin/main\n# branch.ab +2 -3\n"
        "1 .M N... 100644 100644 100644 a b run.py\n"
    )
    parsed = parse_status_v2(text)
    assert (parsed["branch"], parsed["upstream"], parsed["ahead"], parsed["behind"]) == (
        "main",
        "origin/main",
        2,
        3,
    )
    assert parse_status_v2("# branch.head (detached)\n")["branch"] is None
