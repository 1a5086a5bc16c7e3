"""Mixture-of-experts forwards that compute only what the router chose.

transformers' `Llama4TextMoe.forward` sends every token through every expert: `hidden_states.repeat(E, 1)`
scaled by the router's sigmoid scores (zero for the experts a token was not routed to), then one `bmm` over
all experts, then a sum over experts. Llama 4 is not on transformers' `experts_implementation` interface,
so there is no library switch for it. Since the scores scale the experts' *input* and the experts have no
bias, an unrouted expert contributes exactly zero: computing only the routed (token, expert) pairs gives
the same result up to floating-point summation order, at top_k / E of the FLOPs and without the
E × tokens × (hidden + 4 × intermediate) transient.

`route_llama4_experts(model)` swaps each `Llama4TextMoe` for `RoutedLlama4TextMoe`, a subclass sharing the
same router, experts and shared expert (no weight is copied, dtype and quantization stay as loaded):
- fused experts (`Llama4TextExperts`, 3-D parameters: bf16 and on-the-fly bitsandbytes runs) go through
  transformers' own grouped-GEMM dispatcher (`integrations.moe._grouped_mm`: `torch._grouped_mm` where the
  torch build and GPU have it, its per-expert fallback otherwise), on tokens sorted by expert;
- per-expert modules (`SequentialLlama4TextExperts` of a pre-quantized checkpoint, each a 4-bit MLP) run
  each expert on its own tokens only.
Models on transformers' experts interface (Mixtral, Qwen-MoE, GPT-OSS, ...) are left to the library
(`experts_implementation="grouped_mm"`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

ROUTED_EXPERTS = "routed"


def llama4_moe_class() -> type | None:
    try:
        from transformers.models.llama4.modeling_llama4 import Llama4TextMoe
    except ImportError:
        return None
    return Llama4TextMoe


_ROUTED: type | None = None


def routed_moe_class() -> type:
    global _ROUTED
    if _ROUTED is None:
        base = llama4_moe_class()
        if base is None:
            raise ImportError("this transformers has no Llama 4")
        _ROUTED = _define_routed(base)
    return _ROUTED


def _define_routed(base: type) -> type:
    class RoutedLlama4TextMoe(base):
        """Llama4TextMoe that runs each token through the experts it was routed to, and no other."""

        def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            hidden_states = hidden_states.reshape(-1, self.hidden_dim)
            router_scores, router_logits = self.router(hidden_states)
            routed_out = routed_experts_output(
                self.experts, hidden_states, router_scores, router_logits, self.top_k
            )
            out = self.shared_expert(hidden_states)
            out.add_(routed_out)
            return out, router_logits

    return RoutedLlama4TextMoe


def routed_experts_output(
    experts: Any,
    hidden_states: torch.Tensor,
    router_scores: torch.Tensor,
    router_logits: torch.Tensor,
    top_k: int,
) -> torch.Tensor:
    """Σ over each token's chosen experts of expert(score × hidden), [tokens, hidden].

    Llama4Router returns the logits and the scores ([tokens, E]: sigmoid of the top-k logits, exactly 0
    elsewhere); its choice is `topk(logits)`, recomputed here the same way."""
    import torch

    chosen = torch.topk(router_logits, top_k, dim=-1).indices
    scores = router_scores.gather(-1, chosen)
    flat_expert = chosen.reshape(-1)
    order = torch.argsort(flat_expert, stable=True)
    token_of_row = order // top_k
    rows_in = hidden_states[token_of_row] * scores.reshape(-1, 1)[order].to(hidden_states.dtype)
    if fused_experts(experts):
        rows_out = _fused_experts(experts, rows_in, flat_expert[order])
    else:
        rows_out = _per_expert_modules(experts, rows_in, flat_expert[order])
    del rows_in
    out = torch.zeros_like(hidden_states)
    out.index_add_(0, token_of_row, rows_out.to(out.dtype))
    return out


def fused_experts(experts: Any) -> bool:
    """Llama4TextExperts' 3-D parameters (bf16 and on-the-fly loads), not per-expert modules (pre-quantized)."""
    return hasattr(experts, "gate_up_proj")


def _fused_experts(experts: Any, rows: torch.Tensor, expert_of_row: torch.Tensor) -> torch.Tensor:
    """Llama4TextExperts' MLP (gate_up [E, H, 2I], down [E, I, H]) on rows sorted by expert."""
    import torch

    grouped = _grouped_mm_dispatcher() if _GROUPED_MM_WORKS.get(str(rows.device), True) else _grouped_mm_loop
    offsets = torch.cumsum(
        _rows_per_expert(expert_of_row, experts.gate_up_proj.shape[0]), dim=0, dtype=torch.int32
    )
    try:
        gate_up = grouped(rows, experts.gate_up_proj, offsets)
    except RuntimeError:
        if grouped is _grouped_mm_loop:
            raise
        # this torch build's grouped GEMM refuses these tensors (layout, alignment, GPU): the sorted-token
        # matmuls from now on on this device; same result, one host sync per call
        _GROUPED_MM_WORKS[str(rows.device)] = False
        grouped = _grouped_mm_loop
        gate_up = grouped(rows, experts.gate_up_proj, offsets)
    gate, up = gate_up.chunk(2, dim=-1)
    hidden = up * experts.act_fn(gate)
    del gate_up, gate, up
    return grouped(hidden, experts.down_proj, offsets)


_GROUPED_MM_WORKS: dict[str, bool] = {}


def grouped_gemm_in_use(device: Any) -> bool:
    """False once this process saw the grouped GEMM refuse the experts on `device` (the plan line says so)."""
    return _GROUPED_MM_WORKS.get(str(device), True)


def _per_expert_modules(experts: Any, rows: torch.Tensor, expert_of_row: torch.Tensor) -> torch.Tensor:
    """SequentialLlama4TextExperts: one MLP module per expert, each on its own rows (one host sync)."""
    import torch

    counts = _rows_per_expert(expert_of_row, len(experts)).tolist()
    out = torch.empty_like(rows)
    start = 0
    for index, count in enumerate(counts):
        if count:
            out[start : start + count] = experts[index](rows[start : start + count])
        start += count
    return out


def _rows_per_expert(expert_of_row: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Counts of a fixed length (bincount's length depends on the values, which the meta trace lacks)."""
    import torch

    counts = torch.zeros(num_experts, dtype=torch.int64, device=expert_of_row.device)
    return counts.scatter_add_(0, expert_of_row, torch.ones_like(expert_of_row))


def _grouped_mm_dispatcher() -> Any:
    """transformers' grouped GEMM (it picks torch's kernel or its own per-expert fallback by device, dtype
    and torch version), else the same per-expert loop here."""
    try:
        from transformers.integrations.moe import _grouped_mm
    except ImportError:
        return _grouped_mm_loop
    return _grouped_mm


def _grouped_mm_loop(rows: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    import torch

    out = rows.new_empty((rows.shape[0], weight.shape[-1]))
    start = 0
    for index, end in enumerate(offsets.tolist()):
        if end > start:
            torch.mm(rows[start:end], weight[index], out=out[start:end])
        start = end
    return out


def route_llama4_experts(model: Any) -> list[str]:
    """Swap every Llama4TextMoe in `model` for the routed subclass, in place (same parameters); returns
    the swapped module names. A no-op for models without Llama 4 MoE layers."""
    base = llama4_moe_class()
    if base is None:
        return []
    routed = routed_moe_class()
    swapped = []
    for name, module in model.named_modules():
        if type(module) is base:
            module.__class__ = routed
            swapped.append(name)
    return swapped


def has_llama4_moe(model: Any) -> bool:
    base = llama4_moe_class()
    return base is not None and any(isinstance(m, base) for m in model.modules())
