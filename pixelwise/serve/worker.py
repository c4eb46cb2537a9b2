"""The bounded worker that runs predictions off the event loop: one thread, a queue of at most ``max_queue``
waiting requests, and a refusal (not a wait) beyond it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """The worker is busy and ``max_queue`` requests are already waiting."""


class ClientGone(Exception):
    """The client of a job disconnected: before the job started (it was dropped, never run; ``started`` False), or
    while it ran (it finishes unobserved; ``started`` True)."""

    def __init__(self, started: bool) -> None:
        self.started = started
        super().__init__(
            "its client disconnected while its prediction ran (it finishes, unread)"
            if started
            else "its client disconnected before its prediction started (not run)"
        )


class BoundedWorker:
    """One thread runs the jobs, in order; at most ``max_queue`` wait behind the running one.

    One thread, because the model already uses every core for one image (PyTorch's intra-op threads) and a second
    image in parallel would only share them and double the memory. The count of jobs is released when a job ends
    (or is cancelled while waiting), not when its client stops waiting: a job that timed out still holds the
    thread, and new work is refused rather than piled up behind it. A job whose client has gone (disconnected, or
    its request's task cancelled) before it starts is cancelled too: it never holds the thread."""

    def __init__(self, max_queue: int) -> None:
        if max_queue < 0:
            raise ValueError(f"max_queue={max_queue}: must be >= 0")
        self.max_queue = max_queue
        self._executor: ThreadPoolExecutor | None = None  # made at start (an app may be started again after a stop)
        self._lock = threading.Lock()
        self._pending = 0  # running + waiting
        self.finished = 0
        self.cancelled = 0  # waited, and their client gave up (timeout) before they ran
        self.dropped = 0  # waited, and their client disconnected (or their task was cancelled) before they ran
        self.refused = 0
        self._dropping: set[Future] = set()  # being cancelled because their client went: counted as dropped

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
            if future.cancelled() and future in self._dropping:  # (one that finished as its client went: finished)
                self.dropped += 1
            elif future.cancelled():
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

    def _drop(self, future: Future) -> bool:
        """Cancel ``future`` because its client went, counted as dropped; False if it has already started (a
        running job cannot be interrupted: it finishes, and counts as finished)."""
        with self._lock:
            self._dropping.add(future)
        try:
            return future.cancel()  # atomic with the thread's start of the job; _release runs in here if it worked
        finally:
            with self._lock:
                self._dropping.discard(future)

    async def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        timeout: float | None,
        gone: Callable[[], Awaitable[Any]] | None = None,
    ) -> T:
        """Await ``fn(*args)`` on the thread for at most ``timeout`` seconds (queue wait included); on a timeout
        a job still waiting is cancelled, a running one finishes unobserved. ``gone``: an awaitable's maker that
        returns once the client has disconnected; then, or if the awaiting task is cancelled, a job still waiting
        is dropped (never run). Raises :class:`QueueFull`, :class:`TimeoutError` and :class:`ClientGone`."""
        future = self.submit(fn, *args)
        result = asyncio.wrap_future(future)
        watcher = asyncio.ensure_future(gone()) if gone is not None else None
        try:
            done, _ = await asyncio.wait(
                [result] if watcher is None else [result, watcher], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if result in done:
                return result.result()
            if watcher is not None and watcher in done:
                raise ClientGone(started=not self._drop(future))
            future.cancel()  # timed out: only takes effect while it waits
            raise TimeoutError
        except asyncio.CancelledError:
            self._drop(future)  # the request's task was cancelled (a server may do so when its client goes)
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
            if not result.done():
                result.cancel()  # (the job itself is cancelled, or left to finish, above)

    def shutdown(self) -> None:
        """Cancel what waits; let the running job end without waiting for it."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
