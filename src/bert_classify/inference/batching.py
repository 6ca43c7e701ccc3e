"""Dynamic batching for the server: requests that arrive together share one forward pass.

A worker waits for the first request, then gathers more until `max_batch_size` texts or until that
first request has waited `max_batch_delay_s`, runs the model once in a worker thread, and hands each
request its own rows back. A request is never split; one larger than the limit runs alone.
A text is whatever `run_batch` takes per row: the server submits token ids, each request encoded
(and refused, if it must be) on its own before it can join anyone's batch.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class _Pending:
    texts: Sequence[Any]
    future: asyncio.Future[np.ndarray]
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    """Counters the server exposes on GET /metrics (and the tests read to prove merging)."""

    batches: int = 0
    requests: int = 0
    texts: int = 0
    max_batch_requests: int = 0
    max_batch_texts: int = 0
    # batch size in requests -> number of batches of that size
    requests_per_batch: collections.Counter[int] = field(default_factory=collections.Counter)

    def to_dict(self) -> dict[str, object]:
        return {
            "batches": self.batches,
            "requests": self.requests,
            "texts": self.texts,
            "max_batch_requests": self.max_batch_requests,
            "max_batch_texts": self.max_batch_texts,
            "mean_batch_requests": round(self.requests / self.batches, 3) if self.batches else 0.0,
            "requests_per_batch": {str(size): count for size, count in sorted(self.requests_per_batch.items())},
        }


class DynamicBatcher:
    """Merge concurrent `submit(texts)` calls into calls of `run_batch(all_texts) -> rows`.

    `run_batch` runs in one dedicated thread (the model is never called concurrently). Must be
    started and stopped inside the event loop that calls `submit`.
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[Any]], np.ndarray],
        *,
        max_batch_size: int = 32,
        max_batch_delay_s: float = 0.005,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max(0.0, max_batch_delay_s)
        self.stats = BatchStats()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._closing = False

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._worker = asyncio.create_task(self._run(), name="dynamic-batcher")

    async def warm_up(self, texts: Sequence[Any]) -> float:
        """Run `texts` through the model once, in the model's thread, outside the counters; seconds taken.

        The first forward pass pays one-off costs (kernel selection, memory pools, lazy imports):
        a server warms up before it reports healthy, so no client's request pays them.
        """
        started = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(self._executor, self.run_batch, texts)
        return time.perf_counter() - started

    async def stop(self) -> None:
        """Finish every queued request, then stop the worker and its thread."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._worker is not None:
            await self._worker
        self._executor.shutdown(wait=True)

    @property
    def accepting(self) -> bool:
        return self._worker is not None and not self._closing and not self._worker.done()

    async def submit(self, texts: Sequence[Any]) -> np.ndarray:
        """Rows of `run_batch`'s output for these texts, in their order."""
        if not self.accepting:
            raise RuntimeError("the batcher is not running")
        assert self._wakeup is not None
        pending = _Pending(texts, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._wakeup.set()
        return await pending.future

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            self._drop_cancelled()
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            deadline = self._queue[0].arrived + self.max_batch_delay_s
            # Wait for company until the batch is full or the oldest request has waited long enough.
            while not self._closing and self._queued_texts() < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take_batch()
            if not batch:
                continue
            texts = [text for pending in batch for text in pending.texts]
            try:
                rows = await loop.run_in_executor(self._executor, self.run_batch, texts)
            except Exception as error:  # a model failure fails these requests, not the server
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            self._record(batch, len(texts))
            start = 0
            for pending in batch:
                end = start + len(pending.texts)
                if not pending.future.done():
                    pending.future.set_result(rows[start:end])
                start = end

    def _queued_texts(self) -> int:
        return sum(len(pending.texts) for pending in self._queue)

    def _drop_cancelled(self) -> None:
        # Requests that timed out while queued are cancelled by their caller: skip their texts.
        if any(pending.future.done() for pending in self._queue):
            self._queue = collections.deque(pending for pending in self._queue if not pending.future.done())

    def _take_batch(self) -> list[_Pending]:
        self._drop_cancelled()
        batch: list[_Pending] = []
        size = 0
        while self._queue:
            count = len(self._queue[0].texts)
            if batch and size + count > self.max_batch_size:
                break
            batch.append(self._queue.popleft())
            size += count
        return batch

    def _record(self, batch: list[_Pending], text_count: int) -> None:
        stats = self.stats
        stats.batches += 1
        stats.requests += len(batch)
        stats.texts += text_count
        stats.max_batch_requests = max(stats.max_batch_requests, len(batch))
        stats.max_batch_texts = max(stats.max_batch_texts, text_count)
        stats.requests_per_batch[len(batch)] += 1
