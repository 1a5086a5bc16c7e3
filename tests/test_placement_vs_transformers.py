"""The doctor's weight placement equals transformers' own `device_map="auto"` (issue 9, Build 6).

For each case the same architecture is built twice on the meta device: once the way `from_pretrained`
builds it (the class's own init context, the quantizer's `preprocess_model`) and handed to transformers'
real `_get_device_map`; once through the doctor's meta skeleton, whose inventory the doctor places in pure
Python. The two maps must be identical — GPU of every module, CPU and disk spill, tied embeddings — and
the memory verdict must follow (anything off the GPUs under bitsandbytes: transformers refuses to load).

Runs on the CPU: GPU budgets are given explicitly (accelerate only warns that the indices are absent);
for "no --max-memory" cases the one hardware query, accelerate's `get_max_memory(None)`, is replaced by
the free memory the doctor assumes for the named cards.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("accelerate")
pytest.importorskip("transformers")

from doctor.memory.placement import (
    CPU,
    free_at_load,
    place_like_transformers,
    placement_summary,
    transformers_device_map,
)

GIB = 1 << 30
MIB = 1 << 20
CONFIGS = Path(__file__).resolve().parent.parent / "doctor" / "memory" / "configs"
H100 = 81559 * MIB  # NVML total of an H100-80GB
RTX4090 = 24564 * MIB
CPU_RAM = 64 * GIB  # the "available RAM" transformers sees when no max_memory is given (90 % of it is used)


def _raw_config(name: str, **overrides: Any) -> dict[str, Any]:
    raw = json.loads((CONFIGS / f"{name}.json").read_text())
    raw = {
        k: v
        for k, v in raw.items()
        if k not in ("_source", "quantization_config", "auto_map", "_name_or_path")
    }
    if "text_config" in raw and overrides:
        raw["text_config"] = {**raw["text_config"], **overrides}
        if "num_hidden_layers" in overrides:  # Llama 4 lists per-layer kinds; keep them as long as the model
            for key in ("layer_types", "no_rope_layers", "moe_layers"):
                if isinstance(raw["text_config"].get(key), list):
                    raw["text_config"][key] = raw["text_config"][key][: overrides["num_hidden_layers"]]
    else:
        raw.update(overrides)
    return raw


def _bnb_config(quant: str) -> Any:
    import torch
    from transformers import BitsAndBytesConfig

    if quant == "bnb-8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


@cache
def _transformers_model(name: str, quant: str, overrides: tuple = ()) -> tuple[Any, Any]:
    """The model as from_pretrained holds it when it calls _get_device_map (untied, quantizer applied)."""
    import torch
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
    from transformers.quantizers.auto import AutoHfQuantizer
    from transformers.utils.generic import ContextManagers

    from doctor.memory.skeleton import _build_config, _causal_lm_config

    config, _ = _causal_lm_config(
        transformers, _build_config(transformers, _raw_config(name, **dict(overrides)), [])
    )
    cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    quantizer = (
        AutoHfQuantizer.from_config(_bnb_config(quant), pre_quantized=False) if quant != "none" else None
    )
    with (
        ContextManagers(cls.get_init_context(torch.bfloat16, quantizer is not None, False, False)),
        torch.device("meta"),
    ):
        model = cls(config)
        if quantizer is not None:
            quantizer.preprocess_model(
                model=model, dtype=torch.bfloat16, device_map="auto", checkpoint_files=None, use_kernels=False
            )
    return model, quantizer


def _theirs(
    name: str,
    quant: str,
    overrides: tuple,
    max_memory: dict | None,
    gpu_free: dict | None,
    monkeypatch: pytest.MonkeyPatch,
    strategy: str = "auto",
) -> tuple[dict, str | None]:
    """transformers' _get_device_map; also whether it refuses the map (bitsandbytes + offload)."""
    import transformers.integrations.accelerate as hf_accelerate

    model, quantizer = _transformers_model(name, quant, overrides)
    if max_memory is None:
        real = hf_accelerate.accelerate_max_memory

        def fake_get_max_memory(value: Any = None) -> dict:
            if value is None:  # what accelerate would read from torch.cuda.mem_get_info and psutil
                return {**{i: free for i, free in gpu_free.items()}, "cpu": CPU_RAM}
            return real(value)

        monkeypatch.setattr(hf_accelerate, "accelerate_max_memory", fake_get_max_memory)
    refused = None
    if quantizer is not None:
        try:
            hf_accelerate._get_device_map(
                model, strategy, dict(max_memory) if max_memory else None, quantizer
            )
        except ValueError as error:  # "Some modules are dispatched on the CPU or the disk"
            refused = str(error).split(".")[0]
        monkeypatch.setattr(quantizer, "validate_environment", lambda *a, **k: None)
    device_map = hf_accelerate._get_device_map(
        model, strategy, dict(max_memory) if max_memory else None, quantizer
    )
    return dict(device_map), refused


@cache
def _doctor_sizing(name: str, quant: str, overrides: tuple = ()) -> dict[str, Any]:
    """The doctor's own inventory: the meta skeleton's sizing (what the estimator works from)."""
    from doctor.memory.skeleton import size_model

    args = {
        "config": _raw_config(name, **dict(overrides)),
        "quant": quant,
        "prequantized": False,
        "double_quant": True,
        "bnb_4bit_type": "nf4",
        "dtype": "bfloat16",
        "quantization_config": None,
    }
    sizing = size_model(args)
    if "placement_tree" not in sizing:
        sizing["placement_tree"] = _skeleton_tree(args)
    return sizing


def _skeleton_tree(args: dict[str, Any]) -> dict[str, Any]:
    """Until size_model returns the inventory itself: the same skeleton model, read by module_tree."""
    import torch
    import transformers

    from doctor.memory import skeleton
    from doctor.memory.module_tree import placement_tree

    config, _ = skeleton._causal_lm_config(
        transformers, skeleton._build_config(transformers, dict(args["config"]), [])
    )
    dtype = skeleton._torch_dtype(torch, args["dtype"], config)
    model = skeleton._build_meta_model(torch, transformers, config, dtype)
    bnb = None
    if args["quant"] != "none":
        bnb = skeleton._bnb_config(transformers, torch, args, dtype)
        skeleton._apply_quantizer(torch, transformers, model, bnb, False, dtype)
    return placement_tree(model, bnb, False)


L70 = "meta-llama__Llama-3.1-70B-Instruct"
SMOL = "HuggingFaceTB__SmolLM2-135M-Instruct"  # tied embeddings
QWEN = "Qwen__Qwen2.5-7B-Instruct"
MIXTRAL = "mistralai__Mixtral-8x7B-Instruct-v0.1"
SCOUT8 = ("meta-llama__Llama-4-Scout-17B-16E-Instruct", (("num_hidden_layers", 8),))

# (model, overrides, quant, --max-memory as accelerate takes it | None, GPUs' NVML capacities when None)
CASES: list[tuple[str, tuple, str, dict | None, list[int] | None]] = [
    (L70, (), "bnb-4bit", {0: 20 * GIB, 1: 20 * GIB}, None),  # issue 9: lm_head on disk
    (L70, (), "bnb-4bit", {0: 40 * GIB, 1: 40 * GIB}, None),
    (L70, (), "bnb-4bit", None, [H100]),  # one GPU, no max_memory: 90 % of free, then bnb's 0.9
    (L70, (), "bnb-4bit", None, [H100, H100]),
    (L70, (), "bnb-4bit", {0: 10 * GIB, 1: 30 * GIB, 2: 10 * GIB}, None),
    (L70, (), "bnb-4bit", {1: 45 * GIB}, None),  # a GPU left out of max_memory gets nothing
    (L70, (), "none", None, [H100, H100]),  # bf16 spill to CPU RAM
    (L70, (), "none", {0: 70 * GIB, 1: 70 * GIB, "cpu": 200 * GIB}, None),
    (L70, (), "none", {0: 70 * GIB}, None),  # no cpu entry: straight to disk
    (L70, (), "none", None, [H100] * 4),
    (L70, (), "bnb-8bit", {0: 40 * GIB, 1: 40 * GIB}, None),
    (L70, (), "bnb-8bit", None, [H100]),
    (L70, (), "bnb-8bit", {0: 30 * GIB, 1: 30 * GIB, 2: 30 * GIB}, None),
    (SMOL, (), "none", {0: 100 * MIB, 1: 100 * MIB, "cpu": 50 * MIB}, None),  # tied embed/lm_head, spill
    (SMOL, (), "none", {0: 150 * MIB}, None),
    (SMOL, (), "none", None, [2 * GIB]),
    (SMOL, (), "bnb-4bit", {0: 60 * MIB, 1: 60 * MIB}, None),
    (SMOL, (), "bnb-8bit", {0: 80 * MIB, 1: 40 * MIB, "cpu": 1 * GIB}, None),
    (QWEN, (), "none", {0: 6 * GIB, 1: 6 * GIB, "cpu": 2 * GIB}, None),  # GPUs, CPU, then disk
    (QWEN, (), "bnb-4bit", None, [RTX4090]),
    (QWEN, (), "bnb-8bit", {0: 5 * GIB, 1: 5 * GIB}, None),
    (MIXTRAL, (), "bnb-4bit", {0: 40 * GIB, 1: 40 * GIB}, None),  # fused 3-D experts stay bf16
    (MIXTRAL, (), "none", None, [H100, H100]),
    (SCOUT8[0], SCOUT8[1], "none", {0: 30 * GIB, 1: 30 * GIB}, None),
    (SCOUT8[0], SCOUT8[1], "bnb-4bit", {0: 12 * GIB, 1: 12 * GIB}, None),
]


def _case_id(case: tuple) -> str:
    name, overrides, quant, max_memory, gpus = case
    where = (
        ",".join(f"{k}={v / GIB:g}G" for k, v in max_memory.items()) if max_memory else f"{len(gpus)}gpu-free"
    )
    return f"{name.split('__')[-1][:14]}{'-8L' if overrides else ''}-{quant}-{where}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_doctor_places_every_module_like_transformers(case: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    name, overrides, quant, max_memory, capacities = case
    gpu_free = {i: free_at_load(c) for i, c in enumerate(capacities)} if capacities else None
    theirs, refused = _theirs(name, quant, overrides, max_memory, gpu_free, monkeypatch, strategy="auto")
    sizing = _doctor_sizing(name, quant, overrides)
    ours = transformers_device_map(
        sizing["placement_tree"],
        max_memory,
        gpu_free=gpu_free,
        cpu_free=CPU_RAM if max_memory is None else None,
    )
    assert ours == theirs

    # the estimator's view: one GPU (or CPU) per block, off-GPU exactly where transformers offloads
    gpus = (
        [(i, c) for i, c in enumerate(capacities)]
        if capacities
        else [(i, 80 * GIB) for i in sorted(k for k in max_memory if isinstance(k, int))]
    )
    gpu_max = {k: v for k, v in max_memory.items() if isinstance(k, int)} if max_memory else None
    per_block = place_like_transformers(sizing, gpus, gpu_max, quant)
    offloaded = any(not isinstance(d, int) for d in theirs.values())
    assert (CPU in per_block) == offloaded
    if quant != "none":
        assert (refused is not None) == offloaded  # bitsandbytes refuses any offload


@pytest.mark.parametrize("strategy", ["sequential", "balanced", "balanced_low_0"])
def test_other_device_map_strategies_match(strategy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """--device-map sequential skips the balancing; balanced_low_0 keeps GPU 0 as empty as it can."""
    max_memory = {0: 20 * GIB, 1: 30 * GIB, 2: 30 * GIB}
    theirs, _ = _theirs(L70, "bnb-4bit", (), max_memory, None, monkeypatch, strategy=strategy)
    tree = _doctor_sizing(L70, "bnb-4bit")["placement_tree"]
    assert transformers_device_map(tree, max_memory, strategy=strategy) == theirs


def test_issue_example_llama_70b_bnb4_two_20gib_gpus_does_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Llama-3.1-70B bnb-4bit, max_memory 0=20GiB,1=20GiB: transformers puts 35 + 45 layers on the GPUs
    and lm_head on disk, then refuses to load; the doctor agrees and memory-fit fails."""
    from doctor.memory.estimate import Settings, compute_estimate
    from doctor.memory.gpus import GpuSpec

    theirs, refused = _theirs(L70, "bnb-4bit", (), {0: 20 * GIB, 1: 20 * GIB}, None, monkeypatch)
    layers = Counter(d for k, d in theirs.items() if k.startswith("model.layers."))
    assert layers == {0: 35, 1: 45} and theirs["lm_head"] == "disk" and refused

    sizing = _doctor_sizing(L70, "bnb-4bit")
    gpus = [GpuSpec(0, "H100-80GB", H100, "--gpus"), GpuSpec(1, "H100-80GB", H100, "--gpus")]
    settings = Settings(context=8192, quant="bnb-4bit", max_memory=((0, 20 * GIB), (1, 20 * GIB)))
    estimate = compute_estimate(sizing, settings, gpus)
    assert estimate.fits is False and estimate.weights_on_cpu_bytes > 0
    lm_head = next(b for b in sizing["blocks"] if b["name"] == "lm_head")
    assert estimate.weights_on_cpu_bytes >= lm_head["bytes"]
    summary = placement_summary(sizing, [(0, H100), (1, H100)], {0: 20 * GIB, 1: 20 * GIB}, "bnb-4bit")
    assert summary["offloaded"] == {"lm_head": "disk"}


def test_block_fallback_applies_the_same_holdbacks() -> None:
    """Without the module inventory (analytic sizing) the block rules still apply transformers' holdbacks:
    a lone GPU with no max_memory keeps 10 % of its free memory, and bitsandbytes takes 10 % of every budget."""
    from doctor.memory.placement import place_blocks

    blocks = [10] * 10  # 100 units; GPU 0 also keeps room for the biggest block still to place (10)
    assert place_blocks(blocks, [105]).count(0) == 10  # the user's 105: 90 + 10 reserve, then the last block
    assert place_blocks(blocks, [105], user_budgets=False).count(0) == 8  # 94.5 free: 80 + 10 + 10 > 94.5
    assert place_blocks(blocks, [105], quantized=True).count(0) == 8  # bnb: 94.5
    assert place_blocks(blocks, [105], user_budgets=False, quantized=True).count(0) == 7  # 85.05
