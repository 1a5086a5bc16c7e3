"""How this transformers spells the forward arguments niah passes, asked of the model's own signature.

transformers 5.2x renamed `past_key_values` to `cache` (the old name still works through a deprecation
shim that warns it will be removed in 5.40); Mamba-style models took `cache_params` before that. A forward
that does not name the keyword it is given drops it into **kwargs unused and starts a cache of its own,
so the name is asked, never assumed: the same answer for niah's prefill, the doctor's probe and its trace.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

# in the order a forward is asked for them: the current name first
CACHE_KEYWORDS = ("cache", "past_key_values", "cache_params")


@dataclass(frozen=True)
class ForwardSignature:
    """How this transformers version spells the forward arguments we need (they were renamed)."""

    cache_kw: str  # "cache" (transformers >= 5.2x), "past_key_values", or Mamba's "cache_params"
    logits_kw: str | None  # "logits_to_keep", "num_logits_to_keep" (4.45-4.49) or None
    takes_cache_position: bool  # removed from the signature in recent 5.x; required for masks before


def inspect_forward(model: Any) -> ForwardSignature:
    params = inspect.signature(model.forward).parameters
    cache_kw = next((name for name in CACHE_KEYWORDS if name in params), "past_key_values")
    logits_kw = next((name for name in ("logits_to_keep", "num_logits_to_keep") if name in params), None)
    return ForwardSignature(
        cache_kw=cache_kw, logits_kw=logits_kw, takes_cache_position="cache_position" in params
    )


def forward_kwargs(sig: ForwardSignature, token_ids: Any, start: int, cache: Any) -> dict[str, Any]:
    """The keyword arguments of niah's forward over `token_ids` ([1, n]) at absolute positions start..:
    ids, positions, the cache under this forward's name, and only the last position's logits."""
    import torch

    n = token_ids.shape[-1]
    positions = torch.arange(start, start + n, device=token_ids.device)
    kwargs: dict[str, Any] = {
        "input_ids": token_ids,
        "position_ids": positions.unsqueeze(0),
        sig.cache_kw: cache,
        "use_cache": True,
    }
    if sig.takes_cache_position:
        kwargs["cache_position"] = positions
    if sig.logits_kw is not None:
        kwargs[sig.logits_kw] = 1  # the prefill never needs more than the next-token logits
    return kwargs
