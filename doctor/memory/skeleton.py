"""Weights as transformers really lays them out: a meta-device skeleton + transformers' own bnb preparation.

Runs ONLY in a child process (`doctor.children.child.run_in_child("doctor.memory.skeleton:size_model", …)`):
it imports torch, transformers and (when present) bitsandbytes.

Why a skeleton instead of a formula: bitsandbytes replaces only `nn.Linear`/`Conv1D` modules
(`integrations/bitsandbytes.replace_with_bnb_linear`). Whatever else the architecture holds — fused 3-D
MoE experts (Llama 4, Mixtral and most MoE models in transformers 5.x), embeddings, norms, `lm_head` —
stays at the load dtype. Only the real class, prepared by the real quantizer, shows which is which, for
any architecture and any transformers version.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from doctor.memory.storage import bytes_4bit, bytes_int8

_DIGITS = re.compile(r"\.\d+(?=\.|$)")
# Keys of config.json that describe the checkpoint, not the architecture.
_NOT_ARCHITECTURE = ("_source", "quantization_config", "auto_map", "_name_or_path")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch_dtype(torch: Any, name: str | None, config: Any) -> Any:
    """ "auto" means what from_pretrained(dtype="auto") does: the config's dtype, bf16 when it has none."""
    if name in (None, "auto"):
        name = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "bfloat16"
    if not isinstance(name, str):
        return name
    return getattr(torch, name.replace("torch.", ""))


_FIELD_IN_ERROR = re.compile(r"field '([A-Za-z0-9_]+)'")


def _drop_key(tree: Any, key: str) -> None:
    if isinstance(tree, dict):
        tree.pop(key, None)
        for value in tree.values():
            _drop_key(value, key)


def _build_config(transformers: Any, raw: dict[str, Any], dropped: list[str]) -> Any:
    """AutoConfig for the raw dict. transformers 5.2x validates field types strictly; a field an older
    config.json wrote differently (e.g. Llama 4's attn_temperature_tuning: 4) is dropped, falling back to
    the class default, and reported, rather than refusing to size the model."""
    import copy

    clean = copy.deepcopy({k: v for k, v in raw.items() if k not in _NOT_ARCHITECTURE})
    model_type = clean.pop("model_type")
    for _ in range(16):
        try:
            return transformers.AutoConfig.for_model(model_type, **clean)
        except Exception as exc:  # huggingface_hub StrictDataclassFieldValidationError and friends
            match = _FIELD_IN_ERROR.search(str(exc))
            if not match or match.group(1) in dropped:
                raise
            dropped.append(match.group(1))
            _drop_key(clean, match.group(1))
    raise ValueError("config has too many fields this transformers rejects")


def _causal_lm_config(transformers: Any, config: Any) -> tuple[Any, str]:
    """The config of the model `niah` loads: the text model of a multimodal checkpoint (Llama 4 →
    Llama4ForCausalLM from text_config), else the causal LM itself."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    get_text = getattr(config, "get_text_config", None)
    text = get_text() if callable(get_text) else config
    if text is not config and getattr(text, "model_type", None) in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return text, "text model of a multimodal checkpoint (vision tower not loaded)"
    return config, "causal LM"


def _no_init(transformers: Any) -> Any:
    """Skip weight init where transformers offers the switch (it is a no-op on meta, but costs time)."""
    for where in ("transformers.initialization", "transformers.modeling_utils"):
        try:
            module = __import__(where, fromlist=["no_init_weights"])
            return module.no_init_weights()
        except (ImportError, AttributeError, TypeError):
            continue
    import contextlib

    return contextlib.nullcontext()


def _build_meta_model(torch: Any, transformers: Any, config: Any, dtype: Any, attn: str | None = None) -> Any:
    """The model class from_pretrained builds, on meta. With `attn`, asked for that attention implementation
    (transformers may dispatch another one: read model.config._attn_implementation afterwards); if this
    environment cannot build it (flash-attn not installed here), the default is built instead."""
    auto = transformers.AutoModelForCausalLM
    extra = {"attn_implementation": attn} if attn else {}
    import copy

    with torch.device("meta"), _no_init(transformers):
        try:  # on a copy: a refused implementation stays recorded in the config it was asked on
            model = auto.from_config(copy.deepcopy(config) if extra else config, dtype=dtype, **extra)
        except TypeError:  # transformers 4.x spelled it torch_dtype
            model = auto.from_config(config, torch_dtype=dtype, **extra)
        except (ImportError, ValueError):
            if not extra:
                raise
            model = auto.from_config(config, dtype=dtype)
    # from_pretrained ties lm_head to the embeddings (tie_word_embeddings); do the same so the shared
    # tensor is counted once.
    if callable(getattr(model, "tie_weights", None)):
        try:
            model.tie_weights()
        except Exception:  # noqa: BLE001, S110 - tying only dedups; never fail the estimate on it
            pass
    return model


def _bnb_config(transformers: Any, torch: Any, args: dict[str, Any], dtype: Any) -> Any:
    qc = args.get("quantization_config")
    if args.get("prequantized") and isinstance(qc, dict) and qc.get("quant_method") == "bitsandbytes":
        return transformers.BitsAndBytesConfig.from_dict(dict(qc))
    if args["quant"] == "bnb-8bit":
        return transformers.BitsAndBytesConfig(load_in_8bit=True)
    return transformers.BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=args.get("bnb_4bit_type", "nf4"),
        bnb_4bit_use_double_quant=bool(args.get("double_quant", True)),
        bnb_4bit_compute_dtype=dtype,
    )


def _apply_quantizer(
    torch: Any, transformers: Any, model: Any, bnb_config: Any, prequantized: bool, dtype: Any
) -> dict[str, Any]:
    """Exactly what from_pretrained does before loading weights: the quantizer's preprocess_model
    (un-fuses Llama 4 experts only for pre-quantized checkpoints, then replace_with_bnb_linear)."""
    from transformers.quantizers.auto import AutoHfQuantizer

    from doctor.children.bnb_import import import_bitsandbytes

    try:  # the quantizer imports it anyway; first without bitsandbytes' compile wrappers (~0.7 s less)
        import_bitsandbytes(torch)
    except Exception:  # noqa: BLE001, S110 - the quantizer's own import reports it below
        pass
    quantizer = AutoHfQuantizer.from_config(bnb_config, pre_quantized=prequantized)
    before = {type(m).__name__ for m in model.modules()}
    keep_fp32 = list(getattr(model, "_keep_in_fp32_modules", None) or [])
    mode = "transformers-quantizer"
    try:
        quantizer.preprocess_model(model, device_map=None, keep_in_fp32_modules=keep_fp32, dtype=dtype)
    except ImportError:
        # No bitsandbytes here: apply the same two steps ourselves with transformers' own helpers,
        # and count the Linears replace_with_bnb_linear would have swapped.
        mode = "emulated (bitsandbytes not importable)"
        if prequantized and hasattr(quantizer, "_convert_model_for_quantization"):
            quantizer._convert_model_for_quantization(model)
        quantizer.modules_to_not_convert = quantizer.get_modules_to_not_convert(
            model, bnb_config.llm_int8_skip_modules, keep_fp32
        )
    after = {type(m).__name__ for m in model.modules()}
    return {
        "mode": mode,
        "modules_to_not_convert": sorted(getattr(quantizer, "modules_to_not_convert", []) or []),
        "patched_from": sorted(before - after),
        "patched_to": sorted(after - before - {"Linear4bit", "Linear8bitLt"}),
    }


def _would_be_replaced(module: Any, name: str, skip: list[str]) -> bool:
    """replace_with_bnb_linear's own predicate (used only when bitsandbytes is missing)."""
    from torch import nn

    converts: Callable[[str, list[str] | None], bool]
    try:
        from transformers.quantizers.quantizers_utils import should_convert_module as converts
    except ImportError:  # older transformers: plain substring match, as 4.x did
        converts = _converts_unless_named
    conv1d = getattr(__import__("transformers.pytorch_utils", fromlist=["Conv1D"]), "Conv1D", ())
    return (type(module) is nn.Linear or isinstance(module, conv1d)) and converts(name, skip)


def _converts_unless_named(full_name: str, patterns: list[str] | None = None) -> bool:
    return not any(p in full_name for p in (patterns or []))


def _pattern(name: str) -> str:
    return _DIGITS.sub(".*", name)


def _blocks(model: Any) -> list[tuple[str, Any]]:
    """Placement units in model order: each no-split module (a decoder layer) whole, else top-level leaves."""
    no_split = set(getattr(model, "_no_split_modules", None) or [])
    units: list[tuple[str, Any]] = []

    def visit(prefix: str, module: Any) -> None:
        children = list(module.named_children())
        if type(module).__name__ in no_split or not children:
            units.append((prefix, module))
            return
        own = list(module.named_parameters(recurse=False))
        if own:
            units.append((prefix + "#own", module))
        for child_name, child in children:
            visit(f"{prefix}.{child_name}" if prefix else child_name, child)

    visit("", model)
    return units


def _count(model: Any, quant: str, double_quant: bool, emulate_skip: list[str] | None) -> dict[str, Any]:
    """Bytes per parameter with bitsandbytes' storage rules; everything else at its real dtype."""
    seen: set[int] = set()
    per_param_bytes: dict[str, int] = {}
    totals = {
        "weights_bytes": 0,
        "quantized_params": 0,
        "unquantized_params": 0,
        "unquantized_bytes": 0,
        "quantized_bytes": 0,
        "buffer_bytes": 0,
        "largest_quantized_linear": 0,
        "largest_quantized_out": 0,
    }
    groups: OrderedDict[str, dict[str, Any]] = OrderedDict()
    categories = {"embedding_params": 0, "lm_head_params": 0, "expert_params": 0, "linear_params": 0}
    output_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    input_emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    for mod_name, module in model.named_modules():
        cls = type(module).__name__
        emulated = (
            emulate_skip is not None
            and quant != "none"
            and _would_be_replaced(module, mod_name, emulate_skip)
        )
        for p_name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue  # tied weights (lm_head = embed_tokens) are stored once
            seen.add(id(param))
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if p_name == "weight" and (cls in ("Linear4bit", "Linear8bitLt") or emulated):
                n = module.in_features * module.out_features
                if n > totals["largest_quantized_linear"]:
                    totals["largest_quantized_linear"] = n
                    totals["largest_quantized_out"] = module.out_features
                is_8bit = cls == "Linear8bitLt" or (emulated and quant == "bnb-8bit")
                size = (
                    bytes_int8(module.in_features, module.out_features)
                    if is_8bit
                    else bytes_4bit(n, double_quant)
                )
                totals["quantized_params"] += n
                totals["quantized_bytes"] += size
            else:
                n = param.numel()
                size = n * param.element_size()
                totals["unquantized_params"] += n
                totals["unquantized_bytes"] += size
                group = groups.setdefault(
                    _pattern(mod_name) or "(root)",
                    {
                        "module": _pattern(mod_name) or "(root)",
                        "class": cls,
                        "params": 0,
                        "bytes": 0,
                        "dtype": str(param.dtype).replace("torch.", ""),
                        "fused_3d": False,
                    },
                )
                group["params"] += n
                group["bytes"] += size
                group["fused_3d"] = group["fused_3d"] or param.dim() == 3
            per_param_bytes[full] = size
            totals["weights_bytes"] += size
            if module is input_emb:
                categories["embedding_params"] += n
            elif module is output_emb:
                categories["lm_head_params"] += n
            elif (
                param.dim() == 3
                or "expert" in mod_name.split(".")[-1].lower()
                or ".experts." in f".{mod_name}."
            ):
                categories["expert_params"] += n
            elif p_name == "weight" and param.dim() == 2:
                categories["linear_params"] += n
        for _, buf in module.named_buffers(recurse=False):
            if id(buf) not in seen:
                seen.add(id(buf))
                totals["buffer_bytes"] += buf.numel() * buf.element_size()
    totals["weights_bytes"] += totals["buffer_bytes"]
    unquantized = sorted(groups.values(), key=lambda g: -g["bytes"])
    return {**totals, **categories, "unquantized_modules": unquantized[:12], "_per_param": per_param_bytes}


def _block_sizes(model: Any, per_param: dict[str, int]) -> list[dict[str, Any]]:
    blocks = []
    for name, module in _blocks(model):
        base = name.removesuffix("#own")
        own_only = name.endswith("#own")
        params = module.named_parameters(recurse=not own_only)
        size = sum(per_param.get(f"{base}.{p}" if base else p, 0) for p, _ in params)
        if size:
            has_experts = not own_only and any(
                n.split(".")[-1] == "experts" for n, _ in module.named_modules()
            )
            blocks.append(
                {"name": base or "(root)", "class": type(module).__name__, "bytes": size, "moe": has_experts}
            )
    return blocks


def _trace(
    torch: Any, transformers: Any, model: Any, text: Any, attn: str, args: dict[str, Any]
) -> dict[str, Any]:
    if args.get("trace") is False:
        return {
            "attn_requested": attn,
            "attn_implementation": attn,
            "kv_error": "tracing disabled",
            "prefill_state_error": "tracing disabled",
        }
    traced = _trace_paths(torch, transformers, model, text, attn)
    return {**traced, **_prefill_state(model)}


def _prefill_state(model: Any) -> dict[str, Any]:
    """{"prefill_state": why a chunked prefill of this model is not exact} where it is not (asked of the
    model as the plan will run it: doctor.runtime.state); a probe that fails claims nothing."""
    from doctor.runtime.state import uncarried_state

    try:
        why = uncarried_state(model)
    except Exception as exc:  # noqa: BLE001 - reported, never fatal: the plan then chunks as before
        return {"prefill_state_error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return {"prefill_state": why} if why else {}


def _trace_paths(torch: Any, transformers: Any, model: Any, text: Any, attn: str) -> dict[str, Any]:
    from doctor.memory.trace import trace_model
    from doctor.runtime.attention import LEAN_ATTENTION

    probe = _lean_probe(model) if attn == LEAN_ATTENTION else None
    if probe is None or (probe.refused is None and probe.limit is None):
        return trace_model(torch, transformers, model, text, attn)
    # transformers' own path then runs, and is what the plan must size: where the lean path refuses from a
    # position on, the trace (whose points reach past every window) cannot follow it there either
    fallback = _set_fallback_attention(model)
    traced = trace_model(torch, transformers, model, text, fallback)
    if probe.refused is not None:
        return {**traced, "attn_requested": attn, "attn_refused": {LEAN_ATTENTION: probe.refused}}
    limit = {"position": probe.limit, "why": probe.limit_why}
    return {**traced, "attn_requested": attn, "attn_limit": {LEAN_ATTENTION: limit}}


# What runs where the lean attention cannot: transformers' sdpa, or eager where the class refuses sdpa.
FALLBACK_ATTN = ("sdpa", "eager")


def _set_fallback_attention(model: Any) -> str:
    for name in FALLBACK_ATTN:
        try:
            model.set_attn_implementation(name)
            return name
        except (ValueError, ImportError):
            continue
    return str(getattr(model.config, "_attn_implementation", "eager"))


def _lean_probe(model: Any) -> Any:
    from doctor.runtime.paths import LeanProbe, lean_probe

    try:
        return lean_probe(model)
    except Exception as exc:  # noqa: BLE001 - any failure of the lean forward keeps transformers' path
        return LeanProbe(refused=f"its forward failed: {type(exc).__name__}: {str(exc)[:200]}")


def _kv_layout(config: Any, traced: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-layer cache bytes per token and cap, measured on a meta forward (doctor.memory.trace); else
    ask the installed transformers how DynamicCache(config) stores each layer (feature detection:
    chunked/sliding layers are capped only where this transformers caps them) and count K/V by formula."""
    if traced and traced.get("kv", {}).get("layers"):
        return {**traced["kv"], "measured": True}
    try:
        from transformers import DynamicCache

        cache = DynamicCache(config=config)
        layers = getattr(cache, "layers", None)
        if not layers:
            return {"source": "DynamicCache(config) has no per-layer list", "layers": None}
        from doctor.memory.trace import holds_state

        out = []
        for layer in layers:
            name = type(layer).__name__
            window = getattr(layer, "sliding_window", None)
            kind = "none" if "Dummy" in name or "Shared" in name else ("window" if window else "full")
            if kind == "full" and holds_state(layer) and not hasattr(layer, "keys"):
                kind = "recurrent"  # a recurrent layer's cache: its state only (size unknown without the forward)
            out.append({"class": name, "kind": kind, "window": int(window) if window else None})
        return {"source": "transformers DynamicCache(config)", "layers": out}
    except Exception as exc:  # noqa: BLE001 - older transformers: DynamicCache() keeps every layer full
        return {
            "source": f"DynamicCache(config) unavailable ({type(exc).__name__}): all layers full",
            "layers": None,
        }


def _moe_style(model: Any) -> dict[str, Any]:
    """How the MoE forward feeds tokens to experts: all tokens to all experts (transformers' Llama 4:
    hidden_states.repeat(num_experts, 1)) or only routed tokens (Mixtral-style gather / grouped_mm)."""
    for name, module in model.named_modules():
        experts = getattr(module, "experts", None)
        if experts is None or not hasattr(module, "forward"):
            continue
        try:
            source = inspect.getsource(type(module).forward)
        except (OSError, TypeError):
            source = ""
        all_tokens = ".repeat(" in source and "experts" in source
        n = getattr(experts, "num_experts", None) or (len(experts) if hasattr(experts, "__len__") else None)
        return {
            "moe_class": type(module).__name__,
            "experts_class": type(experts).__name__,
            "num_experts": n,
            "all_tokens_to_all_experts": all_tokens,
            "example": name,
        }
    return {}


def _quantized_inventory(
    torch: Any, transformers: Any, model: Any, text: Any, dtype: Any, args: dict[str, Any]
) -> dict[str, Any]:
    """What the model holds once transformers' bitsandbytes preparation has replaced its Linears:
    quantizer facts, byte counts, placement blocks and tree, MoE style (all read after the replacement)."""
    from doctor.memory.module_tree import safe_placement_tree

    quant = args.get("quant", "none")
    prequantized = bool(args.get("prequantized"))
    quantizer_info: dict[str, Any] = {"mode": "none"}
    double_quant = bool(args.get("double_quant", True))
    emulate_skip = None
    bnb_config = None
    if quant != "none":
        bnb_config = _bnb_config(transformers, torch, args, dtype)
        double_quant = bool(getattr(bnb_config, "bnb_4bit_use_double_quant", double_quant))
        quantizer_info = _apply_quantizer(torch, transformers, model, bnb_config, prequantized, dtype)
        if quantizer_info["mode"].startswith("emulated"):
            emulate_skip = quantizer_info["modules_to_not_convert"]
    counted = _count(model, quant, double_quant, emulate_skip)
    per_param = counted.pop("_per_param")
    return {
        "double_quant": double_quant,
        "quantizer": quantizer_info,
        **counted,
        "blocks": _block_sizes(model, per_param),
        # what transformers' own device_map="auto" reads, so the placement can replay it exactly
        "placement_tree": safe_placement_tree(model, bnb_config, prequantized),
        "moe": _moe_style(model),
        "text_config": text.to_dict(),
    }


def _register_runtime_attention(attn: str) -> None:
    """The lean attention is niah's own: make its name known to transformers before the model is built."""
    from doctor.runtime.attention import LEAN_ATTENTION, register

    if attn == LEAN_ATTENTION:
        register()


def _apply_experts(model: Any, experts: str) -> dict[str, Any]:
    from doctor.runtime.paths import apply_experts

    try:
        return apply_experts(model, experts)
    except Exception as exc:  # noqa: BLE001 - the model's own forward then runs (and is what is traced)
        return {"experts": f"transformers' own (the planned path failed: {type(exc).__name__}: {exc})"}


def size_model(args: dict[str, Any]) -> dict[str, Any]:
    """Child-process entry: {config, quant, bnb_4bit_type, double_quant, dtype, prequantized,
    quantization_config} → weight inventory, placement blocks, KV layout, MoE style, versions."""
    from doctor.children.child import cyclic_gc_paused
    from doctor.children.forked import can_fork, start_forked

    with cyclic_gc_paused():
        import torch
        import transformers

        dropped: list[str] = []
        config = _build_config(transformers, dict(args["config"]), dropped)
        lm_config, sized = _causal_lm_config(transformers, config)
        dtype = _torch_dtype(torch, args.get("dtype"), lm_config)
        attn = str(args.get("attn") or "sdpa")
        _register_runtime_attention(attn)
        model = _build_meta_model(torch, transformers, lm_config, dtype, attn)
        experts = _apply_experts(model, str(args.get("experts") or "transformers"))
    text = lm_config.get_text_config() if hasattr(lm_config, "get_text_config") else lm_config

    def weights() -> dict[str, Any]:
        return _quantized_inventory(torch, transformers, model, text, dtype, args)

    # The trace needs the model before bitsandbytes replaces its Linears (a 4-bit matmul cannot run on
    # meta; its dequantized weight is added by the pure estimate), so the quantizer works on a forked copy
    # of the model meanwhile, on the second core; here only if the copy failed.
    quantizing = start_forked(weights) if can_fork() else None
    try:
        traced = _trace(torch, transformers, model, text, attn, args)
    except BaseException:
        if quantizing:
            quantizing.kill()
        raise
    inventory = (quantizing.result() if quantizing else None) or weights()
    return {
        "method": "meta-skeleton",
        "model_class": type(model).__name__,
        "sized": sized,
        "dtype": str(dtype).replace("torch.", ""),
        **inventory,
        "no_split_modules": sorted(getattr(model, "_no_split_modules", None) or []),
        "kv_layout": _kv_layout(text, traced),
        "trace": {k: v for k, v in traced.items() if k != "kv"},
        "experts_path": experts,
        "config_fields_dropped": dropped,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "bitsandbytes": _version("bitsandbytes"),
            "accelerate": _version("accelerate"),
        },
    }
