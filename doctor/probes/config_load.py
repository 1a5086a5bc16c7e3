"""Load the model's config.json, tokenizer and generation config exactly as the run will, in a child.

Why a real load and not a lookup: since transformers 5.4.0 every `PreTrainedConfig` is a strict
dataclass (huggingface_hub `@strict`, huggingface/transformers#41250): a field whose JSON type
differs from the class annotation raises `StrictDataclassFieldValidationError` inside
`AutoConfig.from_pretrained`, before a single shard loads. Llama 4 configs published in April 2025
carry `"attn_temperature_tuning": 4` (an int; the class now says bool), so the model type is known,
the architecture class exists, and the load still dies. Only the installed transformers can say
whether it accepts a given file, so we ask it — `AutoConfig.from_pretrained(folder,
trust_remote_code=<as the run>, local_files_only=True)` with HF_HUB_OFFLINE=1 — and keep its own
error text.

The tokenizer (`AutoTokenizer.from_pretrained`, which the run calls first) and `generation_config.json`
(`GenerationConfig.from_pretrained`, read by `from_pretrained` of the model) are loaded the same way
when their files are on disk; when they are not downloaded yet they are reported as not checked.

An embedded config (doctor/memory/configs) is a cited copy of the published file: it is written to a
temporary folder and loaded from there, so the verdict is the one the downloaded file will get.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from doctor.model_config import ModelResolution
from doctor.probes import Probe, Unavailable, probe
from run_plan.spec import RunSpec

_MODULE = "doctor.probes.config_load"
LoadStatus = Literal["loaded", "failed", "not-checked"]
# Files AutoTokenizer reads; any of them present means the tokenizer can be loaded offline.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
GENERATION_FILE = "generation_config.json"
_MAX_REJECTIONS = 16  # a config rejected for more fields than this is reported with the first 16
# "Field 'attn_temperature_tuning' expected bool, got int (value: 4)" (huggingface_hub strict dataclasses)
_FIELD_TYPE_ERROR = re.compile(
    r"Field '(?P<field>[A-Za-z0-9_]+)' expected (?P<expected>.+?), got "
    r"(?P<got>[A-Za-z0-9_.]+) \(value: (?P<value>.*)\)\s*$",
    re.MULTILINE,
)
_FIELD_NAMED = re.compile(r"field '(?P<field>[A-Za-z0-9_]+)'", re.IGNORECASE)


@dataclass(frozen=True)
class LoadAttempt:
    """One `from_pretrained` call as the run makes it, and what transformers answered."""

    what: Literal["config", "tokenizer", "generation_config"]
    call: str  # the call, spelled out, so a human can repeat it
    status: LoadStatus
    loaded_class: str | None = None
    error_type: str | None = None  # e.g. "StrictDataclassFieldValidationError"
    error: str | None = None  # transformers' own message, first lines
    note: str | None = None  # why it was not checked
    # The model's from_pretrained catches OSError from GenerationConfig.from_pretrained and rebuilds the
    # generation config from config.json: the run goes on, with config.json's EOS ids and defaults.
    run_falls_back: bool = False


@dataclass(frozen=True)
class FieldRejection:
    """One config field the installed transformers refuses, located in config.json."""

    field: str
    path: str  # where in config.json, e.g. "text_config.attn_temperature_tuning"
    value: Any  # the value in the file (JSON)
    expected: str | None  # the type the config class declares, as transformers words it ("bool")
    got: str | None  # the JSON value's Python type ("int")
    message: str  # transformers' own line for this field


@dataclass(frozen=True)
class HubKernelRepo:
    """One hub repository transformers' kernelize would load for this model on CUDA."""

    repo_id: str
    version: int | None
    revision: str | None
    layers: tuple[str, ...]  # the model's kernel layer names it replaces
    missing: str | None  # None: in the local cache; else why not, in the words of `kernels`


@dataclass(frozen=True)
class HubKernelFacts:
    """What from_pretrained, called as `niah run` calls it, fetches from the hub (doctor.probes.model_class)."""

    load_kwargs: dict[str, Any]  # what niah adds (run_plan.hub_kernels): {"use_kernels": False} or {}
    kernelize: bool | None  # what from_pretrained hands to set_use_kernels; None: no such step
    layers: tuple[str, ...] = ()
    repos: tuple[HubKernelRepo, ...] = ()
    cuda_capability: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class ModelClassFacts:
    """The class from_pretrained builds, asked in the config-load child (doctor.probes.model_class)."""

    model_class: str | None
    # implementation -> transformers' refusal ("ValueError: … does not support …"), or None: accepted
    refusals: dict[str, str | None]
    settled: dict[str, str]  # implementation -> what transformers settles on when it accepts it
    attention_error: str | None = None  # this transformers cannot be asked
    hub_kernels: HubKernelFacts | None = None
    class_error: str | None = None


@dataclass(frozen=True)
class ConfigLoadFacts:
    model: str  # what the user asked for
    resolved_id: str | None
    source: str | None  # local-folder | hf-cache | embedded | hub | demo
    load_from: str | None  # the folder given to from_pretrained (a temporary copy for embedded configs)
    stand_in: bool  # True: an embedded copy of the published config, not a file of this machine
    transformers_version: str | None
    strict_config_validation: bool | None  # does this transformers type-check config fields?
    trust_remote_code: bool
    attempts: tuple[LoadAttempt, ...] = ()
    rejected_fields: tuple[FieldRejection, ...] = ()
    model_type: str | None = None
    config_transformers_version: str | None = None
    model_class: ModelClassFacts | None = None  # None: the config did not load

    def attempt(self, what: str) -> LoadAttempt | None:
        return next((a for a in self.attempts if a.what == what), None)


# ---------------------------------------------------------------- parent side


def _config_folder(res: ModelResolution) -> tuple[Path | None, bool, str | None]:
    """(folder holding config.json, is it a stand-in copy, why there is none)."""
    path = Path(res.path) if res.path else None
    if res.source in ("local-folder", "hf-cache", "hub") and path is not None:
        folder = path if path.is_dir() else path.parent
        if (folder / "config.json").is_file():
            return folder, False, None
    if res.config:  # embedded copy, demo (GGUF + embedded config), gated-with-fallback
        return None, True, None
    return None, False, f"no config.json to load ({res.status}: {res.message})"


def _write_stand_in(config: Mapping[str, Any]) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="niah-doctor-config-"))
    clean = {k: v for k, v in config.items() if not str(k).startswith("_")}
    (folder / "config.json").write_text(json.dumps(clean), encoding="utf-8")
    return folder


def check_model_files(
    res: ModelResolution,
    *,
    trust_remote_code: bool,
    timeout_s: float,
    implementations: tuple[str, ...] = (),
) -> ConfigLoadFacts | Unavailable:
    """Load what the run will load for the resolved model `res`, in a child."""
    from doctor.children.child import run_in_child
    from doctor.probes.packages import find_dist

    if find_dist("transformers") is None:
        return Unavailable("transformers is not installed: the run cannot load any config", "missing")
    folder, stand_in, problem = _config_folder(res)
    if problem:
        return Unavailable(problem, "not-applicable")
    temp = _write_stand_in(res.config) if stand_in else None
    load_from = temp or folder
    assert load_from is not None
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")  # the doctor never downloads here
    try:
        result = run_in_child(
            f"{_MODULE}:load_in_child",
            {
                "folder": str(load_from),
                "trust_remote_code": trust_remote_code,
                "tokenizer": not stand_in,
                "generation_config": not stand_in,
                "implementations": list(implementations),
            },
            timeout_s=timeout_s,
            env=env,
        )
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    if not result.ok or result.data is None:
        return result.as_unavailable("loading the model's config in a child process")
    data = result.data
    if temp is not None:  # show the call the run makes (by model id), not our scratch folder
        for attempt in data.get("attempts", []):
            attempt["call"] = str(attempt.get("call", "")).replace(repr(str(temp)), repr(_run_name(res)))
    return _facts_from(data, res, folder, stand_in, trust_remote_code)


def _run_name(res: ModelResolution) -> str:
    return str(res.resolved_id or res.requested)


def _facts_from(
    data: dict[str, Any], res: ModelResolution, folder: Path | None, stand_in: bool, trust_remote_code: bool
) -> ConfigLoadFacts:
    attempts = tuple(LoadAttempt(**a) for a in data.get("attempts", []))
    raw = dict(res.config or {})
    if not raw and folder is not None:
        try:
            raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raw = {}
    rejections = tuple(locate_rejection(str(m), raw) for m in data.get("rejections", []))
    # An `invalid` resolution (e.g. a field the estimate needs is missing) keeps no config: read the file.
    saved_with = res.config_transformers_version or raw.get("transformers_version")
    model_type = res.model_type or raw.get("model_type")
    return ConfigLoadFacts(
        model=res.requested,
        resolved_id=res.resolved_id,
        source=res.source,
        load_from=str(folder) if folder is not None else None,
        stand_in=stand_in,
        transformers_version=data.get("transformers_version"),
        strict_config_validation=data.get("strict_config_validation"),
        trust_remote_code=trust_remote_code,
        attempts=attempts,
        rejected_fields=rejections,
        model_type=model_type if isinstance(model_type, str) else None,
        config_transformers_version=str(saved_with) if saved_with is not None else None,
        model_class=_model_class_from(data.get("model_class")),
    )


def _model_class_from(data: Any) -> ModelClassFacts | None:
    if not isinstance(data, dict):
        return None
    attention = data.get("attention") or {}
    answers = attention.get("answers") or {}
    hub = data.get("hub_kernels")
    kernels = None
    if isinstance(hub, dict):
        kernels = HubKernelFacts(
            load_kwargs=dict(hub.get("load_kwargs") or {}),
            kernelize=hub.get("kernelize"),
            layers=tuple(hub.get("layers") or ()),
            repos=tuple(
                HubKernelRepo(
                    str(r.get("repo_id")),
                    r.get("version"),
                    r.get("revision"),
                    tuple(r.get("layers") or ()),
                    r.get("missing"),
                )
                for r in hub.get("repos") or ()
            ),
            cuda_capability=hub.get("cuda_capability"),
            error=hub.get("error"),
        )
    return ModelClassFacts(
        model_class=data.get("model_class"),
        refusals={name: answer.get("refused") for name, answer in answers.items()},
        settled={name: str(answer["settled"]) for name, answer in answers.items() if answer.get("settled")},
        attention_error=attention.get("error"),
        hub_kernels=kernels,
        class_error=data.get("class_error"),
    )


def locate_rejection(message: str, config: Mapping[str, Any]) -> FieldRejection:
    """Parse transformers' (huggingface_hub's) message and find the field in config.json."""
    typed = _FIELD_TYPE_ERROR.search(message)
    named = typed or _FIELD_NAMED.search(message)
    field = named.group("field") if named else "?"
    paths = list(_paths_of(config, field))
    got = typed.group("got") if typed else None
    # Prefer the occurrence whose JSON type is the one transformers complained about.
    chosen = next(
        (p for p in paths if got and type(p[1]).__name__ == got), paths[0] if paths else (field, None)
    )
    line = next(
        (ln.strip() for ln in message.splitlines() if field in ln and "expected" in ln), message.strip()
    )
    return FieldRejection(
        field=field,
        path=chosen[0],
        value=chosen[1],
        expected=typed.group("expected") if typed else None,
        got=got,
        message=line,
    )


def _paths_of(tree: Any, key: str, prefix: str = "") -> Any:
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            here = f"{prefix}.{k}" if prefix else str(k)
            if k == key:
                yield here, v
            yield from _paths_of(v, key, here)


def corrected_value(rejection: FieldRejection) -> Any:
    """A value of the declared type that means what the file meant, or None when there is no safe one.

    bool from a number: transformers before 5.4.0 read such fields as conditions (`if
    config.attn_temperature_tuning:`), so 4 behaved as True; an integral float is the same int."""
    value, expected = rejection.value, (rejection.expected or "").strip()
    if expected == "bool" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return bool(value)
    if expected == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if expected == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected == "int" and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


CONFIG_LOAD: Probe[ConfigLoadFacts] = Probe("config-load")


@probe(CONFIG_LOAD)
def config_load_probe(target: RunSpec) -> ConfigLoadFacts | Unavailable:
    spec = target.model
    if not spec:
        return Unavailable("no --model given: no config to load", "not-applicable")
    if target.live is False:
        return Unavailable(
            "live probes disabled (--no-live): the config was not loaded in transformers", "not-applicable"
        )
    if target.base_url:
        return Unavailable("the model is served by --base-url: the server loads its config", "not-applicable")
    from doctor.probes.model import resolved_model

    res = resolved_model(spec, online=bool(target.online))
    from doctor.probes.model_class import IMPLEMENTATIONS

    attn = str(target.attn or "")
    # the standard implementations are always asked: the key (and the child) is the same whichever the
    # plan settles on, so `attention_refusals` before the settle and the probe after it share one answer
    implementations = (attn,) if attn and attn != "auto" and attn not in IMPLEMENTATIONS else ()
    trust = bool(target.trust_remote_code)
    key = _memo_key(res, trust, implementations)
    with _MEMO_LOCK:
        if key in _MEMO:
            return _MEMO[key]
    facts = check_model_files(
        res,
        trust_remote_code=trust,
        timeout_s=float(target.probe_timeout_s),
        implementations=implementations,
    )
    if not isinstance(facts, Unavailable):
        with _MEMO_LOCK:
            _MEMO[key] = facts
    return facts


# The same files asked the same way give the same answers: `attention_refusals` (asked while the plan's
# attention is settled, before the report's probes run) and the `config-load` probe share one child.
_MEMO: dict[tuple[Any, ...], ConfigLoadFacts] = {}
_MEMO_LOCK = threading.Lock()


def _memo_key(
    res: ModelResolution, trust_remote_code: bool, implementations: tuple[str, ...]
) -> tuple[Any, ...]:
    """Everything the child's answer depends on, files by their modification times."""
    from run_plan.hub_kernels import ENV

    stamps: list[tuple[str, int, int]] = []
    folder = Path(res.path) if res.path else None
    if folder is not None and folder.is_file():
        folder = folder.parent
    if folder is not None and folder.is_dir():
        for name in ("config.json", GENERATION_FILE, *TOKENIZER_FILES):
            try:
                info = (folder / name).stat()
                stamps.append((name, info.st_mtime_ns, info.st_size))
            except OSError:
                continue
    return (
        res.requested,
        res.status,
        res.source,
        str(folder),
        json.dumps(dict(res.config or {}), sort_keys=True, default=str),
        tuple(stamps),
        trust_remote_code,
        implementations,
        os.environ.get(ENV),
        os.environ.get("HF_HOME"),
        os.environ.get("HF_HUB_CACHE"),
    )


def attention_refusals(spec: RunSpec) -> dict[str, str | None] | None:
    """For the model of `spec`, per attention implementation, transformers' own refusal
    message ("ValueError: GptOssForCausalLM does not support an attention implementation through
    torch.nn.functional.scaled_dot_product_attention yet. …") or None when the class accepts it.

    Asked of the class `AutoModelForCausalLM.from_pretrained` builds for the config, in the installed
    transformers, in the same child as the `model-config-loads` check (memoised: the check reuses the
    answer). Keys: eager, sdpa, flash_attention_2, flash_attention_3, flex_attention, and spec.attn when it
    is another name. None when it cannot be asked (no --model, --no-live, a --base-url server, no
    transformers, the config does not load): then nothing is known to be refused."""
    facts = config_load_probe(spec)
    if isinstance(facts, Unavailable) or facts.model_class is None or facts.model_class.attention_error:
        return None
    return dict(facts.model_class.refusals) or None


# ---------------------------------------------------------------- child side (imports transformers)


def _error_text(exc: BaseException, lines: int = 6) -> str:
    text = str(exc).strip() or type(exc).__name__
    return "\n".join(text.splitlines()[:lines])[:1500]


def _failed_attempt(what: str, call: str, exc: BaseException, **extra: Any) -> dict[str, Any]:
    """One load attempt that raised: what was loaded, the call as the run makes it, and the refusal."""
    return {
        "what": what,
        "call": call,
        "status": "failed",
        "error_type": type(exc).__name__,
        "error": _error_text(exc),
        **extra,
    }


def _is_strict(transformers: Any) -> bool | None:
    """Does this transformers validate config field types (huggingface_hub @strict)?"""
    base = getattr(transformers, "PreTrainedConfig", None) or getattr(transformers, "PretrainedConfig", None)
    if base is None:
        return None
    # huggingface_hub's @strict leaves __validators__ on the class it decorates
    return "__validators__" in vars(base) or bool(getattr(base, "__is_defined_by_strict_decorator__", False))


def _further_rejections(transformers: Any, folder: str, first: str, kwargs: dict[str, Any]) -> list[str]:
    """transformers stops at the first bad field; drop each bad field in a scratch copy and load again,
    so the report lists every field the user must correct, not one per attempt."""
    match = _FIELD_NAMED.search(first)
    if not match:
        return [first]
    messages = [first]
    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    scratch = Path(tempfile.mkdtemp(prefix="niah-doctor-rejections-"))
    try:
        dropped = {match.group("field")}
        _drop(config, match.group("field"))
        for _ in range(_MAX_REJECTIONS - 1):
            (scratch / "config.json").write_text(json.dumps(config), encoding="utf-8")
            try:
                transformers.AutoConfig.from_pretrained(str(scratch), **kwargs)
                break
            except Exception as exc:  # noqa: BLE001 - any refusal is data
                again = _FIELD_NAMED.search(str(exc))
                if not again or again.group("field") in dropped:
                    break
                messages.append(str(exc))
                dropped.add(again.group("field"))
                _drop(config, again.group("field"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return messages


def _drop(tree: Any, key: str) -> None:
    if isinstance(tree, dict):
        tree.pop(key, None)
        for value in tree.values():
            _drop(value, key)


def load_in_child(args: dict[str, Any]) -> dict[str, Any]:
    """CHILD: {folder, trust_remote_code, tokenizer, generation_config} -> attempts + rejections."""
    import transformers

    folder = args["folder"]
    trust = bool(args.get("trust_remote_code"))
    kwargs = {"trust_remote_code": trust, "local_files_only": True}
    spelled = f"({folder!r}, trust_remote_code={trust}, local_files_only=True)"
    attempts: list[dict[str, Any]] = []
    rejections: list[str] = []
    model_class = None
    try:
        config = transformers.AutoConfig.from_pretrained(folder, **kwargs)
        attempts.append(
            {
                "what": "config",
                "call": "AutoConfig.from_pretrained" + spelled,
                "status": "loaded",
                "loaded_class": type(config).__name__,
            }
        )
        if args.get("model_class", True):
            from doctor.probes.model_class import model_class_facts

            try:
                model_class = model_class_facts(transformers, config, folder, args)
            except Exception as exc:  # noqa: BLE001 - the config checks still stand on their own
                model_class = {"class_error": f"{type(exc).__name__}: {exc}"[:1500]}
    except Exception as exc:  # noqa: BLE001 - the refusal is the finding
        attempts.append(_failed_attempt("config", "AutoConfig.from_pretrained" + spelled, exc))
        if _FIELD_NAMED.search(str(exc)):
            rejections = _further_rejections(transformers, folder, str(exc), kwargs)
    files = set(os.listdir(folder))
    attempts.append(
        _tokenizer_attempt(transformers, folder, files, kwargs, spelled, bool(args.get("tokenizer")))
    )
    attempts.append(_generation_attempt(transformers, folder, files, bool(args.get("generation_config"))))
    return {
        "transformers_version": transformers.__version__,
        "strict_config_validation": _is_strict(transformers),
        "attempts": attempts,
        "rejections": rejections,
        "model_class": model_class,
    }


def _tokenizer_attempt(
    transformers: Any, folder: str, files: set[str], kwargs: dict[str, Any], spelled: str, wanted: bool
) -> dict[str, Any]:
    call = "AutoTokenizer.from_pretrained" + spelled
    if not wanted:
        return {
            "what": "tokenizer",
            "call": call,
            "status": "not-checked",
            "note": "only an embedded copy of config.json is here; the tokenizer files are not downloaded",
        }
    if not files.intersection(TOKENIZER_FILES):
        return {
            "what": "tokenizer",
            "call": call,
            "status": "not-checked",
            "note": f"no tokenizer files in {folder} yet ({', '.join(TOKENIZER_FILES[:3])}, ...): "
            "the run downloads them",
        }
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **kwargs)
    except Exception as exc:  # noqa: BLE001
        return _failed_attempt("tokenizer", call, exc)
    return {"what": "tokenizer", "call": call, "status": "loaded", "loaded_class": type(tokenizer).__name__}


def _generation_attempt(transformers: Any, folder: str, files: set[str], wanted: bool) -> dict[str, Any]:
    call = f"GenerationConfig.from_pretrained({folder!r}, local_files_only=True)"
    if not wanted or GENERATION_FILE not in files:
        why = (
            "only an embedded copy of config.json is here"
            if not wanted
            else f"no {GENERATION_FILE} in {folder}: the model's config supplies the generation defaults"
        )
        return {"what": "generation_config", "call": call, "status": "not-checked", "note": why}
    try:
        generation = transformers.GenerationConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        return _failed_attempt("generation_config", call, exc, run_falls_back=isinstance(exc, OSError))
    return {
        "what": "generation_config",
        "call": call,
        "status": "loaded",
        "loaded_class": type(generation).__name__,
    }
