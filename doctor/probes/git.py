"""Git freshness of the files a run executes (`doctor --script PATH`): is the code on disk the code
you think it is? (A committed file can still hold a placeholder model id that the edited copy has
fixed, and the branch can be behind origin.)

For each script: repo root, HEAD (short sha + subject), branch and upstream, working tree vs index vs
HEAD for that file, ahead/behind the upstream tracking ref (no network unless --fetch), whether the
upstream changes this very file, stale or unchecked `__pycache__`, and an installed copy of the
script's package shadowing the checkout.

Every git call: a timeout, no credential prompt (GIT_TERMINAL_PROMPT=0, ssh BatchMode), C locale,
`core.quotepath=off` (non-ASCII names stay readable). Remote URLs lose their userinfo before they
are stored, and the report's Redactor scrubs again.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import marshal
import os
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypedDict

from doctor.probes import Probe, Unavailable, probe
from run_plan.spec import RunSpec

GIT_TIMEOUT_S = 10.0
FETCH_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class PycFacts:
    """What Python will do with the script's cached bytecode."""

    path: str | None  # the __pycache__ file, None when there is none
    state: str  # absent | fresh | stale-rewritten | stale-trusted | unchecked-hash-ok | other-python | unreadable
    detail: str


@dataclass(frozen=True)
class ShadowFacts:
    package: str  # top-level package the script lives in
    checkout_dir: str  # where the package is in the checkout
    installed_origin: str | None  # what `import package` finds outside the checkout; None = not installed
    shadows: bool  # an installed copy is not the checkout (and not an editable install of it)


@dataclass(frozen=True)
class ScriptFacts:
    given: str  # path as the user typed it
    path: str  # absolute
    exists: bool
    repo_root: str | None = None  # None: not under git
    tracked: bool = False
    head: str | None = None  # short sha
    head_subject: str | None = None
    head_date: str | None = None
    branch: str | None = None  # None: detached HEAD
    upstream: str | None = None  # e.g. origin/main; None: no tracking ref
    remote_url: str | None = None  # upstream remote, credentials removed
    ahead: int | None = None
    behind: int | None = None
    worktree_vs_index: str = ""  # `git diff --stat -- file` ("" = same)
    index_vs_head: str = ""  # `git diff --cached --stat -- file`
    untracked: bool = False
    upstream_changes_file: str = ""  # `git diff --stat HEAD @{u} -- file`
    fetch: str | None = None  # None: not asked; else "fetched" or why it failed
    fetch_age_s: float | None = None  # seconds since the last fetch (FETCH_HEAD mtime)
    pyc: PycFacts | None = None
    shadow: ShadowFacts | None = None
    error: str | None = None  # git failed in an unexpected way

    @property
    def dirty(self) -> bool:
        return bool(self.worktree_vs_index or self.index_vs_head)


@dataclass(frozen=True)
class GitFacts:
    git_version: str | None
    scripts: tuple[ScriptFacts, ...]


# ---------------------------------------------------------------- running git safely


def git_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "GIT_TERMINAL_PROMPT": "0",  # never wait for a password on a terminal nobody watches
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "GIT_SSH_COMMAND": env.get("GIT_SSH_COMMAND", "ssh") + " -o BatchMode=yes",
            "LC_ALL": "C",  # parse stable English output
            "GIT_OPTIONAL_LOCKS": "0",  # `git status` must not take index.lock under a running job
        }
    )
    return env


def git(cwd: Path, *args: str, timeout: float = GIT_TIMEOUT_S) -> tuple[int, str, str]:
    """(returncode, stdout, stderr); rc 124 on timeout, 127 when git is missing. Never raises."""
    cmd = ["git", "-c", "core.quotepath=off", "-c", "color.ui=never", *args]
    try:
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=git_env(),
            stdin=subprocess.DEVNULL,
            errors="replace",
        )
    except subprocess.TimeoutExpired:
        return 124, "", f"git {args[0]} did not finish within {timeout:g} s"
    except FileNotFoundError:
        return 127, "", "git is not installed"
    except OSError as exc:
        return 126, "", f"cannot run git: {exc}"
    return proc.returncode, proc.stdout, proc.stderr


def strip_url_credentials(url: str) -> str:
    """https://user:hf_xxx@host/repo.git -> https://host/repo.git (tokens in remotes are common)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable remote url>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# ---------------------------------------------------------------- per-script facts


class GitStatus(TypedDict):
    branch: str | None  # None: a detached HEAD
    upstream: str | None
    ahead: int | None
    behind: int | None
    untracked: bool
    entry: str | None  # the file's own status line, when it has changes


def parse_status_v2(text: str) -> GitStatus:
    """Branch headers and this file's entry from `git status --porcelain=v2 --branch -- file`."""
    out: GitStatus = {
        "branch": None,
        "upstream": None,
        "ahead": None,
        "behind": None,
        "untracked": False,
        "entry": None,
    }
    for line in text.splitlines():
        if line.startswith("# branch.head "):
            head = line.split(" ", 2)[2]
            out["branch"] = None if head == "(detached)" else head
        elif line.startswith("# branch.upstream "):
            out["upstream"] = line.split(" ", 2)[2]
        elif line.startswith("# branch.ab "):
            ahead, behind = line.split(" ")[2:4]
            out["ahead"], out["behind"] = int(ahead.lstrip("+")), abs(int(behind))
        elif line.startswith("? "):
            out["untracked"] = True
        elif line[:2] in ("1 ", "2 ", "u "):
            out["entry"] = line
    return out


def _script_in_repo(facts: ScriptFacts, root: Path, fetched: dict[str, str] | None) -> ScriptFacts:
    """`fetched` maps repo root -> fetch outcome, so several scripts of one repo fetch once; None = no --fetch."""
    rel = os.path.relpath(facts.path, root)
    if fetched is not None and str(root) not in fetched:
        fetched[str(root)] = _fetch(root)
    fetch_outcome = fetched.get(str(root)) if fetched is not None else None
    rc, status_text, err = git(
        root, "status", "--porcelain=v2", "--branch", "--untracked-files=all", "--", rel
    )
    if rc != 0:
        return replace(facts, repo_root=str(root), error=f"git status failed: {err.strip()[:200]}")
    status = parse_status_v2(status_text)
    head, subject, date = _head(root)
    upstream = status["upstream"]
    return replace(
        facts,
        repo_root=str(root),
        head=head,
        head_subject=subject,
        head_date=date,
        tracked=bool(git(root, "ls-files", "--", rel)[1].strip()),
        branch=status["branch"],
        upstream=upstream,
        ahead=status["ahead"],
        behind=status["behind"],
        untracked=bool(status["untracked"]),
        worktree_vs_index=_stat(root, "diff", "--stat", "--", rel),
        index_vs_head=_stat(root, "diff", "--cached", "--stat", "--", rel),
        upstream_changes_file=_stat(root, "diff", "--stat", "HEAD", "@{upstream}", "--", rel)
        if upstream
        else "",
        remote_url=_remote_url(root, str(upstream)) if upstream else None,
        fetch=fetch_outcome,
        fetch_age_s=_fetch_age(root, upstream),
    )


def _head(root: Path) -> tuple[str | None, str | None, str | None]:
    rc, out, _ = git(root, "log", "-1", "--format=%h%x00%s%x00%cI")
    if rc != 0 or not out.strip():
        return None, None, None  # a repo with no commits yet
    sha, subject, date = (out.strip("\n").split("\x00") + ["", ""])[:3]
    return sha, subject, date


def _stat(root: Path, *args: str) -> str:
    """The summary line of a one-file `--stat` ("1 file changed, 3 insertions(+), 1 deletion(-)")."""
    rc, out, _ = git(root, *args)
    lines = out.strip().splitlines() if rc == 0 else []
    return lines[-1].strip() if lines else ""


def _remote_url(root: Path, upstream: str) -> str | None:
    remote = upstream.split("/", 1)[0]
    rc, out, _ = git(root, "remote", "get-url", remote)
    return strip_url_credentials(out.strip()) if rc == 0 and out.strip() else None


def _fetch(root: Path) -> str:
    """Network, and only because the user passed --fetch."""
    rc, _, err = git(root, "fetch", "--quiet", timeout=FETCH_TIMEOUT_S)
    if rc == 0:
        return "fetched"
    last = (err.strip().splitlines() or ["no message"])[-1]
    return f"git fetch failed (exit {rc}): {last[:200]}"


def _fetch_age(root: Path, upstream: str | None) -> float | None:
    """Seconds since the upstream was last learned: FETCH_HEAD (fetch/pull) or the remote-tracking
    ref's reflog (also written by clone). None when neither exists."""
    names = ["FETCH_HEAD"] + ([f"logs/refs/remotes/{upstream}"] if upstream else [])
    ages = []
    for name in names:
        rc, out, _ = git(root, "rev-parse", "--git-path", name)
        path = Path(out.strip()) if rc == 0 else None
        if path is not None and not path.is_absolute():
            path = root / path
        try:
            ages.append(max(0.0, time.time() - path.stat().st_mtime) if path else None)
        except OSError:
            continue
    known = [a for a in ages if a is not None]
    return min(known) if known else None


# ---------------------------------------------------------------- __pycache__ and shadowing


def pyc_facts(source: Path) -> PycFacts:
    """Read the 16-byte header of the script's cached bytecode (PEP 552) and say whether Python will
    run something other than the source: a timestamp pyc whose mtime+size still match but whose code
    differs (copy tools that keep mtimes), or an unchecked-hash pyc (never revalidated)."""
    try:
        pyc = Path(importlib.util.cache_from_source(str(source)))
    except (NotImplementedError, ValueError):
        return PycFacts(None, "absent", "this Python writes no bytecode cache")
    if not pyc.is_file():
        return PycFacts(None, "absent", "no cached bytecode for this Python")
    try:
        data, src = pyc.read_bytes(), source.read_bytes()
        st = source.stat()
    except OSError as exc:
        return PycFacts(str(pyc), "unreadable", f"cannot read: {exc.strerror or exc}")
    if len(data) < 16 or data[:4] != importlib.util.MAGIC_NUMBER:
        return PycFacts(str(pyc), "other-python", "written by another Python version; ignored and rewritten")
    flags = int.from_bytes(data[4:8], "little")
    if flags & 0b01:
        return _hash_pyc(pyc, flags, data, src)
    mtime, size = int.from_bytes(data[8:12], "little"), int.from_bytes(data[12:16], "little")
    if mtime != (int(st.st_mtime) & 0xFFFFFFFF) or size != (st.st_size & 0xFFFFFFFF):
        return PycFacts(str(pyc), "stale-rewritten", "older than the source; Python recompiles it on import")
    if not _same_code(data[16:], src, source):
        return PycFacts(
            str(pyc),
            "stale-trusted",
            "header matches the source's mtime and size, but the bytecode is of different code: "
            "Python will run the OLD code",
        )
    return PycFacts(str(pyc), "fresh", "matches the source")


def _hash_pyc(pyc: Path, flags: int, data: bytes, src: bytes) -> PycFacts:
    matches = data[8:16] == importlib.util.source_hash(src)
    if flags & 0b10:  # checked: Python compares the hash on import, so a mismatch is just recompiled
        state = "fresh" if matches else "stale-rewritten"
        return PycFacts(str(pyc), state, "checked-hash pyc" + ("" if matches else "; Python recompiles it"))
    if matches:
        return PycFacts(
            str(pyc),
            "unchecked-hash-ok",
            "unchecked-hash pyc (never revalidated by Python); it matches the source today",
        )
    return PycFacts(
        str(pyc),
        "stale-trusted",
        "unchecked-hash pyc of different source: Python never revalidates it and runs the OLD code",
    )


def _same_code(payload: bytes, src: bytes, source: Path) -> bool:
    """Compare the cached code object with a fresh compile (compile never executes the source)."""
    try:
        cached = marshal.loads(payload)
        fresh = compile(src, str(source), "exec", dont_inherit=True)
    except Exception:  # a source with a syntax error or a truncated pyc: trust the header
        return True
    return cached == fresh


def shadow_facts(script: Path) -> ShadowFacts | None:
    """If the script sits inside a package, does `import <package>` outside the checkout find an
    installed copy instead (site-packages or user site)? That copy is what other modules import."""
    top = None
    folder = script.parent
    while (folder / "__init__.py").is_file():
        top, folder = folder, folder.parent
    if top is None:
        return None
    search = [p for p in sys.path if p and Path(p).resolve() != folder.resolve() and p != os.getcwd()]
    try:
        spec = importlib.machinery.PathFinder.find_spec(top.name, search)
    except (ImportError, ValueError):
        spec = None
    origin = _spec_dir(spec)
    shadows = origin is not None and not _inside(Path(origin), top)
    return ShadowFacts(top.name, str(top), origin, shadows)


def _spec_dir(spec: importlib.machinery.ModuleSpec | None) -> str | None:
    if spec is None:
        return None
    if spec.submodule_search_locations:
        locations = list(spec.submodule_search_locations)
        return locations[0] if locations else None
    return str(Path(spec.origin).parent) if spec.origin else None


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve() == folder.resolve() or folder.resolve() in path.resolve().parents
    except OSError:
        return False


# ---------------------------------------------------------------- the probe


def script_facts(given: str, fetch: bool = False, fetched: dict[str, str] | None = None) -> ScriptFacts:
    path = Path(given).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    facts = ScriptFacts(given=given, path=str(path), exists=path.is_file())
    if not facts.exists:
        return facts
    rc, out, err = git(path.parent, "rev-parse", "--show-toplevel")
    if rc == 127:
        return replace(facts, error=err.strip())
    facts = replace(facts, pyc=pyc_facts(path), shadow=shadow_facts(path))
    if rc != 0:
        return facts  # not under version control
    return _script_in_repo(
        facts, Path(out.strip()), (fetched if fetched is not None else {}) if fetch else None
    )


def git_version() -> str | None:
    rc, out, _ = git(Path(os.sep), "--version")  # any existing directory: the cwd may be gone
    return out.strip().removeprefix("git version ") if rc == 0 else None


GIT: Probe[GitFacts] = Probe("git")


@probe(GIT)
def git_probe(target: RunSpec) -> GitFacts | Unavailable:
    scripts = tuple(target.scripts)
    if not scripts:
        return Unavailable("no --script given: nothing to check for git freshness", "not-applicable")
    fetch = bool(target.fetch)
    fetched: dict[str, str] = {}  # one fetch per repository, however many of its scripts are listed
    return GitFacts(git_version(), tuple(script_facts(s, fetch, fetched) for s in scripts))
