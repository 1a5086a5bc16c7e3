"""The user's haystack, whatever its shape and size.

Class (b), a haystack without sentence punctuation: for every requested depth the needle goes at the
best boundary near it (a sentence end, else a line break, else a space, else a character boundary), and
the row records where it really went; when no boundary is near, the trial is refused. A row never
claims a depth it did not get.

Class (c), a large haystack for a short run: only what the longest length needs is read and tokenized
(plus a bounded margin), whatever the file's size.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from niah_run.haystack import FULL_READ_BYTES, generate_haystack, load_haystack_files
from niah_run.needles import make_needles
from niah_run.prompt import (
    DepthUnreachable,
    PromptBuilder,
    TokenizedHaystack,
    chat_frame,
    snap_tolerance_tokens,
    tokenize_haystack,
)
from niah_run.results import read_rows
from niah_run.sweep import RunFolder, Sweep
from run_plan.spec import RunSpec
from tests.niah.fakes import FakeBackend, build_tokenizer

DEPTHS = (0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 100.0)
_PROSE = generate_haystack(seed=3, min_chars=60_000).text


def _no_punctuation(text: str) -> str:
    return "".join(c for c in text if c not in ".!?").replace("\n\n", " ")


# Shapes of text with few or no sentence ends, and the boundary each offers instead.
SHAPES = {
    "words, no punctuation, one line": (lambda: _no_punctuation(_PROSE), "word"),
    "code: lines, no sentence ends": (
        lambda: "\n".join(f"x_{i % 9} = f(y[{i % 7}]) + g(z_{i % 5})" for i in range(3000)),
        "line",
    ),
    "one endless word": (lambda: "ab" * 30_000, "character"),
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_depth_is_met_at_the_best_boundary_near_it(tokenizer, tmp_path: Path, shape: str) -> None:
    make, expected_kind = SHAPES[shape]
    path = tmp_path / "hay.txt"
    path.write_text(make(), encoding="utf-8")
    hay = tokenize_haystack(tokenizer, load_haystack_files(path, 30_000))
    builder = PromptBuilder(tokenizer, chat_frame(tokenizer), hay)
    builder.warn = lambda message: None
    for depth in DEPTHS:
        prompt = builder.build(
            length=1024,
            depth_percent=depth,
            needles=make_needles("passkey", random.Random(int(depth))),
            window_start=0,
            rng=random.Random(int(depth)),
        )
        assert len(prompt.input_ids) == 1024
        tolerance = snap_tolerance_tokens(prompt.haystack_tokens)
        assert abs(prompt.needle_index - depth / 100 * prompt.haystack_tokens) <= tolerance, (shape, depth)
        assert not prompt.depth_snapped
        if 0 < depth < 100:
            assert prompt.needle_boundary == expected_kind, (shape, depth)


def test_no_boundary_near_the_depth_is_refused_not_mislabelled(tokenizer) -> None:
    ids = list(range(10, 3010))
    bare = TokenizedHaystack(ids, [0], "x", "x", 1.0, {"line": [0], "word": [0], "character": [0]})
    builder = PromptBuilder(tokenizer, chat_frame(tokenizer), bare)
    needles = make_needles("passkey", random.Random(1))
    with pytest.raises(DepthUnreachable, match="no place near depth 50%"):
        builder.build(length=1024, depth_percent=50, needles=needles, window_start=0, rng=random.Random(1))


def test_a_sweep_over_text_without_punctuation_records_the_depths_it_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "hay.txt"
    path.write_text(_no_punctuation(_PROSE), encoding="utf-8")
    spec = RunSpec(model="demo", lengths=(512,), depths=(0.0, 50.0, 100.0), haystack=str(path))
    folder = RunFolder(tmp_path / "run", skip_preflight=True, quiet=True)
    sweep = Sweep(spec, folder, backend_factory=lambda config: FakeBackend())
    sweep.run()
    rows = read_rows(tmp_path / "run" / "results.jsonl")
    for row in rows:
        assert abs(row["actual_depth_percent"] - row["depth_percent"]) <= 15, row["depth_percent"]
        assert row["depth_snapped"] is False
        assert row["correct"]


def test_a_large_haystack_is_read_and_tokenized_only_as_far_as_the_run_needs(
    tmp_path: Path, monkeypatch
) -> None:
    """The default limits, a file many times over them: what is tokenized scales with the longest length."""
    import niah_run.sweep as sweep_module

    big = tmp_path / "big.txt"
    with big.open("w", encoding="utf-8") as handle:
        for _ in range(8 * FULL_READ_BYTES // len(_PROSE) + 1):
            handle.write(_PROSE + "\n\n")
    assert big.stat().st_size > 8 * FULL_READ_BYTES
    tokenized: list[int] = []
    real = sweep_module.tokenize_haystack
    monkeypatch.setattr(
        sweep_module, "tokenize_haystack", lambda tok, hay: tokenized.append(len(hay.text)) or real(tok, hay)
    )
    for longest in (512, 2048):
        spec = RunSpec(model="demo", lengths=(longest,), depths=(50.0,), haystack=str(big))
        folder = RunFolder(tmp_path / f"run{longest}", skip_preflight=True, quiet=True)
        Sweep(spec, folder, backend_factory=lambda config: FakeBackend()).run()
    short, long = tokenized[0], tokenized[-1]
    assert long < 100 * 2048  # characters: a bounded multiple of what 2,048 tokens need, not 8 MiB
    assert short < long  # it grows with the longest length, not with the file
