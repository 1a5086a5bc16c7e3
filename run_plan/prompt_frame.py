"""The trials a plan asks for, and what each one's prompt holds besides the haystack.

A prompt is template prefix + intro + haystack slice (with the needle sentences spliced in) + outro and
question + template suffix (niah_run/prompt.py builds it). Everything but the haystack is fixed by the
tokenizer, the chat template and the trial's needles, which are drawn from the trial's seed
(run_plan/needle_draws.py). `niah run` builds every prompt with these functions, and the doctor calls
`shortest_lengths` with the run's tokenizer (in a child: doctor/probes/prompt_frame.py), so a length
too short for its prompt fails before the model loads, with the same count the sweep would meet.

The tokenizer is passed in (any `transformers` tokenizer); nothing here imports a library.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from run_plan.errors import UsageError
from run_plan.needle_draws import DRAWS, hidden_needles

INTRO = "Read the document below and answer the question that follows it.\n\n<document>\n"
OUTRO = "\n</document>\n\n"
PLAIN_ANSWER_CUE = "\n\nAnswer:"
# Letters only (tokenizes the same alone and after the template's role header in BPE tokenizers);
# mixed case so a template that changes the message's case cannot go unnoticed.
SENTINEL = "NiahSentinelQzXj"
# The fewest haystack tokens a prompt holds: the needle needs a haystack to hide in.
MIN_HAYSTACK_TOKENS = 1


class TemplateNotSplittable(UsageError):
    """The chat template does not wrap the user message verbatim, so exact ids cannot be framed."""


class PromptTooShort(UsageError):
    """The requested length cannot hold the template, needle and question."""


# -- the trials --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialSpec:
    length: int
    depth: float | None  # None for a no-needle control
    trial: int
    control: bool

    @property
    def cell(self) -> dict[str, Any]:
        return {
            "context_tokens": self.length,
            "depth_percent": self.depth,
            "trial": self.trial,
            "control": self.control,
        }


def stable_int(*parts: object) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:16], 16)


def trials_at(length: int, depths: Iterable[float], trials: int, controls: int) -> list[TrialSpec]:
    """The trials of one length, in the order they run: each trial's depths ascending, then the controls
    (consecutive prompts share their prefix up to the needle)."""
    specs = []
    for trial in range(trials):
        specs += [TrialSpec(length, depth, trial, False) for depth in sorted(depths)]
    return specs + [TrialSpec(length, None, index, True) for index in range(controls)]


def trial_seed(plan_seed: int, trial: TrialSpec) -> int:
    """The seed a trial's needle values (and the other needles' places) are drawn from."""
    return stable_int(plan_seed, trial.length, trial.depth, trial.trial, trial.control)


# -- the frame ---------------------------------------------------------------------------------------


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class ChatFrame:
    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]
    mode: str  # "chat" (the model's template) | "plain" (no template: BOS + text + "Answer:")
    template_sha256: str


def _as_ids(result: Any) -> list[int]:
    if hasattr(result, "keys") and "input_ids" in result:
        result = result["input_ids"]
    ids = list(result)
    if ids and isinstance(ids[0], (list, tuple)):  # a batch of one
        ids = list(ids[0])
    return [int(i) for i in ids]


def chat_frame(tokenizer: Any) -> ChatFrame:
    """Template prefix/suffix ids around the user message, verified against the template itself."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        bos = getattr(tokenizer, "bos_token_id", None)
        probe = list(tokenizer("x", add_special_tokens=True)["input_ids"])
        prefix = (bos,) if bos is not None and probe[:1] == [bos] else ()
        suffix = tuple(encode(tokenizer, PLAIN_ANSWER_CUE))
        digest = hashlib.sha256(f"plain:{prefix}:{suffix}".encode()).hexdigest()
        return ChatFrame(prefix, suffix, "plain", digest)
    messages = [{"role": "user", "content": SENTINEL}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(rendered, str) or rendered.count(SENTINEL) != 1:
        raise TemplateNotSplittable(
            "the chat template does not contain the user message exactly once, so the prompt cannot be "
            "framed exactly",
            hint="Report the model; a template that rewrites the user message is not supported.",
        )
    prefix_text, suffix_text = rendered.split(SENTINEL)
    prefix_ids, suffix_ids = encode(tokenizer, prefix_text), encode(tokenizer, suffix_text)
    reference = _as_ids(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True))
    if prefix_ids + encode(tokenizer, SENTINEL) + suffix_ids != reference:
        raise TemplateNotSplittable(
            "the chat template's token ids are not template-prefix + message + template-suffix for this "
            "tokenizer (the message merges with the template text)",
            hint="Report the model; exact framing needs a template whose message tokens stand alone.",
        )
    digest = hashlib.sha256(
        f"{template}\x00{prefix_ids}\x00{suffix_ids}".encode()
    ).hexdigest()  # the id lists as Python writes them: the digest every saved run's identity holds
    return ChatFrame(tuple(prefix_ids), tuple(suffix_ids), "chat", digest)


def needle_ids(tokenizer: Any, sentence: str) -> list[int]:
    # Leading space: the needle sits after a sentence's final punctuation, like any other sentence.
    return encode(tokenizer, " " + sentence)


def outro_ids(tokenizer: Any, question: str) -> list[int]:
    return encode(tokenizer, OUTRO + question)


def frame_tokens(
    frame: ChatFrame, intro: Sequence[int], needles: Sequence[Sequence[int]], outro: Sequence[int]
) -> int:
    """Everything a prompt holds but the haystack: template, intro, needles, outro and question."""
    return len(frame.prefix_ids) + len(intro) + sum(map(len, needles)) + len(outro) + len(frame.suffix_ids)


def too_short(length: int, fixed: int) -> PromptTooShort | None:
    """The refusal for a prompt of `length` tokens whose frame takes `fixed`, or None when it fits."""
    if length - fixed >= MIN_HAYSTACK_TOKENS:
        return None
    return PromptTooShort(
        f"{length} tokens cannot hold the prompt frame, needle and question ({fixed} tokens)",
        hint=f"Use lengths above {fixed}.",
    )


# -- the shortest length a plan's prompts fit --------------------------------------------------------


@dataclass(frozen=True)
class PromptFit:
    """What the prompts of one planned length take besides the haystack, at their most."""

    length: int
    frame_tokens: int  # the largest over the length's trials (their needles are drawn per trial)

    @property
    def fits(self) -> bool:
        return self.length - self.frame_tokens >= MIN_HAYSTACK_TOKENS


def most_frame_tokens(
    tokenizer: Any,
    frame: ChatFrame,
    length: int,
    *,
    needle_kind: str,
    seed: int,
    depths: Iterable[float],
    trials: int,
    controls: int,
) -> int:
    """The most tokens any trial of `length` spends besides the haystack: each trial's needles drawn from
    its seed as the sweep draws them (its first draw: a draw a user haystack happens to hold is redrawn
    at the run)."""
    intro = encode(tokenizer, INTRO)
    most = 0
    for trial in trials_at(length, depths, trials, controls):
        drawn = DRAWS[needle_kind](random.Random(trial_seed(seed, trial)))
        needles = [needle_ids(tokenizer, n.text) for n in hidden_needles(drawn, control=trial.control)]
        most = max(most, frame_tokens(frame, intro, needles, outro_ids(tokenizer, drawn.question)))
    return most


# Beyond the planned lengths' largest frame, how far the search for a length that holds its own trials
# goes: each length draws its own needles, a few tokens more or less than another's.
_SEARCH_TOKENS = 4096


def shortest_lengths(
    tokenizer: Any,
    lengths: Iterable[int],
    *,
    needle_kind: str,
    seed: int,
    depths: Iterable[float],
    trials: int,
    controls: int,
) -> tuple[list[PromptFit], int | None]:
    """Each planned length's fit, and the shortest length whose every trial holds its prompt (None: none
    found within the search) — computed only when some planned length does not fit, else None."""
    frame = chat_frame(tokenizer)
    depths = tuple(depths)

    def most(length: int) -> int:
        return most_frame_tokens(
            tokenizer,
            frame,
            length,
            needle_kind=needle_kind,
            seed=seed,
            depths=depths,
            trials=trials,
            controls=controls,
        )

    fits = [PromptFit(n, most(n)) for n in sorted(set(lengths))]
    if all(fit.fits for fit in fits):
        return fits, None
    # no prompt is shorter than its template and intro: the search starts there, so it finds the shortest
    start = (
        len(frame.prefix_ids) + len(encode(tokenizer, INTRO)) + len(frame.suffix_ids) + MIN_HAYSTACK_TOKENS
    )
    for length in range(start, max(fit.frame_tokens for fit in fits) + _SEARCH_TOKENS):
        if PromptFit(length, most(length)).fits:
            return fits, length
    return fits, None
