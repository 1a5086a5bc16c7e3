"""What the model class itself will do when `niah run` loads it, asked in the config-load child.

Runs ONLY in the child of doctor.probes.config_load (imports transformers and torch), right after
`AutoConfig.from_pretrained` loaded the config, on the class `AutoModelForCausalLM.from_pretrained` picks
for it (transformers' own `_get_model_class`, or the checkpoint's code under trust_remote_code):

1. **Attention implementations the class refuses.** `PreTrainedModel.__init__` calls
   `_check_and_adjust_attn_implementation(requested, is_init_check=True)` before it builds a single
   layer; a class without sdpa support raises "... does not support an attention implementation through
   torch.nn.functional.scaled_dot_product_attention yet". That same method is asked here, on an instance
   whose __init__ has not run (no layer is built), for each implementation: its answer is transformers'
   own, message included. flash_attention_2 without the flash-attn package makes transformers try the
   hub's kernels-community/flash-attn2 instead: the child is offline, so this fetches nothing.
2. **What the load fetches from the hub.** Whether from_pretrained kernelizes the model, called with the
   keyword arguments `niah run` passes (run_plan.hub_kernels), is recorded from a real from_pretrained of
   a tiny checkpoint (the value it hands to `set_use_kernels`); when it does, the kernel layers of this
   model (on the meta device) are looked up in transformers' own kernel mapping for CUDA, and each
   repository in the local cache, the way `kernels` resolves it offline.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from typing import Any

from doctor.runtime.attention import LEAN_ATTENTION

# The implementations `niah run --attn` offers, plus flash_attention_3 (what transformers may fall back to).
IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def _error(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:1500]


def model_class(transformers: Any, config: Any, folder: str, trust_remote_code: bool) -> Any:
    """The class AutoModelForCausalLM.from_pretrained builds for this config."""
    auto_map = getattr(config, "auto_map", None) or {}
    if trust_remote_code and isinstance(auto_map, dict) and "AutoModelForCausalLM" in auto_map:
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        return get_class_from_dynamic_module(auto_map["AutoModelForCausalLM"], folder, local_files_only=True)
    from transformers.models.auto.auto_factory import _get_model_class

    return _get_model_class(config, transformers.AutoModelForCausalLM._model_mapping)


def attention_answers(torch: Any, cls: Any, config: Any, implementations: list[str]) -> dict[str, Any]:
    """Per implementation: {"settled": what transformers settles on} or {"refused": its message}."""
    if not hasattr(cls, "_check_and_adjust_attn_implementation"):
        return {"error": "this transformers has no init-time attention check (before 5.x): not asked"}
    answers: dict[str, Any] = {}
    for name in implementations:
        instance = cls.__new__(cls)
        torch.nn.Module.__init__(instance)
        instance.config = copy.deepcopy(config)
        try:
            settled = instance._check_and_adjust_attn_implementation(name, is_init_check=True)
            answers[name] = {"settled": str(settled)}
        except Exception as exc:  # noqa: BLE001 - the refusal, in transformers' words, is the answer
            answers[name] = {"refused": _error(exc)}
    return {"answers": answers}


def _lean_answer(torch: Any, cls: Any, config: Any) -> dict[str, Any]:
    """niah's own implementation exists for transformers only once registered, as `niah run` registers it
    before loading: asked the same way here (a class that refuses it then refuses it in its own words)."""
    from doctor.runtime.attention import LeanUnsupported, register

    try:
        register()
    except LeanUnsupported as exc:
        return {"refused": f"LeanUnsupported: {exc}"}
    return attention_answers(torch, cls, config, [LEAN_ATTENTION])["answers"][LEAN_ATTENTION]


class _Decided(Exception):
    def __init__(self, value: Any) -> None:
        super().__init__("decided")
        self.value = value


def would_kernelize(torch: Any, transformers: Any, load_kwargs: dict[str, Any]) -> bool | None:
    """What from_pretrained, called with `load_kwargs`, hands to `set_use_kernels` (None: no such step).
    Asked on a tiny Llama checkpoint written to a scratch folder: the decision does not depend on the
    model, only on the keyword arguments and the environment (USE_HUB_KERNELS)."""
    base = transformers.PreTrainedModel
    if not hasattr(base, "set_use_kernels"):
        return None
    scratch = tempfile.mkdtemp(prefix="niah-doctor-kernelize-")
    original = base.set_use_kernels
    try:
        tiny = transformers.LlamaConfig(
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=1,
            num_key_value_heads=1,
            vocab_size=16,
        )
        transformers.LlamaForCausalLM(tiny).save_pretrained(scratch)

        def record(self: Any, use_kernels: Any, *args: Any, **kwargs: Any) -> None:
            raise _Decided(use_kernels)

        base.set_use_kernels = record
        try:
            transformers.AutoModelForCausalLM.from_pretrained(scratch, local_files_only=True, **load_kwargs)
        except _Decided as decided:
            return bool(decided.value)
        return None
    finally:
        base.set_use_kernels = original
        shutil.rmtree(scratch, ignore_errors=True)


def _kernel_layer_names(torch: Any, transformers: Any, config: Any) -> list[str]:
    """The names kernelize looks up for this model: kernel layers (classes decorated with
    `use_kernel_forward_from_hub`) and the kernel functions modules attach with `use_kernelized_func`."""
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config))
    names = set()
    for module in model.modules():
        name = getattr(type(module), "kernel_layer_name", None)
        if isinstance(name, str):
            names.add(name)
        for func in (getattr(module, "_kernel_funcs", None) or {}).values():
            func_name = getattr(type(func), "kernel_layer_name", None) or getattr(
                func, "kernel_layer_name", None
            )
            if isinstance(func_name, str):
                names.add(func_name)
    return sorted(names)


def _cuda_capability(torch: Any) -> int | None:
    try:
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return int(major) * 10 + int(minor)
    except Exception:  # noqa: BLE001, S110 - unknown capability: capability-specific kernels are left out
        pass
    return None


def _applies(device: Any, capability: int | None) -> bool:
    """A mapping key for CUDA whose capability range (if any) holds this GPU's."""
    kind = device if isinstance(device, str) else getattr(device, "type", None)
    if kind != "cuda":
        return False
    props = getattr(device, "properties", None)
    if props is None:
        return True
    low, high = getattr(props, "min_capability", None), getattr(props, "max_capability", None)
    return (
        capability is not None and (low is None or capability >= low) and (high is None or capability <= high)
    )


def _inference_repos(entry: Any) -> list[Any]:
    if not isinstance(entry, dict):
        return [entry]
    return [repo for mode, repo in entry.items() if "INFERENCE" in str(mode)]


def _cached(repo: Any) -> str | None:
    """None when the repository (at its version or revision) is in the local cache, else why not, in the
    words of `kernels` (offline resolution) or huggingface_hub."""
    repo_id, version, revision = (getattr(repo, a, None) for a in ("_repo_id", "_version", "_revision"))
    try:
        if version is not None:
            from kernels._internals._versions import resolve_version_spec_as_ref

            resolve_version_spec_as_ref(repo_id, version, local_files_only=True)
        else:
            from huggingface_hub import snapshot_download

            snapshot_download(
                repo_id=str(repo_id), revision=revision, repo_type="kernel", local_files_only=True
            )
    except Exception as exc:  # noqa: BLE001 - not cached (or not resolvable): the reason is the answer
        return _error(exc)
    return None


def hub_kernel_answers(
    torch: Any, transformers: Any, config: Any, load_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Whether the load kernelizes, and if so which hub repositories it needs on CUDA and which are cached."""
    out: dict[str, Any] = {"load_kwargs": dict(load_kwargs)}
    try:
        out["kernelize"] = would_kernelize(torch, transformers, load_kwargs)
    except Exception as exc:  # noqa: BLE001 - reported; the check says it could not tell
        out["error"] = f"asking from_pretrained: {_error(exc)}"
        return out
    if not out["kernelize"]:
        return out
    try:
        from transformers.integrations.hub_kernels import get_kernel_mapping_transformers

        mapping = get_kernel_mapping_transformers()
        names = _kernel_layer_names(torch, transformers, config)
    except Exception as exc:  # noqa: BLE001
        out["error"] = f"reading transformers' kernel mapping: {_error(exc)}"
        return out
    capability = _cuda_capability(torch)
    repos: dict[tuple[str, Any, Any], dict[str, Any]] = {}
    for name in names:
        for device, entry in (mapping.get(name) or {}).items():
            if not _applies(device, capability):
                continue
            for repo in _inference_repos(entry):
                key = (
                    str(getattr(repo, "_repo_id", "?")),
                    getattr(repo, "_version", None),
                    getattr(repo, "_revision", None),
                )
                item = repos.setdefault(
                    key,
                    {
                        "repo_id": key[0],
                        "version": key[1],
                        "revision": key[2],
                        "layers": [],
                        "missing": _cached(repo),
                    },
                )
                item["layers"].append(name)
    out["layers"] = names
    out["repos"] = sorted(repos.values(), key=lambda r: r["repo_id"])
    out["cuda_capability"] = capability
    return out


def model_class_facts(transformers: Any, config: Any, folder: str, args: dict[str, Any]) -> dict[str, Any]:
    """CHILD: the class from_pretrained builds, what it says about each attention implementation, and what
    its load would fetch from the hub (with the keyword arguments `niah run` passes)."""
    import torch

    from run_plan import hub_kernels

    try:
        cls = model_class(transformers, config, folder, bool(args.get("trust_remote_code")))
    except Exception as exc:  # noqa: BLE001 - the class cannot be resolved: said, not raised
        return {"class_error": _error(exc)}
    implementations = list(dict.fromkeys([*IMPLEMENTATIONS, *(args.get("implementations") or [])]))
    # a hub kernel name (org/repo) would be fetched to be asked about: not asked
    implementations = [name for name in implementations if "/" not in name]
    load_kwargs = hub_kernels.load_kwargs(hasattr(transformers.PreTrainedModel, "set_use_kernels"))
    attention = attention_answers(torch, cls, config, [n for n in implementations if n != LEAN_ATTENTION])
    if LEAN_ATTENTION in implementations and "answers" in attention:
        attention["answers"][LEAN_ATTENTION] = _lean_answer(torch, cls, config)
    return {
        "model_class": cls.__name__,
        "attention": attention,
        "hub_kernels": hub_kernel_answers(torch, transformers, config, load_kwargs),
    }
