"""`--concurrency N` (server backends): N requests in flight, and the same rows as a sequential run."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from niah_run.config import resolve_spec
from niah_run.results import read_rows
from niah_run.sweep import RunFolder, Sweep
from run_plan.errors import UsageError
from run_plan.spec import RunSpec
from tests.niah.fakes import FakeBackend


class CountingBackend(FakeBackend):
    """A fake server: tracks how many requests overlap; the tokenizer work stays serialized (test double)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.active = 0
        self.max_active = 0

    def generate(self, input_ids, *, max_new_tokens, reusable_prefix_len=0, **hints):  # noqa: ANN001, ANN201
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(0.05)  # a request's round trip: lets the others start
        with self._lock:
            self.active -= 1
            return super().generate(
                input_ids, max_new_tokens=max_new_tokens, reusable_prefix_len=reusable_prefix_len
            )


def _run(tmp_path: Path, concurrency: int) -> tuple[CountingBackend, list[dict]]:
    config = RunSpec(
        model="demo",
        lengths=(512, 1024),
        depths=(0.0, 50.0, 100.0),
        trials=2,
        backend="openai",
        base_url="http://127.0.0.1:9",
        concurrency=concurrency,
    )
    backend = CountingBackend()
    folder = RunFolder(tmp_path, skip_preflight=True, quiet=True)
    Sweep(config, folder, backend_factory=lambda c: backend).run()
    return backend, read_rows(tmp_path / "results.jsonl")


def _essence(rows: list[dict]) -> list[tuple]:
    return sorted(
        (r["trial_key"], r["input_ids_sha256"], r["needle_value"], r["correct"], r["output_text"])
        for r in rows
    )


def test_concurrent_run_keeps_requests_in_flight_and_matches_sequential(tmp_path: Path) -> None:
    sequential, rows_1 = _run(tmp_path / "seq", 1)
    concurrent, rows_3 = _run(tmp_path / "par", 3)
    assert sequential.max_active == 1
    assert concurrent.max_active >= 2
    assert _essence(rows_1) == _essence(rows_3)
    assert len(rows_3) == 12 and all(r["status"] == "ok" and r["correct"] for r in rows_3)


def test_concurrency_is_refused_for_the_local_backend() -> None:
    with pytest.raises(UsageError, match="--concurrency applies to --backend openai"):
        resolve_spec({"concurrency": 4})
