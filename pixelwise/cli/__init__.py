"""The command line (also ``python -m pixelwise``): argument parsing and printing only; each verb is one
library call a Python user can make too. :mod:`.parser` declares the verbs and their flags, :mod:`.verbs` makes
each one's call and prints its result, :mod:`.options` holds the option groups several verbs share; here: the
dispatch, the log lines and the one-line errors."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import signal
import sys

from ..errors import PixelwiseError
from .parser import build_parser
from .verbs import another_rank

__all__ = ["build_parser", "main", "setup_logging"]


def _one_line(exc: BaseException) -> str:
    # errors raised in DataLoader workers come back wrapped with the worker's traceback: keep the message
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


class _TqdmHandler(logging.Handler):
    """Log records as lines that do not break a progress bar: info to stdout, warnings to stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        tqdm.write(prefix + self.format(record), file=stream)


def setup_logging(quiet: bool = False) -> None:
    """Show the library's log records (``pixelwise.*``) as plain lines; once per process."""
    logger = logging.getLogger("pixelwise")
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    # under torchrun every process runs the verb: the others say only what goes wrong, rank 0 the rest
    quiet = quiet or another_rank()
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    from ..engine.trainer import TrainingInterrupted

    verb = " ".join(v for v in (args.command, getattr(args, "data_command", None)) if v)
    if verb not in SIGTERM_AS_INTERRUPT:
        return _run(args, verb, TrainingInterrupted)
    with _sigterm_as_interrupt():
        return _run(args, verb, TrainingInterrupted)


# The verbs that take SIGTERM (kill, timeout, a batch system, docker stop) as Ctrl-C, to clean up as on SIGINT (an
# import its staging folder, predict its manifest): their work returns to Python between images. Not the others: a
# Python handler waits for the interpreter, and a process blocked in C (torchrun's rendezvous) would never end;
# train has its own handling inside, serve uvicorn's.
SIGTERM_AS_INTERRUPT = frozenset({"data import", "predict"})


class _Terminated(KeyboardInterrupt):
    """SIGTERM taken as Ctrl-C (:data:`SIGTERM_AS_INTERRUPT`)."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    def terminated(signum, frame):
        raise _Terminated

    try:
        previous = signal.signal(signal.SIGTERM, terminated)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace, verb: str, TrainingInterrupted: type) -> int:  # noqa: N803
    try:
        return args.func(args)
    except TrainingInterrupted as e:
        print(f"pixelwise {verb}: {e}", file=sys.stderr)
        return 128 + e.signum
    except PixelwiseError as e:
        print(f"pixelwise {verb}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.filename is None:  # not about a file the user named: a bug, its traceback wanted
            raise
        where = f"{e.filename} -> {e.filename2}" if e.filename2 else str(e.filename)
        full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        fix = "free some space there, or choose another place" if full else "check the path and its permissions"
        print(f"pixelwise {verb}: error: {where}: {e.strerror or e}; {fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"pixelwise {verb}: interrupted", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(e, _Terminated) else signal.SIGINT)
