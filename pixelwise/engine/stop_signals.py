"""Stopping a training on SIGINT/SIGTERM: after the current step, with ``last.pt`` written.

The loop checks a flag the handlers set. A signal sent to the whole process group (Ctrl-C in a terminal, GNU
``timeout``, ``kill -- -PGID``, a batch system stopping a job) reaches the loader's workers too. SIGINT ends a
worker quietly (torch's worker loop catches the KeyboardInterrupt and exits with status 0), but SIGTERM killed it,
and the loader then raised in the main process wherever it was, ``last.pt`` unwritten: workers take SIGTERM as
SIGINT. (Ignoring it instead would keep them from ending when the loader or the interpreter stops them, by
SIGTERM.)"""

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


class EvaluationStopped(Exception):
    """A validation inside a training gave up at a caught SIGINT/SIGTERM (the training then writes ``last.pt``
    and validates that step first on ``--resume``)."""


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


def workers_end_quietly_on_sigterm(worker_id: int) -> None:
    """A DataLoader's ``worker_init_fn``: SIGTERM ends the worker as SIGINT does, quietly (exit status 0), so the
    main process, which handles the signal itself, is not stopped by a worker's death in the middle of a step."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
