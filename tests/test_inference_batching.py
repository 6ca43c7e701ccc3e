"""DynamicBatcher: merging, size limit, order of rows, failures and timeouts (no model, no server)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from bert_classify.inference.batching import DynamicBatcher


class RecordingModel:
    """Stands in for the model: one row per text holding the text's number; records each call."""

    def __init__(self, delay_s: float = 0.0, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.threads: set[str] = set()

    def __call__(self, texts):
        self.calls.append(list(texts))
        self.threads.add(threading.current_thread().name)
        if self.fail_on in texts:
            raise RuntimeError("model failure")
        time.sleep(self.delay_s)
        return np.array([[float(text)] for text in texts])


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_requests_share_a_forward_pass_and_get_their_own_rows() -> None:
    model = RecordingModel()

    async def scenario():
        batcher = DynamicBatcher(model, max_batch_size=64, max_batch_delay_s=0.05)
        await batcher.start()
        requests = [[str(index * 10 + offset) for offset in range(index % 3 + 1)] for index in range(20)]
        results = await asyncio.gather(*(batcher.submit(texts) for texts in requests))
        await batcher.stop()
        return batcher, requests, results

    batcher, requests, results = run(scenario())
    for texts, rows in zip(requests, results):
        assert rows[:, 0].tolist() == [float(text) for text in texts]
    assert len(model.calls) < len(requests)
    assert batcher.stats.max_batch_requests > 1
    assert batcher.stats.requests == 20 and batcher.stats.texts == sum(map(len, requests))
    assert len(model.threads) == 1  # the model is only ever called from its one thread


def test_batches_never_exceed_the_limit_and_requests_are_never_split() -> None:
    model = RecordingModel(delay_s=0.01)

    async def scenario():
        batcher = DynamicBatcher(model, max_batch_size=5, max_batch_delay_s=0.02)
        await batcher.start()
        requests = [[str(index)] * (1 + index % 3) for index in range(30)] + [["7"] * 9]
        results = await asyncio.gather(*(batcher.submit(texts) for texts in requests))
        await batcher.stop()
        return requests, results

    requests, results = run(scenario())
    assert all(len(rows) == len(texts) for texts, rows in zip(requests, results))
    sizes = [len(call) for call in model.calls]
    assert 9 in sizes  # the oversize request ran alone
    assert all(size <= 5 for size in sizes if size != 9)


def test_max_batch_size_one_turns_batching_off() -> None:
    model = RecordingModel()

    async def scenario():
        batcher = DynamicBatcher(model, max_batch_size=1, max_batch_delay_s=0.05)
        await batcher.start()
        await asyncio.gather(*(batcher.submit([str(index)]) for index in range(8)))
        await batcher.stop()
        return batcher

    batcher = run(scenario())
    assert [len(call) for call in model.calls] == [1] * 8
    assert batcher.stats.max_batch_requests == 1


def test_a_model_failure_fails_only_that_batch() -> None:
    model = RecordingModel(fail_on="13")

    async def scenario():
        batcher = DynamicBatcher(model, max_batch_size=1, max_batch_delay_s=0.0)
        await batcher.start()
        with pytest.raises(RuntimeError, match="model failure"):
            await batcher.submit(["13"])
        rows = await batcher.submit(["2"])
        await batcher.stop()
        return rows

    assert run(scenario())[:, 0].tolist() == [2.0]


def test_timed_out_requests_are_dropped_from_the_queue() -> None:
    model = RecordingModel(delay_s=0.2)

    async def scenario():
        batcher = DynamicBatcher(model, max_batch_size=1, max_batch_delay_s=0.0)
        await batcher.start()
        first = asyncio.create_task(batcher.submit(["1"]))
        await asyncio.sleep(0.01)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher.submit(["2"]), timeout=0.05)  # still queued behind "1"
        await first
        await batcher.stop()

    run(scenario())
    assert model.calls == [["1"]]


def test_stop_finishes_queued_requests_then_refuses_new_ones() -> None:
    model = RecordingModel(delay_s=0.05)

    async def scenario():
        batcher = DynamicBatcher(model, max_batch_size=2, max_batch_delay_s=0.0)
        await batcher.start()
        pending = [asyncio.create_task(batcher.submit([str(index)])) for index in range(5)]
        await asyncio.sleep(0)
        await batcher.stop()
        assert all(task.done() and not task.exception() for task in pending)
        assert not batcher.accepting
        with pytest.raises(RuntimeError):
            await batcher.submit(["9"])

    run(scenario())


def test_warm_up_runs_in_the_model_thread_outside_the_counters() -> None:
    model = RecordingModel()

    async def scenario():
        batcher = DynamicBatcher(model, max_batch_size=8, max_batch_delay_s=0.0)
        await batcher.start()
        seconds = await batcher.warm_up(["1", "2"])
        rows = await batcher.submit(["3"])
        await batcher.stop()
        return batcher, seconds, rows

    batcher, seconds, rows = run(scenario())
    assert model.calls == [["1", "2"], ["3"]] and seconds >= 0
    assert rows[:, 0].tolist() == [3.0]
    assert batcher.stats.batches == 1 and batcher.stats.requests == 1 and batcher.stats.texts == 1
    assert len(model.threads) == 1
