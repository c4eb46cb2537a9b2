"""Stopping a training on SIGINT/SIGTERM: after the current step, with ``last.pt`` written.

The loop checks a flag the handlers set. Loader workers ignore both signals: a signal sent to the whole process
group (Ctrl-C in a terminal, GNU ``timeout``, ``kill -- -PGID``, a batch system stopping a job) reaches them too,
and a worker killed by SIGTERM makes the loader raise in the main process wherever it is, ``last.pt`` unwritten.
Workers still end with the main process (the loader's own watchdog)."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Any

from ..errors import PixelwiseError

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(PixelwiseError):
    """SIGINT/SIGTERM ended a training after writing ``last.pt``."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT/SIGTERM set a flag the loop checks after each step (a second SIGINT interrupts at once)."""
    caught: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if caught and signum == signal.SIGINT:
            raise KeyboardInterrupt
        caught.append(signum)
        log.warning("%s: stopping after this step and writing last.pt", signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield caught
        return
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield caught
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def workers_ignore_stop_signals(worker_id: int) -> None:
    """A DataLoader's ``worker_init_fn``: the worker ignores SIGINT and SIGTERM, which the main process handles."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
