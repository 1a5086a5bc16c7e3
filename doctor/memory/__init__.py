"""Memory estimator: weights as transformers + bitsandbytes really store them, KV, prefill peak,
placement per GPU and the longest context that fits. Light to import: torch/transformers are imported
only in the child process that builds the meta-device skeleton (doctor.memory.skeleton)."""

from doctor.memory.estimate import (
    Estimate,
    Settings,
    choose_prefill_chunk,
    compute_estimate,
    embedded_config,
    estimate_for,
    max_context_tokens,
    settings_for,
    sizing_args,
)

__all__ = [
    "Estimate",
    "Settings",
    "choose_prefill_chunk",
    "compute_estimate",
    "embedded_config",
    "estimate_for",
    "max_context_tokens",
    "settings_for",
    "sizing_args",
]
