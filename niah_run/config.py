"""`niah run`'s side of the plan: its defaults, the saved run (for --resume), and the one-line echo.

The plan itself is `run_plan.spec.RunSpec`, built by `run_plan.options.build_spec` from the layers
defaults < saved config.json (with --resume) < --config TOML < flags, exactly as `doctor` builds it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from run_plan.errors import UsageError
from run_plan.options import SPEC_FIELDS, Layer, build_spec, flag_layer, load_toml
from run_plan.safe_files import read_text_file
from run_plan.spec import DEFAULT_NIAH_LENGTHS, IDENTITY_BEFORE_KEY, RunSpec

CONFIG_FILE = "config.json"
NIAH_DEFAULTS: dict[str, Any] = {"model": "demo", "lengths": DEFAULT_NIAH_LENGTHS}
# Derived or per-invocation fields that a saved run never hands on to its resumption.
_NOT_INHERITED = frozenset({"context", "sources", "live", "deep", "fetch", "scripts", "probe_timeout_s"})


def read_saved_doc(run_dir: Path) -> dict[str, Any] | None:
    """The whole config.json of an earlier run in `run_dir`, or None when there is none."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(read_text_file(path))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(
            f"cannot read {path}: {exc}", hint="Remove it or start a new --out folder."
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise UsageError(
            f"{path} is not a niah run's config", hint="Choose the --out folder of a `niah run`."
        )
    # what --resume compares and keys trials by: of the wrong type, the earlier test cannot be told apart
    # from another one, and its rows would silently count as another test's
    for key, kind in _IDENTITY_KEYS.items():
        if key in doc and doc[key] is not None and not isinstance(doc[key], kind):
            raise UsageError(
                f"{path} is damaged: {key!r} is {type(doc[key]).__name__}, not {kind.__name__}",
                hint="Restore the file from the run that wrote it, or start a new --out folder.",
            )
    return doc


_IDENTITY_KEYS: dict[str, type] = {"identity": dict, "identity_sha256": str, "plan_identity": dict}


def saved_values(doc: dict[str, Any]) -> dict[str, Any]:
    """The plan settings of a saved run, as a layer under this invocation's TOML and flags. A setting added
    since that run was saved reads as the value that run computed with, so its own command line resumes it."""
    saved = doc["config"]
    values = {k: v for k, v in saved.items() if k in SPEC_FIELDS and k not in _NOT_INHERITED}
    for name, before in IDENTITY_BEFORE_KEY.items():
        values.setdefault(name, before)
    return values


def resolve_spec(
    flags: dict[str, Any], config_path: str | None = None, saved_doc: dict[str, Any] | None = None
) -> RunSpec:
    """The RunSpec of this `niah run`. `flags` holds only options the user gave (None = not given)."""
    layers: list[Layer] = []
    if saved_doc is not None:
        layers.append(Layer("the saved run (config.json)", saved_values(saved_doc), "saved run"))
    if config_path:
        layers.append(Layer(config_path, load_toml(Path(config_path).expanduser()), "toml"))
    layers.append(flag_layer(flags))
    spec = build_spec(layers, defaults=NIAH_DEFAULTS)
    if spec.gpus:
        from doctor.memory.gpus import parse_gpus

        parse_gpus(spec.gpus)  # exit 2 with the accepted forms, before a run folder is made
    return spec


def render_config(spec: RunSpec) -> str:
    """One line for stderr (config.json holds the whole plan)."""
    lengths = ",".join(str(n) for n in spec.lengths)
    parts = [
        f"model={spec.model}",
        f"quant={spec.quant}",
        f"attn={spec.attn}",
        f"lengths={lengths}",
        f"depths={len(spec.depths)}",
        f"trials={spec.trials}",
        f"needle={spec.needle_kind}",
        f"chunk={spec.prefill_chunk or 'auto'}",
    ]
    if spec.max_memory:
        parts.append(f"max_memory={spec.max_memory}")
    if spec.backend != "transformers":
        parts.append(f"backend={spec.backend}")
    return " ".join(parts)
