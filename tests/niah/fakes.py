"""Test doubles for the NIAH runner: a tokenizer made in the test (no network) and a scripted backend.

The tokenizer is a byte-level BPE trained on our own generated haystack plus the needle vocabulary,
wrapped in transformers' PreTrainedTokenizerFast with a ChatML-like jinja template and special tokens.
"""

from __future__ import annotations

import functools
import os
import re
import time
from typing import Any

from niah_run.backends.base import BackendOOM, Generation

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|bos|>", "<|im_start|>", "<|im_end|>", "<pad>"]


def _training_text() -> list[str]:
    from niah_run.haystack import generate_haystack
    from niah_run.prompt import INTRO, OUTRO
    from run_plan.needle_draws import _KEY_WORDS

    text = generate_haystack(seed=123, min_chars=60_000).text
    extras = [
        INTRO,
        OUTRO,
        "The secret passkey is 1234567. The secret code is 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d.",
        "What is the secret passkey mentioned in the document? Reply with the passkey only.",
        "One of the special magic numbers for key is: 7654321. " + " ".join(_KEY_WORDS),
        "0123456789 abcdef I cannot find it, sorry. Answer:",
    ]
    return [text, *extras]


@functools.lru_cache(maxsize=4)
def build_tokenizer(vocab_size: int = 600, with_template: bool = True) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>"],
    )
    if with_template:
        wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


_VALUE = re.compile(r"(?:passkey is|code is|word is|for \w+ is:) ([0-9a-f-]+|\w+)")


class FakeBackend:
    """Answers by a rule: the first needle value in the prompt (like a perfect retriever).

    oom_from: prompts this long or longer raise BackendOOM; sleep_s: per-trial delay (for kill tests);
    wrong_at_depth: returns a made-up value when the needle sits below this fraction of the body.
    """

    name = "fake"

    def __init__(
        self,
        tokenizer: Any | None = None,
        *,
        oom_from: int | None = None,
        sleep_s: float = 0.0,
        answer: str | None = None,
        max_position_embeddings: int | None = None,
    ) -> None:
        self._tokenizer = tokenizer or build_tokenizer()
        self.oom_from = oom_from
        self.sleep_s = sleep_s
        self.answer = answer
        self.max_position_embeddings = max_position_embeddings
        self.calls: list[dict[str, Any]] = []
        self.closed = False

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.name, "model": "fake", "dtype": "float32"}
        if self.max_position_embeddings:
            out["max_position_embeddings"] = self.max_position_embeddings
        return out

    def generate(
        self,
        input_ids: list[int],
        *,
        max_new_tokens: int,
        reusable_prefix_len: int = 0,
        snapshot_at: int | None = None,
        on_prefill: Any = None,
    ) -> Generation:
        self.calls.append({"n": len(input_ids), "reusable": reusable_prefix_len, "snapshot_at": snapshot_at})
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if self.oom_from is not None and len(input_ids) >= self.oom_from:
            raise BackendOOM(f"fake OOM at {len(input_ids)} tokens", memory={"peak_bytes": 123})
        if self.answer is not None:
            text = self.answer
        else:
            prompt = self._tokenizer.decode(input_ids)  # test double only: a real backend never decodes
            match = _VALUE.search(prompt)
            text = f"The answer is {match.group(1)}." if match else "There is no such value in the document."
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"][:max_new_tokens]
        eos = len(ids) < max_new_tokens
        return Generation(
            output_ids=tuple(ids),
            stopped_at_eos=eos,
            prefill_seconds=0.001,
            decode_seconds=0.001,
            reused_prefix_tokens=reusable_prefix_len,
        )

    def close(self) -> None:
        self.closed = True


def install_fake_backend(**kwargs: Any) -> None:
    """Make `niah run` use FakeBackend (in this process) and skip nothing else."""
    from niah_run import sweep

    sweep.make_backend = lambda config: FakeBackend(**kwargs)


def subprocess_main() -> None:
    """Entry for subprocess tests: `python -c 'from tests.niah.fakes import subprocess_main; subprocess_main()' ...`.

    NIAH_FAKE_SLEEP / NIAH_FAKE_OOM_FROM configure the fake; argv are `niah` arguments.
    """
    import sys

    from doctor.boundary import run_cli
    from niah_run.cli import niah_command

    oom = os.environ.get("NIAH_FAKE_OOM_FROM")
    install_fake_backend(
        sleep_s=float(os.environ.get("NIAH_FAKE_SLEEP", "0")), oom_from=int(oom) if oom else None
    )
    sys.exit(run_cli(niah_command, sys.argv[1:], prog_name="niah"))
