"""The needles a trial hides, drawn from its seeded RNG: their sentences, typed values and the question.

Every value is drawn from a per-trial seeded RNG (never Python's `hash()`), so a trial is rebuilt byte for
byte from its seed. All word lists below are our own (licence-clean). `niah run` hides these sentences
(niah_run/needles.py gives each kind its value type and scorer) and the doctor counts the tokens they take
(run_plan/prompt_frame.py): one draw for both, so the doctor's shortest length is the sweep's.
"""

from __future__ import annotations

import random
import uuid as uuid_lib
from collections.abc import Callable
from dataclasses import dataclass

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


def hidden_needles(drawn: Drawn, *, control: bool) -> tuple[Needle, ...]:
    """What a trial hides: a no-needle control hides nothing (and asks the same question)."""
    return () if control else drawn.needles


# How each kind draws its values, by name (niah_run/needles.py: KINDS adds their type and scorer).
DRAWS: dict[str, Callable[[random.Random], Drawn]] = {
    "passkey": _passkey,
    "uuid": _uuid,
    "word": _word,
    "multikey": _multikey,
    "multivalue": _values_of_one_key(
        "What are all the special magic numbers for {key} mentioned in the document? "
        "Reply with the numbers only, separated by commas."
    ),
    "association": _association,
    "ordered": _values_of_one_key(
        "What are all the special magic numbers for {key} mentioned in the document, in the "
        "order they appear? Reply with the numbers only, in that order, separated by commas."
    ),
    "counting": _counting,
}
