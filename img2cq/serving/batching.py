"""Admission, batching and deadlines for blocking work behind async routes.

``Batcher`` collects requests into batches (up to ``max_batch`` items, or ``max_wait_s`` after the
first) and runs each batch as one call on one dedicated thread, so the model sees one batched
call at a time and the event loop is never blocked; that thread may run at a lower CPU priority
(``nice``) than the event loop, which then answers at once however busy the batches keep the
cores. ``Lane`` runs single blocking calls (the sandbox) on a few dedicated threads. Both admit a
bounded number of requests and refuse the rest at once (``Overloaded``, answered 503 with
Retry-After); every request has a deadline (``DeadlineExceeded``); a request whose client has gone
(``Disconnected``) is dropped before its work starts.
"""

import asyncio
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


class Overloaded(Exception):
    """The queue is full; ``retry_after`` is an estimate, in whole seconds, of when it drains."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(Exception):
    pass


class Disconnected(Exception):
    pass


async def settle(future: asyncio.Future, timeout: float, disconnected: Awaitable | None = None):
    """The future's result, unless the deadline passes or the client goes first: then the future
    is cancelled (work not yet started is skipped) and DeadlineExceeded/Disconnected raised."""
    waiters = {future} if disconnected is None else {future, disconnected}
    try:
        done, _ = await asyncio.wait(waiters, timeout=max(timeout, 0), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not future.done():
            future.cancel()
    if future.done() and not future.cancelled():
        return future.result()
    if disconnected is not None and disconnected in done:
        raise Disconnected("the client disconnected")
    raise DeadlineExceeded(f"not answered within {timeout:.0f} s")


def lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's niceness by ``nice`` (on Linux a thread has its own)."""
    if nice:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                       os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) + nice)


@dataclass
class _Job:
    item: Any
    future: asyncio.Future


class Batcher:
    """Dynamic batching: ``run_batch(items) -> results`` (same order) on one dedicated thread."""

    def __init__(self, run_batch: Callable[[list], list], *, max_batch: int, max_wait_s: float,
                 max_queue: int, name: str = "batch", nice: int = 0, waits_for: str = "the model"):
        self.run_batch, self.max_batch, self.max_wait_s, self.max_queue = run_batch, max_batch, max_wait_s, max_queue
        self.waits_for = waits_for  # named in the refusal
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=name, initializer=lower_thread_priority,
                                          initargs=(nice,))
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(max_queue)
        self._worker: asyncio.Task | None = None
        self._last_batch_s = 1.0
        self._busy = False  # a batch is being collected or run

    def start(self) -> None:
        """Start serving batches (call from the event loop that will submit)."""
        self._worker = asyncio.create_task(self._serve())

    def run_first(self, function: Callable[[], Any]) -> None:
        """Run ``function`` on the batch thread now, ahead of any batch (loading what batches need)."""
        self._thread.submit(function)

    async def stop(self) -> None:
        """Stop taking batches, refuse what is queued, and wait for a running batch to end."""
        if self._worker is not None:
            self._worker.cancel()
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(Overloaded("the server is shutting down", 1))
        await asyncio.to_thread(self._thread.shutdown)

    @property
    def waiting(self) -> int:
        """Requests queued for a batch (not counting the batch running now)."""
        return self._queue.qsize()

    @property
    def idle(self) -> bool:
        """Nothing queued, collected or running."""
        return not self._busy and self._queue.empty()

    @property
    def full(self) -> bool:
        """A request submitted now would be refused."""
        return self._queue.full()

    def refusal(self) -> Overloaded:
        return Overloaded(f"server busy: {self.max_queue} requests already wait for {self.waits_for}",
                          self.retry_after())

    def retry_after(self) -> int:
        """Seconds until the queue ahead of a new request has probably drained."""
        return max(1, math.ceil((self._queue.qsize() / self.max_batch + 1) * self._last_batch_s))

    async def submit(self, item, *, timeout: float, disconnected: Awaitable | None = None):
        """The result for ``item`` once its batch has run; refused at once when the queue is full."""
        job = _Job(item, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise self.refusal() from None
        return await settle(job.future, timeout, disconnected)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(loop)
            if batch:
                await self._run(loop, batch)
            self._busy = False

    async def _run(self, loop, batch: list[_Job]) -> None:
        started = loop.time()
        try:
            results = await loop.run_in_executor(self._thread, self.run_batch, [job.item for job in batch])
        except Exception as error:  # the batch's failure is every one of its requests' answer
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(error)
        else:
            for job, result in zip(batch, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)
        self._last_batch_s = loop.time() - started

    async def _collect(self, loop) -> list[_Job]:
        """Up to max_batch live jobs: the first to arrive, then whatever comes within max_wait_s."""
        batch = [await self._queue.get()]
        self._busy = True
        close_at = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if self._queue.empty():
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), close_at - loop.time()))
                except TimeoutError:
                    break
            else:
                batch.append(self._queue.get_nowait())
            batch = [job for job in batch if not job.future.done()]  # gone or past their deadline
        return [job for job in batch if not job.future.done()]


class Lane:
    """Blocking calls on ``workers`` dedicated threads; at most ``workers + max_queue`` admitted at
    once, counted until each call has really finished (a call past its deadline still holds a slot)."""

    def __init__(self, *, workers: int, max_queue: int, name: str = "lane"):
        self.workers, self.limit = workers, workers + max_queue
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._admitted = 0
        self._last_call_s = 1.0

    async def call(self, fn: Callable, *args, timeout: float, disconnected: Awaitable | None = None, **kwargs):
        """``fn(*args, **kwargs)`` on a lane thread."""
        with self._lock:
            if self._admitted >= self.limit:
                retry = max(1, math.ceil(self._admitted / self.workers * self._last_call_s))
                raise Overloaded(f"server busy: {self._admitted} requests already wait for the sandbox", retry)
            self._admitted += 1
        try:
            pending = self._threads.submit(self._timed, fn, args, kwargs)
        except BaseException:
            self._release(None)
            raise
        pending.add_done_callback(self._release)
        return await settle(asyncio.wrap_future(pending), timeout, disconnected)

    def _timed(self, fn, args, kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self._last_call_s = time.perf_counter() - started

    def _release(self, _future) -> None:
        with self._lock:
            self._admitted -= 1

    def close(self) -> None:
        self._threads.shutdown(wait=True, cancel_futures=True)
