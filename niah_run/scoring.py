"""Scoring of the generated tokens only: typed, boundary-aware matching and one failure class per miss.

Rules (docs/niah.md, after niah-anchors §d): normalise (NFKC, control characters → newline, drop
<think>…</think>); numbers match with digit boundaries after removing thousands separators; UUIDs
case-insensitively with hex/hyphen boundaries; words case-insensitively on word boundaries.
`correct` is strict: every gold value found and no distractor value found.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

FAILURE_CLASSES: tuple[str, ...] = (
    "oom", "skipped_too_long", "empty", "truncated", "echo", "refusal", "distractor", "hallucinated", "other",
)
ECHO_WORDS = 6  # an output with this many consecutive words copied from the prompt is an echo
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SEPARATOR = re.compile(r"(?<=\d)[,'\u00a0\u202f_](?=\d{3}(?!\d))")
_REFUSAL = re.compile(
    r"not mentioned|no information|cannot find|can't find|could not find|couldn't find|does not contain|"
    r"doesn't contain|not provided|not specified|i'm sorry|i am sorry|unable to|there is no|does not mention|"
    r"doesn't mention|no (?:secret |special )?(?:passkey|code|number|word)|not (?:present|found|included)",
    re.IGNORECASE)
_ANY_VALUE = {
    "number": re.compile(r"(?<!\d)\d{3,}(?!\d)"),
    "uuid": re.compile(r"(?<![0-9a-f-])[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(?![0-9a-f-])",
                       re.IGNORECASE),
}
_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*", re.IGNORECASE)


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = _THINK.sub("", text)
    text = _CONTROL.sub("\n", text)
    return _SEPARATOR.sub("", text).strip()


def value_pattern(value: str, value_type: str) -> re.Pattern[str]:
    escaped = re.escape(value)
    if value_type == "number":
        return re.compile(rf"(?<!\d){escaped}(?!\d)")
    if value_type == "uuid":
        return re.compile(rf"(?<![0-9a-f-]){escaped}(?![0-9a-f-])", re.IGNORECASE)
    # words: letters/digits/hyphens around the value would make it part of a longer word
    return re.compile(rf"(?<![\w-]){escaped}(?![\w-])", re.IGNORECASE)


def count_value(text: str, value: str, value_type: str) -> int:
    return len(value_pattern(value, value_type).findall(normalize(text) if value_type == "number" else text))


def hit(text: str, value: str, value_type: str) -> bool:
    return bool(value_pattern(value, value_type).search(text))


@dataclass(frozen=True)
class Score:
    correct: bool  # strict
    lenient: bool  # every gold value found, distractors allowed
    recall: float  # share of gold values found
    failure_class: str | None  # None when correct
    found_distractors: tuple[str, ...] = ()
    hallucinated_values: tuple[str, ...] = field(default_factory=tuple)


def _echo(text: str, prompt_words: str) -> bool:
    words = [w.lower() for w in _WORD.findall(text)]
    return any(" ".join(words[i:i + ECHO_WORDS]) in prompt_words for i in range(len(words) - ECHO_WORDS + 1))


def prompt_words(prompt_text: str) -> str:
    """The prompt as lower-case words joined by single spaces (padded), for the echo check."""
    return " " + " ".join(w.lower() for w in _WORD.findall(prompt_text)) + " "


def score_output(output_text: str, *, value_type: str, gold: tuple[str, ...], distractors: tuple[str, ...],
                 prompt_text: str, stopped_at_eos: bool, control: bool = False,
                 prompt_words_cache: str | None = None) -> Score:
    """Score one generation. Failure precedence: empty, distractor, hallucinated, echo, refusal, truncated, other."""
    text = normalize(output_text)
    if not text:
        return Score(False, False, 0.0, "empty")
    found_gold = [g for g in gold if hit(text, g, value_type)]
    found_distractors = tuple(d for d in distractors if hit(text, d, value_type))
    known = set(gold) | set(distractors)
    pattern = _ANY_VALUE.get(value_type)
    strays = tuple(v for v in (pattern.findall(text) if pattern else []) if v not in known and v.lower() not in known)
    refusal = bool(_REFUSAL.search(text))
    if control:  # the right answer is "it is not there": no value of the asked type, or a refusal
        if strays and not refusal:
            return Score(False, False, 0.0, "hallucinated", (), strays)
        if pattern is None and not refusal:
            return Score(False, False, 0.0, "other")
        return Score(True, True, 1.0, None)
    recall = len(found_gold) / len(gold) if gold else 0.0
    lenient = bool(gold) and len(found_gold) == len(gold)
    if lenient and not found_distractors:
        return Score(True, True, 1.0, None)
    words = prompt_words_cache if prompt_words_cache is not None else prompt_words(prompt_text)
    if found_distractors:
        failure = "distractor"
    elif strays:
        failure = "hallucinated"
    elif _echo(text, words):
        failure = "echo"
    elif refusal:
        failure = "refusal"
    elif not stopped_at_eos:
        failure = "truncated"
    else:
        failure = "other"
    return Score(False, lenient, recall, failure, found_distractors, strays)
