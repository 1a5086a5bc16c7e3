"""Scoring rules (docs/niah.md, Scoring): typed, boundary-aware, strict, one failure class per miss."""

from __future__ import annotations

import random

import pytest

from niah_run.needles import NEEDLE_KINDS, make_needles, score_trial
from niah_run.scoring import FAILURE_CLASSES, count_value, normalize, score_count, score_output

PROMPT = (
    "Read the document. A careful gardener praised the hollow harbour steps long after supper. "
    "The secret passkey is 1234567. What is the secret passkey mentioned in the document?"
)


def score(text: str, gold=("1234567",), distractors=(), value_type="number", eos=True, control=False):
    return score_output(
        text,
        value_type=value_type,
        gold=tuple(gold),
        distractors=tuple(distractors),
        prompt_text=PROMPT,
        stopped_at_eos=eos,
        control=control,
    )


@pytest.mark.parametrize(
    "text",
    [
        "1234567",
        "The passkey is 1234567.",
        "1,234,567",
        "**1234567**",
        "<think>maybe 7654321</think> 1234567",
        "passkey:1234567\n",
    ],
)
def test_correct_numbers(text: str) -> None:
    result = score(text)
    assert result.correct and result.failure_class is None


@pytest.mark.parametrize("text", ["12345678", "91234567", "x91234567 and 12345670"])
def test_digit_boundaries(text: str) -> None:
    assert not score(text).correct


def test_strict_requires_no_distractor() -> None:
    result = score("It is 1234567 or 7654321", distractors=("7654321",))
    assert not result.correct and result.lenient
    assert result.failure_class == "distractor" and result.found_distractors == ("7654321",)


def test_distractor_only() -> None:
    assert score("7654321", distractors=("7654321",)).failure_class == "distractor"


def test_hallucinated_value() -> None:
    result = score("The passkey is 7777777.")
    assert result.failure_class == "hallucinated" and result.hallucinated_values == ("7777777",)


def test_empty_and_whitespace() -> None:
    assert score("").failure_class == "empty"
    assert score("  \n\x00 ").failure_class == "empty"
    assert score("<think>1234567</think>").failure_class == "empty"  # thinking does not count


def test_echo_of_prompt() -> None:
    assert score("A careful gardener praised the hollow harbour steps long after").failure_class == "echo"


def test_refusal() -> None:
    assert score("I'm sorry, the document does not contain a passkey.").failure_class == "refusal"


def test_truncated_without_eos() -> None:
    assert (
        score("Well, let me think about the whole thing carefully and", eos=False).failure_class
        == "truncated"
    )


def test_other() -> None:
    assert score("Blue.").failure_class == "other"


def test_uuid_matching_is_case_insensitive_and_bounded() -> None:
    gold = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    assert score(gold.upper(), gold=(gold,), value_type="uuid").correct
    assert not score(gold + "-ff", gold=(gold,), value_type="uuid").correct
    other = "ffffffff-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    assert score(other, gold=(gold,), value_type="uuid").failure_class == "hallucinated"


def test_word_matching() -> None:
    assert score("The word is Kestrel.", gold=("kestrel",), value_type="word").correct
    assert not score("kestrels", gold=("kestrel",), value_type="word").correct
    assert not score("sea-kestrel", gold=("kestrel",), value_type="word").correct


def test_multivalue_recall() -> None:
    gold = ("1111111", "2222222", "3333333", "4444444")
    partial = score("1111111, 2222222", gold=gold)
    assert not partial.correct and partial.recall == 0.5
    assert score("4444444, 3333333, 2222222, 1111111", gold=gold).correct


def test_control_trials() -> None:
    assert score("There is no passkey in the document.", gold=(), control=True).correct
    assert score("Blue.", gold=(), control=True).correct  # no value invented
    invented = score("The passkey is 5555555.", gold=(), control=True)
    assert not invented.correct and invented.failure_class == "hallucinated"


def test_failure_classes_are_the_documented_set() -> None:
    assert set(FAILURE_CLASSES) == {
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
    }


def test_normalize_and_count() -> None:
    assert normalize("\uff11\uff12\uff13") == "123"  # NFKC full-width digits
    assert count_value("a 1234567 b 1234567 c 11234567", "1234567", "number") == 2


# -- strict means strict (issue 15) ------------------------------------------------------------------


def test_twenty_numbers_including_the_gold_one_is_not_strict_correct() -> None:
    """An answer that lists twenty 7-digit numbers, one of them right, is a guess, not a retrieval."""
    others = [str(2_000_000 + 7919 * i) for i in range(19)]
    answer = ", ".join(others[:10] + ["1234567"] + others[10:])
    result = score(answer)
    assert not result.correct and result.lenient and result.recall == 1.0
    assert result.failure_class == "extra_values"
    assert result.extra_values == tuple(others) and result.hallucinated_values == ()


def test_one_extra_number_beside_the_gold_one() -> None:
    result = score("The passkey is 1234567, or maybe 7777777.")
    assert (
        not result.correct and result.failure_class == "extra_values" and result.extra_values == ("7777777",)
    )


def test_repeating_the_gold_value_is_not_an_extra_value() -> None:
    result = score("1234567. Again: the passkey is 1,234,567.")
    assert result.correct and result.extra_values == ()


def test_distractor_wins_over_extra_values() -> None:
    result = score("1234567, 7654321, 9999999", distractors=("7654321",))
    assert result.failure_class == "distractor" and result.extra_values == ("9999999",)


def test_hallucinated_values_replace_the_gold_one() -> None:
    result = score("7777777 or 8888888")
    assert result.failure_class == "hallucinated" and result.hallucinated_values == ("7777777", "8888888")
    assert result.extra_values == ()


def test_extra_uuid_and_extra_word_values() -> None:
    gold = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    other = "ffffffff-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    assert score(f"{gold} {other}", gold=(gold,), value_type="uuid").failure_class == "extra_values"
    vocabulary = ("kestrel", "falcon", "heron")
    result = score_output(
        "kestrel, falcon or heron",
        value_type="word",
        gold=("kestrel",),
        distractors=(),
        prompt_text=PROMPT,
        stopped_at_eos=True,
        vocabulary=vocabulary,
    )
    assert result.failure_class == "extra_values" and result.extra_values == ("falcon", "heron")
    alone = score_output(
        "Kestrel.",
        value_type="word",
        gold=("kestrel",),
        distractors=(),
        prompt_text=PROMPT,
        stopped_at_eos=True,
        vocabulary=vocabulary,
    )
    assert alone.correct


@pytest.mark.parametrize(
    "separator", ["\u00a0", "\u202f", "\u2009", "\u2007", ",", "'", "\u2019", "_", "\uff0c"]
)
def test_thousands_separators_are_removed_before_nfkc(separator: str) -> None:
    """NFKC turns U+00A0 and U+202F into a plain space; the separator rule must see them first."""
    text = f"The passkey is 1{separator}234{separator}567."
    result = score(text)
    assert result.correct, (separator, normalize(text))
    assert normalize(text) == "The passkey is 1234567."


def test_full_width_digits_with_separators() -> None:
    assert score("\uff11,\uff12\uff13\uff14,\uff15\uff16\uff17").correct


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1 234 567", "1 234 567"),  # a plain space may separate values: left alone
        ("1,234,56", "1,234,56"),  # not groups of three
        ("1,234'567", "1234'567"),  # mixed separators: only the consistent run is a number
        ("1234567,7654321", "1234567,7654321"),  # a list, not a grouped number
        ("3.14159", "3.14159"),
    ],
)
def test_separator_rule_is_narrow(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_control_refusal_does_not_excuse_an_invented_value() -> None:
    result = score(
        "I cannot find the passkey in the document, but it might be 5555555.", gold=(), control=True
    )
    assert not result.correct and result.failure_class == "hallucinated"
    assert result.hallucinated_values == ("5555555",)
    assert score("I cannot find any passkey in the document.", gold=(), control=True).correct


def test_control_word_kind_needs_a_refusal_without_a_vocabulary() -> None:
    assert score("Blue.", gold=(), value_type="word", control=True).failure_class == "other"
    assert score("It is not mentioned.", gold=(), value_type="word", control=True).correct


def test_a_value_read_from_the_prompt_is_a_distractor_not_a_hallucination() -> None:
    prompt = PROMPT + " The invoice was 4,455,667 crowns."  # a user haystack with numbers
    result = score_output(
        "1234567 and 4455667",
        value_type="number",
        gold=("1234567",),
        distractors=(),
        prompt_text=prompt,
        stopped_at_eos=True,
    )
    assert result.failure_class == "distractor" and result.found_distractors == ("4455667",)
    assert result.extra_values == () and not result.correct


# -- an answer the token limit cut off ----------------------------------------------------------------


def _answer(needles) -> str:
    """The right answer of a trial, as a model would write it."""
    if needles.kind == "counting":
        from niah_run.scoring import _NUMBER_WORDS

        return next(word for word, value in _NUMBER_WORDS.items() if value == int(needles.gold_values[0]))
    return ", ".join(needles.values_in_document_order(range(len(needles.needles))))


@pytest.mark.parametrize("kind", NEEDLE_KINDS)
def test_an_answer_cut_off_by_the_token_limit_is_truncated_for_every_kind(kind: str) -> None:
    """`The passkey is 491` for 4915234, stopped by max_new_tokens: truncated, never hallucinated; stopped
    at EOS it is the answer the model chose; the whole answer, cut off after it, is correct."""
    needles = make_needles(kind, random.Random(3))
    prompt = " ".join(n.text for n in needles.needles) + " " + needles.question
    answer = _answer(needles)

    def scored(text: str, eos: bool):
        return score_trial(text, needles, prompt_text=prompt, stopped_at_eos=eos)

    for cut in range(1, len(answer)):
        partial = "The answer is " + answer[:cut]
        result = scored(partial, eos=False)
        assert not result.correct and result.failure_class == "truncated", (partial, result)
        assert not result.hallucinated_values
    assert scored("The answer is " + answer, eos=False).correct
    if kind in ("passkey", "multikey"):
        assert scored("The answer is " + answer[:3], eos=True).failure_class == "hallucinated"
        assert scored("The answer is 999", eos=False).failure_class == "hallucinated"  # not its beginning
        assert scored(f"The answer is {answer}. Again: {answer[:4]}", eos=False).correct  # cut repeating it


def test_a_count_cut_off_by_the_token_limit_is_truncated() -> None:
    assert score_count(
        "It is mentioned 1", gold_count=12, prompt_text="", stopped_at_eos=False
    ).failure_class == ("truncated")
    six = score_count("It is mentioned six", gold_count=16, prompt_text="", stopped_at_eos=False)
    assert six.failure_class == "truncated"
    assert score_count(
        "It is mentioned six", gold_count=16, prompt_text="", stopped_at_eos=True
    ).failure_class == ("wrong_count")
    assert score_count("It is mentioned six", gold_count=6, prompt_text="", stopped_at_eos=False).correct
