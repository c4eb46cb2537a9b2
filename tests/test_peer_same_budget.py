"""benchmarks/peer_same_budget.py: a failed side does not leave the others running after the script returns."""

from __future__ import annotations

import subprocess
import sys

from .conftest import load_benchmark

peer_same_budget = load_benchmark("peer_same_budget")


def test_every_side_is_waited_for_when_the_first_fails():
    failing = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.0)"])
    failing.wait()  # the failure is already known when the check starts
    assert peer_same_budget._all_succeeded({"pixelwise": failing, "smp": slow}) is False
    assert slow.returncode == 0  # waited for, not orphaned


def test_all_clean_exits_succeed():
    procs = {name: subprocess.Popen([sys.executable, "-c", "pass"]) for name in ("a", "b")}
    assert peer_same_budget._all_succeeded(procs) is True
