"""One set of option declarations for both CLIs, and the one way to turn them into a `RunSpec`.

Layers, lowest first: defaults < a saved run (with --resume) < a run script < a TOML file < flags.
Every value is checked here, once, and the error names the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from run_plan.errors import UsageError
from run_plan.safe_files import read_text_file
from run_plan.spec import (
    ATTN_CHOICES,
    BACKEND_CHOICES,
    BNB_4BIT_TYPES,
    DTYPE_CHOICES,
    EXPERTS_CHOICES,
    KV_DTYPE_CHOICES,
    NEEDLE_KIND_CHOICES,
    QUANT_CHOICES,
    RunSpec,
    parse_token_count,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DOCTOR, NIAH = "doctor", "niah"
BOTH = frozenset({DOCTOR, NIAH})
# No currency prices a GPU-hour beyond a billion: a larger number is a typo, and the bound keeps every cost
# (price × GPUs × seconds) a finite number that a person can read.
MAX_PRICE_PER_GPU_HOUR = 1e9


@dataclass(frozen=True)
class Option:
    """One setting of the plan: its flag, how a value is checked, and which CLIs show it."""

    name: str  # the RunSpec field
    kind: str  # str | int | float | bool | switch | tokens | lengths | depths | choice | paths
    help: str
    choices: tuple[str, ...] = ()
    tools: frozenset[str] = BOTH
    flag: str | None = None  # default: --name-with-dashes
    minimum: int = 1
    maximum: float | None = None  # a float's upper bound, where a larger value can only be a typo

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def cli_negative_flag(self) -> str:
        """A switch's off form: --no-live, and the two whose 'no' reads badly."""
        stem = self.cli_flag[2:]
        return {"double-quant": "--no-double-quant", "prequantized": "--not-prequantized"}.get(
            stem, f"--no-{stem}"
        )


OPTIONS: tuple[Option, ...] = (
    Option("model", "str", "Hub id, local folder, or 'demo' (SmolLM2-135M-Instruct, CPU-friendly)."),
    Option("revision", "str", "Hub revision (branch, tag or commit) of --model."),
    Option("gguf_file", "str", "A GGUF file name inside the --model folder/repo."),
    Option(
        "context",
        "tokens",
        "Longest input the run will feed (e.g. 131072, 128k, 1M). Default: the longest of --lengths.",
    ),
    Option("lengths", "lengths", "Context lengths in the model's tokens: 1024,2048 or 1k,2k (k = 1024)."),
    Option("quant", "choice", "Load-time quantization.", QUANT_CHOICES),
    Option("bnb_4bit_type", "choice", "4-bit storage type.", BNB_4BIT_TYPES),
    Option("double_quant", "switch", "4-bit double quantization of the scales (default on)."),
    Option("dtype", "choice", "Weights dtype (auto = the checkpoint's).", DTYPE_CHOICES),
    Option(
        "prequantized", "switch", "Checkpoint is already bnb-quantized (default: detect from its config)."
    ),
    Option("gpus", "str", "GPUs to plan for, e.g. 1xH100-80GB or 2x80GiB (default: what NVML sees)."),
    Option(
        "attn",
        "choice",
        "Attention implementation (auto = niah_lean where it is exact on this GPU, else sdpa).",
        ATTN_CHOICES,
    ),
    Option(
        "experts",
        "choice",
        "MoE experts (auto/routed = only the experts the router chose; transformers = the model's own).",
        EXPERTS_CHOICES,
    ),
    Option("prefill_chunk", "tokens", "Tokens per prefill chunk (default: the largest whose peak fits)."),
    Option("kv_dtype", "choice", "KV-cache dtype (auto = the model dtype).", KV_DTYPE_CHOICES),
    Option(
        "max_memory",
        "max_memory",
        "Per-device budgets for the whole run, as accelerate takes them: "
        "0=70GiB,1=70GiB,cpu=200GiB (or a JSON dict). The run's allocator is capped to them.",
    ),
    Option("device_map", "str", "auto, balanced, sequential, cpu or cuda:0."),
    Option("trust_remote_code", "bool", "Allow the model's own Python code (off by default)."),
    Option("online", "bool", "Allow network calls (hub lookups and downloads). Default: offline."),
    Option(
        "allow_pickle", "bool", "Allow .bin (pickle) checkpoints; off by default.", tools=frozenset({NIAH})
    ),
    Option(
        "depths",
        "depths",
        "Needle depths in percent of the haystack. [default: 0,25,50,75,100]",
        tools=frozenset({NIAH}),
    ),
    Option("trials", "int", "Trials (seeds) per cell. [default: 1]", tools=frozenset({NIAH})),
    Option(
        "needle_kind",
        "choice",
        "What is hidden (docs/niah.md describes each kind). [default: passkey]",
        NEEDLE_KIND_CHOICES,
        tools=frozenset({NIAH}),
    ),
    Option(
        "controls",
        "int",
        "No-needle control trials per length. [default: 0]",
        tools=frozenset({NIAH}),
        minimum=0,
    ),
    Option(
        "haystack",
        "str",
        "'generated' (seeded prose) or a text file / folder of UTF-8 text files.",
        tools=frozenset({NIAH}),
    ),
    Option("max_new_tokens", "int", "Generated tokens per trial. [default: 32]", tools=frozenset({NIAH})),
    Option(
        "seed",
        "int",
        "Run seed (haystack, needle values, windows). [default: 0]",
        tools=frozenset({NIAH}),
        minimum=0,
    ),
    Option(
        "effective_threshold",
        "fraction",
        "Wilson lower bound a length must keep to count as effective. [default: 0.85]",
        tools=frozenset({NIAH}),
    ),
    Option(
        "price_per_gpu_hour",
        "float",
        "Price of one GPU-hour: the summary adds money per cell.",
        tools=frozenset({NIAH}),
        maximum=MAX_PRICE_PER_GPU_HOUR,
    ),
    Option(
        "backend",
        "choice",
        "Local transformers model, or an OpenAI-compatible server.",
        BACKEND_CHOICES,
        tools=frozenset({NIAH}),
    ),
    Option(
        "base_url",
        "str",
        "OpenAI-compatible server (vLLM, SGLang, niah serve) serving --model (API key from $OPENAI_API_KEY).",
    ),
    Option(
        "tokenizer",
        "str",
        "openai backend: hub id, folder or 'demo'. [default: --model]",
        tools=frozenset({NIAH}),
    ),
    Option("concurrency", "int", "openai backend: requests in flight. [default: 1]", tools=frozenset({NIAH})),
    Option(
        "request_timeout",
        "int",
        "openai backend: seconds per request. [default: 1800]",
        tools=frozenset({NIAH}),
    ),
    Option(
        "retries",
        "int",
        "openai backend: retries with backoff. [default: 3]",
        tools=frozenset({NIAH}),
        minimum=0,
    ),
    Option(
        "scripts",
        "paths",
        "A file the run executes: its git freshness and the settings it passes to "
        "transformers are checked. Repeatable.",
        tools=frozenset({DOCTOR}),
        flag="--script",
    ),
    Option("fetch", "bool", "git fetch the upstream before comparing (network).", tools=frozenset({DOCTOR})),
    Option(
        "live",
        "switch",
        "Import torch/bitsandbytes/triton in child processes and test the GPU "
        "(default: only when an NVIDIA GPU is visible).",
        tools=frozenset({DOCTOR}),
    ),
    Option(
        "deep",
        "bool",
        "Also measure pinned host<->GPU bandwidth and real peer-to-peer copies (seconds more).",
        tools=frozenset({DOCTOR}),
    ),
    Option(
        "probe_timeout_s",
        "float",
        "Seconds before a hung probe child is killed. [default: 60]",
        tools=frozenset({DOCTOR}),
        flag="--timeout",
    ),
)
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
SPEC_FIELDS = frozenset(f.name for f in dataclasses.fields(RunSpec)) - {"sources"}


# -- checking one value ----------------------------------------------------------------------------


def _list(value: Any, key: str) -> list[Any]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    raise UsageError(f"{key!r} must be a list or a comma-separated string, got {type(value).__name__}")


def parse_lengths(value: Any, key: str = "lengths") -> tuple[int, ...]:
    items = _list(value, key)
    if not items:
        raise UsageError(f"{key} is empty", hint="Give at least one length, e.g. 1024,2048 or 1k,2k.")
    lengths = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise UsageError(f"{key!r}: {item!r} is not a token count")
        lengths.append(parse_token_count(item, what=f"{key} entry"))
    return tuple(sorted(set(lengths)))


def parse_depths(value: Any, key: str = "depths") -> tuple[float, ...]:
    items = _list(value, key)
    if not items:
        raise UsageError(f"{key} is empty", hint="Give depths in percent, e.g. 0,25,50,75,100.")
    depths = []
    for item in items:
        try:
            if isinstance(item, bool):
                raise ValueError
            depth = float(str(item).rstrip("%"))
        except ValueError:
            raise UsageError(f"{key!r}: {item!r} is not a number (depth in percent)") from None
        if not 0.0 <= depth <= 100.0:  # also refuses NaN
            raise UsageError(
                f"depth {item} is outside 0-100", hint="Depths are percent of the haystack: 0 … 100."
            )
        depths.append(depth)
    return tuple(sorted(set(depths)))


def canonical_max_memory(value: Any) -> str:
    """accelerate's max_memory in one canonical text form ("0=70GiB,cpu=200GiB"), from text or a dict."""
    from run_plan.sizes import parse_max_memory

    parsed = parse_max_memory(value if isinstance(value, str) else _dict_text(value))
    return ",".join(f"{key}={size}" for key, size in parsed.items())


def _dict_text(value: Any) -> str:
    if not isinstance(value, Mapping):
        raise UsageError(
            f"max_memory must be text like 0=70GiB,cpu=200GiB or a table, got {type(value).__name__}"
        )
    return ",".join(f"{k}={v}" for k, v in value.items())


def check_value(name: str, value: Any, where: str) -> Any:
    """One value, checked and normalised for the RunSpec field `name`; the error names key and place."""
    option = BY_NAME.get(name)
    kind = option.kind if option else "str"
    label = f"{option.cli_flag if option and where == 'the command line' else name!s}"
    try:
        return _check(kind, value, label, option)
    except UsageError as exc:
        if where != "the command line" and where not in exc.message:
            raise UsageError(f"{exc.message} (in {where})", hint=exc.hint) from None
        raise


def _check(kind: str, value: Any, label: str, option: Option | None) -> Any:
    if value is None:
        return None
    if kind == "tokens":
        if isinstance(value, bool):
            raise UsageError(f"{label} must be a token count, got {value!r}")
        return parse_token_count(value, what=label)
    if kind == "lengths":
        return parse_lengths(value, label)
    if kind == "depths":
        return parse_depths(value, label)
    if kind == "max_memory":
        return canonical_max_memory(value)
    if kind in ("bool", "switch"):
        if not isinstance(value, bool):
            raise UsageError(f"{label} must be true or false, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{label} must be an integer, got {value!r}")
        minimum = option.minimum if option else 1
        if value < minimum:
            raise UsageError(f"{label} must be at least {minimum}, got {value}")
        if value > 1 << 40:
            raise UsageError(f"{label} {value} is out of range")
        return value
    if kind == "float":
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value <= 0
        ):
            raise UsageError(f"{label} must be a positive number, got {value!r}")
        if option and option.maximum is not None and value > option.maximum:
            raise UsageError(
                f"{label} {value:g} is out of range (at most {option.maximum:g})",
                hint="Give the number alone, in one currency unit (e.g. 2.5).",
            )
        return float(value)
    if kind == "fraction":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:  # NaN too
            raise UsageError(f"{label} must be a number between 0 and 1, got {value!r}")
        return float(value)
    if kind == "paths":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
            raise UsageError(f"{label} must be a file path or a list of them")
        return tuple(items)
    if not isinstance(value, str):
        raise UsageError(f"{label} must be a string, got {type(value).__name__} {value!r}")
    if option and option.choices and value not in option.choices:
        # the values are lower-case words joined by _ or -: NIAH-LEAN still finds niah_lean
        folded = {choice.lower().replace("-", "_"): choice for choice in option.choices}
        close = difflib.get_close_matches(value.strip().lower().replace("-", "_"), list(folded), n=1)
        raise UsageError(
            f"{label}: {value[:60]!r} is not one of {', '.join(option.choices)}",
            hint=f"Did you mean {folded[close[0]]!r}?" if close else None,
        )
    return value


# -- layers ----------------------------------------------------------------------------------------


def known_keys(
    values: Mapping[str, Any], where: str, allowed: frozenset[str] = SPEC_FIELDS
) -> dict[str, Any]:
    """Keys normalised to field names; an unknown key fails with the closest known one."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in allowed:
            close = difflib.get_close_matches(name, sorted(allowed), n=1)
            hint = f"Did you mean {close[0]!r}?" if close else f"Known keys: {', '.join(sorted(allowed))}."
            raise UsageError(f"unknown key {key!r} in {where}", hint=hint)
        out[name] = value
    return out


def load_toml(path: Path) -> dict[str, Any]:
    """A TOML run file: settings at top level or under one [run] table."""
    try:
        data = tomllib.loads(read_text_file(path))
    except FileNotFoundError:
        raise UsageError(f"--config {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"--config {path} is a folder, not a TOML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"cannot read --config {path}: {exc}", hint="Give a UTF-8 TOML file (a regular file, not a pipe)."
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config {path} is not valid TOML: {exc}") from None
    if set(data) == {"run"}:
        if not isinstance(data["run"], dict):
            raise UsageError(
                f"--config {path}: 'run' must be a table ([run]), got {type(data['run']).__name__}"
            )
        data = data["run"]
    return known_keys(data, str(path))


@dataclass(frozen=True)
class Layer:
    """Values from one place, and that place's name for error messages and the sources column."""

    where: str
    values: Mapping[str, Any]
    source: str  # "flag" | "toml" | "saved run" | "script"
    key_sources: Mapping[str, str] = dataclasses.field(default_factory=dict)  # finer, e.g. "script run.py:12"


def build_spec(layers: list[Layer], defaults: Mapping[str, Any] | None = None) -> RunSpec:
    """Merge layers (later wins), check every value once, and build the RunSpec."""
    merged: dict[str, Any] = dict(defaults or {})
    sources: dict[str, str] = {}
    for layer in layers:
        for name, value in known_keys(layer.values, layer.where).items():
            if value is None:
                continue
            merged[name] = check_value(name, value, layer.where)
            sources[name] = layer.key_sources.get(name, layer.source)
    if merged.get("kv_dtype") == "auto":
        merged["kv_dtype"] = None  # the model dtype
    if "lengths" in sources and "context" not in sources:
        merged.pop("context", None)  # the longest length is the context unless the user said otherwise
    return RunSpec(**merged, sources=tuple(sorted(sources.items())))


def spec_from_saved(values: Any, where: str) -> RunSpec:
    """A RunSpec that `RunSpec.to_dict` wrote (a plan file), every value checked as a flag's would be: a
    plan file is text from outside, and a value no flag accepts (a length of 0, a depth of 500, a negative
    price) must stop the run here, with its key, not in the middle of the sweep."""
    if not isinstance(values, Mapping):
        raise UsageError(f"{where}: the spec is {type(values).__name__}, not a table of settings")
    data = dict(values)
    sources = data.pop("sources", None)
    if sources is not None and not (
        isinstance(sources, Mapping) and all(isinstance(v, str) for v in sources.values())
    ):
        raise UsageError(f"{where}: 'sources' must map each setting to where it came from")
    checked = {name: check_value(name, value, where) for name, value in known_keys(data, where).items()}
    if checked.get("kv_dtype") == "auto":
        checked["kv_dtype"] = None  # the model dtype, as build_spec reads it
    return RunSpec.from_dict({**checked, **({"sources": dict(sources)} if sources else {})})


# -- click -----------------------------------------------------------------------------------------


def click_options(tool: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The plan's flags for one CLI, every default None (so "given" is known and layers can merge)."""
    import click

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed([o for o in OPTIONS if tool in o.tools]):
            fn = _click_option(click, option)(fn)
        return fn

    return decorate


def config_file_option() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--config FILE`: the same TOML run file for both CLIs (keys are the long flag names; flags win)."""
    import click

    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        help="A TOML file describing the run, e.g. examples/run.toml: keys are the long flag names; flags win.",
    )


def _click_option(click: Any, option: Option) -> Any:
    flag = option.cli_flag
    if option.kind == "switch":
        return click.option(f"{flag}/{option.cli_negative_flag}", option.name, default=None, help=option.help)
    if option.kind == "bool":
        return click.option(flag, option.name, is_flag=True, default=None, help=option.help)
    if option.kind == "choice":
        return click.option(
            flag, option.name, type=click.Choice(option.choices), default=None, help=option.help
        )
    if option.kind == "int":
        return click.option(flag, option.name, type=int, default=None, help=option.help)
    if option.kind in ("float", "fraction"):
        return click.option(flag, option.name, type=float, default=None, help=option.help)
    if option.kind == "paths":
        return click.option(flag, option.name, multiple=True, type=click.Path(), help=option.help)
    return click.option(flag, option.name, default=None, help=option.help)


def flag_layer(given: Mapping[str, Any]) -> Layer:
    """The flags the user typed (click gives None / () for the rest)."""
    values = {k: v for k, v in given.items() if k in SPEC_FIELDS and v is not None and v != ()}
    return Layer("the command line", values, "flag")
