"""The cold estimate's speed-ups must not change its answer: trace points shared with a forked copy give
the plain loop's results (and its exceptions), the collector pause restores the collector, the sizing
child runs with one hash seed, and a child leaves as soon as its answer is out."""

from __future__ import annotations

import gc
import os
import threading
import time
from typing import Any

import pytest

from doctor.children.child import ChildResult, cyclic_gc_paused, run_in_child
from doctor.children.forked import can_fork, map_shared, start_forked
from doctor.probes import memory as memory_probe

# the fork is asked for explicitly: an earlier test may leave an idle worker thread behind
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def _slow_square_and_pid(x: int) -> tuple[int, int]:
    time.sleep(0.05)  # long enough that the copy is running before this process empties the queue
    return x * x, os.getpid()


def test_plain_loop_when_told() -> None:
    results = map_shared(_square_and_pid, list(range(5)), fork=False)
    assert [r for r, _ in results] == [0, 1, 4, 9, 16]
    assert {pid for _, pid in results} == {os.getpid()}


@needs_fork
def test_shared_results_come_back_in_order_from_two_processes() -> None:
    results = map_shared(_slow_square_and_pid, list(range(8)), fork=True)
    assert [r for r, _ in results] == [x * x for x in range(8)]
    assert len({pid for _, pid in results}) == 2  # both took items from the one queue


@needs_fork
def test_a_failing_copy_has_its_share_computed_here() -> None:
    parent = os.getpid()

    def only_here(x: int) -> int:
        if os.getpid() != parent:
            raise RuntimeError("the copy fails")
        return x + 1

    assert map_shared(only_here, list(range(6)), fork=True) == [1, 2, 3, 4, 5, 6]


@needs_fork
def test_a_crashing_copy_has_its_share_computed_here() -> None:
    parent = os.getpid()

    def crash_in_copy(x: int) -> int:
        if os.getpid() != parent:
            os._exit(7)  # a segfault stands in here: no exception, no result
        return -x

    assert map_shared(crash_in_copy, list(range(4)), fork=True) == [0, -1, -2, -3]


@needs_fork
def test_an_exception_here_is_raised_as_the_plain_loop_raises_it() -> None:
    def fails_on_zero(x: int) -> int:
        if x == 0:
            raise ValueError("not polynomial")
        return x

    with pytest.raises(ValueError, match="not polynomial"):
        map_shared(fails_on_zero, list(range(4)), fork=True)


def test_no_fork_while_another_thread_runs() -> None:
    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    thread.start()
    try:
        assert not can_fork()
        results = map_shared(_square_and_pid, [1, 2, 3])
        assert {pid for _, pid in results} == {os.getpid()}
    finally:
        release.set()
        thread.join()


def test_collector_paused_then_restored() -> None:
    assert gc.isenabled()
    with cyclic_gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0  # what the imports built is left out of later collections
    gc.unfreeze()
    gc.disable()
    try:
        with cyclic_gc_paused():
            pass
        assert not gc.isenabled()  # a caller's own choice is kept
    finally:
        gc.unfreeze()
        gc.enable()


def test_sizing_child_runs_with_one_hash_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_child(
        target: str, args: dict[str, Any], *, timeout_s: float, env: dict[str, str]
    ) -> ChildResult:
        seen.update(env)
        return ChildResult(True, {"method": "meta-skeleton"}, None, 0, "", 0.1)

    monkeypatch.setattr("doctor.children.child.run_in_child", fake_child)
    monkeypatch.setenv("PYTHONHASHSEED", "random")
    assert memory_probe._size_in_child({"config": {}}, 10.0) == {"method": "meta-skeleton"}
    assert seen["PYTHONHASHSEED"] == "0"


def test_child_answers_without_waiting_for_a_lingering_thread() -> None:
    result = run_in_child("doctor.children.child:selftest_child", {"echo": 3, "linger_s": 120}, timeout_s=60)
    assert result.ok, result.error  # interpreter teardown would wait the thread's two minutes
    assert result.data is not None and result.data["echo"] == 3


@needs_fork
def test_a_forked_call_brings_back_its_value_or_none() -> None:
    assert start_forked(lambda: {"pid": os.getpid()}).result() != {"pid": os.getpid()}

    def fails() -> int:
        raise RuntimeError("in the copy")

    assert start_forked(fails).result() is None  # the caller computes it itself and meets the error
    slow = start_forked(lambda: time.sleep(60))
    slow.kill()  # returns at once: the copy is gone


# ---------------------------------------------------------------- the trace, shared vs one after another

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from doctor.memory import Settings, sizing_args  # noqa: E402
from doctor.memory import trace as trace_module  # noqa: E402

GEMMA3_TINY = {
    "model_type": "gemma3_text",
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "intermediate_size": 256,
    "vocab_size": 512,
    "max_position_embeddings": 8192,
    "sliding_window": 48,
    "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
    "torch_dtype": "bfloat16",
}


def _size(monkeypatch: pytest.MonkeyPatch, *, shared: bool, quant: str = "none") -> dict[str, Any]:
    from doctor.memory.skeleton import size_model

    with monkeypatch.context() as patch:
        if not shared:
            patch.setattr(trace_module, "map_shared", lambda func, items: [func(item) for item in items])
            patch.setattr("doctor.children.forked.can_fork", lambda: False)
        else:  # an idle thread an earlier test left behind must not turn the sharing off here
            patch.setattr("doctor.children.forked.threading.active_count", lambda: 1)
            patch.setattr("doctor.children.forked.os.cpu_count", lambda: 2)
        return size_model(sizing_args(Settings(context=512, quant=quant), GEMMA3_TINY, None))


@pytest.mark.filterwarnings("ignore")
@needs_fork
def test_shared_sizing_is_the_one_after_another_sizing(monkeypatch: pytest.MonkeyPatch) -> None:
    for quant in ("none", "bnb-4bit"):
        shared = _size(monkeypatch, shared=True, quant=quant)
        assert "activations" in shared["trace"]
        assert shared == _size(monkeypatch, shared=False, quant=quant)


@pytest.mark.filterwarnings("ignore")
@needs_fork
def test_caps_known_only_after_the_kv_forward_are_traced_again(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _size(monkeypatch, shared=False)
    monkeypatch.setattr(trace_module, "_windows_before_forward", lambda transformers, config: [])
    assert (
        _size(monkeypatch, shared=True) == expected
    )  # planned without the 48-token window, re-traced with it


@pytest.mark.filterwarnings("ignore")
@needs_fork
def test_a_failing_point_is_reported_as_one_after_another_reports_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = trace_module._trace_point

    def fails_past_zero(*args: Any) -> Any:
        if args[-1] > 0:  # every chunked-prefill point
            raise ValueError(f"no trace at past={args[-1]}")
        return real(*args)

    monkeypatch.setattr(trace_module, "_trace_point", fails_past_zero)
    shared = _size(monkeypatch, shared=True)
    assert shared["trace"]["activations_error"].startswith("ValueError: no trace at past=")
    assert shared == _size(monkeypatch, shared=False)


@pytest.mark.filterwarnings("ignore")
def test_a_failing_kv_forward_is_reported_without_activations(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_kv(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("meta forward failed")

    monkeypatch.setattr(trace_module, "measure_kv", no_kv)
    shared = _size(monkeypatch, shared=True)
    assert shared["trace"]["kv_error"] == "RuntimeError: meta forward failed"
    assert "activations" not in shared["trace"] and "activations_error" not in shared["trace"]
    assert shared == _size(monkeypatch, shared=False)
