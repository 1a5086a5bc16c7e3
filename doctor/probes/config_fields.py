"""A config.json field the doctor's own validator doubts, judged by the installed transformers.

`doctor.model_config` checks the fields the estimate reads without importing anything heavy: a size
that is not a positive integer, or a size it cannot do without, makes the config invalid. That is
stricter than the library where a class accepts a value and its model never reads it: transformers 5.17
saves `Qwen2MoeConfig` with `"sliding_window": 0` and `"use_sliding_window": false`, and a Mamba config
names no attention heads at all. So a doubted field is asked of transformers, in a child:

- the config class (`AutoConfig.for_model`) refuses the file → the doubt stands, in the class's words;
- the model class cannot be built from it (on the meta device: no memory) → the doubt stands;
- the field is a size the doctor found missing and the class supplied a default → accepted (what the
  model really is, is what the class built);
- a present field with a value the doctor doubts (0, negative) is accepted only when the model never
  reads it: config attribute reads are recorded while the model class is built and while
  `DynamicCache(config)` lays out its layers, i.e. while everything that sizes the run reads the config.

Without transformers (or with --no-live) nothing is asked and the doctor's own rule stands.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

_MEMO: dict[str, dict[str, Any]] = {}
_LOCK = threading.Lock()
TIMEOUT_S = 120.0  # imports torch and transformers and builds the model class on meta


def judge_fields(
    config: Mapping[str, Any], fields: list[str], missing: list[str], timeout_s: float
) -> dict[str, Any]:
    """Parent side: {"accepted": [...], "standing": [(field, why)], "config_class": ..., "error": ...}."""
    import json

    from doctor.children.child import run_in_child

    key = json.dumps({"config": config, "fields": fields, "missing": missing}, sort_keys=True, default=str)
    with _LOCK:
        if key in _MEMO:
            return _MEMO[key]
    result = run_in_child(
        "doctor.probes.config_fields:judge_in_child",
        {"config": dict(config), "fields": fields, "missing": missing},
        timeout_s=timeout_s,
    )
    answer = (
        result.data if result.ok and result.data is not None else {"error": result.error or "child failed"}
    )
    with _LOCK:
        _MEMO[key] = answer
    return answer


def _config_tree(config: Any) -> list[Any]:
    seen: dict[int, Any] = {}
    stack = [config]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        for name in getattr(node, "sub_configs", None) or {}:
            child = getattr(node, name, None)
            if child is not None and hasattr(child, "to_dict"):
                stack.append(child)
    return list(seen.values())


def _reads_while(config: Any, build: Any) -> set[str]:
    """Names read from `config` (and its sub-configs) while `build()` runs, through attribute_map too."""
    import transformers

    base = getattr(transformers, "PreTrainedConfig", None) or transformers.PretrainedConfig
    ids = {id(c) for c in _config_tree(config)}
    reads: set[str] = set()
    original = base.__getattribute__

    def recording(self: Any, key: str) -> Any:
        if id(self) in ids and not key.startswith("__"):
            reads.add(key)
            mapped = (
                object.__getattribute__(self, "attribute_map").get(key) if key != "attribute_map" else None
            )
            if isinstance(mapped, str):
                reads.add(mapped)
        return original(self, key)

    base.__getattribute__ = recording  # type: ignore[method-assign]
    try:
        build()
    finally:
        base.__getattribute__ = original  # type: ignore[method-assign]
    return reads


def _load_as_from_pretrained(transformers: Any, raw: dict[str, Any]) -> Any:
    """The config as from_pretrained reads the file (it decodes what save_pretrained encodes, such as
    {"__float__": "Infinity"}), from a scratch copy of it."""
    import json
    import shutil
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix="niah-doctor-fields-"))
    try:
        (folder / "config.json").write_text(json.dumps(raw), encoding="utf-8")
        return transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def judge_in_child(args: dict[str, Any]) -> dict[str, Any]:
    """CHILD: {config, fields (present values doubted), missing (sizes the doctor found missing)}."""
    import torch
    import transformers

    from doctor.memory.skeleton import _no_init

    raw = {k: v for k, v in dict(args["config"]).items() if not str(k).startswith("_")}
    fields, missing = list(args.get("fields") or []), list(args.get("missing") or [])
    raw.pop("quantization_config", None)  # the checkpoint's, not the architecture's
    raw.pop("auto_map", None)
    try:
        config = _load_as_from_pretrained(transformers, raw)
    except Exception as exc:  # noqa: BLE001 - the class's refusal is the answer
        why = f"transformers {transformers.__version__} refuses the config: {type(exc).__name__}: {exc}"
        return {"standing": [(f, why.splitlines()[0][:400]) for f in fields + missing]}
    from transformers.models.auto.auto_factory import _get_model_class

    def build() -> None:
        cls = _get_model_class(config, transformers.AutoModelForCausalLM._model_mapping)
        with torch.device("meta"), _no_init(transformers):
            cls(config)
        transformers.DynamicCache(config=config)

    try:
        reads = _reads_while(config, build)
    except Exception as exc:  # noqa: BLE001 - the model cannot be built from it: the doubts stand
        why = f"transformers {transformers.__version__} cannot build the model from it: {type(exc).__name__}: {exc}"
        return {
            "standing": [(f, why.splitlines()[0][:400]) for f in fields + missing],
            "config_class": type(config).__name__,
        }
    standing = [(f, f"the model reads {f}") for f in fields if f in reads]
    accepted = [f for f in fields if f not in reads] + missing
    return {
        "config_class": type(config).__name__,
        "transformers_version": transformers.__version__,
        "standing": standing,
        "accepted": accepted,
    }
