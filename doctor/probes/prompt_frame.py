"""Probe "prompt-frame": what the planned prompts take besides the haystack, counted with the run's tokenizer.

`niah run` builds each prompt as template + intro + haystack + needles + question, exactly as long as the
planned length; a length that cannot hold the rest is refused when the first prompt is built, after the
model has loaded (minutes on a big model). Here the tokenizer is loaded in a child as the run loads it
(`AutoTokenizer.from_pretrained` of the model's folder, offline; the demo's and a `--gguf-file`'s from
niah's converted copy once a run made one, which is what the run loads, else from the GGUF, where the
conversion gets it) and every planned trial's frame is counted by
`run_plan.prompt_frame`, the code the sweep builds prompts with: the same count, before anything loads.

`count_in_child` runs inside the child; everything else runs in the doctor.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from doctor.model_config import ModelResolution
from doctor.probes import Probe, Unavailable, probe
from run_plan.gguf_cache import converted_tokenizer_folder
from run_plan.prompt_frame import PromptFit
from run_plan.spec import RunSpec

_MODULE = "doctor.probes.prompt_frame"
# Files AutoTokenizer reads (doctor.probes.config_load has the same list): one of them means it can load.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "spiece.model",
)


@dataclass(frozen=True)
class PromptFrameFacts:
    tokenizer_from: str  # the folder (or GGUF file) the tokenizer was loaded from, as the run loads it
    template_mode: str | None  # "chat" (the model's template) | "plain" (none: BOS + text + "Answer:")
    template_tokens: int | None  # the template's own tokens around the message
    lengths: tuple[PromptFit, ...] = ()  # each planned length: the most its trials spend besides the haystack
    shortest: int | None = None  # the shortest length whose every trial fits (asked only when one does not)
    template_error: str | None = None  # the template cannot frame a prompt exactly (the run refuses it)


PROMPT_FRAME: Probe[PromptFrameFacts] = Probe("prompt-frame")


def tokenizer_location(res: ModelResolution, target: RunSpec) -> tuple[str, str | None] | str:
    """(folder, GGUF file name or None) the run loads the tokenizer from, or why it is not on this machine."""
    if res.source == "demo" and res.gguf_file:
        return _gguf_tokenizer(Path(res.gguf_file))
    path = Path(res.path) if res.path else None
    folder = path if path is not None and path.is_dir() else path.parent if path is not None else None
    if target.gguf_file:
        gguf = Path(target.gguf_file).expanduser()
        local = Path(str(target.model)).expanduser()
        if not gguf.is_absolute() and local.is_dir():
            gguf = local / gguf
        if gguf.is_file():
            return _gguf_tokenizer(gguf)
        return f"the GGUF file {target.gguf_file} is not on this machine"
    if res.source in ("local-folder", "hf-cache") and folder is not None and folder.is_dir():
        if any((folder / name).is_file() for name in _TOKENIZER_FILES):
            return str(folder), None
        return f"no tokenizer files in {folder} yet: the run reads them when it loads the model"
    return f"the model's tokenizer is not on this machine ({res.source or res.status}): the run loads it"


def _gguf_tokenizer(gguf: Path) -> tuple[str, str | None]:
    """A GGUF's tokenizer as the run loads it: from niah's converted copy once a run made one (a second
    rather than converting the GGUF's vocabulary again), else from the GGUF, which the conversion reads."""
    converted = converted_tokenizer_folder(gguf)
    if converted is not None:
        return str(converted), None
    return str(gguf.parent), gguf.name


@probe(PROMPT_FRAME)
def prompt_frame_probe(target: RunSpec) -> PromptFrameFacts | Unavailable:
    if not target.model:
        return Unavailable("no --model given: no prompt to frame", "not-applicable")
    if target.backend != "transformers" or target.base_url:
        return Unavailable(
            "the prompts are framed with the server backend's --tokenizer at the run", "not-applicable"
        )
    if not target.lengths:
        return Unavailable("no --context/--lengths given: no prompt length to check", "not-applicable")
    if target.live is False:
        return Unavailable("live probes disabled (--no-live): the tokenizer was not loaded", "not-applicable")
    from doctor.probes.model import resolved_model
    from doctor.probes.packages import find_dist

    if find_dist("transformers") is None:
        return Unavailable("transformers is not installed: the run cannot load a tokenizer", "not-applicable")
    where = tokenizer_location(resolved_model(target.model, online=bool(target.online)), target)
    if isinstance(where, str):
        return Unavailable(where, "not-applicable")
    folder, gguf_file = where
    args = {
        "folder": folder,
        "gguf_file": gguf_file,
        "trust_remote_code": bool(target.trust_remote_code),
        "needle_kind": target.needle_kind,
        "seed": target.seed,
        "depths": list(target.depths),
        "trials": target.trials,
        "controls": target.controls,
        "lengths": sorted(set(target.lengths)),
    }
    key = repr((sorted(args.items()), _stamps(Path(folder), gguf_file)))
    with _MEMO_LOCK:
        if key in _MEMO:
            return _MEMO[key]
    facts = _count(args, float(target.probe_timeout_s))
    if not isinstance(facts, Unavailable):
        with _MEMO_LOCK:
            _MEMO[key] = facts
    return facts


# The same tokenizer files and plan give the same counts: one child per process for them.
_MEMO: dict[str, PromptFrameFacts] = {}
_MEMO_LOCK = threading.Lock()


def _stamps(folder: Path, gguf_file: str | None) -> tuple[tuple[str, int, int], ...]:
    out = []
    for name in (
        (gguf_file,) if gguf_file else (*_TOKENIZER_FILES, "special_tokens_map.json", "chat_template.jinja")
    ):
        try:
            info = (folder / name).stat()
        except OSError:
            continue
        out.append((name, info.st_mtime_ns, info.st_size))
    return tuple(out)


def _count(args: dict[str, Any], timeout_s: float) -> PromptFrameFacts | Unavailable:
    from doctor.children.child import run_in_child

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")  # the doctor never downloads here
    result = run_in_child(f"{_MODULE}:count_in_child", args, timeout_s=timeout_s, env=env)
    if not result.ok or result.data is None:
        return result.as_unavailable("counting the prompt frame with the run's tokenizer in a child process")
    data = result.data
    if data.get("tokenizer_error"):
        return Unavailable(
            f"the tokenizer does not load ({data['tokenizer_error']}): the tokenizer-generation-config-load "
            "check says why",
            "not-applicable",
        )
    where = (
        str(Path(str(args["folder"])) / args["gguf_file"]) if args.get("gguf_file") else str(args["folder"])
    )
    return PromptFrameFacts(
        tokenizer_from=where,
        template_mode=data.get("template_mode"),
        template_tokens=data.get("template_tokens"),
        lengths=tuple(PromptFit(int(n), int(t)) for n, t in data.get("lengths") or ()),
        shortest=data.get("shortest"),
        template_error=data.get("template_error"),
    )


# ---------------------------------------------------------------- child side (imports transformers)


def count_in_child(args: dict[str, Any]) -> dict[str, Any]:
    """CHILD: the tokenizer as the run loads it, then every planned length's frame (run_plan.prompt_frame)."""
    from run_plan.prompt_frame import TemplateNotSplittable, chat_frame, shortest_lengths

    try:
        import transformers

        kwargs: dict[str, Any] = {
            "trust_remote_code": bool(args.get("trust_remote_code")),
            "local_files_only": True,
        }
        if args.get("gguf_file"):
            kwargs["gguf_file"] = args["gguf_file"]
        tokenizer = transformers.AutoTokenizer.from_pretrained(args["folder"], **kwargs)
    except Exception as exc:  # noqa: BLE001 - a tokenizer that does not load is the config-load check's
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return {"tokenizer_error": f"{type(exc).__name__}: {first}"}
    try:
        frame = chat_frame(tokenizer)
        fits, shortest = shortest_lengths(
            tokenizer,
            args["lengths"],
            needle_kind=str(args["needle_kind"]),
            seed=int(args["seed"]),
            depths=[float(d) for d in args["depths"]],
            trials=int(args["trials"]),
            controls=int(args["controls"]),
        )
    except TemplateNotSplittable as refused:
        return {"template_error": f"{refused}. {refused.hint or ''}".strip()}
    return {
        "template_mode": frame.mode,
        "template_tokens": len(frame.prefix_ids) + len(frame.suffix_ids),
        "lengths": [[fit.length, fit.frame_tokens] for fit in fits],
        "shortest": shortest,
    }
