"""Scoring rules (niah-anchors §d): typed, boundary-aware, strict, one failure class per miss."""

from __future__ import annotations

import pytest

from niah_run.scoring import FAILURE_CLASSES, count_value, normalize, score_output

PROMPT = ("Read the document. A careful gardener praised the hollow harbour steps long after supper. "
          "The secret passkey is 1234567. What is the secret passkey mentioned in the document?")


def score(text: str, gold=("1234567",), distractors=(), value_type="number", eos=True, control=False):
    return score_output(text, value_type=value_type, gold=tuple(gold), distractors=tuple(distractors),
                        prompt_text=PROMPT, stopped_at_eos=eos, control=control)


@pytest.mark.parametrize("text", ["1234567", "The passkey is 1234567.", "1,234,567", "**1234567**",
                                  "<think>maybe 7654321</think> 1234567", "passkey:1234567\n"])
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
    assert score("Well, let me think about the whole thing carefully and", eos=False).failure_class == "truncated"


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
    assert set(FAILURE_CLASSES) == {"oom", "skipped_too_long", "empty", "truncated", "echo", "refusal",
                                    "distractor", "hallucinated", "other"}


def test_normalize_and_count() -> None:
    assert normalize("\uff11\uff12\uff13") == "123"  # NFKC full-width digits
    assert count_value("a 1234567 b 1234567 c 11234567", "1234567", "number") == 2
