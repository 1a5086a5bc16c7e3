"""Room for the answer on a server, and what a server's `finish_reason` means for scoring.

A server caps prompt + answer at its `max_model_len`. Measured against vLLM 0.32 (CPU build, the
demo model served at max_model_len 8192, max_tokens 32; see docs/scaling.md):

- prompt 8192 of 8192: HTTP 400 ("max_tokens must be at least 1") — the trial errors;
- prompt 8180 of 8192: HTTP 200, the answer silently shortened to 12 tokens with finish_reason
  "length" — scored as a `truncated` miss, although the model was never allowed to answer.

Neither is a measurement of the model. So a length without room for `--max-new-tokens` is refused
before the sweep starts (`room_for_answer`, `refuse_lengths_without_room`), and a reply the server
cut short anyway (a server whose cap we could not read) is "not measured", never a miss
(`classify_server_finish`).

Pure functions: the sweep and the server backend call them (see each docstring for where).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from run_plan.errors import UsageError

__all__ = [
    "ServerFinish",
    "classify_server_finish",
    "output_ids_source",
    "refuse_lengths_without_room",
    "room_for_answer",
    "server_room_summary",
]


def room_for_answer(length: int, max_new_tokens: int, server_max_model_len: int | None) -> str | None:
    """Why a prompt of `length` tokens cannot get a full `max_new_tokens` answer from a server whose
    cap is `server_max_model_len` (prompt + answer), or None when it can (or the cap is unknown).

    The message names the length, the room left, what the server would do, and the fix."""
    if server_max_model_len is None or length + max_new_tokens <= server_max_model_len:
        return None
    return (
        f"{_what_happens(length, max_new_tokens, server_max_model_len)}. Fix: "
        + "; or ".join(_fixes(length, max_new_tokens, server_max_model_len))
        + "."
    )


def _what_happens(length: int, max_new_tokens: int, cap: int) -> str:
    room = cap - length
    if room <= 0:
        what = "the server rejects the request (no token is left for the answer)"
    else:
        # vLLM 0.32 shortens max_tokens to what is left; other servers reject with HTTP 400. Either
        # way the model does not get the answer length every other cell gets.
        what = (
            f"the server cuts the answer at {room} token{'s' if room != 1 else ''} (or rejects the "
            "request), and a cut answer would score as a miss the model never made"
        )
    return (
        f"length {length:,} leaves {max(room, 0)} of --max-new-tokens {max_new_tokens} tokens for the "
        f"answer within the server's max_model_len {cap:,}: {what}"
    )


def _fixes(length: int, max_new_tokens: int, cap: int) -> list[str]:
    fixes = []
    if cap - max_new_tokens > 0:
        fixes.append(f"use --lengths up to {cap - max_new_tokens:,} (max_model_len − --max-new-tokens)")
    if cap - length > 0:
        fixes.append(f"lower --max-new-tokens to {cap - length}")
    fixes.append(f"restart the server with --max-model-len {length + max_new_tokens:,} or more")
    return fixes


def refuse_lengths_without_room(
    lengths: Iterable[int], max_new_tokens: int, server_max_model_len: int | None
) -> None:
    """Raise UsageError (exit 2) naming every length that leaves too little room for the answer.

    Call it before the first trial, next to the max_position_embeddings check in
    niah_run.sweep.Sweep._run_loaded, with `backend.describe().get("max_model_len")` (only the server
    backend reports that key; a local model does not cut its answers)."""
    short = sorted({n for n in lengths if room_for_answer(n, max_new_tokens, server_max_model_len)})
    if not short or server_max_model_len is None:
        return
    others = f" (and {', '.join(f'{n:,}' for n in short[1:])})" if len(short) > 1 else ""
    raise UsageError(
        f"{_what_happens(short[0], max_new_tokens, server_max_model_len)}{others}; such cells "
        "would not be measurements, so the run refuses them before it starts",
        hint="Fix: " + "; or ".join(_fixes(short[-1], max_new_tokens, server_max_model_len)) + ".",
    )


def server_room_summary(max_model_len: int, context: int) -> str:
    """The doctor's `server-max-model-len` WARN text when few tokens are left for the answer.

    What servers do with a larger max_tokens (measured on vLLM 0.32): shorten it to what is left,
    silently (finish_reason "length"), or reject the request when nothing is left (HTTP 400)."""
    room = max_model_len - context
    if room <= 0:
        what = 'requests are rejected (vLLM: HTTP 400, "max_tokens must be at least 1")'
    else:
        what = (
            f"the server shortens longer answers to {room} token{'s' if room != 1 else ''} without an error "
            '(vLLM 0.32: finish_reason "length"; other servers reject them)'
        )
    return (
        f"max_model_len {max_model_len:,} leaves {max(room, 0)} tokens for the answer after {context:,} "
        f"prompt tokens: {what}; `niah run` refuses lengths without room for --max-new-tokens"
    )


@dataclass(frozen=True)
class ServerFinish:
    """How to record one server reply.

    `measured`: False means the trial must not be scored (record it as an error naming `reason`).
    `stopped_at_eos`: for measured replies, what the scorer's `truncated` class needs."""

    measured: bool
    stopped_at_eos: bool
    reason: str


# OpenAI-style finish reasons that end an answer normally (EOS or a stop string).
_NATURAL_STOPS = frozenset({"stop", "eos", "stop_sequence", "end_turn"})
_LIMIT = "length"


def classify_server_finish(
    finish_reason: object, completion_tokens: int | None, max_new_tokens: int
) -> ServerFinish:
    """Read a completion's `finish_reason` against the answer length we asked for.

    - "stop": the model ended its answer (measured, stopped at EOS);
    - "length" after `max_new_tokens` tokens: our own limit, a normal (possibly `truncated`) answer;
    - "length" before `max_new_tokens` tokens: the SERVER cut it (its max_model_len left less room,
      which vLLM 0.32 does silently): not measured, never a miss;
    - "abort", "content_filter", anything else: the server stopped it for its own reasons: not measured;
    - missing (servers that do not send one): measured; it stopped at EOS only if it is shorter than
      the limit.

    `completion_tokens`: the reply's `usage.completion_tokens`, else the number of output ids the
    reply carried; None when neither is known (a "length" reply is then taken as our own limit).

    Call it in OpenAIBackend._read_completion (it needs `max_new_tokens` passed down from generate):
    raise ServerRequestError(reason) when not `measured`, else use `stopped_at_eos`."""
    count = (
        completion_tokens
        if isinstance(completion_tokens, int) and not isinstance(completion_tokens, bool)
        else None
    )
    if finish_reason is None:
        stopped = count is not None and count < max_new_tokens
        return ServerFinish(True, stopped, "no finish_reason from the server")
    reason = str(finish_reason)
    if reason in _NATURAL_STOPS:
        return ServerFinish(True, True, f"finish_reason {reason!r}")
    if reason == _LIMIT:
        if count is not None and count < max_new_tokens:
            return ServerFinish(
                False,
                False,
                f"not measured: the server cut the answer at {count} of {max_new_tokens} tokens "
                "(finish_reason 'length'; its max_model_len left no more room after the prompt)",
            )
        return ServerFinish(True, False, f"finish_reason 'length' at --max-new-tokens {max_new_tokens}")
    return ServerFinish(
        False, False, f"not measured: the server ended the answer with finish_reason {reason[:40]!r}"
    )


def output_ids_source(server_ids_replies: int, reencoded_replies: int) -> str:
    """What config.json's backend `output_ids_from` should say AFTER the trials: which path the run
    actually used (the server's `token_ids`, or our tokenizer on the returned text), counted per reply.

    Call it when the sweep ends (OpenAIBackend counts both paths; Sweep re-reads describe() and saves
    config.json again), so the saved value is a fact, not the guess made before the first request."""
    if server_ids_replies and reencoded_replies:
        return (
            f"mixed: server token_ids on {server_ids_replies} replies, our tokenizer on the text "
            f"on {reencoded_replies}"
        )
    if server_ids_replies:
        return "server token_ids"
    if reencoded_replies:
        return "our tokenizer on the text (the server returned no token_ids)"
    return "no reply yet"
