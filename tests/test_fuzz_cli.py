"""Property tests over the CLI entry points (issue 10): whatever the input — flag values, `--config`
TOML documents, `config.json` documents, the replies of a server — `doctor` and `niah` answer with
exit code 0, 1, 2 or 130, never 3, never a traceback, and `--format json` is always strict JSON.

In-process through the one error boundary (`doctor.boundary.run_cli`, what the console scripts call),
with `niah run`'s backend replaced by the test fake and servers as real sockets on 127.0.0.1.
Bounded for CI: few examples per property, no deadline, small lengths (the fake model's limit is 4096
positions, so a random valid length can never make a long prompt).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from doctor.boundary import run_cli
from doctor.cli import doctor_command
from niah_run.cli import niah_command
from tests.test_security_http import FakeServer, WordTokenizer, raw_route, send_bytes

ALLOWED = {0, 1, 2, 130}
# CI: 12 fixed examples per property. NIAH_FUZZ_EXAMPLES=200 explores (random seeds) for longer.
_EXPLORE = int(os.environ.get("NIAH_FUZZ_EXAMPLES") or 0)
FUZZ = settings(
    max_examples=_EXPLORE or 12,
    deadline=None,
    derandomize=not _EXPLORE,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
CHEAP_DOCTOR = ("--no-live", "--only", "run-args,platform,server")
MODEL_CHECKS = ("--no-live", "--only", "model-resolves,context-within-model-limit,checkpoint-format")


def call(command: Any, args: list[str], prog: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_cli(command, args, prog_name=prog)
    return code, out.getvalue(), err.getvalue()


def assert_clean(code: int, err: str, args: Any) -> None:
    assert code in ALLOWED, (code, args, err)
    assert "Traceback" not in err and "internal error" not in err, (args, err)


def strict_json(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in the JSON report")

    return json.loads(text, parse_constant=refuse)


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="niah-fuzz-"))
    try:
        yield folder
    finally:
        from niah_run import run_folder

        run_folder.unlock(folder / "out")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def fake_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    import niah_run.sweep as sweep_module
    from tests.niah.fakes import FakeBackend, build_tokenizer

    tokenizer = build_tokenizer()
    monkeypatch.setattr(
        sweep_module, "make_backend", lambda config: FakeBackend(tokenizer, max_position_embeddings=4096)
    )


# ---------------------------------------------------------------- values

odd_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "0",
            "-1",
            "1.5",
            "1e400",
            "9" * 400,
            "inf",
            "nan",
            "Infinity",
            "1k",
            "2k",
            "4K",
            "1M",
            "0x10",
            " 512 ",
            "512,",
            ",",
            "cuda:0=1GiB",
            "0=75Gb",
            "cpu=auto",
            "0=1e400GiB",
            "auto",
            "%",
            "50%",
            "101",
            "1_000",
            "٣",
            "\x00",
            "'; touch PWNED #",
            "$(id)",
            "--help",
            "http://[::1",
            "http://127.0.0.1:1",
            "file:///etc/passwd",
            "http://u:p@127.0.0.1:1/v1",
        ]
    ),
)
small_length = st.one_of(st.integers(min_value=-3, max_value=2048).map(str), odd_text)


@FUZZ
@given(
    flags=st.dictionaries(
        st.sampled_from(
            [
                "--context",
                "--prefill-chunk",
                "--max-memory",
                "--gpus",
                "--device-map",
                "--timeout",
                "--model",
                "--only",
                "--skip",
                "--base-url",
            ]
        ),
        odd_text,
        max_size=4,
    ),
    fmt=st.sampled_from(["text", "markdown", "json"]),
)
def test_doctor_flags(flags: dict[str, str], fmt: str) -> None:
    args = [*CHEAP_DOCTOR, "--format", fmt]
    for flag, value in flags.items():
        if flag in ("--only", "--skip"):
            args = (
                [a for a in args if a not in ("--only", "run-args,platform,server")]
                if flag == "--only"
                else args
            )
        args += [flag, value]
    if "--model" in flags:
        args += ["--skip", "model-config-loads,tokenizer-generation-config-load,memory"]
    code, out, err = call(doctor_command, args, "doctor")
    assert_clean(code, err, args)
    if code in (0, 1) and fmt == "json":
        strict_json(out)


@FUZZ
@given(
    flags=st.dictionaries(
        st.sampled_from(
            [
                "--lengths",
                "--depths",
                "--trials",
                "--controls",
                "--max-new-tokens",
                "--seed",
                "--needle-kind",
                "--max-memory",
                "--prefill-chunk",
                "--concurrency",
                "--request-timeout",
                "--retries",
                "--haystack",
                "--out",
            ]
        ),
        small_length,
        max_size=4,
    )
)
def test_niah_run_flags(flags: dict[str, str], fake_backend: None) -> None:
    with scratch() as folder:
        flags = dict(flags)
        if flags.get("--haystack", "generated") not in ("generated", "", " "):
            flags["--haystack"] = str(folder / "missing.txt")  # never a real folder: rglob("/") is not a test
        flags.setdefault("--lengths", "512")
        flags.setdefault("--depths", "50")
        flags["--out"] = str(folder / "out")  # a random --out could name a real folder
        args = ["run", "--skip-preflight", "-q", *[x for kv in flags.items() for x in kv]]
        code, _, err = call(niah_command, args, "niah")
        assert_clean(code, err, args)


# ---------------------------------------------------------------- documents

toml_scalar = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.text(max_size=8),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1k", "generated", "demo", "passkey", ""]),
)
toml_value = st.one_of(toml_scalar, st.lists(toml_scalar, max_size=3))
run_keys = st.sampled_from(
    [
        "lengths",
        "depths",
        "trials",
        "controls",
        "needle_kind",
        "haystack",
        "seed",
        "model",
        "max_new_tokens",
        "max_memory",
        "prefill_chunk",
        "quant",
        "backend",
        "retries",
        "skip_preflight",
        "resume",
        "out",
        "concurrency",
        "nonsense",
        "run",
    ]
)


def toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    return json.dumps(value)  # a TOML basic string is a JSON string


@FUZZ
@given(
    table=st.booleans(),
    entries=st.dictionaries(run_keys, toml_value, max_size=5),
    garbage=st.one_of(st.none(), st.text(max_size=30)),
)
def test_niah_run_toml_documents(
    table: bool, entries: dict[str, Any], garbage: str | None, fake_backend: None
) -> None:
    with scratch() as folder:
        entries = {
            k: v for k, v in entries.items() if k not in ("out", "haystack") or isinstance(v, (int, bool))
        }
        body = "\n".join(f"{k} = {toml_literal(v)}" for k, v in entries.items())
        text = garbage if garbage is not None else (("[run]\n" if table else "") + body + "\n")
        config = folder / "run.toml"
        config.write_text(text, encoding="utf-8")
        args = [
            "run",
            "--skip-preflight",
            "-q",
            "--config",
            str(config),
            "--out",
            str(folder / "out"),
            "--lengths",
            "512",
            "--depths",
            "50",
        ]
        code, _, err = call(niah_command, args, "niah")
        assert_clean(code, err, args)


config_number = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True),
    st.sampled_from(["thirty", "", None, True, [], {}]),
)


@FUZZ
@given(
    fields=st.dictionaries(
        st.sampled_from(
            [
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "intermediate_size",
                "vocab_size",
                "max_position_embeddings",
                "head_dim",
                "model_type",
                "text_config",
                "quantization_config",
                "architectures",
            ]
        ),
        config_number,
        max_size=8,
    ),
    raw=st.one_of(st.none(), st.binary(max_size=40)),
    context=st.sampled_from(["1k", "128k", "1M"]),
)
def test_doctor_on_config_json_documents(fields: dict[str, Any], raw: bytes | None, context: str) -> None:
    base = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 100,
        "max_position_embeddings": 4096,
    }
    with scratch() as folder:
        model = folder / "model"
        model.mkdir()
        if raw is not None:
            (model / "config.json").write_bytes(raw)
        else:
            # json.dumps writes NaN/Infinity as transformers' configs sometimes hold them
            (model / "config.json").write_text(json.dumps({**base, **fields}))
        args = ["--model", str(model), "--context", context, *MODEL_CHECKS, "--format", "json"]
        code, out, err = call(doctor_command, args, "doctor")
        assert_clean(code, err, (fields, raw))
        doc = strict_json(out)
        bad = [
            f
            for f, v in fields.items()
            if f in base
            and f != "model_type"
            and (isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v >= 2**40)
        ]
        if bad and raw is None:  # never a verdict built on a wrong field: the model does not resolve
            resolves = next(c for c in doc["checks"] if c["id"] == "model-resolves")
            assert resolves["status"] == "fail", (fields, resolves)


# ---------------------------------------------------------------- servers

json_doc = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**80), max_value=2**80),
        st.floats(),
        st.text(max_size=6),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(
            st.sampled_from(
                [
                    "data",
                    "id",
                    "max_model_len",
                    "choices",
                    "text",
                    "token_ids",
                    "usage",
                    "prompt_tokens",
                    "finish_reason",
                    "object",
                ]
            ),
            children,
            max_size=4,
        ),
    ),
    max_leaves=12,
)
reply_body = st.one_of(
    json_doc.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=60),
    st.sampled_from(
        [
            b'{"data": [{"id": "m", "max_model_len": Infinity}]}',
            b'{"choices": [{"token_ids": [1180591620717411303424]}]}',
        ]
    ),
)
status_code = st.sampled_from([200, 200, 200, 201, 204, 301, 302, 307, 400, 401, 404, 429, 500, 503])


@FUZZ
@given(
    models_body=reply_body,
    models_status=status_code,
    completion_body=reply_body,
    completion_status=status_code,
    location=st.sampled_from(
        [
            "/v1/models",
            "http://127.0.0.2:9/x",
            "",
            "::::",
            "/v1/completions",
            "http://[",
            "//127.0.0.1:1/x",
            "https://127.0.0.1/v1/models",
        ]
    ),
)
def test_server_replies(
    models_body: bytes,
    models_status: int,
    completion_body: bytes,
    completion_status: int,
    location: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from niah_run.backends.base import Generation
    from niah_run.backends.openai import OpenAIBackend, ServerRequestError

    def route(body: bytes, status: int) -> Any:
        headers = {"Location": location, "Retry-After": "0"} if 300 <= status < 400 or status == 429 else {}
        return lambda handler, _: send_bytes(handler, body, status=status, headers=headers)

    monkeypatch.setenv("OPENAI_API_KEY", "sk-" + "F" * 40)
    with FakeServer(
        {
            "/v1/models": route(models_body, models_status),
            "/v1/completions": route(completion_body, completion_status),
        }
    ) as server:
        args = [
            "--base-url",
            server.url,
            "--model",
            "m",
            "--context",
            "100",
            "--no-live",
            "--only",
            "server",
            "--format",
            "json",
            "--timeout",
            "5",
        ]
        code, out, err = call(doctor_command, args, "doctor")
        assert_clean(code, err, (models_body, models_status))
        assert "F" * 40 not in out + err
        strict_json(out)
        client = OpenAIBackend(server.url, "m", WordTokenizer(), timeout_s=5, retries=1, backoff_s=0.0)
        try:
            result = client.generate([1, 2, 3], max_new_tokens=4)
        except ServerRequestError as exc:
            assert "F" * 40 not in str(exc)
        else:
            assert isinstance(result, Generation) and all(0 <= t < 100 for t in result.output_ids)
        client.describe()  # asks /v1/models: must not raise either


def test_fuzz_helpers_are_sane() -> None:
    assert toml_literal([1, "a", True, float("inf")]) == '[1, "a", true, inf]'
    with FakeServer({"/x": raw_route(b"{}")}) as server:
        assert server.url.startswith("http://127.0.0.1:")


def test_the_plan_knows_every_needle_kind() -> None:
    from niah_run.needles import NEEDLE_KINDS
    from run_plan.spec import NEEDLE_KIND_CHOICES

    assert set(NEEDLE_KIND_CHOICES) == set(NEEDLE_KINDS)
