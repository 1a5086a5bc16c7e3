"""The backend contract the sweep drives. INTERFACE shared by the sweep, the local transformers
backend and the server backend: keep these names.

The sweep builds prompts as token ids in the model's own tokenizer; a backend only feeds ids
and returns generated ids. It never decodes and re-encodes the prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class BackendOOM(Exception):
    """The trial ran out of accelerator memory. The backend has already freed what it could."""

    def __init__(self, message: str, memory: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.memory = memory or {}  # e.g. {"allocated_bytes":..., "reserved_bytes":..., "peak_bytes":...}


@dataclass(frozen=True)
class Generation:
    output_ids: tuple[int, ...]  # generated tokens only (never the prompt)
    stopped_at_eos: bool
    prefill_seconds: float
    decode_seconds: float
    reused_prefix_tokens: int = 0  # tokens whose KV came from a cached prefix
    memory: dict[str, Any] = field(default_factory=dict)  # per-GPU peaks etc., when measured


class Backend(Protocol):
    name: str

    @property
    def tokenizer(self) -> Any:
        """The model's own tokenizer (transformers PreTrainedTokenizerBase)."""

    def describe(self) -> dict[str, Any]:
        """Facts for config.json / results: model id, revision, dtype, quant, device map, attention, ..."""

    def generate(
        self,
        input_ids: list[int],
        *,
        max_new_tokens: int,
        reusable_prefix_len: int = 0,
        snapshot_at: int | None = None,
        on_prefill: Callable[[int, int], None] | None = None,
    ) -> Generation:
        """Greedy-decode after `input_ids`. `reusable_prefix_len` tokens at the start are identical to
        the previous call's and may be served from a cached KV prefix (must give the same tokens).
        `snapshot_at`: the next prompt will share this many tokens with this one, so a backend that keeps
        state per position may save it there. `on_prefill(done, total)`: prefill progress in tokens.
        Backends that cannot use a hint ignore it. Raises BackendOOM on out-of-memory (after freeing
        memory)."""

    def close(self) -> None:
        """Free the model and accelerator memory."""


def max_positions(backend: Any) -> int | None:
    """The model's position limit, from what the backend says or, for a local model, its config."""
    value = backend.describe().get("max_position_embeddings")
    if value is None:
        config = getattr(getattr(backend, "model", None), "config", None)  # HFBackend keeps the model
        value = getattr(config, "max_position_embeddings", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
