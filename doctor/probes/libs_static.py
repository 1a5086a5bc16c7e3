"""Static facts about torch, bitsandbytes and triton, read from their files without importing them.

- torch: `torch/version.py` read as text (cuda = '12.6' or None), `torch/lib/libtorch_cuda.so`,
  the wheel tag and PEP 610 provenance. PyPI's aarch64 wheels carry no `+cpu` tag, so the version
  string alone cannot tell a CPU build (pytorch/pytorch#160162).
- bitsandbytes: the native libraries it ships and their ELF machine (bnb 0.42.0 on aarch64 shipped
  x86-64 binaries only), the CUDA versions they cover, and the BNB_CUDA_VERSION override.
- triton: installed version vs the pin in torch's own Requires-Dist (marker evaluated here).
"""

from __future__ import annotations

import ast
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from doctor.probes import Probe, probe
from doctor.probes.packages import DistInfo, dist_info, find_dist, requirements_of, this_machine
from run_plan.spec import RunSpec

# ELF e_machine values (bytes 18-19 of the header) for the architectures wheels are built for.
ELF_MACHINES = {
    0x3E: "x86_64",
    0xB7: "aarch64",
    0x03: "i386",
    0x28: "arm",
    0x15: "ppc64",
    0xF3: "riscv64",
    0x16: "s390x",
}


def elf_machine(path: str | os.PathLike[str]) -> str | None:
    """Architecture an ELF shared library was built for, or None if the file is not ELF."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(20)
    except OSError:
        return None
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    little = header[5] == 1  # EI_DATA: 1 = little-endian, 2 = big-endian
    code = int.from_bytes(header[18:20], "little" if little else "big")
    return ELF_MACHINES.get(code, f"e_machine 0x{code:X}")


# ---------------------------------------------------------------- torch


@dataclass(frozen=True)
class TorchBuild:
    installed: bool
    version: str | None = None
    build: str = "unknown"  # "cuda", "rocm", "cpu", "unknown"
    cuda: str | None = None  # torch.version.cuda as written in torch/version.py
    hip: str | None = None
    has_libtorch_cuda: bool = False
    local_tag: str | None = None  # "+cpu", "+cu126"; PyPI wheels have none
    provenance: str = "unknown"  # human words: where the wheel most likely came from
    dist: DistInfo | None = None
    machine: str = ""

    @property
    def cuda_tuple(self) -> tuple[int, int] | None:
        return parse_major_minor(self.cuda)


def parse_major_minor(text: str | None) -> tuple[int, int] | None:
    match = re.match(r"^\s*(\d+)\.(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def read_version_py(path: Path) -> dict[str, object]:
    """Module-level constant assignments of torch/version.py, without executing it."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return {}
    values: dict[str, object] = {}
    for node in tree.body:
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        value = getattr(node, "value", None)
        for target in targets:
            if isinstance(target, ast.Name) and value is not None:
                try:
                    values[target.id] = ast.literal_eval(value)
                except ValueError:
                    continue
    return values


def torch_provenance(version: str, dist: DistInfo | None, build: str, machine: str) -> str:
    """Where the wheel came from, in words: the local tag and PEP 610 tell most of it."""
    if dist is not None and dist.direct_url:
        return f"direct install ({dist.direct_url})"
    local = version.partition("+")[2]
    if local == "cpu":
        return "the download.pytorch.org CPU index"
    if local.startswith(("cu", "rocm")):
        return f"the download.pytorch.org {local} index"
    if build == "cpu" and machine == "aarch64":
        return "PyPI"  # PyPI's aarch64 wheels are CPU-only and untagged
    if build == "cpu":
        return "a package index (no local version tag)"
    return "PyPI"


def torch_build_facts() -> TorchBuild:
    dist = find_dist("torch")
    machine = this_machine()
    if dist is None:
        return TorchBuild(installed=False, machine=machine)
    info = dist_info("torch")
    root = Path(str(dist.locate_file("torch")))
    values = read_version_py(root / "version.py")
    cuda = cuda_version if isinstance(cuda_version := values.get("cuda"), str) else None
    hip = hip_version if isinstance(hip_version := values.get("hip"), str) else None
    has_cuda_lib = (
        any((root / "lib").glob("libtorch_cuda*.so*")) or (root / "lib" / "torch_cuda.dll").exists()
    )
    if hip:
        build = "rocm"
    elif cuda or has_cuda_lib:
        build = "cuda"
    elif values:
        build = "cpu"
    else:
        build = "unknown"  # version.py unreadable: a broken install
    version = str(values.get("__version__") or dist.version)
    local = version.partition("+")[2]
    return TorchBuild(
        installed=True,
        version=version,
        build=build,
        cuda=cuda,
        hip=hip,
        has_libtorch_cuda=has_cuda_lib,
        local_tag=f"+{local}" if local else None,
        provenance=torch_provenance(version, info, build, machine),
        dist=info,
        machine=machine,
    )


TORCH_BUILD: Probe[TorchBuild] = Probe("torch-build")


@probe(TORCH_BUILD)
def torch_build_probe(target: RunSpec) -> TorchBuild:
    return torch_build_facts()


# ---------------------------------------------------------------- bitsandbytes


@dataclass(frozen=True)
class NativeLib:
    name: str  # file name, e.g. libbitsandbytes_cuda126.so
    machine: str | None  # ELF architecture


@dataclass(frozen=True)
class BnbFiles:
    installed: bool
    version: str | None = None
    machine: str = ""  # this CPU
    libs: tuple[NativeLib, ...] = ()
    cuda_versions: tuple[str, ...] = ()  # "12.6", ... from libbitsandbytes_cudaXYZ names
    has_cpu_lib: bool = False
    cuda_version_override: str | None = None  # BNB_CUDA_VERSION
    dist: DistInfo | None = None

    @property
    def foreign_libs(self) -> tuple[NativeLib, ...]:
        return tuple(lib for lib in self.libs if lib.machine and lib.machine != self.machine)

    @property
    def native_libs(self) -> tuple[NativeLib, ...]:
        return tuple(lib for lib in self.libs if lib.machine == self.machine)


def _cuda_version_of(lib_name: str) -> str | None:
    match = re.search(r"libbitsandbytes_cuda(\d\d)(\d+)", lib_name)  # bnb's own split: 2-digit major
    return f"{int(match.group(1))}.{int(match.group(2))}" if match else None


def bnb_files_facts(environ: dict[str, str] | None = None) -> BnbFiles:
    env = os.environ if environ is None else environ
    override = env.get("BNB_CUDA_VERSION")
    dist = find_dist("bitsandbytes")
    machine = this_machine()
    if dist is None:
        return BnbFiles(installed=False, machine=machine, cuda_version_override=override)
    root = Path(str(dist.locate_file("bitsandbytes")))
    files = sorted(p for p in root.glob("libbitsandbytes*") if p.suffix in (".so", ".dylib", ".dll"))
    libs = tuple(NativeLib(p.name, elf_machine(p)) for p in files)
    cuda_versions = tuple(
        sorted(
            {v for v in (_cuda_version_of(p.name) for p in files) if v},
            key=lambda v: tuple(int(x) for x in v.split(".")),
        )
    )
    return BnbFiles(
        installed=True,
        version=dist.version,
        machine=machine,
        libs=libs,
        cuda_versions=cuda_versions,
        has_cpu_lib=any(p.name.startswith("libbitsandbytes_cpu") for p in files),
        cuda_version_override=override,
        dist=dist_info("bitsandbytes"),
    )


BNB_FILES: Probe[BnbFiles] = Probe("bnb-files")


@probe(BNB_FILES)
def bnb_files_probe(target: RunSpec) -> BnbFiles:
    return bnb_files_facts()


# ---------------------------------------------------------------- triton


@dataclass(frozen=True)
class TritonDist:
    installed: bool
    dist_name: str | None = None  # "triton" or "pytorch-triton" (nightlies)
    version: str | None = None
    torch_requirement: str | None = None  # torch's Requires-Dist line for triton, marker included
    requirement_applies: bool | None = None  # the marker is true on this machine
    requirement_satisfied: bool | None = None  # installed version is inside torch's specifier
    machine: str = ""


def _requirement_name(line: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", line, maxsplit=1)[0].lower().replace("_", "-")


def torch_triton_requirement() -> str | None:
    for line in requirements_of("torch"):
        if _requirement_name(line) in ("triton", "pytorch-triton", "pytorch-triton-rocm"):
            return line
    return None


def judge_requirement(requirement: str, installed: str | None) -> tuple[bool | None, bool | None]:
    """(marker applies here, installed version satisfies the specifier)."""
    try:
        from packaging.requirements import InvalidRequirement, Requirement
        from packaging.version import InvalidVersion
    except ImportError:
        return None, None
    try:
        req = Requirement(requirement)
    except InvalidRequirement:
        return None, None
    applies = req.marker.evaluate({"extra": ""}) if req.marker is not None else True
    if installed is None:
        return applies, False
    try:
        return applies, req.specifier.contains(installed, prereleases=True)
    except InvalidVersion:
        return applies, None


def triton_dist_facts() -> TritonDist:
    machine = this_machine()
    requirement = torch_triton_requirement()
    installed = None
    for name in ("triton", "pytorch-triton"):
        dist = find_dist(name)
        if dist is not None:
            installed = (name, dist.version)
            break
    applies = satisfied = None
    if requirement:
        applies, satisfied = judge_requirement(requirement, installed[1] if installed else None)
        required_name = _requirement_name(requirement)
        if installed and required_name != installed[0]:
            satisfied = (
                False  # torch pins pytorch-triton (nightly) but plain triton is installed, or vice versa
            )
    return TritonDist(
        installed=installed is not None,
        dist_name=installed[0] if installed else None,
        version=installed[1] if installed else None,
        torch_requirement=requirement,
        requirement_applies=applies,
        requirement_satisfied=satisfied,
        machine=machine,
    )


TRITON_DIST: Probe[TritonDist] = Probe("triton-dist")


@probe(TRITON_DIST)
def triton_dist_probe(target: RunSpec) -> TritonDist:
    return triton_dist_facts()


# ---------------------------------------------------------------- what `import X` will really load

# Import name -> distributions that ship it (the first one installed is the expected owner).
SHADOW_WATCH: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "triton": ("triton", "pytorch-triton"),
    "bitsandbytes": ("bitsandbytes",),
    "transformers": ("transformers",),
}


@dataclass(frozen=True)
class ImportOrigin:
    """Where `import name` resolves, compared with the installed distribution's own files."""

    name: str
    dist: str | None  # "torch 2.7.0" or None when no distribution ships it
    expected: str | None  # the distribution's own file, e.g. .../site-packages/torch/__init__.py
    origin: str | None  # what this interpreter's `import name` would load (find_spec, nothing imported)
    verdict: str  # "ok", "shadowed", "no-distribution", "not-importable", "unknown"
    via: str = ""  # which sys.path entry wins, in words: "PYTHONPATH", "the current directory", ...
    front_copies: tuple[str, ...] = ()  # copies a run started from the CWD / a script's folder would load


@dataclass(frozen=True)
class ImportOrigins:
    modules: tuple[ImportOrigin, ...]
    cwd: str
    front_dirs: tuple[str, ...] = ()  # directories a run puts first on sys.path (CWD, script folders)

    @property
    def problems(self) -> tuple[ImportOrigin, ...]:
        return tuple(
            m for m in self.modules if m.verdict in ("shadowed", "no-distribution") or m.front_copies
        )


def _real(path: str | os.PathLike[str] | None) -> str | None:
    return os.path.realpath(path) if path else None


def _spec_origin(spec: object) -> str | None:
    origin = getattr(spec, "origin", None)
    return origin if origin and origin not in ("namespace", "built-in", "frozen") else None


def _path_entry_words(path: str, entries: list[str], pythonpath: list[str], cwd: str) -> str:
    owner = next((e for e in entries if path.startswith(os.path.join(_real(e or cwd) or "", ""))), None)
    if owner is None:
        return "a custom import hook"
    real = _real(owner or cwd)
    if owner in ("", ".") or real == _real(cwd):
        return "the current directory"
    if any(_real(p) == real for p in pythonpath):
        return f"PYTHONPATH ({owner})"
    return f"sys.path entry {owner}"


def _editable_root(dist: object) -> str | None:
    from doctor.probes.packages import _direct_url

    url = _direct_url(dist) or ""  # type: ignore[arg-type]
    if url.startswith("editable file://"):
        return _real(url[len("editable file://") :])
    return None


def import_origin(
    name: str,
    search_path: list[str] | None = None,
    front_dirs: tuple[str, ...] = (),
    environ: dict[str, str] | None = None,
    cwd: str | None = None,
) -> ImportOrigin:
    """Compare `importlib.util.find_spec(name)` (nothing is imported) with the distribution's files."""
    import importlib.machinery
    import importlib.util

    env = os.environ if environ is None else environ
    cwd = cwd or os.getcwd()
    entries = list(sys.path if search_path is None else search_path)
    dist = next((d for d in (find_dist(n) for n in SHADOW_WATCH.get(name, (name,))) if d is not None), None)
    expected_path = Path(str(dist.locate_file(f"{name}/__init__.py"))) if dist is not None else None
    expected = _real(expected_path) if expected_path is not None and expected_path.exists() else None
    try:
        if search_path is None:
            spec = importlib.util.find_spec(name)
        else:
            spec = importlib.machinery.PathFinder.find_spec(name, entries)
    except (ImportError, ValueError):
        spec = None
    origin = _real(_spec_origin(spec))
    label = f"{dist.metadata['Name'] or name} {dist.version}" if dist is not None else None
    pythonpath = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    fronts = []
    for folder in front_dirs:
        front = importlib.machinery.PathFinder.find_spec(name, [folder])
        front_origin = _real(_spec_origin(front))  # a bare folder (namespace package) never wins
        if front_origin and front_origin != expected and front_origin != origin:
            fronts.append(front_origin)

    def found(verdict: str, via: str = "") -> ImportOrigin:
        return ImportOrigin(
            name=name,
            dist=label,
            expected=expected,
            origin=origin,
            front_copies=tuple(fronts),
            verdict=verdict,
            via=via,
        )

    if spec is None:
        return found("not-importable" if dist is not None else "ok")
    if dist is None:
        via = _path_entry_words(origin or "", entries, pythonpath, cwd) if origin else "a namespace folder"
        return found("no-distribution", via)
    if expected is None:  # an editable / develop install: its files live in the source tree
        root = _editable_root(dist)
        same = bool(root and origin and origin.startswith(os.path.join(root, "")))
        return found("ok" if same else "unknown")
    if origin == expected:
        return found("ok")
    via = _path_entry_words(origin or "", entries, pythonpath, cwd) if origin else "a namespace folder"
    return found("shadowed", via)


def import_origins_facts(
    scripts: tuple[str, ...] = (),
    search_path: list[str] | None = None,
    environ: dict[str, str] | None = None,
    cwd: str | None = None,
) -> ImportOrigins:
    cwd = cwd or os.getcwd()
    # `python -m x` / `python -c` put the CWD first; `python script.py` puts the script's folder first.
    fronts = tuple(dict.fromkeys([cwd, *(os.path.dirname(os.path.abspath(s)) for s in scripts)]))
    modules = tuple(import_origin(name, search_path, fronts, environ, cwd) for name in SHADOW_WATCH)
    return ImportOrigins(modules=modules, cwd=cwd, front_dirs=fronts)


IMPORT_ORIGINS: Probe[ImportOrigins] = Probe("import-origins")


@probe(IMPORT_ORIGINS)
def import_origins_probe(target: RunSpec) -> ImportOrigins:
    return import_origins_facts(tuple(target.scripts))
