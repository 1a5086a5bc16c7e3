"""The server backend end to end over real HTTP: our OpenAI-compatible server (starlette + uvicorn)
runs in this process on 127.0.0.1 with an ephemeral port, backed by the local transformers backend on
a tiny random-weight Llama built here; the real OpenAIBackend talks to it. No mocked HTTP client.

Proves: token-id prompts give the same output ids as the local backend; /v1/models lists the model;
the doctor's server checks pass, and FAIL with a cause on a closed port or a too-short max length;
503s are retried then succeed, 4xx are not retried; the API key reaches the server but never
describe(), logs, errors or the doctor report.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from doctor.api import judge  # noqa: E402
from doctor.report.model import Status  # noqa: E402
from doctor.report.redact import Redactor  # noqa: E402
from doctor.report.render_json import render_json  # noqa: E402
from doctor.report.render_text import render_text  # noqa: E402
from niah_run.backends.base import Generation  # noqa: E402
from niah_run.backends.hf import HFBackend  # noqa: E402
from niah_run.backends.openai import OpenAIBackend, ServerRequestError, make_openai_backend  # noqa: E402
from niah_run.serve import create_app, serve_app  # noqa: E402
from run_plan.spec import RunSpec  # noqa: E402


def run_doctor(target: RunSpec, *, only: tuple[str, ...] = (), argv: tuple[str, ...] = ("doctor",)):
    return judge(target, only=only, argv=argv).report


VOCAB = 200
EOS = 2
MODEL_NAME = "tiny-llama"
MAX_MODEL_LEN = 256
API_KEY = "sk-test-0123456789abcdefXYZ"  # shaped like a real key, so a leak would be obvious
MAX_NEW = 8


def word_level_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": EOS, **{f"w{i}": i for i in range(3, VOCAB)}}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_MODEL_LEN,
        bos_token_id=1,
        eos_token_id=EOS,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).float().eval()


def prompt(length: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (length,), generator=generator).tolist()


class FlakyCompletions:
    """ASGI wrapper: answers the next `fail_next` completions with 503 (Retry-After: 0), counts calls."""

    def __init__(self, app) -> None:  # noqa: ANN001
        self.app = app
        self.fail_next = 0
        self.completion_calls = 0
        self.auth_headers: list[str] = []

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] == "http" and scope["path"] == "/v1/completions":
            self.completion_calls += 1
            headers = dict(scope.get("headers") or [])
            self.auth_headers.append(headers.get(b"authorization", b"").decode())
            if self.fail_next > 0:
                self.fail_next -= 1
                from starlette.responses import JSONResponse

                busy = JSONResponse(
                    {"error": {"message": "server busy"}}, status_code=503, headers={"Retry-After": "0"}
                )
                await busy(scope, receive, send)
                return
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def tokenizer():
    return word_level_tokenizer()


@pytest.fixture(scope="module")
def local_backend(tokenizer):
    backend = HFBackend(tiny_llama(), tokenizer)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def server(local_backend) -> Iterator[tuple[str, FlakyCompletions]]:
    app = FlakyCompletions(
        create_app(local_backend, model_name=MODEL_NAME, max_model_len=MAX_MODEL_LEN, api_key=API_KEY)
    )
    with serve_app(app, host="127.0.0.1", port=0) as running:
        assert running.host == "127.0.0.1" and running.port > 0
        yield running.url, app
    assert not running.running  # the server stopped by itself


@pytest.fixture
def with_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)


@pytest.fixture
def client(server, tokenizer, with_key) -> OpenAIBackend:
    url, _ = server
    return make_openai_backend(
        url, MODEL_NAME, tokenizer, timeout_s=30, retries=3, concurrency=2, backoff_s=0.01
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on exit: nothing listens there


def test_token_id_prompts_give_the_local_backends_output_ids(client, local_backend, server) -> None:
    _, app = server
    for length, seed in ((5, 1), (40, 2), (120, 3)):
        ids = prompt(length, seed)
        local = local_backend.generate(ids, max_new_tokens=MAX_NEW)
        remote = client.generate(ids, max_new_tokens=MAX_NEW)
        assert isinstance(remote, Generation)
        assert remote.output_ids == local.output_ids
        assert remote.stopped_at_eos == local.stopped_at_eos
    assert client.describe()["output_ids_from"] == "server token_ids"
    assert app.auth_headers[-1] == f"Bearer {API_KEY}"  # the key did reach the server, in the header


def test_generate_many_matches_sequential_and_reports_each_trial(client, local_backend) -> None:
    prompts = [prompt(10 + 7 * i, 10 + i) for i in range(5)]
    expected = [local_backend.generate(p, max_new_tokens=4).output_ids for p in prompts]
    results = dict(client.generate_many(iter(prompts), max_new_tokens=4))  # a lazy iterable works
    assert sorted(results) == list(range(5))
    assert [results[i].output_ids for i in range(5)] == expected


def test_without_server_token_ids_the_text_is_reencoded(server, tokenizer, with_key) -> None:
    # A server without return_token_ids: only the generated text comes back; our tokenizer encodes it.
    url, _ = server
    backend = make_openai_backend(url, MODEL_NAME, tokenizer, timeout_s=30, retries=0)
    ids = prompt(30, 7)
    doc = {"choices": [{"text": "w5 w6 w7", "finish_reason": "length"}], "usage": {"prompt_tokens": 30}}
    generation = backend._generation_from(doc, ids, 0.1, 3)  # "length" at our own limit: measured
    assert generation.output_ids == tuple(tokenizer.encode("w5 w6 w7", add_special_tokens=False))
    with pytest.raises(ServerRequestError, match="counted 29 prompt tokens, we sent 30"):
        backend._generation_from({"choices": [{"text": ""}], "usage": {"prompt_tokens": 29}}, ids, 0.1, 32)


def test_models_endpoint_lists_the_model_with_its_length(client) -> None:
    models = client.server_models()
    assert [(m.id, m.max_model_len) for m in models] == [(MODEL_NAME, MAX_MODEL_LEN)]


def test_503_is_retried_then_succeeds(client, server, caplog: pytest.LogCaptureFixture) -> None:
    _, app = server
    ids = prompt(12, 4)
    before = app.completion_calls
    app.fail_next = 2
    with caplog.at_level(logging.WARNING, logger="niah_run.backends.openai"):
        generation = client.generate(ids, max_new_tokens=MAX_NEW)
    assert app.completion_calls - before == 3  # two 503s, then the answer
    assert len(generation.output_ids) > 0
    assert "HTTP 503" in caplog.text
    assert API_KEY not in caplog.text


def test_503_until_retries_run_out_is_a_retryable_trial_error(client, server) -> None:
    _, app = server
    app.fail_next = 10
    try:
        with pytest.raises(ServerRequestError) as info:
            client.generate(prompt(8, 5), max_new_tokens=2)
    finally:
        app.fail_next = 0
    assert info.value.status == 503 and info.value.retryable and info.value.attempts == 4


def test_4xx_is_not_retried(server, tokenizer, with_key) -> None:
    url, app = server
    wrong_model = make_openai_backend(
        url, "no-such-model", tokenizer, timeout_s=30, retries=3, backoff_s=0.01
    )
    before = app.completion_calls
    with pytest.raises(ServerRequestError) as info:
        wrong_model.generate(prompt(8, 6), max_new_tokens=2)
    assert app.completion_calls - before == 1
    assert info.value.status == 404 and not info.value.retryable
    assert "no-such-model" in str(info.value)


def test_wrong_key_is_a_401_without_the_key_in_the_error(server, tokenizer, monkeypatch) -> None:
    url, _ = server
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-000000000000000")
    backend = make_openai_backend(url, MODEL_NAME, tokenizer, timeout_s=30, retries=2, backoff_s=0.01)
    with pytest.raises(ServerRequestError) as info:
        backend.generate(prompt(8, 6), max_new_tokens=2)
    assert info.value.status == 401
    assert "sk-wrong-key" not in str(info.value)


def test_closed_port_is_a_connection_error_after_retries(tokenizer) -> None:
    backend = make_openai_backend(
        f"http://127.0.0.1:{closed_port()}", MODEL_NAME, tokenizer, timeout_s=5, retries=1, backoff_s=0.01
    )
    with pytest.raises(ServerRequestError, match="cannot reach") as info:
        backend.generate([5, 6, 7], max_new_tokens=2)
    assert info.value.retryable and info.value.attempts == 2


def test_api_key_never_in_describe(client) -> None:
    text = json.dumps(client.describe()) + repr(client)
    assert API_KEY not in text
    redactor = Redactor(environ={"OPENAI_API_KEY": API_KEY}, home="/nonexistent-home")
    assert redactor.scrub(text) == text and not redactor.found
    assert client.describe()["api_key_set"] is True
    assert client.describe()["max_model_len"] == MAX_MODEL_LEN


def doctor_report(url: str, context: int, model: str = MODEL_NAME):
    return run_doctor(
        RunSpec(model=model, context=context, base_url=url),
        only=("server",),
        argv=("doctor", "--base-url", url),
    )


def statuses(report) -> dict[str, Status]:
    return {c.id: c.status for c in report.checks}


def test_doctor_server_checks_pass_against_our_server(server, with_key) -> None:
    url, _ = server
    report = doctor_report(url, context=128)
    assert statuses(report) == {
        "server-reachable": Status.PASS,
        "server-model-listed": Status.PASS,
        "server-max-model-len": Status.PASS,
    }
    rendered = render_json(report) + render_text(report, verbose=True, strict=False, color=False)
    assert API_KEY not in rendered
    # Not merely scrubbed on the way out: nothing in the report ever held the key.
    assert not {"env:OPENAI_API_KEY", "api-key"} & set(report.redactions)


def test_doctor_fails_on_a_closed_port_with_the_cause() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    report = doctor_report(url, context=128)
    reachable = next(c for c in report.checks if c.id == "server-reachable")
    assert reachable.status is Status.FAIL
    assert "cannot reach" in reachable.summary and "refused" in reachable.summary.lower()
    assert reachable.fix is not None
    assert statuses(report)["server-model-listed"] is Status.SKIP


def test_doctor_fails_when_max_model_len_is_too_small(server, with_key) -> None:
    url, _ = server
    report = doctor_report(url, context=MAX_MODEL_LEN * 4)
    check = next(c for c in report.checks if c.id == "server-max-model-len")
    assert check.status is Status.FAIL
    assert f"{MAX_MODEL_LEN:,}" in check.summary
    assert check.fix is not None and "--max-model-len" in " ".join(check.fix.commands)


def test_doctor_fails_when_the_model_is_not_served(server, with_key) -> None:
    url, _ = server
    report = doctor_report(url, context=128, model="meta-llama/Llama-4-Scout-17B-16E-Instruct")
    assert statuses(report)["server-model-listed"] is Status.FAIL


def test_doctor_without_base_url_skips_the_server_section() -> None:
    report = run_doctor(RunSpec(model=MODEL_NAME, context=128), only=("server",), argv=("doctor",))
    assert {c.status for c in report.checks} == {Status.SKIP}


def test_server_takes_a_string_prompt_and_rejects_too_long_ones(server, tokenizer) -> None:
    from niah_run.backends.openai import request_json

    url, _ = server
    body = {
        "model": MODEL_NAME,
        "prompt": "w5 w6 w7 w8",
        "max_tokens": 3,
        "temperature": 0,
        "return_token_ids": True,
    }
    _, doc = request_json("POST", url + "/v1/completions", body=body, api_key=API_KEY, timeout_s=30)
    choice = doc["choices"][0]
    assert choice["prompt_token_ids"] == tokenizer.encode("w5 w6 w7 w8")
    assert doc["usage"]["prompt_tokens"] == len(choice["prompt_token_ids"])
    assert len(choice["token_ids"]) == doc["usage"]["completion_tokens"] <= 3


def test_prompt_over_max_model_len_is_a_non_retried_400(client, server) -> None:
    _, app = server
    before = app.completion_calls
    with pytest.raises(ServerRequestError, match="maximum context length is 256") as info:
        client.generate(prompt(MAX_MODEL_LEN, 8), max_new_tokens=4)
    assert info.value.status == 400 and app.completion_calls - before == 1


def test_generate_many_returns_a_failed_trial_as_its_error(client) -> None:
    prompts = [prompt(10, 20), prompt(MAX_MODEL_LEN, 21), prompt(12, 22)]  # the middle one is too long
    results = dict(client.generate_many(prompts, max_new_tokens=4))
    assert isinstance(results[0], Generation) and isinstance(results[2], Generation)
    assert isinstance(results[1], ServerRequestError) and results[1].status == 400


def test_an_answer_the_server_cut_short_is_not_measured(server, tokenizer) -> None:
    # vLLM 0.32 shortens max_tokens to what its max_model_len leaves and says finish_reason "length".
    url, _ = server
    backend = make_openai_backend(url, MODEL_NAME, tokenizer, timeout_s=30, retries=0)
    ids = prompt(30, 7)
    doc = {
        "choices": [{"text": "w5 w6 w7", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 3},
    }
    with pytest.raises(ServerRequestError, match="not measured"):
        backend._generation_from(doc, ids, 0.1, 32)
    assert "our tokenizer" in backend.describe()["output_ids_from"]
