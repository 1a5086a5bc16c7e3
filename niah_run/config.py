"""The run configuration: defaults < saved config.json (with --resume) < --config TOML < flags.

No constant in any file has to be edited to change a run. Unknown keys and wrong types fail with
a UsageError that names the key; the resolved config is printed to stderr and saved as config.json.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from doctor.errors import UsageError
from doctor.sizes import parse_max_memory
from doctor.target import ATTN_CHOICES, DTYPE_CHOICES, QUANT_CHOICES, parse_token_count
from niah_run.needles import NEEDLE_KINDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class RunConfig:
    model: str = "demo"
    gguf_file: str | None = None
    quant: str = "none"
    dtype: str = "auto"
    device_map: str | None = None
    max_memory: str | None = None
    attn: str = "sdpa"
    lengths: tuple[int, ...] = (1024, 2048)
    depths: tuple[float, ...] = (0.0, 25.0, 50.0, 75.0, 100.0)
    trials: int = 1
    needle_kind: str = "passkey"
    controls: int = 0  # no-needle control trials per length
    haystack: str = "generated"
    prefill_chunk: int | None = None
    max_new_tokens: int = 32
    seed: int = 0
    out: str | None = None
    resume: bool = False
    skip_preflight: bool = False
    trust_remote_code: bool = False
    revision: str | None = None  # hub revision (branch, tag or commit)
    online: bool = False  # allow hub downloads while loading
    allow_pickle: bool = False  # allow .bin (pickle) checkpoints
    backend: str = "transformers"  # "transformers" (local) or "openai" (an OpenAI-compatible server)
    base_url: str | None = None  # openai backend: http://HOST:8000
    tokenizer: str | None = None  # openai backend: hub id, folder or 'demo' (default: --model)
    concurrency: int = 1  # openai backend: requests in flight
    request_timeout: int = 1800  # openai backend: seconds per request
    retries: int = 3  # openai backend: retries on connection errors, 5xx and 429

    # Fields that do not change what a trial computes (they never enter the trial key).
    NOT_IN_KEY = ("out", "resume", "skip_preflight", "lengths", "depths", "trials", "controls", "prefill_chunk",
                  "device_map", "max_memory", "online", "allow_pickle", "base_url", "concurrency",
                  "request_timeout", "retries")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["lengths"], out["depths"] = list(self.lengths), list(self.depths)
        return out

    def key_fields(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k not in self.NOT_IN_KEY}


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
_CHOICES = {"quant": QUANT_CHOICES, "attn": ATTN_CHOICES, "dtype": DTYPE_CHOICES, "needle_kind": NEEDLE_KINDS,
            "backend": ("transformers", "openai")}


def _list(value: Any, key: str) -> list[Any]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    raise UsageError(f"config key {key!r} must be a list or a comma-separated string, got {type(value).__name__}")


def parse_lengths(value: Any, key: str = "lengths") -> tuple[int, ...]:
    items = _list(value, key)
    if not items:
        raise UsageError(f"{key} is empty", hint="Give at least one length, e.g. 1024,2048 or 1k,2k.")
    lengths = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise UsageError(f"config key {key!r}: {item!r} is not a token count")
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
                raise ValueError  # noqa: TRY004 - reported below as a UsageError naming the key
            depth = float(str(item).rstrip("%"))
        except ValueError:
            raise UsageError(f"config key {key!r}: {item!r} is not a number (depth in percent)") from None
        if not 0.0 <= depth <= 100.0:
            raise UsageError(f"depth {item} is outside 0-100", hint="Depths are percent of the haystack: 0 … 100.")
        depths.append(depth)
    return tuple(sorted(set(depths)))


def _coerce(key: str, value: Any) -> Any:
    """Check one value's type (TOML or flag) and normalise it; the error names the key."""
    if key == "lengths":
        return parse_lengths(value)
    if key == "depths":
        return parse_depths(value)
    if key == "prefill_chunk":
        return None if value is None else parse_token_count(value if not isinstance(value, bool) else "x",
                                                            what="prefill_chunk")
    kind = FIELDS[key].type
    if kind == "bool":
        if not isinstance(value, bool):
            raise UsageError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"config key {key!r} must be an integer, got {value!r}")
        minimum = 0 if key in ("controls", "seed", "retries") else 1
        if value < minimum:
            raise UsageError(f"config key {key!r} must be at least {minimum}, got {value}")
        return value
    if value is None and "None" in kind:
        return None
    if not isinstance(value, str):
        raise UsageError(f"config key {key!r} must be a string, got {type(value).__name__} {value!r}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise UsageError(f"config key {key!r}: {value!r} is not one of {', '.join(_CHOICES[key])}")
    if key == "max_memory":
        parse_max_memory(value)  # the loader's own parser, run now: a typo fails before the run directory is made
    return value


def load_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--config {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read --config {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config {path} is not valid TOML: {exc}") from None
    section = data.get("run", data) if set(data) <= {"run"} else data  # accept a [run] table or top level
    return _check_keys(section, str(path))


def _check_keys(values: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(k for k in values if k.replace("-", "_") not in FIELDS)
    if unknown:
        raise UsageError(f"unknown key {unknown[0]!r} in {where}",
                         hint=f"Known keys: {', '.join(sorted(FIELDS))}.")
    return {k.replace("-", "_"): v for k, v in values.items()}


def load_saved(run_dir: Path) -> dict[str, Any]:
    """The config.json of an earlier run in `run_dir` (the base layer for --resume)."""
    path = run_dir / CONFIG_FILE
    if not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8")).get("config", {})
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {exc}", hint="Remove it or start a new --out folder.") from None
    # --resume and --skip-preflight are decisions for this invocation, never inherited.
    return {k: v for k, v in saved.items() if k in FIELDS and k not in ("resume", "skip_preflight")}


def resolve_config(flags: dict[str, Any], config_path: str | None = None) -> RunConfig:
    """Merge the layers. `flags` holds only options the user gave (None = not given)."""
    given = {k: v for k, v in flags.items() if v is not None}
    layers: dict[str, Any] = {}
    if given.get("resume") and given.get("out"):
        layers.update(load_saved(Path(given["out"]).expanduser()))
    if config_path:
        layers.update(load_toml(Path(config_path).expanduser()))
    layers.update(_check_keys(given, "the command line"))
    values = {key: _coerce(key, value) for key, value in layers.items()}
    config = RunConfig(**values)
    if config.concurrency > 1 and config.backend != "openai":
        # One local model on one set of GPUs runs one prompt at a time; parallel prefill would only OOM.
        raise UsageError("--concurrency applies to --backend openai (a server); the local backend runs one trial "
                         "at a time", hint="Drop --concurrency, or serve the model (vLLM, SGLang, `niah serve`).")
    return config


def render_config(config: RunConfig) -> str:
    """TOML-like text for stderr (the saved config.json is the machine-readable copy)."""
    lines = []
    for key, value in config.to_dict().items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines)
