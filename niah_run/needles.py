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
"""

from __future__ import annotations

import random
import uuid as uuid_lib
from collections.abc import Sequence
from dataclasses import dataclass

from run_plan.spec import NEEDLE_KIND_CHOICES

NEEDLE_KINDS = (
    NEEDLE_KIND_CHOICES  # one list: the plan validates --needle-kind with it, this module builds each
)
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


def _association(rng: random.Random) -> NeedleSet:
    name = rng.choice(_NAMES)
    landmark, city = rng.choice(_LANDMARKS)
    needle = Needle(f"Actually, {name} lives next to {landmark}.", name, True)
    question = f"Which character has been to {city}? Reply with the name only."
    # The city must not be written anywhere in the body: then the answer cannot be found by matching text.
    audit = ((name, "word", 1), (city, "word", 0))
    return NeedleSet("association", "word", (needle,), question, (name,), (), vocabulary=_NAMES, audit=audit)


def _counting(rng: random.Random) -> NeedleSet:
    animal = rng.choice(_COUNTED)
    times = rng.randint(*COUNT_RANGE)
    frames = rng.sample(_COUNT_FRAMES, times)
    needles = tuple(Needle(frame.format(a=animal), animal, i == 0) for i, frame in enumerate(frames))
    question = f"How many times is a {animal} mentioned in the document? Reply with the number only."
    return NeedleSet(
        "counting", "count", needles, question, (str(times),), (), audit=((animal, "word", times),)
    )


def make_needles(kind: str, rng: random.Random, *, control: bool = False) -> NeedleSet:
    """The needle set for one trial. `control=True` keeps the question and hides nothing."""
    taken: set[str] = set()
    needles: tuple[Needle, ...]
    if kind == "passkey":
        value = _number(rng, taken)
        needles = (Needle(f"The secret passkey is {value}.", value, True),)
        question = "What is the secret passkey mentioned in the document? Reply with the passkey only."
        out = NeedleSet(kind, "number", needles, question, (value,), ())
    elif kind == "uuid":
        value = str(uuid_lib.UUID(int=rng.getrandbits(128), version=4))
        needles = (Needle(f"The secret code is {value}.", value, True),)
        question = "What is the secret code mentioned in the document? Reply with the code only."
        out = NeedleSet(kind, "uuid", needles, question, (value,), ())
    elif kind == "word":
        value = rng.choice(_KEY_WORDS)
        needles = (Needle(f"The secret word is {value}.", value, True),)
        question = "What is the secret word mentioned in the document? Reply with the word only."
        out = NeedleSet(kind, "word", needles, question, (value,), (), vocabulary=_KEY_WORDS)
    elif kind == "multikey":
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
        out = NeedleSet(kind, "number", needles, question, (values[0],), tuple(values[1:]))
    elif kind in ("multivalue", "ordered"):
        key = rng.choice(_KEY_WORDS)
        values = [_number(rng, taken) for _ in range(MULTI_COUNT)]
        needles = tuple(
            Needle(f"One of the special magic numbers for {key} is: {v}.", v, True) for v in values
        )
        if kind == "multivalue":
            question = (
                f"What are all the special magic numbers for {key} mentioned in the document? "
                "Reply with the numbers only, separated by commas."
            )
        else:
            question = (
                f"What are all the special magic numbers for {key} mentioned in the document, in the "
                "order they appear? Reply with the numbers only, in that order, separated by commas."
            )
        out = NeedleSet(kind, "number", needles, question, tuple(values), ())
    elif kind == "association":
        out = _association(rng)
    elif kind == "counting":
        out = _counting(rng)
    else:
        raise ValueError(f"unknown needle kind {kind!r}")
    if control:
        # Nothing hidden; what the needles would have named must not be in the body either.
        audit = (
            tuple((text, how, 0) for text, how, _ in out.prompt_audit()) if out.audit is not None else None
        )
        return NeedleSet(
            kind,
            out.value_type,
            (),
            out.question,
            (),
            (),
            control=True,
            vocabulary=out.vocabulary,
            audit=audit,
        )
    return out
