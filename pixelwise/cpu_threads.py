"""How many threads torch should use on a CPU that other processes share.

Torch's OpenMP threads wait for each other at the end of every parallel region. When one of them sits on a core
that another process keeps busy, it runs only in that process's gaps, and every region waits for it: two threads
on a 2-core machine with the other core busy are slower than one. :func:`idle_core_threads` counts the cores the
other processes leave idle (from ``/proc/stat``, this process's own CPU time taken out) and uses no more threads
than that. Where ``/proc/stat`` is missing (not Linux) it keeps torch's setting.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

log = logging.getLogger(__name__)

PROBE_SECONDS = 0.1  # the window over which the other processes' load is measured
REUSE_SECONDS = 10.0  # a decision is reused this long: probing costs PROBE_SECONDS each time
_last: tuple[float, int, int] | None = None  # (monotonic time, limit, threads)


def _cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, e.g. under ``taskset``), at least 1."""
    return max(1, len(_cpus()))


def _busy_ticks(cpus: list[int], path: str = "/proc/stat") -> int | None:
    """Clock ticks the CPUs ``cpus`` spent not idle (user, nice, system, irq, softirq, steal), or None."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{i}" for i in cpus}
    busy = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy


def busy_cores(seconds: float = PROBE_SECONDS) -> float | None:
    """The cores, among those this process may run on, that other processes kept busy over the next
    ``seconds`` (0.0 on an idle machine, 1.0 with one core busy); None where ``/proc/stat`` cannot be read."""
    cpus = _cpus()
    tick = os.sysconf("SC_CLK_TCK")
    before = _busy_ticks(cpus)
    own = time.process_time()
    start = time.monotonic()
    time.sleep(seconds)
    after = _busy_ticks(cpus)
    if before is None or after is None:
        return None
    elapsed = time.monotonic() - start
    others = (after - before) / tick - (time.process_time() - own)
    return min(float(len(cpus)), max(0.0, others / elapsed))


def threads_for_idle_cores(limit: int | None = None) -> int:
    """At most ``limit`` threads (default: torch's current setting), and no more than the cores the other
    processes leave idle (at least one). The answer is reused for ``REUSE_SECONDS``."""
    global _last
    limit = limit or torch.get_num_threads()
    now = time.monotonic()
    if _last is not None and _last[1] == limit and now - _last[0] < REUSE_SECONDS:
        return _last[2]
    busy = busy_cores()
    threads = limit if busy is None else max(1, min(limit, math.floor(len(_cpus()) - busy + 0.5)))
    if threads < limit:
        log.info("other processes keep %.1f cores busy: %d thread(s) instead of %d", busy, threads, limit)
    _last = (now, limit, threads)
    return threads


@contextmanager
def idle_core_threads(threads: int | str | None = "auto") -> Iterator[int]:
    """Run the block with ``threads`` torch threads: ``"auto"`` as :func:`threads_for_idle_cores`, an int exactly
    that many, None torch's setting; torch's setting is restored after."""
    before = torch.get_num_threads()
    if threads is None:
        chosen = before
    elif threads == "auto":
        chosen = threads_for_idle_cores(before)
    elif isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1:
        chosen = threads
    else:
        raise ValueError(f"threads must be 'auto', a positive int or None, got {threads!r}")
    if chosen != before:
        torch.set_num_threads(chosen)
    try:
        yield chosen
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
