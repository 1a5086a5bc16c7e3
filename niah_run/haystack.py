"""Haystack text: a seeded prose generator (the default) or the user's own text files.

Both give plain text plus the character offsets where sentences end, so the prompt builder can
map sentence boundaries onto token indices of the model's own tokenizer (never by decoding).

The generator is licence-clean (our own word lists), has no digits and nothing UUID-like (so a
numeric or UUID needle value can never collide with the haystack), avoids the needle vocabulary
("secret", "passkey", "magic", "number", "code", ...), and draws every sentence independently from
a seeded `random.Random`, so long haystacks have no repetition period.
"""

from __future__ import annotations

import codecs
import hashlib
import random
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from run_plan.errors import UsageError

GENERATED = "generated"

_SUBJECTS = (
    "The old miller",
    "A young shepherd",
    "The harbour master",
    "A retired teacher",
    "The village baker",
    "A quiet librarian",
    "The travelling tinker",
    "A careful gardener",
    "The night watchman",
    "A patient weaver",
    "The ferry captain",
    "A curious child",
    "The blacksmith",
    "A wandering poet",
    "The orchard keeper",
    "A tired porter",
    "The choir leader",
    "A stubborn mule driver",
    "The lighthouse keeper",
    "A kind midwife",
    "The cartographer",
    "A nervous apprentice",
    "The abbey cook",
    "A cheerful tailor",
)
_VERBS = (
    "carried",
    "painted",
    "repaired",
    "noticed",
    "described",
    "admired",
    "followed",
    "cleaned",
    "measured",
    "gathered",
    "remembered",
    "questioned",
    "polished",
    "visited",
    "ignored",
    "sketched",
    "mended",
    "praised",
)
_ADJECTIVES = (
    "weathered",
    "narrow",
    "crooked",
    "silver",
    "dusty",
    "gentle",
    "faded",
    "heavy",
    "bright",
    "hollow",
    "ancient",
    "muddy",
    "tidy",
    "broken",
    "fragrant",
    "distant",
    "humble",
    "restless",
)
_OBJECTS = (
    "wooden bridge",
    "garden wall",
    "stone well",
    "fishing boat",
    "copper kettle",
    "linen sail",
    "market square",
    "chapel bell",
    "willow basket",
    "farm gate",
    "river bank",
    "iron lantern",
    "woollen cloak",
    "barley field",
    "clay oven",
    "mountain path",
    "orchard fence",
    "weaving loom",
    "harbour steps",
    "hay cart",
)
_ENDINGS = (
    "before the rain arrived",
    "while the bells were ringing",
    "after the long winter",
    "at the edge of town",
    "in the pale morning light",
    "without saying a word",
    "as the tide went out",
    "during the harvest fair",
    "under a grey sky",
    "beside the sleeping dogs",
    "long after supper",
    "when the wind changed",
    "on the way home",
    "near the empty mill",
    "as the lamps were lit",
    "beneath the old elms",
)
_ASIDES = (
    "Nobody thought much of it.",
    "The neighbours talked about it for days.",
    "It was an ordinary afternoon.",
    "The weather stayed mild.",
    "Somewhere a dog barked.",
    "The smell of bread drifted down the lane.",
    "Later that evening the fire burned low.",
    "Few people noticed.",
    "Everyone seemed content.",
    "The road was quiet again.",
    "Swallows circled above the roofs.",
    "It was the kind of day people forget.",
)
_LINKS = ("Then", "Later", "Soon", "Meanwhile", "Afterwards", "Once again", "Eventually", "Before long")

# Sentence ends for user text: punctuation (optionally followed by a closing quote or bracket) then
# whitespace, or a paragraph break. Offsets point just after the punctuation.
_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*(?=\s)|(?<=\S)(?=\n\s*\n)")


@dataclass(frozen=True)
class HaystackText:
    """Plain haystack text and the offsets just after each sentence's final punctuation."""

    text: str
    sentence_ends: tuple[int, ...]
    source: str  # "generated" or the sorted file list
    sha256: str  # of the text (generated: of the generator's identity, seed and length)
    repetitions: float = 1.0  # > 1 when a user corpus had to be cycled to reach the length


def _sentence(rng: random.Random) -> str:
    shape = rng.random()
    subject, verb = rng.choice(_SUBJECTS), rng.choice(_VERBS)
    thing = f"the {rng.choice(_ADJECTIVES)} {rng.choice(_OBJECTS)}"
    if shape < 0.15:
        return rng.choice(_ASIDES)
    if shape < 0.35:
        return f"{rng.choice(_LINKS)} {subject[0].lower() + subject[1:]} {verb} {thing}."
    if shape < 0.55:
        other = f"the {rng.choice(_ADJECTIVES)} {rng.choice(_OBJECTS)}"
        return f"{subject} {verb} {thing} and {rng.choice(_VERBS)} {other} {rng.choice(_ENDINGS)}."
    return f"{subject} {verb} {thing} {rng.choice(_ENDINGS)}."


def generate_haystack(seed: int, min_chars: int) -> HaystackText:
    """Seeded prose of at least `min_chars` characters: paragraphs of 4-8 independent sentences."""
    rng = random.Random(f"niah-haystack:{seed}")  # a str seed is hashed with SHA-512: stable everywhere
    parts: list[str] = []
    ends: list[int] = []
    size = 0
    while size < min_chars:
        for index in range(rng.randint(4, 8)):
            separator = "" if size == 0 else (" " if index else "\n\n")
            sentence = _sentence(rng)
            parts.append(separator + sentence)
            size += len(separator) + len(sentence)
            ends.append(size)
    text = "".join(parts)
    # Longer requests extend the same text (same RNG stream), so the identity is the seed alone:
    # adding a longer length on --resume keeps the keys of the trials already done.
    digest = hashlib.sha256(f"generated-v1:{seed}".encode()).hexdigest()
    return HaystackText(text=text, sentence_ends=tuple(ends), source=GENERATED, sha256=digest)


# A user corpus up to this size is read whole, and its digest is the text's. A larger
# one is read only as far as the longest prompt needs, plus a bounded margin: a 40 MB file for a
# 1024-token prompt must not be decoded and tokenized whole (that took 57 s and 6 GB of memory). Its
# identity is then a streamed digest of the files' bytes, which does not depend on how much was read.
FULL_READ_BYTES = 1 << 20
_VALIDATE_BYTES = 1 << 20  # how much of each file the early check decodes
_MAX_BYTES_PER_CHAR = 4  # UTF-8


def _haystack_path(spec: str) -> Path:
    """The user's haystack path. An empty spec is a usage error: Path("") is the current folder, and
    tokenizing everything under it would send the user's files to the model or server."""
    if not spec or not spec.strip():
        raise UsageError(
            "--haystack is empty", hint="Give 'generated', a UTF-8 text file, or a folder of them."
        )
    return Path(spec).expanduser()


def _haystack_files(path: Path) -> list[Path]:
    if not path.exists():
        raise UsageError(
            f"--haystack {path} does not exist",
            hint="Give a text file or a folder of text files, or 'generated'.",
        )
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UsageError(f"--haystack {path} is neither a file nor a folder", hint="Give a UTF-8 text file.")
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise UsageError(
            f"--haystack {path} is an empty folder", hint="Put one or more UTF-8 .txt files in it."
        )
    return files


def _read_bytes(path: Path, limit: int | None) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read() if limit is None else handle.read(limit)
    except OSError as exc:
        raise UsageError(f"cannot read haystack file {path}: {exc.strerror or exc}") from None


def _read_text_file(path: Path, limit: int | None = None) -> str:
    """The file's text (at most its first `limit` bytes, cut at a character boundary)."""
    data = _read_bytes(path, limit)
    complete = limit is None or len(data) < limit
    if b"\x00" in data:
        raise UsageError(
            f"haystack file {path} looks binary (it contains NUL bytes)",
            hint="Use plain UTF-8 text files only.",
        )
    try:
        # A prefix may end inside a multi-byte character: the incremental decoder holds that tail back.
        text = data.decode("utf-8") if complete else codecs.getincrementaldecoder("utf-8")().decode(data)
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"haystack file {path} is not UTF-8 (byte {exc.start}: {exc.reason})",
            hint=f"Convert it, e.g. iconv -f latin1 -t utf-8 {shlex.quote(path.name)} > "
            f"{shlex.quote(path.stem + '.utf8.txt')}",
        ) from None
    text = text.replace("\r\n", "\n").strip()
    if not text:
        raise UsageError(f"haystack file {path} is empty", hint="Remove it or give text with some sentences.")
    return text


def _streamed_digest(files: list[Path]) -> str:
    digest = hashlib.sha256(b"files-v2")
    for path in files:
        digest.update(b"\0file\0")
        try:
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError as exc:
            raise UsageError(f"cannot read haystack file {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def _corpus(files: list[Path], min_chars: int) -> tuple[str, str]:
    """(text, digest): the whole corpus when it is small, else only the prefix `min_chars` needs."""
    try:
        total = sum(f.stat().st_size for f in files)
    except OSError as exc:
        raise UsageError(f"cannot read the haystack: {exc.strerror or exc}") from None
    if total <= FULL_READ_BYTES:
        corpus = "\n\n".join(_read_text_file(f) for f in files)
        return corpus, hashlib.sha256(corpus.encode("utf-8")).hexdigest()
    parts: list[str] = []
    have = 0
    for path in files:
        missing = min_chars - have
        if missing <= 0:
            break
        text = _read_text_file(path, limit=missing * _MAX_BYTES_PER_CHAR + 8)
        parts.append(text)
        have += len(text) + 2
    return "\n\n".join(parts), _streamed_digest(files)


def load_haystack_files(path: Path, min_chars: int) -> HaystackText:
    """The user's text files, sorted by path, joined by blank lines; cycled (and recorded) if too short."""
    files = _haystack_files(path)
    corpus, digest = _corpus(files, min_chars)
    copies = max(1, -(-min_chars // (len(corpus) + 2)))
    text = "\n\n".join([corpus] * copies)
    ends = tuple(m.end() for m in _SENTENCE_END.finditer(text)) + ((len(text),) if text[-1:] in ".!?" else ())
    return HaystackText(
        text=text,
        sentence_ends=tuple(sorted(set(ends))),
        source=";".join(str(f) for f in files),
        sha256=digest,
        repetitions=max(1.0, min_chars / max(1, len(corpus))),
    )


def load_haystack(spec: str, seed: int, min_chars: int) -> HaystackText:
    if spec == GENERATED:
        return generate_haystack(seed, min_chars)
    return load_haystack_files(_haystack_path(spec), min_chars)


def validate_haystack_spec(spec: str) -> None:
    """Fail early (before any model is loaded) on an empty spec, or a missing, empty, binary or
    non-UTF-8 haystack (the first MiB of each file is checked: enough to catch the wrong file)."""
    if spec != GENERATED:
        for path in _haystack_files(_haystack_path(spec)):
            _read_text_file(path, limit=_VALIDATE_BYTES)
