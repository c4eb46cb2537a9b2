"""benchmarks/train_throughput.py's memory figure: the training process and its loader workers together."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from .conftest import load_benchmark


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_tree_memory_counts_a_child_process():
    """A worker holding 200 MiB is in the peak (ru_maxrss of the parent alone left it out)."""
    throughput = load_benchmark("train_throughput")
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; x = bytearray(200 * 2**20); print('ok', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ok"  # its 200 MiB are written (bytearray zero-fills them)
        with throughput.TreeMemory(interval=0.05) as memory:
            time.sleep(0.2)
        own = throughput._pss_kib(throughput.os.getpid())
        assert memory.peak_kib - own >= 190 * 1024
    finally:
        child.kill()
        child.wait()
