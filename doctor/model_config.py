"""Find a model's config.json without loading weights: local folder, HF cache, configs embedded in
this package (offline), or the hub (only when the user allowed the network).

INTERFACE (shared by the hub/model checks, the memory estimator and `niah run`). The
implementation fills `resolve_model`; the names and fields below are the contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

ResolutionStatus = Literal[
    "found",  # config available (see `source`)
    "not-found",  # no such local folder, not cached, not embedded, and the hub says it does not exist
    "gated",  # exists on the hub but needs a token / licence acceptance
    "offline-not-cached",  # offline (default) and nowhere local: cannot tell whether it exists
    "invalid",  # found, but config.json is missing, truncated, not JSON, or has no model_type
]
ConfigSource = Literal["local-folder", "hf-cache", "embedded", "hub", "demo"]

DEMO_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what `--model demo` means


@dataclass(frozen=True)
class ModelResolution:
    requested: str  # exactly what the user typed
    status: ResolutionStatus
    message: str  # one line a human can read: why this status
    resolved_id: str | None = None  # hub id when known (e.g. "demo" -> DEMO_MODEL_ID)
    source: ConfigSource | None = None
    path: str | None = None  # local folder or cached config.json path
    config: Mapping[str, Any] = field(default_factory=dict)  # raw config.json (empty unless found)
    model_type: str | None = None
    architectures: tuple[str, ...] = ()
    config_transformers_version: str | None = None  # the "transformers_version" the config was saved with
    quantization_config: Mapping[str, Any] | None = None  # present => checkpoint is pre-quantized
    has_remote_code: bool = False  # config has auto_map: needs trust_remote_code
    weight_files: tuple[str, ...] = ()  # file names seen locally: *.safetensors, *.bin, *.gguf
    gguf_file: str | None = None  # for GGUF checkpoints (the demo model)
    embedded_source: str | None = None  # citation for embedded configs

    @property
    def found(self) -> bool:
        return self.status == "found"


def resolve_model(spec: str, *, online: bool = False, revision: str | None = None) -> ModelResolution:
    """Resolve `spec` (hub id, local folder, or 'demo'). Never raises for a bad model; returns a status."""
    raise NotImplementedError  # filled in by the model-resolution work
