"""Git freshness: is the script on disk the code you think will run?

A fix can be pushed and pulled while the run keeps using a placeholder model id: the committed file
still has it, or the checkout is behind origin. These checks say that in one line each, with the
commit and the diff summary as evidence.

One row per concern; each row covers every `--script` and takes the worst status among them.
Edits and unpushed commits are WARN (normal while developing); FAIL is kept for "you will run
something else than you think": a missing file, an upstream that changes this very file, or
bytecode Python trusts although it is of other code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from doctor.context import DoctorContext
from doctor.probes.git import GIT, ScriptFacts
from doctor.registry import Outcome, check
from doctor.report.model import Evidence, Fix, Status, worst_status
from run_plan.shell import quote, shell_join

SECTION = "git"


@dataclass(frozen=True)
class Finding:
    """One script's verdict for one concern."""

    status: Status
    line: str
    evidence: tuple[Evidence, ...] = ()
    fix: Fix | None = None


def _name(s: ScriptFacts) -> str:
    return s.given


def _key(s: ScriptFacts, what: str) -> str:
    """Evidence key: the file name keeps keys short; the full path is in the summary."""
    return f"{Path(s.path).name}.{what}"


def _commits(n: int | None) -> str:
    return f"{n} commit" if n == 1 else f"{n} commits"


def _aggregate(findings: Sequence[Finding], ok_summary: str) -> Outcome:
    """Worst status wins; the summary lists the non-passing scripts (all of them when all pass)."""
    worst = worst_status((f.status for f in findings), default=Status.SKIP)
    shown = [f for f in findings if f.status is not Status.PASS] or list(findings)
    summary = "; ".join(f.line for f in shown) or ok_summary
    evidence = tuple(e for f in findings for e in f.evidence)
    fix = next((f.fix for f in shown if f.fix is not None), None)
    return Outcome(worst, summary, evidence, fix if worst not in (Status.PASS, Status.SKIP) else None)


def _each(ctx: DoctorContext, judge: Callable[[ScriptFacts], Finding], ok_summary: str) -> Outcome:
    facts = ctx.needed(GIT)
    return _aggregate([judge(s) for s in facts.scripts], ok_summary)


def _head_evidence(s: ScriptFacts) -> list[Evidence]:
    where = f"git -C {quote(s.repo_root)}"
    out = [Evidence(_key(s, "repo"), s.repo_root, "git", f"{where} rev-parse --show-toplevel")]
    if s.head:
        out.append(
            Evidence(
                _key(s, "head"),
                f"{s.head} {s.head_subject or ''}".strip(),
                "git",
                f"{where} log -1 --oneline",
            )
        )
    out.append(Evidence(_key(s, "branch"), s.branch or "(detached HEAD)", "git", f"{where} status -sb"))
    return out


# ---------------------------------------------------------------- working tree vs index vs HEAD


def judge_committed(s: ScriptFacts) -> Finding:
    if not s.exists:
        return Finding(
            Status.FAIL,
            f"{_name(s)}: file not found",
            (Evidence(_key(s, "path"), s.path, "os"),),
            Fix("Pass the path of the file the run executes (relative to where you run doctor)"),
        )
    if s.error:
        return Finding(Status.ERROR, f"{_name(s)}: {s.error}")
    if s.repo_root is None:
        return Finding(
            Status.WARN,
            f"{_name(s)}: not under version control: nobody can tell which version ran",
            (Evidence(_key(s, "path"), s.path, "os"),),
            Fix(
                "Keep run scripts in a git repository and commit before long runs",
                (
                    " && ".join(
                        shell_join(["git", "-C", str(Path(s.path).parent), *args])
                        for args in (
                            ["init"],
                            ["add", "--", Path(s.path).name],
                            ["commit", "-m", "run script"],
                        )
                    ),
                ),
            ),
        )
    evidence = _head_evidence(s)
    if s.untracked or not s.tracked:
        return Finding(
            Status.WARN,
            f"{_name(s)}: not committed (untracked in {s.repo_root})",
            tuple(evidence),
            Fix(
                "Commit it so the run can be traced to a version",
                (
                    f"git -C {quote(s.repo_root)} add -- {quote(s.path)}",
                    f"git -C {quote(s.repo_root)} commit -m 'add run script'",
                ),
            ),
        )
    if not s.dirty:
        return Finding(Status.PASS, f"{_name(s)}: matches HEAD {s.head}", tuple(evidence))
    diff = _diff_text(s)
    evidence.append(
        Evidence(
            _key(s, "diff"), diff, "git", f"git -C {quote(s.repo_root)} diff HEAD --stat -- {quote(s.path)}"
        )
    )
    return Finding(
        Status.WARN,
        f"{_name(s)}: the file on disk differs from HEAD {s.head} ({diff}); "
        "the run uses the file on disk, not the commit",
        tuple(evidence),
        Fix(
            "Commit the edit (or restore the committed version) so what runs is what is recorded",
            (
                f"git -C {quote(s.repo_root)} diff -- {quote(s.path)}",
                f"git -C {quote(s.repo_root)} commit -m 'describe the change' -- {quote(s.path)}",
                f"git -C {quote(s.repo_root)} restore -- {quote(s.path)}  # to run the committed version instead",
            ),
        ),
    )


def _diff_text(s: ScriptFacts) -> str:
    parts = []
    if s.worktree_vs_index:
        parts.append(f"unstaged: {s.worktree_vs_index}")
    if s.index_vs_head:
        parts.append(f"staged: {s.index_vs_head}")
    return "; ".join(parts)


@check(
    "script-matches-head", title="Run scripts match their committed version", section=SECTION, needs=(GIT,)
)
def script_matches_head(ctx: DoctorContext) -> Outcome:
    return _each(ctx, judge_committed, "all scripts match HEAD")


# ---------------------------------------------------------------- HEAD vs upstream


def judge_upstream(s: ScriptFacts) -> Finding:
    if not s.exists or s.repo_root is None or s.error:
        return Finding(Status.SKIP, f"{_name(s)}: not in a git checkout")
    evidence = _head_evidence(s)
    if s.fetch and s.fetch != "fetched":
        evidence.append(Evidence(_key(s, "fetch"), s.fetch, "git", f"git -C {quote(s.repo_root)} fetch"))
    if not s.upstream:
        return Finding(
            Status.WARN,
            f"{_name(s)}: branch {s.branch or '(detached)'} has no upstream: "
            "cannot tell whether a newer version exists",
            tuple(evidence),
            Fix("Track the remote branch", ("git branch --set-upstream-to=origin/main",)),
        )
    evidence += [
        Evidence(_key(s, "upstream"), s.upstream, "git", f"git -C {quote(s.repo_root)} status -sb"),
        Evidence(
            _key(s, "ahead_behind"),
            f"+{s.ahead} -{s.behind}",
            "git",
            f"git -C {quote(s.repo_root)} rev-list --left-right --count HEAD...@{{u}}",
        ),
    ]
    if s.remote_url:
        evidence.append(
            Evidence(_key(s, "remote"), s.remote_url, "git", f"git -C {quote(s.repo_root)} remote -v")
        )
    age = _age_note(s)
    if age:
        evidence.append(Evidence(_key(s, "last_fetch"), age, "git", "stat .git/FETCH_HEAD"))
    return _upstream_verdict(s, tuple(evidence), age)


def _upstream_verdict(s: ScriptFacts, evidence: tuple[Evidence, ...], age: str) -> Finding:
    # Without --fetch we only know the upstream as of the last fetch: say how old that knowledge is.
    when = f"the last fetch, {age}" if age else "the last fetch"
    stale = f" (as of {when}; --fetch to refresh)" if s.fetch is None else ""
    if s.fetch not in (None, "fetched"):
        stale = f" (--fetch failed, so as of {when})"
    pull = _pull_fix(s)
    if s.behind and s.upstream_changes_file:
        evidence += (
            Evidence(
                _key(s, "upstream_diff"),
                s.upstream_changes_file,
                "git",
                f"git -C {quote(s.repo_root)} diff --stat HEAD @{{u}} -- {quote(s.path)}",
            ),
        )
        return Finding(
            Status.FAIL,
            f"{_name(s)}: HEAD is {_commits(s.behind)} behind {s.upstream}, and "
            f"{s.upstream} changes this file ({s.upstream_changes_file}): you would run the "
            f"old version{stale}",
            evidence,
            pull,
        )
    if s.behind:
        return Finding(
            Status.WARN,
            f"{_name(s)}: HEAD is {_commits(s.behind)} behind {s.upstream}{stale}",
            evidence,
            pull,
        )
    if s.ahead:
        return Finding(
            Status.WARN,
            f"{_name(s)}: {_commits(s.ahead)} not pushed to {s.upstream}: other machines will not run them",
            evidence,
            Fix("Push them", ("git push",)),
        )
    note = " (fetched now)" if s.fetch == "fetched" else stale
    return Finding(Status.PASS, f"{_name(s)}: up to date with {s.upstream}{note}", evidence)


def _pull_fix(s: ScriptFacts) -> Fix:
    git = shell_join(("git", "-C", s.repo_root))  # the path comes from disk: quoted
    if s.dirty:  # a pull refuses to overwrite local edits: park them first
        return Fix(
            "Park your local edit, pull the upstream, then re-apply the edit",
            (f"{git} stash", f"{git} pull --ff-only", f"{git} stash pop"),
        )
    return Fix("Pull the upstream before running", (f"{git} pull --ff-only",))


def _age_note(s: ScriptFacts) -> str:
    if s.fetch_age_s is None:
        return ""
    seconds = s.fetch_age_s
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return "just now"


@check("script-upstream", title="Checkout is up to date with its upstream", section=SECTION, needs=(GIT,))
def script_upstream(ctx: DoctorContext) -> Outcome:
    return _each(ctx, judge_upstream, "up to date with upstream")


# ---------------------------------------------------------------- __pycache__ and shadowing


def judge_bytecode(s: ScriptFacts) -> Finding:
    if s.pyc is None:
        return Finding(Status.SKIP, f"{_name(s)}: not checked")
    evidence = (
        Evidence(
            _key(s, "pyc"),
            f"{s.pyc.state}: {s.pyc.detail}",
            "pyc header",
            (
                "python",
                "-c",
                f"import importlib.util; print(importlib.util.cache_from_source({str(s.given)!r}))",
            ),
        ),
    )
    if s.pyc.state == "stale-trusted":
        return Finding(
            Status.FAIL,
            f"{_name(s)}: {s.pyc.detail}",
            evidence,
            Fix("Delete the stale bytecode (or run with python -B)", (("rm", s.pyc.path),)),
        )
    note = {
        "absent": "no cached bytecode",
        "fresh": "cached bytecode matches",
        "stale-rewritten": "cached bytecode is old; Python recompiles it",
        "unchecked-hash-ok": "unchecked-hash bytecode (matches today)",
        "other-python": "bytecode of another Python (ignored)",
    }.get(s.pyc.state, s.pyc.detail)
    return Finding(Status.PASS, f"{_name(s)}: {note}", evidence)


@check("script-bytecode", title="Cached bytecode matches the source", section=SECTION, needs=(GIT,))
def script_bytecode(ctx: DoctorContext) -> Outcome:
    return _each(ctx, judge_bytecode, "bytecode matches")


def judge_shadow(s: ScriptFacts) -> Finding:
    if s.shadow is None:
        return Finding(Status.PASS, f"{_name(s)}: not inside a package (nothing to shadow)")
    sh = s.shadow
    evidence = (
        Evidence(_key(s, "package"), sh.package, "import system"),
        Evidence(_key(s, "checkout_dir"), sh.checkout_dir, "os"),
        Evidence(
            _key(s, "installed_origin"),
            sh.installed_origin or "not installed",
            "importlib",
            ("python", "-c", f"import importlib; print(importlib.import_module({sh.package!r}).__file__)"),
        ),
    )
    if sh.shadows:
        return Finding(
            Status.WARN,
            f"{_name(s)}: `import {sh.package}` finds an installed copy at "
            f"{sh.installed_origin}, not the checkout {sh.checkout_dir}",
            evidence,
            Fix(
                "Install the checkout in editable mode (or uninstall the copy)",
                ("pip install -e .", ("pip", "uninstall", sh.package), "export PYTHONNOUSERSITE=1"),
            ),
        )
    return Finding(
        Status.PASS,
        f"{_name(s)}: package {sh.package} imports from the checkout"
        if sh.installed_origin
        else f"{_name(s)}: package {sh.package} is not installed elsewhere",
        evidence,
    )


@check("script-import-origin", title="No installed copy shadows the checkout", section=SECTION, needs=(GIT,))
def script_import_origin(ctx: DoctorContext) -> Outcome:
    return _each(ctx, judge_shadow, "no shadowing copies")
