"""Needles: the sentences hidden in the haystack, their typed gold values, and the question.

Every value is drawn from a per-trial seeded RNG (never Python's `hash()`), so a trial is rebuilt
byte for byte from its seed. All word lists below are our own (licence-clean). Kinds:

- passkey: one 7-digit number (default); uuid: one UUID; word: one word the haystack never uses;
- multikey (RULER): four "special magic number for <key>" needles, one asked, three distractors;
- multivalue (RULER): four values for the same key, all asked (recall must be 1);
- association (NoLiMa-style one hop): "Actually, <name> lives next to <landmark>." asked as "Which
  character has been to <city>?": the question shares no content word with the needle, so finding
  it takes one step of world knowledge (landmark → city), not a literal match;
- ordered: four values for one key, to be returned in the order they appear in the document;
- counting: a word (an animal) hidden in 2–6 different sentences; asked how many times it appears;
- control (no needle): same question, nothing hidden; the right answer is "not there" (0 for counting).

Each kind is one `NeedleKind` in `KINDS`: how its values are drawn and hidden (run_plan/needle_draws.py:
DRAWS, which the doctor counts too), their type, and its scorer (the matching rules are
niah_run/scoring.py's). A new kind is its draw there, one entry here, and its name in
`run_plan/spec.py: NEEDLE_KIND_CHOICES`; a test checks that every declared name has its kind.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from niah_run.scoring import Score, score_count, score_ordered, score_output
from run_plan.needle_draws import DRAWS, Drawn, Needle, hidden_needles


@dataclass(frozen=True)
class NeedleSet:
    kind: str
    value_type: str  # "number" | "uuid" | "word" | "count": how the scorer matches
    needles: tuple[Needle, ...]  # the first one is placed at the requested depth
    question: str
    gold_values: tuple[str, ...]  # all must be found (one for every kind but multivalue/ordered)
    distractor_values: tuple[str, ...]  # in the prompt, must NOT be answered
    control: bool = False  # no-needle control: nothing is hidden
    vocabulary: tuple[
        str, ...
    ] = ()  # closed word list the values come from (lets the scorer see extra words)
    # (text, match type, times) the built prompt body must contain exactly; None = each gold and
    # distractor value once. Checked on every prompt; a user haystack that breaks it redraws the values.
    audit: tuple[tuple[str, str, int], ...] | None = None

    @property
    def needle_value(self) -> str | None:
        return ", ".join(self.gold_values) if self.gold_values else None

    def prompt_audit(self) -> tuple[tuple[str, str, int], ...]:
        if self.audit is not None:
            return self.audit
        return tuple((value, self.value_type, 1) for value in (*self.gold_values, *self.distractor_values))

    def values_in_document_order(self, positions: Sequence[int]) -> tuple[str, ...]:
        """Gold values in the order the body holds them (ties in needle order, as the splice does)."""
        if len(positions) != len(self.needles):
            return self.gold_values
        order = sorted(range(len(self.needles)), key=lambda i: (positions[i], i))
        return tuple(self.needles[i].value for i in order if self.needles[i].is_gold)


class Scorer(Protocol):
    """How an answer to one trial of a kind is scored (the generated text only)."""

    def __call__(
        self,
        output_text: str,
        needles: NeedleSet,
        *,
        prompt_text: str,
        stopped_at_eos: bool,
        needle_positions: Sequence[int],
        prompt_words_cache: str | None,
    ) -> Score: ...


@dataclass(frozen=True)
class NeedleKind:
    """One kind of needle: how a trial's values are drawn and hidden, their type, and how an answer scores."""

    name: str
    value_type: str  # how the scorer matches a value: "number" | "uuid" | "word" | "count"
    draw: Callable[[random.Random], Drawn]
    score: Scorer

    def make(self, rng: random.Random, *, control: bool = False) -> NeedleSet:
        """The needle set for one trial. `control=True` keeps the question and hides nothing."""
        drawn = self.draw(rng)
        needles = hidden_needles(drawn, control=control)
        if control:
            # Nothing hidden; what the needles would have named must not be in the body either.
            audit = tuple((text, how, 0) for text, how, _ in drawn.audit) if drawn.audit is not None else None
            return NeedleSet(
                self.name,
                self.value_type,
                needles,
                drawn.question,
                (),
                (),
                control=True,
                vocabulary=drawn.vocabulary,
                audit=audit,
            )
        return NeedleSet(
            self.name,
            self.value_type,
            needles,
            drawn.question,
            drawn.gold_values,
            drawn.distractor_values,
            vocabulary=drawn.vocabulary,
            audit=drawn.audit,
        )


# -- how each kind is scored -------------------------------------------------------------------------


def _score_values(
    output_text: str,
    needles: NeedleSet,
    *,
    prompt_text: str,
    stopped_at_eos: bool,
    needle_positions: Sequence[int],
    prompt_words_cache: str | None,
) -> Score:
    """Every gold value found, no distractor, no other value of the type (scoring.score_output)."""
    return score_output(
        output_text,
        value_type=needles.value_type,
        gold=needles.gold_values,
        distractors=needles.distractor_values,
        control=needles.control,
        vocabulary=needles.vocabulary,
        prompt_text=prompt_text,
        stopped_at_eos=stopped_at_eos,
        prompt_words_cache=prompt_words_cache,
    )


def _score_in_document_order(
    output_text: str,
    needles: NeedleSet,
    *,
    prompt_text: str,
    stopped_at_eos: bool,
    needle_positions: Sequence[int],
    prompt_words_cache: str | None,
) -> Score:
    """As _score_values, and in the order the document holds them (a control has no order to keep)."""
    if needles.control:
        return _score_values(
            output_text,
            needles,
            prompt_text=prompt_text,
            stopped_at_eos=stopped_at_eos,
            needle_positions=needle_positions,
            prompt_words_cache=prompt_words_cache,
        )
    return score_ordered(
        output_text,
        gold_in_order=needles.values_in_document_order(needle_positions),
        distractors=needles.distractor_values,
        prompt_text=prompt_text,
        stopped_at_eos=stopped_at_eos,
        prompt_words_cache=prompt_words_cache,
    )


def _score_count(
    output_text: str,
    needles: NeedleSet,
    *,
    prompt_text: str,
    stopped_at_eos: bool,
    needle_positions: Sequence[int],
    prompt_words_cache: str | None,
) -> Score:
    """Exactly one count stated, and the right one (a control's is 0)."""
    return score_count(
        output_text,
        gold_count=int(needles.gold_values[0]) if needles.gold_values else 0,
        control=needles.control,
        prompt_text=prompt_text,
        stopped_at_eos=stopped_at_eos,
        prompt_words_cache=prompt_words_cache,
    )


# -- the kinds ---------------------------------------------------------------------------------------

KINDS: dict[str, NeedleKind] = {
    kind.name: kind
    for kind in (
        NeedleKind("passkey", "number", DRAWS["passkey"], _score_values),
        NeedleKind("uuid", "uuid", DRAWS["uuid"], _score_values),
        NeedleKind("word", "word", DRAWS["word"], _score_values),
        NeedleKind("multikey", "number", DRAWS["multikey"], _score_values),
        NeedleKind("multivalue", "number", DRAWS["multivalue"], _score_values),
        NeedleKind("association", "word", DRAWS["association"], _score_values),
        NeedleKind("ordered", "number", DRAWS["ordered"], _score_in_document_order),
        NeedleKind("counting", "count", DRAWS["counting"], _score_count),
    )
}
# The names, in the order the CLI offers them (run_plan.spec.NEEDLE_KIND_CHOICES declares the same set).
NEEDLE_KINDS: tuple[str, ...] = tuple(KINDS)


def make_needles(kind: str, rng: random.Random, *, control: bool = False) -> NeedleSet:
    """The needle set for one trial of `kind`. `control=True` keeps the question and hides nothing."""
    if kind not in KINDS:
        raise ValueError(f"unknown needle kind {kind!r}")
    return KINDS[kind].make(rng, control=control)


def score_trial(
    output_text: str,
    needles: NeedleSet,
    *,
    prompt_text: str,
    stopped_at_eos: bool,
    needle_positions: Sequence[int] = (),
    prompt_words_cache: str | None = None,
) -> Score:
    """The scorer of this trial's needle kind (what the sweep calls)."""
    return KINDS[needles.kind].score(
        output_text,
        needles,
        prompt_text=prompt_text,
        stopped_at_eos=stopped_at_eos,
        needle_positions=needle_positions,
        prompt_words_cache=prompt_words_cache,
    )
