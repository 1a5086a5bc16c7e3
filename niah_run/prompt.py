"""Exact prompts as token ids in the model's own tokenizer.

input_ids = template prefix + intro + haystack slice (with the needle ids spliced in at sentence
boundaries) + outro/question + template suffix.

- Everything but the haystack (frame, intro, needle sentences, question) is run_plan/prompt_frame.py's,
  which the doctor also counts with the run's tokenizer: a length too short for it fails the preflight.
- The chat template is applied ONCE: we render it with a sentinel as the user message, split the
  rendered text at the sentinel and encode the two halves (template text and its special tokens
  only). We then check that prefix + encode(sentinel) + suffix equals the template's own
  `apply_chat_template(tokenize=True)` ids, so the frame is exactly what the template produces.
- Body pieces are encoded with add_special_tokens=False; the haystack is encoded once per run.
- The haystack slice length is chosen in closed form so len(input_ids) == the requested length.
- Nothing is ever decoded and re-encoded. Decoding happens only to *verify* (gold value exactly once).
- Depth honesty: the needle goes at the nearest sentence boundary. Where no sentence ends within
  `snap_tolerance_tokens` of the requested depth (2 % of the haystack, at least 64 tokens; code, a
  list, text without punctuation), it goes at the nearest line break, else between words, else between
  two whole characters — the first kind of boundary that is near enough — and the builder warns once.
  When no boundary of any kind is near enough, the trial is refused (DepthUnreachable): a row never
  claims a depth it did not get.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from niah_run.haystack import HaystackText
from niah_run.needles import NeedleSet
from run_plan.errors import UsageError
from run_plan.prompt_frame import (  # noqa: F401 - the frame's pieces, named here as the sweep's prompts
    INTRO,
    OUTRO,
    PLAIN_ANSWER_CUE,
    SENTINEL,
    ChatFrame,
    PromptTooShort,
    TemplateNotSplittable,
    chat_frame,
    encode,
    frame_tokens,
    needle_ids,
    outro_ids,
    too_short,
)

PROMPT_VERSION = "v1"
SNAP_TOLERANCE_SHARE = 0.02  # a needle moved by more than this share of the haystack is at another depth
SNAP_TOLERANCE_MIN_TOKENS = 64  # …but a short haystack may always move it this far (about one long sentence)


class DepthSnapWarning(UserWarning):
    """A needle could not go at a sentence boundary near the requested depth (it went at a line break or
    between words instead)."""


class DepthUnreachable(UsageError):
    """No boundary of any kind lies near the requested depth: the trial would test another depth."""


# The kinds of place a needle may go, best first: after a sentence, at a line break, between words,
# between two whole characters (never inside a word's multi-byte character).
BOUNDARY_KINDS = ("sentence", "line", "word", "character")


def _warn_depth_snap(message: str) -> None:
    warnings.warn(message, DepthSnapWarning, stacklevel=3)


def snap_tolerance_tokens(haystack_tokens: int) -> float:
    return max(SNAP_TOLERANCE_SHARE * haystack_tokens, float(SNAP_TOLERANCE_MIN_TOKENS))


_BOUNDARY_WORDS = {"line": "line break", "word": "space between words", "character": "character boundary"}


class ValueCollision(Exception):
    """A needle value occurs more or less than once in the built body: draw new values."""


def ids_sha256(ids: list[int] | tuple[int, ...]) -> str:
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()


def tokenizer_sha256(tokenizer: Any) -> str:
    """Hash of the tokenizer's full definition (vocab, merges, normalizer, added tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    blob = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TokenizedHaystack:
    ids: list[int]
    cut_points: list[int]  # sorted token indices where a sentence starts (0 included)
    sha256: str
    source: str
    repetitions: float
    # Token indices of the weaker boundaries ("line", "word", "character"), each a superset of the one
    # before: where a needle may go when no sentence ends near the requested depth.
    other_cuts: dict[str, list[int]] = field(default_factory=dict)

    def cuts(self, kind: str) -> list[int]:
        return self.cut_points if kind == "sentence" else self.other_cuts.get(kind, [])


def _next_non_space(text: str, index: int) -> int:
    while index < len(text) and text[index].isspace():
        index += 1
    return index


def tokenize_haystack(tokenizer: Any, haystack: HaystackText) -> TokenizedHaystack:
    """Encode the haystack once and map sentence ends (character offsets) onto token cut points.

    Token i is a cut point when token i-1 ends at or before the sentence end and token i starts
    between the sentence end and the next sentence's first letter: no token spans the boundary, so
    splicing needle ids there splits no word and no multi-byte character.
    """
    # split_special_tokens: a haystack is data. Text such as "<|im_end|>" in the user's files must be
    # tokenized as the characters it is, never as the control token that would end the turn.
    encoded = tokenizer(
        haystack.text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True
    )
    ids = list(encoded["input_ids"])
    offsets = encoded["offset_mapping"]
    starts = [int(o[0]) for o in offsets]
    cuts = {0}
    for end in haystack.sentence_ends:
        i = bisect.bisect_left(starts, end)
        if 0 < i < len(ids) and offsets[i - 1][1] <= end and starts[i] <= _next_non_space(haystack.text, end):
            cuts.add(i)
    return TokenizedHaystack(
        ids,
        sorted(cuts),
        haystack.sha256,
        haystack.source,
        haystack.repetitions,
        _weaker_cuts(haystack.text, offsets),
    )


def _weaker_cuts(text: str, offsets: Any) -> dict[str, list[int]]:
    """Token indices where a line break, a space, or just a character boundary separates two tokens.

    Token i qualifies only when token i-1 ends at or before token i's start (tokens that share a
    character, as byte-level pieces of one multi-byte character do, never qualify); the text around the
    seam (the last character of i-1 and the first of i) says which kind of boundary it is."""
    line, word, char = [0], [0], [0]
    for i in range(1, len(offsets)):
        before_end, start = int(offsets[i - 1][1]), int(offsets[i][0])
        if before_end > start:
            continue
        seam = text[max(before_end - 1, 0) : start + 1]
        char.append(i)
        if any(c.isspace() for c in seam):
            word.append(i)
            if "\n" in seam:
                line.append(i)
    return {"line": line, "word": word, "character": char}


@dataclass(frozen=True)
class BuiltPrompt:
    input_ids: list[int]
    body_start: int  # index of the first body token (after the template prefix)
    body_end: int  # index after the last body token (before the template suffix)
    haystack_tokens: int  # haystack tokens in the prompt (needles excluded)
    needle_index: int | None  # haystack tokens before the gold needle
    actual_depth_percent: float | None
    snap_tokens: float | None  # actual minus requested needle position, in tokens
    snap_tolerance_tokens: float | None  # the largest snap that still counts as the requested depth
    depth_snapped: bool  # |snap| > tolerance: the cell tested another depth than its label says
    needle_boundary: str | None  # the kind of boundary the gold needle went at (BOUNDARY_KINDS)
    needle_positions: tuple[int, ...]  # haystack-token position of every needle, in needle order
    body_text: str  # decoded body, for verification and the echo check only (never re-encoded)
    input_ids_sha256: str


class PromptBuilder:
    """Builds exact prompts for one tokenizer, frame and tokenized haystack."""

    def __init__(self, tokenizer: Any, frame: ChatFrame, haystack: TokenizedHaystack) -> None:
        self.tokenizer = tokenizer
        self.frame = frame
        self.haystack = haystack
        self.intro_ids = encode(tokenizer, INTRO)
        self.special_ids = frozenset(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
        self.depth_warned = False  # one warning per run is enough; every row records its own snap
        # How the one depth warning is delivered; a CLI may replace it (e.g. print "warning: …" to stderr).
        self.warn: Callable[[str], None] = _warn_depth_snap

    def fixed_tokens(self, needles: NeedleSet) -> int:
        """Everything but the haystack: template, intro, needles, outro/question."""
        return frame_tokens(
            self.frame,
            self.intro_ids,
            [needle_ids(self.tokenizer, n.text) for n in needles.needles],
            outro_ids(self.tokenizer, needles.question),
        )

    def window_starts(self, length: int) -> list[int]:
        """Sentence starts a trial's haystack window may begin at: within the first quarter of `length`.

        Bounded by the length alone (not by how much haystack was encoded), so a trial's prompt does
        not change when a longer length in the same run makes the haystack longer."""
        return [c for c in self.haystack.cut_points if c <= length // 4]

    def build(
        self,
        *,
        length: int,
        depth_percent: float | None,
        needles: NeedleSet,
        window_start: int,
        rng: random.Random,
    ) -> BuiltPrompt:
        needles_ids = [needle_ids(self.tokenizer, n.text) for n in needles.needles]
        outro = outro_ids(self.tokenizer, needles.question)
        fixed = frame_tokens(self.frame, self.intro_ids, needles_ids, outro)
        refused = too_short(length, fixed)
        if refused is not None:
            raise refused
        span = length - fixed  # closed form: the haystack fills exactly what the rest leaves
        window = self.haystack.ids[window_start : window_start + span]
        if len(window) != span:
            raise PromptTooShort(
                f"the haystack has only {len(self.haystack.ids) - window_start} tokens after "
                f"position {window_start}, {span} needed"
            )
        positions: list[int] = []
        requested = None
        boundary = None
        if needles.needles:
            requested = (depth_percent or 0.0) / 100.0 * span
            boundary, cuts, gold = self._place(window_start, span, requested, depth_percent, length)
            others = [c for c in cuts if c != gold] or [gold]
            positions = [gold] + [rng.choice(others) for _ in needles.needles[1:]]
        body = self._splice(window, needles_ids, positions)
        ids = list(self.frame.prefix_ids) + self.intro_ids + body + outro + list(self.frame.suffix_ids)
        # Exactness is the product's promise: fail loudly rather than test less than asked.
        assert len(ids) == length, (len(ids), length)
        body_start = len(self.frame.prefix_ids)
        body_end = len(ids) - len(self.frame.suffix_ids)
        inside = set(ids[body_start:body_end]) & self.special_ids
        if inside:
            raise UsageError(
                f"special token ids {sorted(inside)} inside the prompt body (the haystack text "
                "tokenizes to the model's control tokens)",
                hint="Remove chat-template markers such as <|im_end|> from the haystack files.",
            )
        body_text = self.tokenizer.decode(ids[body_start:body_end])
        self._check_values(body_text, needles)
        gold_index = positions[0] if positions else None
        snap = None if gold_index is None or requested is None else round(gold_index - requested, 3)
        tolerance = None if snap is None else round(snap_tolerance_tokens(span), 3)
        snapped = snap is not None and tolerance is not None and abs(snap) > tolerance
        actual = None if gold_index is None else round(100.0 * gold_index / span, 3)
        if boundary not in (None, "sentence") and not self.depth_warned:
            self.depth_warned = True
            self.warn(
                f"the haystack has no sentence end near depth {depth_percent:g}% at {length} tokens: the "
                f"needle goes at the nearest {_BOUNDARY_WORDS[boundary]} instead ({actual:g}%, within the "
                f"{tolerance:g}-token tolerance). Prose, or text with blank lines between blocks, keeps every "
                "needle between sentences"
            )
        return BuiltPrompt(
            input_ids=ids,
            body_start=body_start,
            body_end=body_end,
            haystack_tokens=span,
            needle_index=gold_index,
            actual_depth_percent=actual,
            snap_tokens=snap,
            snap_tolerance_tokens=tolerance,
            depth_snapped=snapped,
            needle_boundary=boundary,
            needle_positions=tuple(positions),
            body_text=body_text,
            input_ids_sha256=ids_sha256(ids),
        )

    def _place(
        self, start: int, span: int, requested: float, depth_percent: float | None, length: int
    ) -> tuple[str, list[int], int]:
        """(kind, the window's boundaries of that kind, the one nearest the requested position): the best
        kind of boundary that has one within the tolerance. DepthUnreachable when none has."""
        tolerance = snap_tolerance_tokens(span)
        for kind in BOUNDARY_KINDS:
            cuts = self._relative_cuts(start, span, self.haystack.cuts(kind))
            gold = min(cuts, key=lambda c: (abs(c - requested), c))
            if abs(gold - requested) <= tolerance or not self.haystack.other_cuts:
                return kind, cuts, gold  # a haystack with no weaker cuts has only its sentence ends
        raise DepthUnreachable(
            f"the haystack has no place near depth {depth_percent:g}% of a {length}-token prompt to put the "
            f"needle: no sentence end, line break, space or whole-character boundary within {tolerance:g} "
            "tokens of it",
            hint="Use a haystack of ordinary text (prose, or text with line breaks), or other --depths.",
        )

    def _relative_cuts(self, start: int, span: int, cuts: list[int] | None = None) -> list[int]:
        cuts = self.haystack.cut_points if cuts is None else cuts
        lo = bisect.bisect_left(cuts, start)
        hi = bisect.bisect_left(cuts, start + span)
        # The window start is a cut point by construction (0 or a chosen sentence start); the end is
        # only a cut point if a sentence really ends there, so depth 100 snaps to the last full sentence.
        rel = [c - start for c in cuts[lo:hi]]
        if start + span in cuts[hi : hi + 1]:
            rel.append(span)
        return rel if rel and rel[0] == 0 else [0, *rel]

    @staticmethod
    def _splice(window: list[int], needle_ids: list[list[int]], positions: list[int]) -> list[int]:
        order = sorted(range(len(positions)), key=lambda i: (positions[i], i))
        body, last = [], 0
        for i in order:
            body += window[last : positions[i]]
            body += needle_ids[i]
            last = positions[i]
        return body + window[last:]

    @staticmethod
    def _check_values(body_text: str, needles: NeedleSet) -> None:
        from niah_run.scoring import count_value

        for value, value_type, in_document in needles.prompt_audit():
            # the body also holds the question, which may name the value itself (counting, association)
            expected = in_document + count_value(needles.question, value, value_type)
            found = count_value(body_text, value, value_type)
            if found != expected:
                raise ValueCollision(
                    f"value {value!r} occurs {found} times in the prompt body, {expected} expected"
                )
