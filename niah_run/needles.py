"""Needles: the sentences hidden in the haystack, their typed gold values, and the question.

Every value is drawn from a per-trial seeded RNG (never Python's `hash()`), so a trial is rebuilt
byte for byte from its seed. Kinds:

- passkey: one 7-digit number (default); uuid: one UUID; word: one word the haystack never uses;
- multikey (RULER): four "special magic number for <key>" needles, one asked, three distractors;
- multivalue (RULER): four values for the same key, all asked (recall must be 1);
- control (no needle): same question, nothing hidden; the right answer is "not there".
"""

from __future__ import annotations

import random
import uuid as uuid_lib
from dataclasses import dataclass

NEEDLE_KINDS: tuple[str, ...] = ("passkey", "uuid", "word", "multikey", "multivalue")
MULTI_COUNT = 4

# Disjoint from the haystack generator's vocabulary, so a word value occurs exactly where we put it.
_KEY_WORDS = (
    "amber", "basalt", "cobalt", "dahlia", "ember", "falcon", "glacier", "harpoon", "indigo", "jasmine",
    "kestrel", "lagoon", "magnolia", "nebula", "obsidian", "pelican", "quartz", "raven", "saffron", "tundra",
    "umber", "velvet", "walrus", "yarrow", "zephyr", "anvil", "beacon", "cactus", "dolphin", "eclipse",
    "fjord", "garnet", "heron", "iguana", "juniper", "kiwi", "lynx", "meteor", "nectar", "otter",
)


@dataclass(frozen=True)
class Needle:
    text: str  # one sentence, inserted at a sentence boundary
    value: str
    is_gold: bool


@dataclass(frozen=True)
class NeedleSet:
    kind: str
    value_type: str  # "number" | "uuid" | "word": how the scorer matches
    needles: tuple[Needle, ...]  # the first one is placed at the requested depth
    question: str
    gold_values: tuple[str, ...]  # all must be found (one for every kind but multivalue)
    distractor_values: tuple[str, ...]  # in the prompt, must NOT be answered
    control: bool = False  # no-needle control: nothing is hidden

    @property
    def needle_value(self) -> str | None:
        return ", ".join(self.gold_values) if self.gold_values else None


def _number(rng: random.Random, taken: set[str]) -> str:
    while True:
        value = str(rng.randint(1_000_000, 9_999_999))
        if value not in taken:
            taken.add(value)
            return value


def make_needles(kind: str, rng: random.Random, *, control: bool = False) -> NeedleSet:
    """The needle set for one trial. `control=True` keeps the question and hides nothing."""
    taken: set[str] = set()
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
        out = NeedleSet(kind, "word", needles, question, (value,), ())
    elif kind == "multikey":
        keys = rng.sample(_KEY_WORDS, MULTI_COUNT)
        values = [_number(rng, taken) for _ in keys]
        needles = tuple(Needle(f"One of the special magic numbers for {k} is: {v}.", v, i == 0)
                        for i, (k, v) in enumerate(zip(keys, values)))
        question = (f"What is the special magic number for {keys[0]} mentioned in the document? "
                    "Reply with the number only.")
        out = NeedleSet(kind, "number", needles, question, (values[0],), tuple(values[1:]))
    elif kind == "multivalue":
        key = rng.choice(_KEY_WORDS)
        values = [_number(rng, taken) for _ in range(MULTI_COUNT)]
        needles = tuple(Needle(f"One of the special magic numbers for {key} is: {v}.", v, True) for v in values)
        question = (f"What are all the special magic numbers for {key} mentioned in the document? "
                    "Reply with the numbers only, separated by commas.")
        out = NeedleSet(kind, "number", needles, question, tuple(values), ())
    else:
        raise ValueError(f"unknown needle kind {kind!r}")
    if control:
        return NeedleSet(kind, out.value_type, (), out.question, (), (), control=True)
    return out
