"""Scoring of the generated tokens only: typed, boundary-aware matching and one failure class per miss.

Rules (docs/niah.md): thousands separators inside numbers are removed first (on the raw text, so the
non-breaking and narrow no-break spaces that NFKC would turn into plain spaces are still seen as
separators), then NFKC, control characters → newline, <think>…</think> dropped. Numbers match with
digit boundaries; UUIDs case-insensitively with hex/hyphen boundaries; words case-insensitively on
word boundaries.

`correct` is strict: every gold value found, no distractor, and no other value of the asked type
(an answer that lists twenty numbers, one of them right, is not a retrieval). Control trials (no
needle) are correct only when the answer gives no value of the asked type, refusal or not.

The scorers here take plain values; each needle kind picks its own (niah_run/needles.py: KINDS): literal
kinds use `score_output`, `ordered` also needs the values in document order, `counting` reads one count.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

# Recorded in every scored row: rows scored by different rules must not be pooled silently.
# Version 2's rules: extra values break strict, separators are read before NFKC, a control's refusal does not
# excuse a value, and the ordered, counting and association kinds are scored. Version 3: a value the token
# limit cut off (the answer ends inside it, and it begins an expected value) is no value, and the miss is
# `truncated`.
SCORING_VERSION = 3
FAILURE_CLASSES: tuple[str, ...] = (
    "oom",
    "skipped_too_long",
    "empty",
    "truncated",
    "echo",
    "refusal",
    "distractor",
    "hallucinated",
    "extra_values",
    "wrong_order",
    "wrong_count",
    "other",
)
ECHO_WORDS = 6  # an output with this many consecutive words copied from the prompt is an echo
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# A grouped number: 1-3 digits, then groups of exactly three, all with the SAME separator (comma,
# apostrophe or right single quote, underscore, no-break / narrow no-break / thin / figure space,
# full-width comma). The plain space and the period are not separators: "123 456" may be two
# values and "1.234" a decimal. `\d` also matches full-width digits, so this runs before NFKC.
_GROUPED = re.compile(
    r"(?<!\d)\d{1,3}(?:([,'\u2019_\u00a0\u202f\u2009\u2007\uff0c])\d{3})(?:\1\d{3})*(?!\d|\1\d)"
)
_GROUP_SEPARATORS = ",'\u2019_\u00a0\u202f\u2009\u2007\uff0c"
_REFUSAL = re.compile(
    r"not mentioned|no information|cannot find|can't find|could not find|couldn't find|does not contain|"
    r"doesn't contain|not provided|not specified|i'm sorry|i am sorry|unable to|there is no|does not mention|"
    r"doesn't mention|no (?:secret |special )?(?:passkey|code|number|word)|not (?:present|found|included)",
    re.IGNORECASE,
)
_ANY_VALUE = {
    "number": re.compile(r"(?<!\d)\d{3,}(?!\d)"),
    "uuid": re.compile(
        r"(?<![0-9a-f-])[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(?![0-9a-f-])",
        re.IGNORECASE,
    ),
}
_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*", re.IGNORECASE)
_INTEGER = re.compile(r"(?<![\d.])\d+(?![\d.]\d)")
_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        (
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        )
    )
}
_NUMBER_WORDS.update(once=1, twice=2, thrice=3)
# "one of the …" is a phrase, not a count
_NUMBER_WORD = re.compile(r"\b(" + "|".join(_NUMBER_WORDS) + r")\b(?!\s+of\b)", re.IGNORECASE)
_NONE_COUNT = re.compile(r"\b(?:never|none|not (?:once|at all)|no times?)\b", re.IGNORECASE)


def _ungroup(match: re.Match[str]) -> str:
    return "".join(ch for ch in match.group(0) if ch not in _GROUP_SEPARATORS)


def normalize(text: str) -> str:
    # Separators first: NFKC maps U+00A0/U+202F/U+2007 to a plain space, which is not a separator.
    text = _GROUPED.sub(_ungroup, text)
    text = unicodedata.normalize("NFKC", text)
    text = _THINK.sub("", text)
    text = _CONTROL.sub("\n", text)
    return text.strip()


def value_pattern(value: str, value_type: str) -> re.Pattern[str]:
    escaped = re.escape(value)
    if value_type in ("number", "count"):
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
    lenient: bool  # every gold value found, distractors and extra values allowed
    recall: float  # share of gold values found
    failure_class: str | None  # None when correct
    found_distractors: tuple[str, ...] = ()
    hallucinated_values: tuple[str, ...] = field(
        default_factory=tuple
    )  # values of the type given INSTEAD of gold
    extra_values: tuple[str, ...] = field(default_factory=tuple)  # values of the type given BESIDE all gold


def _echo(text: str, prompt_words: str) -> bool:
    words = [w.lower() for w in _WORD.findall(text)]
    return any(
        " ".join(words[i : i + ECHO_WORDS]) in prompt_words for i in range(len(words) - ECHO_WORDS + 1)
    )


def prompt_words(prompt_text: str) -> str:
    """The prompt as lower-case words joined by single spaces (padded), for the echo check."""
    return " " + " ".join(w.lower() for w in _WORD.findall(prompt_text)) + " "


def _values_of_type(text: str, value_type: str, vocabulary: Sequence[str]) -> list[str]:
    """Every value of the asked type in the text, in order (duplicates kept)."""
    pattern = _ANY_VALUE.get(value_type)
    if pattern is not None:
        return pattern.findall(text)
    if vocabulary:  # a closed word list: any of its words counts as a value of the type
        found = [(m.start(), word) for word in vocabulary for m in value_pattern(word, "word").finditer(text)]
        return [word for _, word in sorted(found)]
    return []


def _strays(values: list[str], known: Sequence[str]) -> tuple[str, ...]:
    lowered = {k.lower() for k in known}
    out: list[str] = []
    for value in values:
        if value.lower() not in lowered and value not in out:
            out.append(value)
    return tuple(out)


# The characters a value of each type is written with: the run of them that ends the text is the value the
# generation was writing when it stopped.
_VALUE_CHARS = {"number": r"\d+", "count": r"\w+", "uuid": r"[0-9a-f-]+"}
_WORD_CHARS = r"[\w'-]+"


def cut_short(text: str, value_type: str, expected: Sequence[str], stopped_at_eos: bool) -> str | None:
    """The value the token limit cut off: where the generation did not stop at EOS and the text ends in
    the first characters of an expected value ("The passkey is 491" for 4915234), those characters; else
    None. Such a fragment is no value of the answer (not a stray, not a count)."""
    if stopped_at_eos or not expected:
        return None
    match = re.search(rf"(?:{_VALUE_CHARS.get(value_type, _WORD_CHARS)})$", text, re.IGNORECASE)
    if match is None:
        return None
    tail = match.group(0).lower()
    return tail if any(len(e) > len(tail) and e.lower().startswith(tail) for e in expected) else None


def _without_last(values: list[str], tail: str | None) -> list[str]:
    """`values` (in text order) without the one the text ends in, when that is the cut-off `tail`."""
    if tail is not None and values and values[-1].lower() == tail:
        return values[:-1]
    return values


def _miss_class(
    text: str, *, prompt_text: str, prompt_words_cache: str | None, refusal: bool, stopped_at_eos: bool
) -> str:
    words = prompt_words_cache if prompt_words_cache is not None else prompt_words(prompt_text)
    if _echo(text, words):
        return "echo"
    if refusal:
        return "refusal"
    if not stopped_at_eos:
        return "truncated"
    return "other"


def score_output(
    output_text: str,
    *,
    value_type: str,
    gold: tuple[str, ...],
    distractors: tuple[str, ...],
    prompt_text: str,
    stopped_at_eos: bool,
    control: bool = False,
    prompt_words_cache: str | None = None,
    vocabulary: Sequence[str] = (),
) -> Score:
    """Score one generation. Failure precedence: empty, distractor, hallucinated, extra_values, a gold value
    cut off by the token limit (truncated), echo, refusal, truncated, other. `vocabulary`: the closed word
    list values of a word type come from (lets the scorer see an invented or extra word value)."""
    text = normalize(output_text)
    if not text:
        return Score(False, False, 0.0, "empty")
    found_gold = [g for g in gold if hit(text, g, value_type)]
    found_distractors = tuple(d for d in distractors if hit(text, d, value_type))
    cut = cut_short(text, value_type, gold, stopped_at_eos)
    typed = _without_last(_values_of_type(text, value_type, vocabulary), cut)
    strays = _strays(typed, (*gold, *distractors))
    refusal = bool(_REFUSAL.search(text))
    if control:
        # The right answer is "it is not there". Any value of the asked type is invented, and a
        # refusal next to it does not excuse it ("I cannot find it, maybe 5555555" is a guess).
        if strays:
            return Score(False, False, 0.0, "hallucinated", (), strays)
        if value_type not in _ANY_VALUE and not vocabulary and not refusal:
            return Score(False, False, 0.0, "other")  # no way to see an invented value: demand a refusal
        return Score(True, True, 1.0, None)
    if strays:
        # A value that the prompt itself holds (a number in the user's haystack) was read, not
        # invented: it counts as a distractor. Only normalised when needed (prompts can be megabytes).
        prompt_norm = normalize(prompt_text)
        from_prompt = tuple(v for v in strays if hit(prompt_norm, v, value_type))
        found_distractors += from_prompt
        strays = tuple(v for v in strays if v not in from_prompt)
    recall = len(found_gold) / len(gold) if gold else 0.0
    lenient = bool(gold) and len(found_gold) == len(gold)
    hallucinated, extra = ((), strays) if lenient else (strays, ())
    if lenient and not found_distractors and not extra:
        return Score(True, True, 1.0, None)
    if found_distractors:
        failure = "distractor"
    elif hallucinated:
        failure = "hallucinated"
    elif extra:
        failure = "extra_values"
    elif cut is not None:
        failure = "truncated"  # it was writing the answer when the token limit stopped it
    else:
        failure = _miss_class(
            text,
            prompt_text=prompt_text,
            prompt_words_cache=prompt_words_cache,
            refusal=refusal,
            stopped_at_eos=stopped_at_eos,
        )
    return Score(False, lenient, recall, failure, found_distractors, hallucinated, extra)


def score_ordered(
    output_text: str,
    *,
    gold_in_order: tuple[str, ...],
    distractors: tuple[str, ...],
    prompt_text: str,
    stopped_at_eos: bool,
    prompt_words_cache: str | None = None,
) -> Score:
    """Several numbers to be returned in document order: strict = all of them, in that order, nothing else."""
    base = score_output(
        output_text,
        value_type="number",
        gold=gold_in_order,
        distractors=distractors,
        prompt_text=prompt_text,
        stopped_at_eos=stopped_at_eos,
        prompt_words_cache=prompt_words_cache,
    )
    if not base.correct:
        return base
    text = normalize(output_text)
    found = [value_pattern(g, "number").search(text) for g in gold_in_order]
    firsts = [
        match.start() for match in found if match is not None
    ]  # all of them: the strict score found each
    if firsts != sorted(firsts):
        return Score(False, True, 1.0, "wrong_order")
    return base


def read_count(text: str) -> tuple[int, ...]:
    """Every count the answer states, in order: digits, number words (zero … twenty), "never"/"none" as 0."""
    found = [(m.start(), int(m.group(0))) for m in _INTEGER.finditer(text)]
    found += [(m.start(), _NUMBER_WORDS[m.group(1).lower()]) for m in _NUMBER_WORD.finditer(text)]
    found += [(m.start(), 0) for m in _NONE_COUNT.finditer(text)]
    return tuple(value for _, value in sorted(found))


def _count_forms(count: int) -> tuple[str, ...]:
    """How a count may be written: its digits, and its word where it has one."""
    words = tuple(word for word, value in _NUMBER_WORDS.items() if value == count)
    return (str(count), *words)


def _is_count(text: str) -> bool:
    return text.isdigit() or text.lower() in _NUMBER_WORDS


def score_count(
    output_text: str,
    *,
    gold_count: int,
    prompt_text: str,
    stopped_at_eos: bool,
    control: bool = False,
    prompt_words_cache: str | None = None,
) -> Score:
    """How many times something occurs: strict = exactly one count stated (repeats allowed) and it is right.

    A control (nothing hidden) is right with 0, "never", "none" or a refusal that states no count."""
    text = normalize(output_text)
    if not text:
        return Score(False, False, 0.0, "empty")
    cut = None if control else cut_short(text, "count", _count_forms(gold_count), stopped_at_eos)
    counts = read_count(text)
    if (
        cut is not None and counts and _is_count(cut)
    ):  # the count it was writing ("1" of 12, "six" of sixteen)
        counts = counts[:-1]
    distinct = tuple(dict.fromkeys(counts))
    stated = tuple(str(c) for c in distinct)
    refusal = bool(_REFUSAL.search(text))
    if control:
        if not distinct or distinct == (0,):
            return (
                Score(True, True, 1.0, None) if (distinct or refusal) else Score(False, False, 0.0, "other")
            )
        return Score(False, False, 0.0, "hallucinated", (), tuple(s for s in stated if s != "0"))
    lenient = gold_count in distinct
    if lenient and len(distinct) == 1:
        return Score(True, True, 1.0, None)
    if lenient:
        return Score(
            False, True, 1.0, "extra_values", (), (), tuple(s for s in stated if s != str(gold_count))
        )
    if distinct:
        return Score(False, False, 0.0, "wrong_count", (), stated)
    if cut is not None:
        return Score(False, False, 0.0, "truncated")
    failure = _miss_class(
        text,
        prompt_text=prompt_text,
        prompt_words_cache=prompt_words_cache,
        refusal=refusal,
        stopped_at_eos=stopped_at_eos,
    )
    return Score(False, False, 0.0, failure)
