"""The real Scout geometry, pre-quantized: a bitsandbytes-4bit checkpoint in the layout transformers loads.

    python benchmarks/scout_prequantized.py build /dev/shm/scout48 --layers 48 --tokenizer TOKENIZER_DIR
    python benchmarks/one_plan.py show /dev/shm/scout48 --budget 79GiB --ask 10M --out $OUT/scout48
    python benchmarks/scout_prequantized.py build /tmp/tiny-pq --tiny --tokenizer DIR   # CPU smoke test

Llama 4 Scout's text model at full width (hidden 5120, 40/8 heads, 16 experts of width 8192 + a shared
expert, vocabulary 202,048), with LAYERS decoder layers in Scout's pattern (three chunked-attention layers,
then one global NoPE layer), random weights, stored as a pre-quantized nf4 + double-quant checkpoint: what
`--prequantized` sizes and `niah run` loads. Which modules are 4-bit is transformers' decision, not this
file's: the skeleton is prepared on the meta device by transformers' own bitsandbytes quantizer for a
pre-quantized load (it un-fuses the experts into `SequentialLlama4TextExperts` and swaps the `nn.Linear`s it
quantizes), and each of those is quantized here by bitsandbytes and saved as its own `Linear4bit` saves it.

The model never exists whole in bf16 (48 layers would be ~218 GB): one decoder layer at a time is built on
the device, quantized, written as its own safetensors shard and freed, so the GPU holds one layer (~4.4 GB).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: its sibling benchmarks import
from one_plan import SCOUT_TEXT, TINY_TEXT, copy_tokenizer, special_token_ids  # noqa: E402

QUANT = {
    "load_in_4bit": True,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True,
    "bnb_4bit_compute_dtype": "bfloat16",
}


def scout_config(layers: int, tiny: bool, tokenizer: Path) -> Any:
    from transformers import BitsAndBytesConfig, Llama4TextConfig

    if layers % 4:
        raise SystemExit(f"--layers {layers}: Scout's pattern repeats every 4 layers (3 chunked + 1 global)")
    special = special_token_ids(tokenizer)
    shape = dict(TINY_TEXT if tiny else SCOUT_TEXT)
    config = Llama4TextConfig(
        num_hidden_layers=layers, no_rope_layers=[1, 1, 1, 0] * (layers // 4), **shape, **special
    )
    config.architectures = ["Llama4ForCausalLM"]
    config.quantization_config = BitsAndBytesConfig(**QUANT).to_dict()
    return config


def four_bit_modules(config: Any) -> set[str]:
    """The module names transformers' own quantizer makes `Linear4bit` for this pre-quantized config."""
    import torch
    from transformers import BitsAndBytesConfig, Llama4ForCausalLM
    from transformers.quantizers.auto import AutoHfQuantizer

    with torch.device("meta"):
        skeleton = Llama4ForCausalLM(config)
    quantizer = AutoHfQuantizer.from_config(BitsAndBytesConfig(**QUANT), pre_quantized=True)
    quantizer.preprocess_model(skeleton, device_map=None, keep_in_fp32_modules=[], dtype=torch.bfloat16)
    return {name for name, module in skeleton.named_modules() if type(module).__name__ == "Linear4bit"}


def quantized_state(module: Any, prefix: str, four_bit: set[str], device: Any) -> dict[str, Any]:
    """`module`'s tensors as a pre-quantized checkpoint stores them: the named Linears through
    bitsandbytes' `Linear4bit` (packed weight + its quant state), everything else as it is."""
    import bitsandbytes as bnb
    import torch

    state: dict[str, Any] = {}
    for name, child in module.named_modules():
        full = f"{prefix}{name}" if name else prefix.rstrip(".")
        own = f"{full}." if full else ""
        if full in four_bit:
            packed = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=torch.bfloat16,
                compress_statistics=QUANT["bnb_4bit_use_double_quant"],
                quant_type=QUANT["bnb_4bit_quant_type"],
                device="meta",
            )
            packed.weight = bnb.nn.Params4bit(
                child.weight.data,
                requires_grad=False,
                compress_statistics=QUANT["bnb_4bit_use_double_quant"],
                quant_type=QUANT["bnb_4bit_quant_type"],
            ).to(device)
            if child.bias is not None:
                packed.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            state.update({own + k: v for k, v in packed.state_dict().items()})
            continue
        if any(full.startswith(f"{m}.") for m in four_bit):
            continue  # inside a Linear4bit already saved
        for key, tensor in list(child.named_parameters(recurse=False)) + list(
            child.named_buffers(recurse=False)
        ):
            state[own + key] = tensor.data
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def decoder_layer(config: Any, index: int, device: Any) -> Any:
    """One decoder layer on `device` in bf16, its fused experts replaced as a pre-quantized load replaces
    them (transformers' `SequentialLlama4TextExperts`: one MLP of nn.Linears per expert)."""
    import torch
    from transformers.models.llama4.modeling_llama4 import Llama4TextDecoderLayer
    from transformers.quantizers.base import MODULES_TO_PATCH_FOR_QUANTIZATION

    unfused = MODULES_TO_PATCH_FOR_QUANTIZATION["Llama4TextExperts"]["module_name"]
    with torch.device(device):
        layer = Llama4TextDecoderLayer(config, index)
        if hasattr(layer.feed_forward, "experts"):
            layer.feed_forward.experts = unfused(config)
    return layer.to(torch.bfloat16)


def build(folder: Path, tokenizer: Path, layers: int, tiny: bool) -> None:
    import torch
    from safetensors.torch import save_file

    started = time.monotonic()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = scout_config(layers, tiny, tokenizer)
    four_bit = four_bit_modules(config)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    shards = layers + 1
    weight_map: dict[str, str] = {}
    total = 0

    def write(state: dict[str, Any], number: int) -> None:
        nonlocal total
        name = f"model-{number:05d}-of-{shards:05d}.safetensors"
        save_file(state, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(state, name))
        total += sum(t.numel() * t.element_size() for t in state.values())

    with torch.no_grad():
        for index in range(layers):
            layer = decoder_layer(config, index, device)
            write(quantized_state(layer, f"model.layers.{index}.", four_bit, device), index + 1)
            del layer
        with torch.device(device):
            embed = torch.nn.Embedding(config.vocab_size, config.hidden_size, dtype=torch.bfloat16)
            head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False, dtype=torch.bfloat16)
        ends = {
            "model.embed_tokens.weight": embed.weight,
            "model.norm.weight": torch.ones(config.hidden_size, dtype=torch.bfloat16),
            "lm_head.weight": head.weight,
        }
        if "lm_head" in four_bit:  # transformers keeps the output embeddings in bf16; follow it if not
            ends.update(quantized_state(head, "lm_head.", four_bit, device))
            del ends["lm_head.weight"]
        write({k: v.detach().to("cpu").contiguous() for k, v in ends.items()}, shards)
    index_file = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index_file, indent=2))
    config.save_pretrained(folder)
    copy_tokenizer(tokenizer, folder)
    print(
        f"saved {layers} layers, {total / (1 << 30):.2f} GiB pre-quantized ({len(four_bit)} 4-bit Linears) "
        f"to {folder} in {time.monotonic() - started:.0f} s",
        flush=True,
    )


def check_loads(folder: Path) -> dict[str, Any]:
    """transformers' own loader over the folder: every key it expects present and nothing left over."""
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, info = AutoModelForCausalLM.from_pretrained(
        folder, device_map=device, dtype=torch.bfloat16, output_loading_info=True
    )
    problems = {k: sorted(v) for k, v in info.items() if v}
    experts = type(model.model.layers[0].feed_forward.experts).__name__
    return {"problems": problems, "experts": experts, "footprint_bytes": model.get_memory_footprint()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("folder", type=Path)
    b.add_argument("--tokenizer", type=Path, required=True)
    b.add_argument("--layers", type=int, default=48)
    b.add_argument("--tiny", action="store_true")
    c = sub.add_parser("check", help="load the folder with transformers and list missing or unexpected keys")
    c.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.folder, args.tokenizer, args.layers, args.tiny)
        return 0
    result = check_loads(args.folder)
    print(json.dumps(result, indent=2))
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
