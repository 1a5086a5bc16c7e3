"""The memory estimate: weights (meta skeleton), KV, prefill peak, overhead, placement, longest context.

`estimate_for(target, resolution)` is the API `niah run` and the memory check share. The expensive,
library-dependent part (the weight inventory) runs once in a child process; everything that depends on
the context length is pure Python over that inventory (`compute_estimate`), so the search for the
longest context that fits costs milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from doctor.memory.activations import (
    FALLBACK_MARGIN,
    Shapes,
    activation_method,
    attention_transient,
    dequant_transient,
    dispatched_attn,
    flex_index_overflow,
    flex_repeats_kv,
    forward_persistent,
    mlp_transient,
    trace_notes,
    traced_for_sizing,
    unmodelled_ops,
)
from doctor.memory.embedded import CONFIG_DIR, embedded_config  # noqa: F401 - re-exported
from doctor.memory.gpus import GpuSpec
from doctor.memory.kv import KvLayer, kv_bytes_per_layer, kv_layers
from doctor.memory.placement import CPU, decoder_layer_gpus, place_like_transformers
from doctor.memory.recurrent import kernel_functions, kernel_path, recurrent_notes
from doctor.memory.storage import dtype_bytes
from doctor.model_config import ModelResolution, text_config_of
from run_plan.spec import AUTO_ATTN, RunSpec

GIB = 1 << 30
# Per-GPU overhead outside the tensors torch allocates (measured on H100/H200; docs/memory.md):
DRIVER_RESERVED = int(0.5 * GIB)  # NVML total minus what cudaMemGetInfo reports (81559 MiB vs 79.1 GiB)
CUDA_CONTEXT = int(0.7 * GIB)  # 0.51 GiB after init, 0.67 GiB after the first bf16 GEMM (cuBLAS workspace)
ALLOCATOR_RESERVE = int(1.5 * GIB)  # caching-allocator fragmentation / reserved-but-unallocated slack
OVERHEAD_PER_GPU = DRIVER_RESERVED + CUDA_CONTEXT + ALLOCATOR_RESERVE
# Chunks the plan picks from. Below 1024 the prefill takes several times longer for a few % more reach
# (measured: chunk 256 at 2M tokens is ~8,000 forward calls); `--prefill-chunk 512` still asks for one.
CHUNK_CANDIDATES = (8192, 4096, 2048, 1024)


@dataclass(frozen=True)
class Settings:
    """The parts of a RunSpec the estimate depends on (resolved: no "auto", no None)."""

    context: int
    quant: str = "none"
    prequantized: bool = False
    double_quant: bool = True
    bnb_4bit_type: str = "nf4"
    dtype: str = "bfloat16"
    kv_dtype: str = "bfloat16"
    attn: str = "sdpa"
    experts: str = "auto"  # auto/routed: only the routed experts run (doctor.runtime.paths)
    prefill_chunk: int | None = None  # None = choose_prefill_chunk
    logits_to_keep_one: bool = True
    # --max-memory GPU budgets as ((gpu index, bytes), ...); () = accelerate's default (free memory).
    # accelerate places weights by these budgets, not by the card size.
    max_memory: tuple[tuple[int, int], ...] = ()


@dataclass
class Estimate:
    weights_bytes: int
    quantized_params: int
    unquantized_params: int
    unquantized_bytes: int
    unquantized_modules: list[str]
    kv_bytes: int
    activation_peak_bytes: int | None  # None: no GPU known, so no chunk was chosen
    overhead_bytes: int
    total_bytes: int
    per_gpu: list[dict[str, Any]]
    fits: bool | None  # None: no GPU known (see `missing`)
    max_context_tokens: int | None
    notes: list[str]
    confidence: str
    method: str
    transformers_version: str | None
    prefill_chunk: int
    attn: str
    kv_layout: str
    prefill_seconds_estimate: float | None
    context: int
    quant: str
    prequantized: bool
    dtype: str
    model_class: str
    fused_experts_unquantized: list[str] = field(default_factory=list)
    unquantized_detail: list[dict[str, Any]] = field(default_factory=list)
    weights_on_cpu_bytes: int = 0
    versions: dict[str, Any] = field(default_factory=dict)
    missing: str | None = None  # what the estimate could not know, and the flag that supplies it
    prefill_rates: str | None = None  # where the prefill time's rates came from
    # the path recurrent/hybrid layers take here: kernel packages or transformers' reference PyTorch code
    recurrent_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- sizing (child process or analytic)


def sizing_args(
    settings: Settings, config: Mapping[str, Any], quantization_config: Mapping[str, Any] | None
) -> dict[str, Any]:
    return {
        "config": dict(config),
        "quant": settings.quant,
        "prequantized": settings.prequantized,
        "double_quant": settings.double_quant,
        "bnb_4bit_type": settings.bnb_4bit_type,
        "dtype": settings.dtype,
        "quantization_config": dict(quantization_config) if quantization_config else None,
        "attn": settings.attn,
        "experts": settings.experts,
    }


# ---------------------------------------------------------------- context-dependent part (pure)


@dataclass(frozen=True)
class _Breakdown:
    per_gpu_needed: list[int]
    kv_total: int
    act_peak: int
    fits: bool
    weights_per_gpu: list[int]
    kv_per_gpu: list[int]
    act_per_gpu: list[int]
    on_cpu: int
    limit_per_gpu: list[int]


def _layer_kinds(sizing: Mapping[str, Any]) -> list[KvLayer]:
    layout = (sizing.get("kv_layout") or {}).get("layers")
    return kv_layers(sizing["text_config"], layout)


def _breakdown(sizing: Mapping[str, Any], s: Settings, gpus: Sequence[GpuSpec], chunk: int) -> _Breakdown:
    cfg = sizing["text_config"]
    blocks = sizing["blocks"]
    layers = _layer_kinds(sizing)
    b = dtype_bytes(s.dtype)
    kv_b = dtype_bytes(s.kv_dtype)
    chunk = min(chunk, s.context)
    # transformers' own device_map="auto" decision: the user's budgets (an unnamed GPU gets nothing) or each
    # GPU's free memory, balanced, 90 % of a lone GPU's free memory, bitsandbytes' 0.9 on every budget
    placement = place_like_transformers(
        sizing, [(g.index, g.capacity_bytes) for g in gpus], dict(s.max_memory) or None, s.quant
    )
    layer_gpu = decoder_layer_gpus(blocks, placement, sizing.get("no_split_modules") or [])
    layer_blocks = [bl for bl in blocks if bl.get("class") in set(sizing.get("no_split_modules") or [])]
    kv = kv_bytes_per_layer(cfg, layers, s.context, chunk, kv_b)
    shapes = Shapes.from_config(cfg, sizing.get("moe") or {})
    attn = dispatched_attn(sizing, s.attn)
    n = len(gpus)
    weights = [0] * n
    kv_gpu = [0] * n
    act_layer = [0] * n
    on_cpu = 0
    for block, gpu in zip(blocks, placement):
        if gpu == CPU:
            on_cpu += block["bytes"]
        else:
            weights[gpu] += block["bytes"]
    dequant = dequant_transient(
        s.quant,
        int(sizing.get("largest_quantized_linear") or 0),
        chunk,
        int(sizing.get("largest_quantized_out") or 0),
        b,
    )
    for i, layer in enumerate(layers):
        gpu = layer_gpu[i] if i < len(layer_gpu) else (layer_gpu[-1] if layer_gpu else 0)
        if gpu == CPU or n == 0:
            continue
        kv_gpu[gpu] += kv[i]
        is_moe = bool(layer_blocks[i].get("moe")) if i < len(layer_blocks) else False
        transient = (
            max(
                attention_transient(shapes, attn, layer, s.context, chunk, b, kv_b),
                mlp_transient(shapes, sizing.get("moe") or {}, is_moe, chunk, b),
            )
            + dequant
        )
        act_layer[gpu] = max(act_layer[gpu], transient)
    persistent = forward_persistent(shapes, attn, layers, s.context, chunk, b, s.logits_to_keep_one)
    act = [act_layer[g] + persistent if (weights[g] or kv_gpu[g]) else 0 for g in range(n)]
    traced = traced_for_sizing(sizing, layers, layer_gpu, s.context, chunk, kv_b, dequant, n)
    if traced is not None:  # the model's own forward, traced on meta (doctor.memory.trace)
        act = [traced[g] if (weights[g] or kv_gpu[g]) else 0 for g in range(n)]
    else:  # analytic fallback: fitted on a few architectures, so widened
        act = [int(a * FALLBACK_MARGIN) for a in act]
    needed = [weights[g] + kv_gpu[g] + act[g] + OVERHEAD_PER_GPU for g in range(n)]
    if on_cpu and n:  # what would not fit anywhere is still needed: charge it to the last GPU
        needed[-1] += on_cpu
    limits = [
        allocator_limit(gpus[g], dict(s.max_memory).get(gpus[g].index) if s.max_memory else None)
        for g in range(n)
    ]
    # A --max-memory budget bounds the whole run on that GPU (the run caps its allocator to it), so the
    # allocator's share — everything but the driver's reserve and the CUDA context — must fit inside it.
    fits = (
        n > 0
        and on_cpu == 0
        and all(needed[g] - DRIVER_RESERVED - CUDA_CONTEXT <= limits[g] for g in range(n))
    )
    return _Breakdown(needed, sum(kv), max(act, default=0), fits, weights, kv_gpu, act, on_cpu, limits)


def allocator_limit(gpu: GpuSpec, budget: int | None) -> int:
    """Bytes torch's caching allocator may use on `gpu`: the card less what the driver and the CUDA context
    hold, or the user's --max-memory budget when that is smaller (the run enforces it as an allocator cap)."""
    usable = max(gpu.capacity_bytes - DRIVER_RESERVED - CUDA_CONTEXT, 0)
    return min(usable, budget) if budget is not None else usable


def choose_prefill_chunk(sizing: Mapping[str, Any], settings: Settings, gpus: Sequence[GpuSpec]) -> int:
    """The largest prefill chunk (≤ 8192, ≤ context) whose predicted peak fits; the largest candidate
    when none does. Bigger chunks prefill faster; smaller ones bound the activation peak."""
    return _choose(sizing, settings, gpus)


def prefill_state(sizing: Mapping[str, Any]) -> str | None:
    """Why a chunked prefill of this model is not exact (doctor.runtime.state, asked in the sizing child),
    or None: then each prompt is prefilled in one forward, and that is what is sized."""
    why = (sizing.get("trace") or {}).get("prefill_state")
    return str(why) if why else None


def _choose(sizing: Mapping[str, Any], settings: Settings, gpus: Sequence[GpuSpec]) -> int:
    if prefill_state(sizing):
        return settings.context  # one forward per prompt: the only exact prefill of this model
    candidates = [c for c in CHUNK_CANDIDATES if c < settings.context]
    if settings.context <= CHUNK_CANDIDATES[0]:
        candidates = [settings.context, *candidates]
    for chunk in candidates:
        if _breakdown(sizing, settings, gpus, chunk).fits:
            return chunk
    return candidates[0]  # nothing fits: report at the fastest chunk; the verdict says why


def fits(sizing: Mapping[str, Any], settings: Settings, gpus: Sequence[GpuSpec]) -> bool:
    """Whether this run fits these GPUs (at the requested or the best default chunk); cheap."""
    return _fits_at(sizing, settings, gpus, settings.context)


def _fits_at(sizing: Mapping[str, Any], settings: Settings, gpus: Sequence[GpuSpec], context: int) -> bool:
    trial = Settings(**{**asdict(settings), "context": context})
    chunk = settings.prefill_chunk or _choose(sizing, trial, gpus)
    return _breakdown(sizing, trial, gpus, chunk).fits


def max_context_tokens(sizing: Mapping[str, Any], settings: Settings, gpus: Sequence[GpuSpec]) -> int:
    """Longest context that fits (binary search; memory grows monotonically with context), capped at the
    model's max_position_embeddings. 0 when even one token does not fit."""
    limit = int(sizing["text_config"].get("max_position_embeddings") or 1 << 24)
    if not gpus or not _fits_at(sizing, settings, gpus, 1):
        return 0
    if _fits_at(sizing, settings, gpus, limit):
        return limit
    lo, hi = 1, limit
    while hi - lo > max(1, lo // 512):  # 0.2% resolution is plenty for a memory verdict
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _fits_at(sizing, settings, gpus, mid) else (lo, mid)
    return lo


def prefill_seconds(
    sizing: Mapping[str, Any], s: Settings, gpus: Sequence[GpuSpec], chunk: int
) -> float | None:
    """The time plan of one prefill from the first token, at rates assumed for these GPUs (the plan replaces
    it with rates the live probe measured on the card: doctor.plan.estimate_at_plan)."""
    from doctor.memory.timing import prefill_time_model

    model = prefill_time_model(sizing, s.attn, s.quant, gpus, None)
    return round(model.seconds(0, s.context, chunk), 1) if model else None


def _kv_layout_summary(sizing: Mapping[str, Any], context: int, chunk: int) -> str:
    layers = _layer_kinds(sizing)
    full = sum(1 for x in layers if x.kind == "full")
    windowed = [x for x in layers if x.kind == "window"]
    parts = [f"{full} full"]
    if windowed:
        parts.append(f"{len(windowed)} window/chunked (window {windowed[0].window}, capped)")
    none = sum(1 for x in layers if x.kind == "none")
    if none:
        parts.append(f"{none} shared (no own cache)")
    recurrent = sum(1 for x in layers if x.kind == "recurrent")
    if recurrent:
        parts.append(f"{recurrent} recurrent (fixed-size state)")
    return ", ".join(parts) + f" — {(sizing.get('kv_layout') or {}).get('source', '')}"


def _version_tuple(text: str | None) -> tuple[int, ...]:
    out = []
    for piece in (text or "").split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def _notes(sizing: Mapping[str, Any], s: Settings, fused: list[str]) -> list[str]:
    notes: list[str] = []
    version = (sizing.get("versions") or {}).get("transformers")
    vt = _version_tuple(version)
    if sizing.get("method") == "analytic":
        notes.append(
            f"Analytic estimate (lower confidence): {sizing.get('fallback_reason', 'transformers unavailable')}."
        )
    if fused and s.quant != "none":
        notes.append(
            f"bitsandbytes quantizes only nn.Linear: {', '.join(fused)} are fused 3-D expert parameters and "
            f"stay {sizing.get('dtype')} when quantizing on the fly. Use a pre-quantized checkpoint with "
            "un-fused experts (e.g. bnb-community/Llama-4-Scout-17B-16E-Instruct-bnb-4bit), an FP8 "
            "checkpoint, or enough GPUs for the 16-bit weights."
        )
    if s.quant != "none" and fused and vt and vt < (5,):
        notes.append(
            f"transformers {version} < 5: device_map='auto' sizes the non-Linear experts at 4-bit "
            "(undercount ×4) and fails with 'OOM while loading checkpoint shards'."
        )
    if s.prequantized and (4, 51, 0) <= vt <= (4, 51, 1) and (sizing.get("moe") or {}).get("num_experts"):
        notes.append(
            f"transformers {version} ignores pre-quantized bnb expert weights of Llama 4 (fixed in 4.51.2): "
            "experts load random in bf16. Upgrade transformers."
        )
    if s.kv_dtype != s.dtype and dtype_bytes(s.kv_dtype) < dtype_bytes(s.dtype):
        notes.append(
            "transformers' DynamicCache stores K/V in the model dtype; an 8-bit KV cache needs vLLM or "
            "QuantizedCache (quanto/HQQ). The KV figure assumes the requested --kv-dtype."
        )
    if (sizing.get("quantizer") or {}).get("mode", "").startswith("emulated"):
        notes.append(
            "bitsandbytes is not importable here: replaced Linears were counted with transformers' own "
            "predicate instead of running the quantizer."
        )
    if sizing.get("config_fields_dropped"):
        notes.append(
            f"config fields this transformers rejects were left at defaults: "
            f"{', '.join(sizing['config_fields_dropped'])} (no effect on memory)."
        )
    if not (sizing.get("kv_layout") or {}).get("layers"):
        notes.append(
            "KV: every layer counted at full length (this transformers' DynamicCache does not cap "
            "sliding/chunked layers, or the layout is unknown)."
        )
    if s.attn == "flex_attention" and sizing.get("text_config"):
        shapes = Shapes.from_config(sizing["text_config"], sizing.get("moe") or {})
        if flex_index_overflow(shapes, s.context):
            notes.append(
                f"flex_attention with {shapes.heads} query heads (not a power of two): transformers repeats "
                f"K/V to every head, and past 2^31 elements per layer (~{2**31 // (shapes.heads * shapes.head_dim):,} "
                "tokens) the compiled flex kernel fails to build (measured). Use --attn sdpa with a "
                "4k prefill chunk at this length."
            )
        elif flex_repeats_kv(shapes):
            notes.append(
                f"flex_attention with {shapes.heads} query heads repeats K/V to every head "
                "(transformers' flex integration): counted in the prefill peak."
            )
    notes.extend(trace_notes(sizing, s.attn))
    notes.append(
        "Prefill peak assumes logits_to_keep=1 (what niah passes); full-prompt logits cost "
        "chunk × vocab × 6 bytes more."
    )
    return notes


def compute_estimate(sizing: Mapping[str, Any], settings: Settings, gpus: Sequence[GpuSpec]) -> Estimate:
    chunk = min(settings.prefill_chunk or _choose(sizing, settings, gpus), settings.context)
    br = _breakdown(sizing, settings, gpus, chunk)
    fused = [g["module"] for g in sizing.get("unquantized_modules") or [] if g.get("fused_3d")]
    per_gpu = [
        {
            "index": g.index,
            "name": g.name,
            "capacity_bytes": g.capacity_bytes,
            "needed_bytes": br.per_gpu_needed[i],
            "weights_bytes": br.weights_per_gpu[i],
            "kv_bytes": br.kv_per_gpu[i],
            "activation_peak_bytes": br.act_per_gpu[i],
            "predicted_peak_bytes": br.weights_per_gpu[i] + br.kv_per_gpu[i] + br.act_per_gpu[i],
            "limit_bytes": br.limit_per_gpu[i],
        }
        for i, g in enumerate(gpus)
    ]
    overhead = OVERHEAD_PER_GPU * max(len(gpus), 1)
    method = str(sizing.get("method", "meta-skeleton"))
    confidence = "high" if method == "meta-skeleton" and sizing.get("text_config") else "low"
    if method == "meta-skeleton" and (sizing.get("quantizer") or {}).get("mode", "").startswith("emulated"):
        confidence = "medium"
    if method == "meta-skeleton" and activation_method(sizing) == "traced":
        method = "traced"  # weights from the skeleton, KV and activation peak from the traced forward
        if unmodelled_ops(sizing) and confidence == "high":
            confidence = "medium"  # an op the trace cannot see inside was charged a margin
        if any(k.get("fused") for k in kernel_functions(sizing)) and confidence == "high":
            confidence = "medium"  # a recurrent kernel package, traced by its outputs only
    elif method == "meta-skeleton" and confidence == "high":
        confidence = "medium"  # activation peak from the analytic fallback (widened)
    return Estimate(
        weights_bytes=int(sizing["weights_bytes"]),
        quantized_params=int(sizing.get("quantized_params", 0)),
        unquantized_params=int(sizing.get("unquantized_params", 0)),
        unquantized_bytes=int(sizing.get("unquantized_bytes", 0)),
        unquantized_modules=[g["module"] for g in sizing.get("unquantized_modules") or []],
        kv_bytes=br.kv_total,
        activation_peak_bytes=br.act_peak if gpus else None,
        overhead_bytes=overhead,
        total_bytes=int(sizing["weights_bytes"]) + br.kv_total + br.act_peak + overhead,
        # With no GPU there is nothing to fit into: say what is missing instead of printing 0 as a figure.
        per_gpu=per_gpu,
        fits=br.fits if gpus else None,
        max_context_tokens=max_context_tokens(sizing, settings, gpus) if gpus else None,
        notes=_notes(sizing, settings, fused)
        + recurrent_notes(sizing, _layer_kinds(sizing), settings.context, chunk),
        confidence=confidence,
        method=method,
        transformers_version=(sizing.get("versions") or {}).get("transformers"),
        prefill_chunk=chunk,
        attn=settings.attn,
        kv_layout=_kv_layout_summary(sizing, settings.context, chunk),
        prefill_seconds_estimate=prefill_seconds(sizing, settings, gpus, chunk),
        context=settings.context,
        missing=None if gpus else "GPU capacity: give --gpus (e.g. 1xH100-80GB)",
        quant=settings.quant,
        prequantized=settings.prequantized,
        dtype=settings.dtype,
        model_class=str(sizing.get("model_class")),
        fused_experts_unquantized=fused if settings.quant != "none" else [],
        unquantized_detail=list(sizing.get("unquantized_modules") or []),
        weights_on_cpu_bytes=br.on_cpu,
        versions=dict(sizing.get("versions") or {}),
        recurrent_path=kernel_path(sizing),
    )


# ---------------------------------------------------------------- from a RunSpec + ModelResolution


def settings_for(
    target: RunSpec, config: Mapping[str, Any], quantization_config: Mapping[str, Any] | None
) -> Settings:
    """Resolve the target's "auto"/None fields against the config (what from_pretrained would do)."""
    qc = dict(quantization_config or config.get("quantization_config") or {})
    is_bnb = qc.get("quant_method") == "bitsandbytes"
    prequantized = target.prequantized if target.prequantized is not None else is_bnb
    quant = target.quant
    if is_bnb and prequantized:
        quant = "bnb-8bit" if qc.get("load_in_8bit") else "bnb-4bit"
    text = text_config_of(config)
    dtype = target.dtype
    if dtype == "auto":
        dtype = str(config.get("torch_dtype") or config.get("dtype") or text.get("torch_dtype") or "bfloat16")
    dq = bool(qc.get("bnb_4bit_use_double_quant", target.double_quant)) if is_bnb else target.double_quant
    qtype = str(qc.get("bnb_4bit_quant_type", target.bnb_4bit_type)) if is_bnb else target.bnb_4bit_type
    context = target.context or int(text.get("max_position_embeddings") or 8192)
    return Settings(
        context=context,
        quant=quant,
        prequantized=bool(prequantized and quant != "none"),
        double_quant=dq,
        bnb_4bit_type=qtype,
        dtype=dtype.replace("torch.", ""),
        kv_dtype=(target.kv_dtype or dtype).replace("torch.", ""),
        attn=AUTO_ATTN if target.attn == "auto" else target.attn,
        experts=target.experts,
        prefill_chunk=target.prefill_chunk,
        max_memory=gpu_budgets(target.max_memory),
    )


def gpu_budgets(max_memory: str | None) -> tuple[tuple[int, int], ...]:
    """The GPU entries of --max-memory ("0=70GiB,1=70GiB,cpu=200GiB") in bytes, by accelerate's rules."""
    if not max_memory:
        return ()
    from run_plan.sizes import parse_max_memory, size_to_bytes

    return tuple(
        sorted(
            (key, size_to_bytes(value))
            for key, value in parse_max_memory(max_memory).items()
            if isinstance(key, int)
        )
    )


def estimate_for(
    target: RunSpec, resolution: ModelResolution, gpus: Sequence[GpuSpec], sizing: Mapping[str, Any]
) -> Estimate:
    """Full estimate for a RunSpec and a ModelResolution on these GPUs (benchmarks), from a
    weight inventory sized once (doctor.probes.memory.size_weights)."""
    settings = settings_for(target, dict(resolution.config), resolution.quantization_config)
    return compute_estimate(sizing, settings, gpus)
