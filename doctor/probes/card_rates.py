"""The card's own rates for the prefill time plan, measured in the live child (about 0.3 s on an H100).

The kernels, each timed with CUDA events after a warm-up, the best of a few repeats:
- `matmul`: a 8192 × 8192 × 8192 bf16 GEMM (the projections and experts);
- `lean`: the lean attention as it runs on this GPU (doctor.runtime.attention: cuDNN for the keys before the
  chunk where its self-checks pass, flash for the chunk's own), 4096 queries × 65536 keys, 32 query / 8
  key-value heads, head_dim 128, bottom-right causal (useful FLOPs of the visible pairs); `flash`: the
  flash kernel alone at the same shape;
- `masked`: what transformers' sdpa does for a 1024-token prefill chunk under a 65536-token cache: K and V
  repeated to every head and a boolean chunk × keys mask, on whichever kernel sdpa then picks (FLOPs of
  the whole rectangle, as it computes them);
- `copy`: a 1 GiB device-to-device copy (bytes read + written per second).

`rates_child` runs ONLY in the live child (imports torch); the `rates-live` probe that asks for it runs
in the doctor and shares the live child with the other live probes (doctor.probes.live_batch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from doctor.probes import Probe, Unavailable, probe
from doctor.probes.live_batch import LIVE_BATCH, LiveRequest, live_gate, not_installed
from run_plan.spec import RunSpec

# The measured rates by kernel ("matmul", "lean", "flash", "masked", "copy": FLOP/s or bytes/s), the
# device's name and the shape they were timed at (doctor.memory.timing reads them).
RATES_LIVE: Probe[dict[str, Any]] = Probe("rates-live")

# a prefill chunk against a long cache, the shape that dominates a long prefill
QUERIES, KEYS, HEADS, KV_HEADS, HEAD_DIM = 4096, 65536, 32, 8, 128
MASKED_QUERIES = 1024
GEMM_N = 8192
COPY_BYTES = 1 << 30


def _best_seconds(work: Callable[[], Any], repeats: int = 5) -> float:
    from doctor.runtime.attention import best_cuda_seconds

    return best_cuda_seconds(work, repeats=repeats)  # on the current device (rates_child sets it)


def _visible_pairs(queries: int, keys: int) -> int:
    """Pairs a bottom-right causal block computes: row r sees keys up to r + keys - queries."""
    offset = keys - queries
    return queries * offset + queries * (queries + 1) // 2


def _matmul_rate(torch: Any, device: Any) -> float:
    a = torch.randn(GEMM_N, GEMM_N, device=device, dtype=torch.bfloat16)
    b = torch.randn(GEMM_N, GEMM_N, device=device, dtype=torch.bfloat16)
    return 2 * GEMM_N**3 / _best_seconds(lambda: a @ b)


def _attention_rates(torch: Any, device: Any) -> dict[str, float]:
    """Useful FLOP/s of the lean attention as it runs here (doctor.runtime.attention, its kernels checked
    first), of the flash kernel alone, and of transformers' masked sdpa, at the probe's shape."""
    from doctor.runtime import attention

    kernels = attention.prepare_kernels(device, torch.bfloat16)
    q = torch.randn(1, HEADS, QUERIES, HEAD_DIM, device=device, dtype=torch.bfloat16)
    k = torch.randn(1, KV_HEADS, KEYS, HEAD_DIM, device=device, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    useful = 4 * HEADS * HEAD_DIM * _visible_pairs(QUERIES, KEYS)
    # a full layer's chunk against its cache, as the lean attention computes it (the split where it applies)
    lean = useful / _best_seconds(lambda: attention.attend_block(q, k, v, 0.088, causal=True, unbounded=True))
    flash = useful / _best_seconds(lambda: attention._flash_block(q, k, v, 0.088, True))
    # transformers' masked path runs the sdpa plan's chunk (1024 at long contexts): its kernel's rate at
    # that block, not at the lean path's longer one
    rows = MASKED_QUERIES
    qm = q[:, :, :rows]
    mask = torch.ones(rows, KEYS, dtype=torch.bool, device=device).tril(KEYS - rows)[None, None]
    groups = HEADS // KV_HEADS
    # repeated outside the timing: the time plan charges the copy at the copy bandwidth
    kr = k[:, :, None].expand(1, KV_HEADS, groups, KEYS, HEAD_DIM).reshape(1, HEADS, KEYS, HEAD_DIM)
    vr = v[:, :, None].expand(1, KV_HEADS, groups, KEYS, HEAD_DIM).reshape(1, HEADS, KEYS, HEAD_DIM)

    def masked() -> Any:
        return torch.nn.functional.scaled_dot_product_attention(qm, kr, vr, attn_mask=mask)

    rectangle = 4 * HEADS * HEAD_DIM * rows * KEYS
    return {
        "lean": lean,
        "flash": flash,
        "masked": rectangle / _best_seconds(masked),
        "lean_kernels": kernels,  # type: ignore[dict-item]
    }


def _copy_rate(torch: Any, device: Any) -> float:
    source = torch.empty(COPY_BYTES, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    return 2 * COPY_BYTES / _best_seconds(lambda: target.copy_(source))


def rates_child(args: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"error": "CUDA is not available"}
    device = torch.device("cuda", int(args.get("device", 0)))
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device),
        "shape": [QUERIES, KEYS, HEADS, KV_HEADS, HEAD_DIM],
    }
    with torch.inference_mode(), torch.cuda.device(device):
        out["matmul"] = _matmul_rate(torch, device)
        out.update(_attention_rates(torch, device))
        out["copy"] = _copy_rate(torch, device)
    return out


def rates_request(target: RunSpec, env: dict[str, str] | None = None) -> LiveRequest | Unavailable:
    gate = live_gate(target)
    if gate is not None:
        return gate
    if not target.model or target.backend != "transformers":
        return Unavailable("no local model planned: the prefill time needs no rates", "not-applicable")
    blocked = not_installed(("torch",), env)
    if blocked is not None:
        return blocked
    return LiveRequest(
        f"{__name__}:rates_child", {"device": 0}, "timing the GPU's kernels in a child process", ("torch",)
    )


LIVE_BATCH.register(RATES_LIVE.name, rates_request)


@probe(RATES_LIVE, announce=LIVE_BATCH.announce)
def rates_live_probe(target: RunSpec) -> dict[str, Any] | Unavailable:
    """The planned GPU's bf16 GEMM, flash attention, masked sdpa and copy rates."""
    data = LIVE_BATCH.answer(RATES_LIVE.name, target, rates_request(target))
    if isinstance(data, dict) and data.get("error"):
        return Unavailable(f"rates not measured: {data['error']}", "missing")
    return data
