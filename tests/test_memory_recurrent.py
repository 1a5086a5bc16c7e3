"""Recurrent and hybrid layers (Mamba-1, Mamba-2, gated delta net) in the traced estimate.

Tiny configs of real transformers classes, on the path this environment runs (transformers' reference
PyTorch code: no mamba_ssm / causal_conv1d / flash-linear-attention here). The cache estimate must equal
what a real CPU prefill leaves in the cache (K/V and the recurrent states), the fitted activation model
must reproduce a direct trace at a chunk it was not fitted on (and bound one between its grid points),
and the path taken must be said."""

from __future__ import annotations

import contextlib
import sys
import types
import warnings
from typing import Any

import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from doctor.memory import Settings, compute_estimate, sizing_args  # noqa: E402
from doctor.memory.activations import traced_activation_per_gpu  # noqa: E402
from doctor.memory.gpus import parse_gpus  # noqa: E402
from doctor.memory.kv import kv_bytes_per_layer, kv_layers  # noqa: E402

ARCHS: dict[str, dict[str, Any]] = {
    # Mamba-1 + attention + MoE (layers: mamba, mamba+MoE, attention, mamba+MoE)
    "jamba": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "attn_layer_period": 4,
        "attn_layer_offset": 2,
        "mamba_d_state": 8,
        "mamba_dt_rank": 8,
    },
    # Mamba-2 (chunk 128) + attention + MoE
    "nemotron_h": {
        "hidden_size": 64,
        "num_hidden_layers": 4,
        "layers_block_type": ["mamba", "moe", "attention", "moe"],
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "mamba_num_heads": 4,
        "mamba_head_dim": 32,
        "ssm_state_size": 16,
        "n_groups": 2,
        "chunk_size": 128,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "moe_shared_expert_intermediate_size": 32,
        "intermediate_size": 32,
    },
    # gated delta net (chunks of 64 in the reference rule) + attention + MoE
    "qwen3_next": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"],
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "linear_key_head_dim": 16,
        "linear_value_head_dim": 16,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 32,
    },
}
_SIZED: dict[str, dict[str, Any]] = {}


def _config(model_type: str) -> dict[str, Any]:
    return {"model_type": model_type, "vocab_size": 256, "torch_dtype": "bfloat16", **ARCHS[model_type]}


def _sized(model_type: str) -> dict[str, Any]:
    from doctor.memory.skeleton import size_model

    if model_type not in _SIZED:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _SIZED[model_type] = size_model(sizing_args(Settings(context=512), _config(model_type), None))
    return _SIZED[model_type]


def _real_model(model_type: str, device: str = "cpu") -> Any:
    import transformers

    config = transformers.AutoConfig.for_model(
        **{k: v for k, v in _config(model_type).items() if k != "torch_dtype"}
    )
    with torch.device(device):
        return transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()


def _cache_keyword(model: Any) -> str:
    import inspect

    params = inspect.signature(model.forward).parameters
    return next(k for k in ("cache", "past_key_values", "cache_params") if k in params)


def _real_cache_bytes(model_type: str, context: int, chunk: int) -> int:
    """Prefill a real (random-weight) CPU model and count every storage the cache holds, states included."""
    import transformers

    model = _real_model(model_type)
    cache = transformers.DynamicCache(config=model.config)
    ids = torch.randint(0, 256, (1, context))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for start in range(0, context, chunk):
            model(
                input_ids=ids[:, start : start + chunk],
                use_cache=True,
                logits_to_keep=1,
                **{_cache_keyword(model): cache},
            )
    storages = {}
    for layer in cache.layers:
        tensors = [getattr(layer, "keys", None), getattr(layer, "values", None)]
        for attr in ("conv_states", "recurrent_states"):
            tensors += list((getattr(layer, attr, None) or {}).values())
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.numel():
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_cache_estimate_equals_what_the_cache_really_holds_states_included(model_type: str) -> None:
    sizing = _sized(model_type)
    layers = sizing["kv_layout"]["layers"]
    assert any(x["kind"] == "recurrent" and x["state_bytes"] > 0 for x in layers), layers
    for context, chunk in ((160, 160), (320, 64)):
        estimate = compute_estimate(
            sizing, Settings(context=context, prefill_chunk=chunk), parse_gpus("1x24GB")
        )
        assert estimate.kv_bytes == _real_cache_bytes(model_type, context, chunk)


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_recurrent_models_are_traced_not_widened(model_type: str) -> None:
    sizing = _sized(model_type)
    estimate = compute_estimate(sizing, Settings(context=4096), parse_gpus("1x80GB"))
    assert estimate.method == "traced", sizing["trace"]
    assert "recurrent" in estimate.kv_layout


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_fitted_model_reproduces_a_direct_trace_on_its_grid_and_bounds_it_between(model_type: str) -> None:
    """On a chunk that is a multiple of the granule (the scan's block) the fit is exact; a chunk in between
    is evaluated at the next multiple, which is never below the direct trace."""
    import transformers

    from doctor.memory import trace

    sizing = _sized(model_type)
    info = sizing["trace"]["activations"]
    granule = info["granule"]
    assert granule > 1 and granule % 64 == 0
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(
            _real_model(model_type, "meta").config, dtype=torch.bfloat16
        )
    layers = trace._decoder_layers(model)
    reps = {int(i): name for name, i in info["representatives"].items()}
    layout = kv_layers(sizing["text_config"], sizing["kv_layout"]["layers"])
    for context, chunk, exact in ((5 * granule, 5 * granule, True), (12 * granule, 3 * granule, True)) + (
        (1000, 1000, False),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zones = trace._trace_point(
                torch, transformers, model, model.config, layers, reps, chunk, context - chunk
            )
        now = kv_bytes_per_layer(sizing["text_config"], layout, context, chunk, 2)
        before = kv_bytes_per_layer(sizing["text_config"], layout, context - chunk, chunk, 2)
        direct = suffix = 0
        for i in range(len(info["layer_signatures"]) - 1, -1, -1):
            suffix += now[i] - before[i]
            sig = info["layer_signatures"][i]
            direct = max(direct, zones[f"entry:{sig}"][0] + max(zones[f"layer:{sig}"], default=0) - suffix)
        direct = max(direct, *zones.get("pre", [0]), *zones.get("post", [0]))
        fitted = traced_activation_per_gpu(info, [0] * len(now), now, before, context, chunk, 0, 1)
        assert fitted is not None
        assert fitted == [direct] if exact else fitted[0] >= direct


def test_a_loop_that_ran_a_different_number_of_steps_is_cut_to_its_ends() -> None:
    from doctor.memory.trace import _fold_loops

    def events(steps: int, base: int) -> tuple[list[int], list[str]]:
        values = [base, base + 10]  # before the loop
        ops = ["mm", "add"]
        for k in range(steps):  # each step keeps 4 bytes more (a list of outputs), holds 100 transiently
            values += [base + 10 + 4 * k + 100, base + 10 + 4 * (k + 1)]
            ops += ["mul", "stack"]
        return values + [base + 7], ops + ["cat"]

    points = [events(n, n) for n in (4, 6, 8)]
    folded = _fold_loops("layer:t0", [v for v, _ in points], [o for _, o in points])
    assert {len(v) for v in folded} == {2 + 4 * 2 + 1}
    for (values, _), cut in zip(points, folded):
        assert max(cut) == max(values)  # the largest step is one of the ends


def test_a_loop_whose_steps_allocate_unevenly_is_refused() -> None:
    from doctor.memory.trace import _fold_loops

    def events(steps: int) -> tuple[list[int], list[str]]:
        return [k * k << 20 for k in range(steps)], ["mul"] * steps

    points = [events(n) for n in (6, 8, 10)]
    with pytest.raises(ValueError, match="unevenly"):
        _fold_loops("layer:t0", [v for v, _ in points], [o for _, o in points])


def test_the_reference_path_is_named_with_its_packages() -> None:
    sizing = _sized("jamba")
    kernels = sizing["trace"]["recurrent_kernels"]
    assert {k["package"] for k in kernels} == {"mamba_ssm", "causal_conv1d"}
    assert not any(k["fused"] for k in kernels)  # neither package is installed here
    estimate = compute_estimate(sizing, Settings(context=4096), parse_gpus("1x80GB"))
    assert estimate.recurrent_path is not None and "reference PyTorch" in estimate.recurrent_path
    assert any("reference PyTorch code" in note and "selective_scan_fn" in note for note in estimate.notes)


def test_a_large_reference_transient_suggests_the_kernel_package() -> None:
    from doctor.memory.kv import KvLayer
    from doctor.memory.recurrent import recurrent_notes

    sizing = {
        "trace": {
            "recurrent_kernels": [
                {
                    "function": "selective_scan_fn",
                    "package": "mamba_ssm",
                    "distribution": "mamba-ssm",
                    "fused": False,
                }
            ],
            "activations": {
                "granule": 64,
                "layer_signatures": ["t0"],
                "regimes": [
                    {"kind": "oneshot", "lo": 1, "hi": None, "zones": {"layer:t0": [[0, 1 << 26, 0, 0, 0]]}}
                ],
            },
        }
    }
    layers = [KvLayer("recurrent", None, 0, 2, 4096)]
    big = recurrent_notes(sizing, layers, 8192, 8192)  # 128 blocks x 64 MiB = 8 GiB
    assert any("pip install mamba-ssm" in n for n in big), big
    small = recurrent_notes(sizing, layers, 64, 64)
    assert not any("pip install" in n for n in small) and any("reference PyTorch" in n for n in small)


def test_a_kernel_package_function_is_traced_by_its_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the kernel package imports, transformers calls it instead of the reference function; on meta
    the trace stands it in by its outputs only (the reference's intermediates are not counted)."""
    from transformers.integrations import hub_kernels

    from doctor.memory import trace

    if not hasattr(hub_kernels, "use_kernel_func_from_hub_with_fallback"):
        pytest.skip("this transformers has no kernel-or-reference functions")
    package = types.ModuleType("niah_fake_scan")

    def scan_kernel(x: Any) -> Any:
        raise AssertionError("a CUDA kernel cannot run on meta")

    package.scan = scan_kernel  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "niah_fake_scan", package)

    def reference_scan(x: Any) -> Any:
        big = x.float().unsqueeze(-1).expand(*x.shape, 64).contiguous()  # a transient 128x the input
        return big.sum(-1).to(x.dtype)

    decorated = hub_kernels.use_kernel_func_from_hub_with_fallback("scan", "niah_fake_scan")(reference_scan)
    module = types.ModuleType("niah_fake_model")
    module.scan = decorated  # type: ignore[attr-defined]

    class Layer(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return module.scan(x)

    Layer.__module__ = "niah_fake_model"
    monkeypatch.setitem(sys.modules, "niah_fake_model", module)
    layer = Layer()
    choice = trace._kernel_choice(module.scan)
    assert choice is not None and choice["fused"] and choice["package"] == "niah_fake_scan"

    def peak(stand_in: bool) -> int:
        tracker = trace._Tracker()
        tracker.enabled = True
        x = torch.empty(4, 256, dtype=torch.bfloat16, device="meta")
        with contextlib.ExitStack() as stack:
            if stand_in:
                stack.enter_context(trace._fused_kernel_stand_ins(torch, layer))
                stack.enter_context(trace._dispatch_mode(torch, tracker))
                layer(x)
            else:
                stack.enter_context(trace._dispatch_mode(torch, tracker))
                reference_scan(x)
        return max(live for _, live in tracker.events)

    assert peak(stand_in=True) == 4 * 256 * 2  # the output only
    assert peak(stand_in=False) > 64 * 4 * 256 * 4  # the reference materialises its fp32 expansion
    assert trace._kernel_choice(module.scan) is not None  # restored after tracing


def test_without_the_kv_forward_recurrent_layers_are_not_counted_as_full_kv() -> None:
    import transformers

    from doctor.memory.skeleton import _kv_layout

    config = transformers.AutoConfig.for_model(
        **{k: v for k, v in _config("jamba").items() if k != "torch_dtype"}
    )
    assert [x["kind"] for x in _kv_layout(config)["layers"]] == [
        "recurrent",
        "recurrent",
        "full",
        "recurrent",
    ]
