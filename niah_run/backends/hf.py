"""The local transformers backend: exact token ids in, greedy token ids out.

Chunked prefill into a DynamicCache (niah_run.prefill; with the lean attention its full layers are
preallocated for the prompt), logits for the last position only, greedy decoding that stops at any EOS id,
reuse of the cached KV prefix across needle depths (cropped where every layer still holds it, else restored
from the snapshot taken where the sweep said the next prompt will diverge), and CUDA out-of-memory turned
into BackendOOM after the memory is freed.
"""

from __future__ import annotations

import gc
import re
import time
from importlib import metadata
from typing import Any

from niah_run import prefill as pf
from niah_run.backends.base import BackendOOM, Generation
from niah_run.prefill import ProgressCallback
from run_plan.errors import UsageError


def is_oom(error: BaseException) -> bool:
    import torch

    if isinstance(error, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def cuda_memory_figures() -> dict[str, Any]:
    """allocated / reserved / peak bytes per visible GPU ({} without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return {}
    figures = {}
    for index in range(torch.cuda.device_count()):
        figures[f"cuda:{index}"] = {
            "allocated_bytes": torch.cuda.memory_allocated(index),
            "reserved_bytes": torch.cuda.memory_reserved(index),
            "peak_bytes": torch.cuda.max_memory_allocated(index),
        }
    return figures


def _reset_peaks() -> None:
    import torch

    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(index)


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def eos_ids_of(model: Any, tokenizer: Any) -> tuple[int, ...]:
    """All EOS ids: generation_config's (an int or a list), else the tokenizer's."""
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    value = getattr(gen, "eos_token_id", None) if gen is not None else None
    if value is None:
        value = getattr(model.config, "eos_token_id", None)
    if value is None and tokenizer is not None:
        value = getattr(tokenizer, "eos_token_id", None)
    if isinstance(value, int):
        ids.append(value)
    elif value is not None:
        ids.extend(int(v) for v in value)
    return tuple(dict.fromkeys(ids))


class HFBackend:
    """Backend protocol implementation over a loaded transformers model (see backends/base.py)."""

    name = "transformers"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        prefill_chunk: int | None = None,
        facts: dict[str, Any] | None = None,
        preallocate_kv: bool = False,
    ) -> None:
        self.model = model.eval()
        self._tokenizer = tokenizer
        self._sig = pf.inspect_forward(model)
        self.eos_ids = eos_ids_of(model, tokenizer)
        self.prefill_chunk = prefill_chunk
        self.preallocate_kv = preallocate_kv
        self._facts = dict(facts or {})
        self._cache: Any = None
        self._cached_ids: list[int] = []  # exactly the ids whose KV `_cache` holds, in order
        self._snapshot: Any = None  # the cache at an earlier length, for the next prompt's prefix
        self._capacity = 0  # tokens the preallocated cache holds room for
        # why a chunked prefill of this model is not exact (asked of the loaded model, as the doctor asked
        # its meta copy): each prompt is then prefilled in one forward, from its first token
        self._uncarried = _uncarried_state(model)
        if self._uncarried:
            self._facts["prefill"] = f"one forward per prompt: {self._uncarried}"

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    # -- protocol ---------------------------------------------------------------------------------

    def generate(
        self,
        input_ids: list[int],
        *,
        max_new_tokens: int,
        reusable_prefix_len: int = 0,
        snapshot_at: int | None = None,
        on_prefill: ProgressCallback | None = None,
    ) -> Generation:
        if not input_ids:
            raise ValueError("empty prompt")
        if max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
        failure: str | None = None
        try:
            return self._generate(
                list(input_ids), max_new_tokens, reusable_prefix_len, snapshot_at, on_prefill
            )
        except Exception as error:
            if not is_oom(error):
                self._drop_cache()
                self._free()  # e.g. a failed torch.compile can leave tensors behind; free what we can
                raise
            failure = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        # Outside the except block the traceback (and the activations its frames hold) is gone.
        peaks = cuda_memory_figures()
        self._drop_cache()
        self._free()
        raise BackendOOM(
            f"out of memory at {len(input_ids)} input tokens ({failure})",
            memory={"at_failure": peaks, "after_free": cuda_memory_figures()},
        )

    def describe(self) -> dict[str, Any]:
        model = self.model
        config = model.config
        facts: dict[str, Any] = {
            "backend": self.name,
            "model_class": type(model).__name__,
            "dtype": str(getattr(model, "dtype", "")).replace("torch.", ""),
            "attn_implementation": getattr(config, "_attn_implementation", None),
            "commit_hash": getattr(config, "_commit_hash", None),
            "quantization_config": _jsonable_quant(getattr(config, "quantization_config", None)),
            "device_map": _jsonable_map(getattr(model, "hf_device_map", None)) or str(model.device),
            # the same map summarized as decoder layers per device: which GPU holds which layers
            "placement": layers_per_device(getattr(model, "hf_device_map", None)),
            "prefill_chunk": self.prefill_chunk,
            "eos_token_ids": list(self.eos_ids),
            "logits_kwarg": self._sig.logits_kw,
            "versions": {
                name: _version(name) for name in ("torch", "transformers", "accelerate", "bitsandbytes")
            },
        }
        try:
            facts["memory_footprint_bytes"] = int(model.get_memory_footprint())
        except Exception:  # noqa: BLE001 - a fact we can live without
            facts["memory_footprint_bytes"] = None
        facts.update(self._facts)  # loader facts: model id, source, revision, gguf file...
        return facts

    def close(self) -> None:
        self._drop_cache()
        self.model = None
        self._free()

    # -- internals --------------------------------------------------------------------------------

    def _generate(
        self,
        ids: list[int],
        max_new_tokens: int,
        reusable_prefix_len: int,
        snapshot_at: int | None,
        on_prefill: ProgressCallback | None,
    ) -> Generation:
        import torch

        if self._uncarried:
            if self.prefill_chunk is not None and len(ids) > self.prefill_chunk:
                raise UsageError(
                    f"--prefill-chunk {self.prefill_chunk} would cut this {len(ids)}-token prompt into chunks, "
                    f"and a chunked prefill of this model is not exact: {self._uncarried}",
                    hint="Drop --prefill-chunk (the doctor's plan prefills each prompt in one forward) or give "
                    "at least the longest length.",
                )
            reusable_prefix_len, snapshot_at = 0, None  # a prefix's state cannot be resumed exactly either
        needed = len(ids) + max_new_tokens
        # a preallocated cache too small for this prompt would grow by a copy of its whole K/V: start afresh
        fits = not self.preallocate_kv or self._capacity >= needed
        reused = self._reuse_prefix(ids, reusable_prefix_len) if fits else 0
        self._snapshot = None  # served its prompt (or cannot serve this one): free it before the prefill
        if reused == 0:
            self._drop_cache()  # free the old KV before the new prefill allocates its own
            self._capacity = needed if self.preallocate_kv else 0
            self._cache = pf.new_cache(self.model, needed if self.preallocate_kv else None)
            self._cached_ids = []
        cache = self._cache
        device = pf._input_device(self.model, self.model.device)
        tensor = torch.tensor([ids], device=device)
        _reset_peaks()

        _synchronize()
        t0 = time.perf_counter()
        done = pf.prefill(
            self.model,
            self._sig,
            tensor,
            cache,
            start=reused,
            chunk_size=self.prefill_chunk,
            snapshot_at=snapshot_at,
            on_chunk=on_prefill,
        )
        logits, self._snapshot = done.logits, done.snapshot
        self._cached_ids = list(ids)
        _synchronize()
        t1 = time.perf_counter()
        tokens, stopped = pf.greedy_decode(
            self.model,
            self._sig,
            cache,
            logits,
            start=len(ids),
            max_new_tokens=max_new_tokens,
            eos_ids=self.eos_ids,
            fed=self._cached_ids,
        )
        _synchronize()
        t2 = time.perf_counter()
        memory = {}
        if torch.cuda.is_available():
            memory = {
                "per_gpu_peak_bytes": {
                    f"cuda:{i}": torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())
                }
            }
        return Generation(
            output_ids=tuple(tokens),
            stopped_at_eos=stopped,
            prefill_seconds=t1 - t0,
            decode_seconds=t2 - t1,
            reused_prefix_tokens=reused,
            memory=memory,
        )

    def _reuse_prefix(self, ids: list[int], reusable_prefix_len: int) -> int:
        """Tokens of `ids` served from the cached KV (0 = full prefill). Verified, never trusted: the ids
        are compared, and the cache goes back only where that is exact (a crop every layer can take, or
        the snapshot taken at that length)."""
        from doctor.runtime.cache import holds_prefix, restore

        if reusable_prefix_len <= 0 or self._cache is None:
            return 0
        # keep at least one token to prefill: its logits start the decoding
        keep = min(reusable_prefix_len, len(ids) - 1, len(self._cached_ids))
        if keep <= 0 or self._cached_ids[:keep] != ids[:keep]:
            return 0
        if not holds_prefix(self._cache, keep):
            snapshot = self._snapshot
            if snapshot is None or not 0 < snapshot.length <= keep:
                return 0
            keep = snapshot.length
        restore(self._cache, keep, self._snapshot)
        del self._cached_ids[keep:]
        return keep

    def _drop_cache(self) -> None:
        self._cache = None
        self._cached_ids = []
        self._snapshot = None

    @staticmethod
    def _free() -> None:
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def _uncarried_state(model: Any) -> str | None:
    from doctor.runtime.state import uncarried_state

    try:
        return uncarried_state(model)
    except Exception:  # noqa: BLE001 - a model the probe cannot run is prefilled as planned
        return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _jsonable_quant(quant: Any) -> Any:
    if quant is None:
        return None
    if hasattr(quant, "to_dict"):
        return {
            k: (str(v) if not isinstance(v, (int, float, str, bool, type(None), list, dict)) else v)
            for k, v in quant.to_dict().items()
        }
    return str(quant)


def _jsonable_map(device_map: Any) -> dict[str, str] | None:
    if not device_map:
        return None
    return {str(k): str(v) for k, v in dict(device_map).items()}


_NUMBERED_BLOCK = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)(?:\.|$)")


def layers_per_device(device_map: Any) -> dict[str, dict[str, Any]] | None:
    """hf_device_map summarized per device: decoder layer indices (as ranges) and the other modules.

    With the model split over several GPUs, config.json then shows at a glance which GPU holds which
    layers, e.g. {"cuda:0": {"layers": "0-9", "layer_count": 10, "other": ["model.embed_tokens"]}}."""
    if not device_map:
        return None
    per_device: dict[str, dict[str, Any]] = {}
    for name, device in dict(device_map).items():
        key = f"cuda:{device}" if isinstance(device, int) else str(device)
        entry = per_device.setdefault(key, {"layer_indices": [], "other": []})
        match = _NUMBERED_BLOCK.search(str(name))
        if match:
            entry["layer_indices"].append(int(match.group(1)))
        else:
            entry["other"].append(str(name))
    for entry in per_device.values():
        indices = sorted(set(entry.pop("layer_indices")))
        entry["layer_count"] = len(indices)
        entry["layers"] = _ranges(indices)
    return per_device


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    parts: list[str] = []
    for index in indices:
        if parts and int(parts[-1].split("-")[-1]) == index - 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{index}"
        else:
            parts.append(str(index))
    return ",".join(parts)
