"""`RunSpec`: the planned run, described once.

Both CLIs build it (from flags, a TOML file, a saved run, or a run script) through `run_plan.build`,
it is validated once here, the doctor resolves its "auto" values into a `ResolvedPlan`
(`run_plan.resolved`), and `niah run` executes that same object.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from run_plan.errors import UsageError

QUANT_CHOICES: tuple[str, ...] = ("none", "bnb-8bit", "bnb-4bit")
# "auto" lets the doctor pick: niah_lean (niah's exact flash prefill attention, doctor/runtime/attention.py)
# where it is exact for this model on this GPU, else sdpa. The others mean what they mean in transformers.
LEAN_ATTN = "niah_lean"
# The lean attention runs torch's flash attention kernel, which needs an Ampere (sm_80) or newer GPU.
LEAN_MIN_CAPABILITY: tuple[int, int] = (8, 0)
ATTN_CHOICES: tuple[str, ...] = ("auto", LEAN_ATTN, "sdpa", "flex_attention", "eager", "flash_attention_2")
# MoE experts: auto/routed compute only the experts the router chose (doctor/runtime/experts.py for
# Llama 4, transformers' grouped_mm for models on its experts interface); transformers = the model's own.
EXPERTS_CHOICES: tuple[str, ...] = ("auto", "routed", "transformers")
DTYPE_CHOICES: tuple[str, ...] = ("auto", "bfloat16", "float16", "float32")
KV_DTYPE_CHOICES: tuple[str, ...] = ("auto", "bfloat16", "float16", "float32", "float8_e4m3fn")
# Where the trials run: the local model, or an OpenAI-compatible server. niah_run/backends/registry.py gives
# each name its factory and preflight (a test checks that every name here has an entry there).
BACKEND_CHOICES: tuple[str, ...] = ("transformers", "openai")
# The backends that send each trial to a server, which may answer several at once.
CONCURRENT_BACKENDS: tuple[str, ...] = ("openai",)
# What a sweep can hide; niah_run/needles.py: KINDS gives each its maker, value type and scorer (a test
# checks that every name here has one there).
NEEDLE_KIND_CHOICES: tuple[str, ...] = (
    "passkey",
    "uuid",
    "word",
    "multikey",
    "multivalue",
    "association",
    "ordered",
    "counting",
)
BNB_4BIT_TYPES: tuple[str, ...] = ("nf4", "fp4")

# The one prefill chunk both tools use when no estimate can choose one (no model config, no GPU known).
DEFAULT_PREFILL_CHUNK = 4096
# What attn=auto becomes where the lean attention cannot run (no GPU, a model it cannot compute exactly):
# chunked sdpa runs at every length measured (flex has a kernel limit; doctor.plan).
AUTO_ATTN = "sdpa"
DEFAULT_NIAH_LENGTHS: tuple[int, ...] = (1024, 2048)

_TOKENS = re.compile(r"^\s*(\d{1,12}(?:\.\d{1,6})?)\s*([kKmM]?)\s*$")
# "128k" means 131072 tokens: context windows are quoted in powers of two (Llama 3.1 "128k" = 131072).
_TOKEN_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}
# No model has positions beyond 2^31; a larger count is a typo, and it keeps every later product finite.
MAX_TOKENS = 1 << 31


def parse_token_count(text: str | int, *, what: str = "context") -> int:
    """Parse `8192`, `8k`, `1M` (k = 1024, M = 1024²) into a positive token count."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _TOKENS.match(str(text))
        if not match:
            raise UsageError(
                f"{what} {str(text)[:40]!r} is not a token count",
                hint="Use an integer like 131072, or 128k / 1M (k = 1024, M = 1048576).",
            )
        number, unit = match.groups()
        scaled = float(number) * _TOKEN_UNITS[unit.lower()]
        if scaled != int(scaled):
            raise UsageError(f"{what} {text!r} is not a whole number of tokens")
        value = int(scaled)
    if value <= 0:
        raise UsageError(f"{what} must be a positive number of tokens, got {value}")
    if value > MAX_TOKENS:
        raise UsageError(f"{what} {value} is beyond any model's positions (at most {MAX_TOKENS:,})")
    return value


@dataclass(frozen=True)
class RunSpec:
    """The planned run. Every field has a safe default, so `doctor` alone checks just the machine.

    "auto" / None fields are choices left to the doctor; `ResolvedPlan.spec` has them filled in.
    """

    # -- which model
    model: str | None = None  # hub id, local folder, or "demo"
    revision: str | None = None  # hub revision (branch, tag or commit)
    gguf_file: str | None = None  # a GGUF file inside `model`
    trust_remote_code: bool = False
    allow_pickle: bool = False  # allow .bin (pickle) checkpoints
    online: bool = False  # allow network calls (hub lookups, downloads, git fetch)
    # -- how it is loaded
    quant: str = "none"
    bnb_4bit_type: str = "nf4"
    double_quant: bool = True
    prequantized: bool | None = None  # None = detect from the config's quantization_config
    dtype: str = "auto"  # auto = the checkpoint's torch_dtype (bf16 if it has none)
    attn: str = "auto"
    experts: str = "auto"
    device_map: str | None = None  # None = "auto" with CUDA
    max_memory: str | None = None  # canonical "0=70GiB,1=70GiB,cpu=200GiB": budgets for the whole run
    gpus: str | None = None  # plan for these GPUs ("1xH100-80GB"); None = what NVML sees
    prefill_chunk: int | None = None  # None = the doctor picks the largest chunk that fits
    kv_dtype: str | None = None  # None = the model dtype
    # -- what the sweep feeds it
    context: int | None = None  # the longest input; max(lengths) when lengths are given
    lengths: tuple[int, ...] = ()
    depths: tuple[float, ...] = (0.0, 25.0, 50.0, 75.0, 100.0)
    trials: int = 1
    needle_kind: str = "passkey"
    controls: int = 0  # no-needle control trials per length
    haystack: str = "generated"
    max_new_tokens: int = 32
    seed: int = 0
    # -- how the report reads it (never part of a trial's identity)
    effective_threshold: float = 0.85  # Wilson lower bound an "effective" length must keep
    price_per_gpu_hour: float | None = None  # money per cell in the summary, when given
    # -- where it runs
    backend: str = "transformers"
    base_url: str | None = None  # an OpenAI-compatible server serving `model`
    tokenizer: str | None = None  # openai backend: hub id, folder or 'demo' (default: model)
    concurrency: int = 1
    request_timeout: int = 1800
    retries: int = 3
    # -- the doctor's own knobs (they change what is checked, not what runs)
    scripts: tuple[str, ...] = ()  # files the run executes
    fetch: bool = False
    live: bool | None = None  # None = only when a GPU is visible
    deep: bool = False  # slower GPU probes: pinned host<->device bandwidth, real peer-to-peer copies
    probe_timeout_s: float = 60.0
    # -- where each setting came from: ((field, "flag" | "toml" | "saved run" | "script FILE:LINE"), ...)
    sources: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        _check_choice("quant", self.quant, QUANT_CHOICES)
        _check_choice("attn", self.attn, ATTN_CHOICES)
        _check_choice("experts", self.experts, EXPERTS_CHOICES)
        _check_choice("dtype", self.dtype, DTYPE_CHOICES)
        _check_choice("bnb-4bit-type", self.bnb_4bit_type, BNB_4BIT_TYPES)
        _check_choice("backend", self.backend, BACKEND_CHOICES)
        # A kind the sweep cannot build is a usage error (exit 2) here, before anything is loaded.
        _check_choice("needle-kind", self.needle_kind, NEEDLE_KIND_CHOICES)
        if not str(self.haystack).strip():  # Path("") is the current folder: never tokenize the user's files
            raise UsageError(
                "--haystack is empty", hint="Give 'generated', a UTF-8 text file, or a folder of them."
            )
        if self.kv_dtype is not None:
            _check_choice("kv-dtype", self.kv_dtype, KV_DTYPE_CHOICES)
        if self.prefill_chunk is not None and self.prefill_chunk <= 0:
            raise UsageError(f"--prefill-chunk must be positive, got {self.prefill_chunk}")
        if self.probe_timeout_s <= 0:
            raise UsageError("--timeout must be positive")
        if self.concurrency > 1 and self.backend not in CONCURRENT_BACKENDS:
            # One local model on one set of GPUs runs one prompt at a time; parallel prefill would only OOM.
            raise UsageError(
                "--concurrency applies to --backend openai (a server); the local backend runs one "
                "trial at a time",
                hint="Drop --concurrency, or serve the model (vLLM, SGLang, `niah serve`).",
            )
        if self.context is not None and self.context <= 0:
            raise UsageError(f"--context must be a positive number of tokens, got {self.context}")
        if self.lengths and self.context is None:
            object.__setattr__(self, "context", max(self.lengths))
        elif self.context is not None and not self.lengths:
            object.__setattr__(self, "lengths", (self.context,))
        elif self.lengths and self.context is not None and max(self.lengths) > self.context:
            raise UsageError(
                f"--lengths reach {max(self.lengths)} tokens, beyond --context {self.context}",
                hint="Drop --context (it defaults to the longest length) or raise it.",
            )

    # -- views -------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("lengths", "depths", "scripts"):
            out[key] = list(out[key])
        out["sources"] = {name: where for name, where in self.sources}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        """Rebuild a spec saved with `to_dict` (a plan file, a run's config.json); unknown keys are refused."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(
                f"unknown plan field {unknown[0]!r}", hint="Was the plan written by a newer version?"
            )
        values = dict(data)
        for key in ("lengths", "depths", "scripts"):
            if key in values:
                values[key] = tuple(values[key])
        if isinstance(values.get("sources"), dict):
            values["sources"] = tuple(sorted(values["sources"].items()))
        try:
            return cls(**values)
        except TypeError as exc:
            raise UsageError(f"the plan is malformed: {exc}") from None

    def source_of(self, name: str) -> str:
        return dict(self.sources).get(name, "default")

    def identity(self) -> dict[str, Any]:
        """The settings that change what a trial computes: two runs with equal identities give equal rows.

        Sweep shape (lengths, depths, trials, controls) picks WHICH trials run, and placement/chunk/budgets
        change how fast or where, not what a greedy decode returns — those stay out, so a resumed run
        can add lengths or move to a bigger card without repeating what is done."""
        keep = (
            "model",
            "revision",
            "gguf_file",
            "quant",
            "bnb_4bit_type",
            "double_quant",
            "prequantized",
            "dtype",
            "attn",
            "experts",
            "kv_dtype",
            "needle_kind",
            "haystack",
            "max_new_tokens",
            "seed",
            "backend",
            "tokenizer",
            "trust_remote_code",
        )
        return {name: getattr(self, name) for name in keep}

    def describe(self) -> dict[str, object]:
        """The fields worth printing in a report header (defaults that say nothing are dropped)."""
        out: dict[str, object] = {"model": self.model, "context": self.context, "quant": self.quant}
        if self.quant == "bnb-4bit":
            out["bnb_4bit_type"] = self.bnb_4bit_type
            out["double_quant"] = self.double_quant
        for name in (
            "dtype",
            "prequantized",
            "gpus",
            "attn",
            "experts",
            "prefill_chunk",
            "kv_dtype",
            "max_memory",
            "device_map",
        ):
            out[name] = getattr(self, name)
        if len(self.lengths) > 1:
            out["lengths"] = list(self.lengths)
        out["scripts"] = list(self.scripts)
        if self.base_url:
            out["base_url"] = self.base_url  # the report's redaction drops any user:password@ part
        return out


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        raise UsageError(
            f"--{name} {str(value)[:60]!r} is not one of {', '.join(choices)}",
            hint=f"Did you mean {close[0]!r}?" if close else None,
        )


def experts_setting(path: str | None) -> str:
    """The --experts value naming an experts path as the loader and the sizing child report it
    (doctor.runtime.paths.apply_experts): what experts=auto is decided to be."""
    return "routed" if str(path or "").startswith("routed") else "transformers"


# What apply_experts reports for a model without MoE layers, and how it starts what it reports for MoE
# layers it cannot tell how to compute (remote code, a class on neither of its paths): --experts changes
# nothing on either, the model's own forward runs.
EXPERTS_DENSE = "dense"
EXPERTS_NOT_RECOGNISED = "not recognised"
# The --experts value a run's identity holds where the setting changes nothing: what runs (the model's own
# forward), and what every saved run of such a model recorded unless it named another value.
EXPERTS_WITHOUT_EFFECT = "transformers"


def experts_setting_has_effect(path: object) -> bool:
    """Whether --experts changes what a model computes, from the experts path the loader or the sizing
    child reported for it: not on a dense model nor on a MoE niah does not recognise. A path not reported
    (another backend, an earlier release) may have had one."""
    if not isinstance(path, str):
        return True
    return path != EXPERTS_DENSE and not path.startswith(EXPERTS_NOT_RECOGNISED)


# Identity settings added after a release, with the value every run of that release had: a saved identity
# without the key computed with that value (a dense model and Llama 4 before the routed experts: the model's
# own forward).
IDENTITY_BEFORE_KEY: dict[str, Any] = {"experts": "transformers"}


def identity_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Names of identity settings that differ (for refusing a --resume that would mix two tests); nested
    identities (a run's {"config": RunSpec.identity(), ...}) are compared key by key, as "config.attn"."""
    changed = []
    for name in sorted(set(saved) | set(current)):
        before, now = (x.get(name, IDENTITY_BEFORE_KEY.get(name)) for x in (saved, current))
        if isinstance(before, dict) and isinstance(now, dict):
            changed += [f"{name}.{inner}" for inner in identity_diff(before, now)]
        elif json.dumps(before, sort_keys=True) != json.dumps(now, sort_keys=True):
            changed.append(name)
    return changed
