"""Continuous (adaptive) batching for the model deployment: pure asyncio, no Ray.

``ContinuousBatcher`` runs one batch at a time through an async ``run`` callable:

* a request that arrives at an idle batcher (nothing queued, no batch running) runs at
  once, alone: no wait for company that may never come;
* requests that arrive while a batch runs queue, and the next batch takes up to
  ``max_batch_size`` of them as soon as the running one ends;
* only under load (requests queued up while the last batch ran) may a batch that is not
  full wait up to ``wait_s`` for more to arrive, so a burst of answers that come back to
  closed-loop clients is not split into many small batches.

The batch size therefore follows the load: 1 for a lone client, up to ``max_batch_size``
when many are waiting, with no fixed delay at low load.
"""

# No ``from __future__ import annotations``, like the rest of the package.

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, Sequence

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """One request's answer with how it was served: ``queue_s`` from submission to the
    start of its batch, and the size of that batch."""

    value: Any
    queue_s: float
    batch_size: int


@dataclass
class _Pending:
    item: Any
    future: asyncio.Future
    enqueued: float


class ContinuousBatcher:
    """Gathers concurrent ``submit`` calls into batches for ``run`` (one batch at a time).

    ``run`` takes the items of a batch and returns one answer per item, in order; it
    should keep the event loop free (e.g. run the model in an executor) so that requests
    keep arriving while it works. ``on_batch(size, queue_length)`` is called as each batch
    starts (metrics).
    """

    def __init__(self, run: Callable[[list], Awaitable[Sequence[Any]]], max_batch_size: int, wait_s: float,
                 on_batch: Optional[Callable[[int, int], None]] = None):
        self._run = run
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._task: Optional[asyncio.Task] = None
        self._running = 0  # items of the batch the model is running now
        self._under_load = False
        self.configure(max_batch_size, wait_s)

    def configure(self, max_batch_size: int, wait_s: float) -> None:
        if max_batch_size < 1 or wait_s < 0:
            raise ValueError(f"max_batch_size must be >= 1 and wait_s >= 0, got {max_batch_size} and {wait_s}")
        self.max_batch_size, self.wait_s = int(max_batch_size), float(wait_s)

    @property
    def queue_length(self) -> int:
        """Requests waiting for a batch (not counting the batch that runs)."""
        return len(self._queue)

    @property
    def running(self) -> int:
        return self._running

    async def submit(self, item: Any) -> BatchResult:
        """Queue ``item``; returns its answer once the batch it joined has run."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._serve_forever())
        pending = _Pending(item, loop.create_future(), time.monotonic())
        self._queue.append(pending)
        self._arrived.set()
        return await pending.future

    async def close(self) -> None:
        """Stop the loop; requests still queued get ``RuntimeError``."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the batcher was closed"))

    async def _serve_forever(self) -> None:
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            if self._under_load and self.wait_s > 0:
                await self._fill(time.monotonic() + self.wait_s)
            batch = self._take()
            if batch:
                await self._run_batch(batch)
            # Requests that queued while this batch ran mean load: the next batch may wait to fill.
            self._under_load = bool(self._queue)

    async def _fill(self, deadline: float) -> None:
        while len(self._queue) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        while self._queue and len(batch) < self.max_batch_size:
            pending = self._queue.popleft()
            if not pending.future.done():  # a caller that went away (cancelled) needs no answer
                batch.append(pending)
        return batch

    async def _run_batch(self, batch: list[_Pending]) -> None:
        started = time.monotonic()
        self._running = len(batch)
        if self._on_batch is not None:
            try:
                self._on_batch(len(batch), len(self._queue))
            except Exception as exc:  # metrics must never cost an answer
                log.warning("batch callback failed: %r", exc)
        try:
            values = await self._run([p.item for p in batch])
            if len(values) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} gave {len(values)} answers")
        except Exception as exc:  # every caller of the batch gets the error; the loop goes on
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
        else:
            for pending, value in zip(batch, values):
                if not pending.future.done():
                    pending.future.set_result(BatchResult(value, started - pending.enqueued, len(batch)))
        finally:
            self._running = 0
