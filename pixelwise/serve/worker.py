"""The bounded worker that runs predictions off the event loop: one thread, a queue of at most ``max_queue``
waiting requests, and a refusal (not a wait) beyond it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """The worker is busy and ``max_queue`` requests are already waiting."""


class BoundedWorker:
    """One thread runs the jobs, in order; at most ``max_queue`` wait behind the running one.

    One thread, because the model already uses every core for one image (PyTorch's intra-op threads) and a second
    image in parallel would only share them and double the memory. The count of jobs is released when a job ends
    (or is cancelled while waiting), not when its client stops waiting: a job that timed out still holds the
    thread, and new work is refused rather than piled up behind it."""

    def __init__(self, max_queue: int) -> None:
        if max_queue < 0:
            raise ValueError(f"max_queue={max_queue}: must be >= 0")
        self.max_queue = max_queue
        self._executor: ThreadPoolExecutor | None = None  # made at start (an app may be started again after a stop)
        self._lock = threading.Lock()
        self._pending = 0  # running + waiting
        self.finished = 0
        self.cancelled = 0  # waited, and their client gave up (timeout) before they ran
        self.refused = 0

    def start(self) -> None:
        """The thread the jobs run on (again after :meth:`shutdown`)."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pixelwise-serve")

    @property
    def running(self) -> bool:
        return self._executor is not None

    @property
    def pending(self) -> int:
        """Jobs running or waiting."""
        return self._pending

    def _release(self, future: Future) -> None:
        with self._lock:
            self._pending -= 1
            if future.cancelled():
                self.cancelled += 1
            else:
                self.finished += 1

    def _refuse_if_full(self) -> None:
        if self._pending >= 1 + self.max_queue:
            self.refused += 1
            raise QueueFull(f"the queue is full ({self._pending - 1} waiting, the limit is {self.max_queue})")

    def check(self) -> None:
        """:class:`QueueFull` if a job submitted now would be refused (asked before a request's body is read)."""
        with self._lock:
            self._refuse_if_full()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """``fn(*args)`` queued for the thread; :class:`QueueFull` when ``1 + max_queue`` jobs are pending."""
        with self._lock:
            self._refuse_if_full()
            self._pending += 1
            executor = self._executor
        try:
            if executor is None:
                raise RuntimeError("the worker is not running (the server is stopping or was not started)")
            future = executor.submit(fn, *args)
        except BaseException:
            with self._lock:
                self._pending -= 1
            raise
        future.add_done_callback(self._release)
        return future

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float | None) -> T:
        """Await ``fn(*args)`` on the thread for at most ``timeout`` seconds (queue wait included); on a timeout
        a job still waiting is cancelled, a running one finishes unobserved. Raises :class:`QueueFull` and
        :class:`TimeoutError`."""
        future = self.submit(fn, *args)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            future.cancel()  # only takes effect while it waits
            raise TimeoutError from None

    def shutdown(self) -> None:
        """Cancel what waits; let the running job end without waiting for it."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
