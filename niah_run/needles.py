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

Each kind is one `NeedleKind` in `KINDS`: how its values are drawn and hidden, their type, and its scorer
(the matching rules are niah_run/scoring.py's). A new kind is one entry there plus its name in
`run_plan/spec.py: NEEDLE_KIND_CHOICES`; a test checks that every declared name has its kind.
"""

from __future__ import annotations

import random
import uuid as uuid_lib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from niah_run.scoring import Score, score_count, score_ordered, score_output

MULTI_COUNT = 4
COUNT_RANGE = (2, 6)  # how many times the counted word is hidden (0 is the control)

# Disjoint from the haystack generator's vocabulary, so a word value occurs exactly where we put it.
_KEY_WORDS = (
    "amber",
    "basalt",
    "cobalt",
    "dahlia",
    "ember",
    "falcon",
    "glacier",
    "harpoon",
    "indigo",
    "jasmine",
    "kestrel",
    "lagoon",
    "magnolia",
    "nebula",
    "obsidian",
    "pelican",
    "quartz",
    "raven",
    "saffron",
    "tundra",
    "umber",
    "velvet",
    "walrus",
    "yarrow",
    "zephyr",
    "anvil",
    "beacon",
    "cactus",
    "dolphin",
    "eclipse",
    "fjord",
    "garnet",
    "heron",
    "iguana",
    "juniper",
    "kiwi",
    "lynx",
    "meteor",
    "nectar",
    "otter",
)
# Character names for the association needle: not English words, not in the haystack generator.
_NAMES = (
    "Yuki",
    "Mandla",
    "Diego",
    "Ingrid",
    "Tobias",
    "Priya",
    "Oskar",
    "Leilani",
    "Ravi",
    "Soren",
    "Amara",
    "Dmitri",
    "Eloise",
    "Kenji",
    "Farida",
    "Matteo",
    "Saoirse",
    "Thandiwe",
    "Anouk",
    "Bartek",
    "Chiara",
    "Emeka",
    "Freya",
    "Haruto",
    "Ilse",
    "Jovan",
    "Katja",
    "Lorenzo",
    "Nadia",
    "Orla",
)
# Landmark → the city it stands in. The needle names the landmark, the question the city; no
# landmark shares a word with its city (checked by the tests), so the link is knowledge, not text.
_LANDMARKS = (
    ("the Semper Opera House", "Dresden"),
    ("the Eiffel Tower", "Paris"),
    ("the Colosseum", "Rome"),
    ("the Brandenburg Gate", "Berlin"),
    ("the Sagrada Familia", "Barcelona"),
    ("the Acropolis", "Athens"),
    ("the Golden Gate Bridge", "San Francisco"),
    ("the Kremlin", "Moscow"),
    ("the Forbidden City", "Beijing"),
    ("Big Ben", "London"),
    ("the Statue of Liberty", "New York"),
    ("the Little Mermaid statue", "Copenhagen"),
    ("the Atomium", "Brussels"),
    ("the Charles Bridge", "Prague"),
    ("the Space Needle", "Seattle"),
    ("the CN Tower", "Toronto"),
    ("the Burj Khalifa", "Dubai"),
    ("the Petronas Towers", "Kuala Lumpur"),
    ("the Alhambra", "Granada"),
    ("the Rijksmuseum", "Amsterdam"),
    ("the Leaning Tower", "Pisa"),
    ("the Hofburg palace", "Vienna"),
    ("the Gateway of India", "Mumbai"),
    ("the Hagia Sophia", "Istanbul"),
)
# Words to count: animals from the key list; each hidden sentence uses a different frame.
_COUNTED = ("falcon", "heron", "kestrel", "pelican", "raven", "walrus", "dolphin", "iguana", "lynx", "otter")
_COUNT_FRAMES = (
    "A {a} was seen near the old quarry.",
    "Somebody spotted a {a} by the reed beds.",
    "A {a} rested on the chimney for a while.",
    "Children pointed at a {a} above the meadow.",
    "A {a} crossed the road at dawn.",
    "A {a} called out from the hedgerow.",
)


@dataclass(frozen=True)
class Needle:
    text: str  # one sentence, inserted at a sentence boundary
    value: str
    is_gold: bool


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


def _number(rng: random.Random, taken: set[str]) -> str:
    while True:
        value = str(rng.randint(1_000_000, 9_999_999))
        if value not in taken:
            taken.add(value)
            return value


@dataclass(frozen=True)
class Drawn:
    """What one trial of a kind hides, drawn from its seeded RNG."""

    needles: tuple[Needle, ...]  # the first one is placed at the requested depth
    question: str
    gold_values: tuple[str, ...]
    distractor_values: tuple[str, ...] = ()
    vocabulary: tuple[str, ...] = ()
    audit: tuple[tuple[str, str, int], ...] | None = None  # as NeedleSet.audit


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
        if control:
            # Nothing hidden; what the needles would have named must not be in the body either.
            audit = tuple((text, how, 0) for text, how, _ in drawn.audit) if drawn.audit is not None else None
            return NeedleSet(
                self.name,
                self.value_type,
                (),
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
            drawn.needles,
            drawn.question,
            drawn.gold_values,
            drawn.distractor_values,
            vocabulary=drawn.vocabulary,
            audit=drawn.audit,
        )


# -- how each kind draws its values ------------------------------------------------------------------


def _passkey(rng: random.Random) -> Drawn:
    value = _number(rng, set())
    question = "What is the secret passkey mentioned in the document? Reply with the passkey only."
    return Drawn((Needle(f"The secret passkey is {value}.", value, True),), question, (value,))


def _uuid(rng: random.Random) -> Drawn:
    value = str(uuid_lib.UUID(int=rng.getrandbits(128), version=4))
    question = "What is the secret code mentioned in the document? Reply with the code only."
    return Drawn((Needle(f"The secret code is {value}.", value, True),), question, (value,))


def _word(rng: random.Random) -> Drawn:
    value = rng.choice(_KEY_WORDS)
    question = "What is the secret word mentioned in the document? Reply with the word only."
    needles = (Needle(f"The secret word is {value}.", value, True),)
    return Drawn(needles, question, (value,), vocabulary=_KEY_WORDS)


def _multikey(rng: random.Random) -> Drawn:
    taken: set[str] = set()
    keys = rng.sample(_KEY_WORDS, MULTI_COUNT)
    values = [_number(rng, taken) for _ in keys]
    needles = tuple(
        Needle(f"One of the special magic numbers for {k} is: {v}.", v, i == 0)
        for i, (k, v) in enumerate(zip(keys, values))
    )
    question = (
        f"What is the special magic number for {keys[0]} mentioned in the document? "
        "Reply with the number only."
    )
    return Drawn(needles, question, (values[0],), tuple(values[1:]))


def _values_of_one_key(question: str) -> Callable[[random.Random], Drawn]:
    """MULTI_COUNT numbers for one key, all asked; `question` names the key as {key}."""

    def draw(rng: random.Random) -> Drawn:
        taken: set[str] = set()
        key = rng.choice(_KEY_WORDS)
        values = [_number(rng, taken) for _ in range(MULTI_COUNT)]
        needles = tuple(
            Needle(f"One of the special magic numbers for {key} is: {v}.", v, True) for v in values
        )
        return Drawn(needles, question.format(key=key), tuple(values))

    return draw


def _association(rng: random.Random) -> Drawn:
    name = rng.choice(_NAMES)
    landmark, city = rng.choice(_LANDMARKS)
    needle = Needle(f"Actually, {name} lives next to {landmark}.", name, True)
    question = f"Which character has been to {city}? Reply with the name only."
    # The city must not be written anywhere in the body: then the answer cannot be found by matching text.
    audit = ((name, "word", 1), (city, "word", 0))
    return Drawn((needle,), question, (name,), vocabulary=_NAMES, audit=audit)


def _counting(rng: random.Random) -> Drawn:
    animal = rng.choice(_COUNTED)
    times = rng.randint(*COUNT_RANGE)
    frames = rng.sample(_COUNT_FRAMES, times)
    needles = tuple(Needle(frame.format(a=animal), animal, i == 0) for i, frame in enumerate(frames))
    question = f"How many times is a {animal} mentioned in the document? Reply with the number only."
    return Drawn(needles, question, (str(times),), audit=((animal, "word", times),))


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
        NeedleKind("passkey", "number", _passkey, _score_values),
        NeedleKind("uuid", "uuid", _uuid, _score_values),
        NeedleKind("word", "word", _word, _score_values),
        NeedleKind("multikey", "number", _multikey, _score_values),
        NeedleKind(
            "multivalue",
            "number",
            _values_of_one_key(
                "What are all the special magic numbers for {key} mentioned in the document? "
                "Reply with the numbers only, separated by commas."
            ),
            _score_values,
        ),
        NeedleKind("association", "word", _association, _score_values),
        NeedleKind(
            "ordered",
            "number",
            _values_of_one_key(
                "What are all the special magic numbers for {key} mentioned in the document, in the "
                "order they appear? Reply with the numbers only, in that order, separated by commas."
            ),
            _score_in_document_order,
        ),
        NeedleKind("counting", "count", _counting, _score_count),
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
