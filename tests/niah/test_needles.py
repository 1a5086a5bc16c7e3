"""Harder needle kinds (issue 15): one-hop association, ordered values, counting — each with its scorer."""

from __future__ import annotations

import random
import re

import pytest

from niah_run.haystack import generate_haystack
from niah_run.needles import KINDS, NEEDLE_KINDS, make_needles, score_trial
from niah_run.prompt import PromptBuilder, chat_frame, tokenize_haystack
from niah_run.scoring import read_count, score_count, score_ordered
from run_plan.needle_draws import _LANDMARKS, _NAMES, COUNT_RANGE
from run_plan.spec import NEEDLE_KIND_CHOICES
from tests.niah.fakes import build_tokenizer

# Function words and the task's own framing; everything else is a content word.
_STOP = {
    "a",
    "an",
    "the",
    "to",
    "of",
    "has",
    "been",
    "which",
    "with",
    "only",
    "next",
    "actually",
    "lives",
    "reply",
    "is",
    "in",
    "who",
}


def _content_words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[A-Za-z]+", text)} - _STOP


@pytest.fixture(scope="module")
def builder():
    tokenizer = build_tokenizer()
    return PromptBuilder(
        tokenizer, chat_frame(tokenizer), tokenize_haystack(tokenizer, generate_haystack(3, 40_000))
    )


def _build(builder, kind: str, seed: int, depth: float = 50, control: bool = False):
    rng = random.Random(seed)
    needles = make_needles(kind, rng, control=control)
    return needles, builder.build(
        length=1500, depth_percent=None if control else depth, needles=needles, window_start=0, rng=rng
    )


def test_new_kinds_are_offered() -> None:
    assert {"association", "ordered", "counting"} <= set(NEEDLE_KINDS)


# -- association (one hop, no literal match) ----------------------------------------------------------


def test_association_question_shares_no_content_word_with_its_needle() -> None:
    for seed in range(200):
        needles = make_needles("association", random.Random(seed))
        needle = needles.needles[0].text
        assert not _content_words(needle) & _content_words(needles.question), (needle, needles.question)
        assert needles.gold_values[0] in needle and needles.gold_values[0] not in needles.question


def test_no_landmark_shares_a_word_with_its_city() -> None:
    for landmark, city in _LANDMARKS:
        assert not _content_words(landmark) & _content_words(city), (landmark, city)
    assert len({city for _, city in _LANDMARKS}) == len(_LANDMARKS)


def test_association_vocabulary_is_outside_the_haystack_generator() -> None:
    text = generate_haystack(0, 100_000).text.lower()
    for name in _NAMES:
        assert not re.search(rf"\b{name.lower()}\b", text)
    for _, city in _LANDMARKS:
        assert city.lower() not in text


def test_association_prompt_has_the_name_once_and_the_city_only_in_the_question(builder) -> None:
    needles, prompt = _build(builder, "association", 5)
    name = needles.gold_values[0]
    city = re.search(r"been to (.+)\?", needles.question).group(1)
    document = prompt.body_text.split("</document>")[0]
    assert len(re.findall(rf"\b{name}\b", document)) == 1 and city not in document


def test_association_scoring(builder) -> None:
    needles, prompt = _build(builder, "association", 5)
    name = needles.gold_values[0]
    other = next(n for n in _NAMES if n != name)

    def score(text: str, **kw):
        return score_trial(text, needles, prompt_text=prompt.body_text, stopped_at_eos=True, **kw)

    assert score(f"{name}.").correct and score(name.upper()).correct
    assert score(f"{other}").failure_class == "hallucinated"
    assert score(f"{name} or {other}").failure_class == "extra_values"
    assert score("I'm sorry, no character is said to have been there.").failure_class == "refusal"
    control_needles, control_prompt = _build(builder, "association", 5, control=True)
    assert name not in control_prompt.body_text
    control = score_trial(
        f"{other}", control_needles, prompt_text=control_prompt.body_text, stopped_at_eos=True
    )
    assert control.failure_class == "hallucinated"
    assert score_trial(
        "No character has been there.", control_needles, prompt_text="", stopped_at_eos=True
    ).correct


# -- ordered ------------------------------------------------------------------------------------------


def test_ordered_gold_is_the_document_order(builder) -> None:
    for seed in range(10):
        needles, prompt = _build(builder, "ordered", seed, depth=seed * 10)
        in_order = needles.values_in_document_order(prompt.needle_positions)
        assert sorted(in_order) == sorted(needles.gold_values)
        offsets = [prompt.body_text.index(v) for v in in_order]
        assert offsets == sorted(offsets)


def test_ordered_scoring() -> None:
    gold = ("1111111", "2222222", "3333333", "4444444")

    def score(text: str):
        return score_ordered(text, gold_in_order=gold, distractors=(), prompt_text="", stopped_at_eos=True)

    assert score("1111111, 2222222, 3333333, 4444444").correct
    assert score("1111111, 2222222, 3333333, 4444444, 1111111").correct  # a repeat adds no value
    swapped = score("2222222, 1111111, 3333333, 4444444")
    assert not swapped.correct and swapped.failure_class == "wrong_order" and swapped.lenient
    partial = score("1111111, 2222222")
    assert not partial.correct and partial.recall == 0.5
    assert score("1111111, 2222222, 3333333, 4444444, 5555555").failure_class == "extra_values"


def test_ordered_trial_uses_positions(builder) -> None:
    needles, prompt = _build(builder, "ordered", 4, depth=90)
    in_order = needles.values_in_document_order(prompt.needle_positions)
    right = score_trial(
        ", ".join(in_order),
        needles,
        prompt_text=prompt.body_text,
        stopped_at_eos=True,
        needle_positions=prompt.needle_positions,
    )
    wrong = score_trial(
        ", ".join(reversed(in_order)),
        needles,
        prompt_text=prompt.body_text,
        stopped_at_eos=True,
        needle_positions=prompt.needle_positions,
    )
    assert right.correct and wrong.failure_class == "wrong_order"


# -- counting -----------------------------------------------------------------------------------------


def test_counting_hides_the_word_that_many_times(builder) -> None:
    seen = set()
    for seed in range(20):
        needles, prompt = _build(builder, "counting", seed, depth=seed * 5)
        times = int(needles.gold_values[0])
        seen.add(times)
        assert COUNT_RANGE[0] <= times <= COUNT_RANGE[1] and len(needles.needles) == times
        animal = needles.needles[0].value
        document = prompt.body_text.split("</document>")[0]
        assert len(re.findall(rf"\b{animal}\b", document)) == times
        assert len({n.text for n in needles.needles}) == times  # different sentences, not copies
    assert len(seen) > 1


@pytest.mark.parametrize(
    "text, counts",
    [
        ("3", (3,)),
        ("It is mentioned three times.", (3,)),
        ("twice", (2,)),
        ("Never.", (0,)),
        ("One of the sentences, so 4 times", (4,)),
        ("3.5", ()),
        ("2 or 3", (2, 3)),
    ],
)
def test_read_count(text: str, counts: tuple[int, ...]) -> None:
    assert read_count(text) == counts


def test_count_scoring() -> None:
    def score(text: str, control: bool = False):
        return score_count(text, gold_count=3, prompt_text="", stopped_at_eos=True, control=control)

    assert score("3").correct and score("Three times.").correct and score("3, yes 3").correct
    assert score("4").failure_class == "wrong_count" and score("4").hallucinated_values == ("4",)
    extra = score("3 or 4")
    assert extra.failure_class == "extra_values" and extra.extra_values == ("4",) and extra.lenient
    assert score("I cannot find it.").failure_class == "refusal"
    assert score("").failure_class == "empty"
    assert score("0", control=True).correct and score("It is never mentioned.", control=True).correct
    assert score("The word is not mentioned.", control=True).correct
    assert score("2", control=True).failure_class == "hallucinated"
    assert score("Blue.", control=True).failure_class == "other"


def test_counting_control_prompt_has_no_counted_word(builder) -> None:
    needles, prompt = _build(builder, "counting", 2, control=True)
    animal = re.search(r"is an? (\w+) mentioned", needles.question).group(1)
    assert animal not in prompt.body_text.split("</document>")[0]
    assert score_trial("0", needles, prompt_text=prompt.body_text, stopped_at_eos=True).correct


@pytest.mark.parametrize("kind", NEEDLE_KINDS)
def test_every_kind_is_deterministic_per_seed(kind: str) -> None:
    assert make_needles(kind, random.Random(42)) == make_needles(kind, random.Random(42))


@pytest.mark.parametrize("name", NEEDLE_KIND_CHOICES)
def test_every_declared_kind_has_its_maker_value_type_and_scorer(name: str) -> None:
    kind = KINDS[name]
    needles = kind.make(random.Random(7))
    assert kind.name == needles.kind == name and needles.value_type == kind.value_type
    assert needles.gold_values and needles.needles and kind.make(random.Random(7), control=True).control
    answer = ", ".join(needles.gold_values)  # the gold values, in the order they were drawn
    score = kind.score(
        answer, needles, prompt_text="", stopped_at_eos=True, needle_positions=(), prompt_words_cache=None
    )
    assert score.correct, (name, answer, score)


def test_every_kind_has_a_declared_name() -> None:
    assert list(KINDS) == list(NEEDLE_KIND_CHOICES) == list(NEEDLE_KINDS)
