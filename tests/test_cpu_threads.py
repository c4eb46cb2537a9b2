"""Thread counts on a shared CPU (pixelwise.cpu_threads): the arithmetic on a faked /proc/stat, the restore of
torch's setting, and the dense CRF running under it."""

import sys

import pytest
import torch

from pixelwise import cpu_threads
from pixelwise.crf import dense_crf


def stat_file(tmp_path, rows):
    """A /proc/stat with these (user, nice, system, idle, iowait, irq, softirq, steal) rows for cpu0, cpu1..."""
    lines = ["cpu  " + " ".join(str(sum(r[i] for r in rows)) for i in range(8)) + " 0 0"]
    lines += [f"cpu{i} " + " ".join(map(str, r)) + " 0 0" for i, r in enumerate(rows)]
    path = tmp_path / "stat"
    path.write_text("\n".join(lines + ["intr 1 2 3", "ctxt 4"]) + "\n")
    return str(path)


def test_busy_ticks_counts_everything_but_idle_and_iowait_of_the_allowed_cpus(tmp_path):
    path = stat_file(tmp_path, [(10, 1, 5, 100, 7, 2, 3, 4), (50, 0, 0, 9, 1, 0, 0, 0)])
    assert cpu_threads._busy_ticks([0], path) == 10 + 1 + 5 + 2 + 3 + 4
    assert cpu_threads._busy_ticks([0, 1], path) == 25 + 50
    assert cpu_threads._busy_ticks([1], str(tmp_path / "missing")) is None


@pytest.mark.parametrize(
    ("busy", "limit", "expected"),
    [(0.0, 2, 2), (1.0, 2, 1), (0.3, 2, 2), (0.7, 2, 1), (2.0, 2, 1), (None, 2, 2), (0.0, 1, 1)],
)
def test_threads_follow_the_idle_cores(monkeypatch, busy, limit, expected):
    monkeypatch.setattr(cpu_threads, "_cpus", lambda: [0, 1])
    monkeypatch.setattr(cpu_threads, "busy_cores", lambda seconds=0.1: busy)
    monkeypatch.setattr(cpu_threads, "_last", None)
    assert cpu_threads.threads_for_idle_cores(limit) == expected


def test_a_decision_is_reused_then_renewed(monkeypatch):
    probes = []
    monkeypatch.setattr(cpu_threads, "_cpus", lambda: [0, 1])
    monkeypatch.setattr(cpu_threads, "busy_cores", lambda seconds=0.1: probes.append(1) or 1.0)
    monkeypatch.setattr(cpu_threads, "_last", None)
    assert cpu_threads.threads_for_idle_cores(2) == 1 and cpu_threads.threads_for_idle_cores(2) == 1
    assert len(probes) == 1
    monkeypatch.setattr(cpu_threads, "REUSE_SECONDS", 0.0)
    cpu_threads.threads_for_idle_cores(2)
    assert len(probes) == 2


def test_busy_cores_measures_this_machine_without_counting_itself(monkeypatch):
    """Scripted clocks: over 2 s the two cores were busy for 2.5 s, 0.5 s of them this process's own: one core
    busy with other work. Without /proc/stat: None (nothing known)."""
    import os
    import types

    tick = os.sysconf("SC_CLK_TCK")
    ticks = iter([1000, 1000 + int(2.5 * tick)])
    clocks = {"monotonic": iter([10.0, 12.0]), "process_time": iter([5.0, 5.5])}
    fake_time = types.SimpleNamespace(
        monotonic=lambda: next(clocks["monotonic"]), process_time=lambda: next(clocks["process_time"]),
        sleep=lambda s: None,
    )  # fmt: skip
    monkeypatch.setattr(cpu_threads, "_cpus", lambda: [0, 1])
    monkeypatch.setattr(cpu_threads, "_busy_ticks", lambda cpus: next(ticks))
    monkeypatch.setattr(cpu_threads, "time", fake_time)
    assert cpu_threads.busy_cores(2.0) == pytest.approx(1.0)
    monkeypatch.setattr(cpu_threads, "_busy_ticks", lambda cpus: None)
    clocks.update(monotonic=iter([0.0, 1.0]), process_time=iter([0.0, 0.0]))
    assert cpu_threads.busy_cores(1.0) is None
    # the real /proc/stat of this machine gives a share within its cores
    monkeypatch.undo()
    busy = cpu_threads.busy_cores(0.05)
    assert busy is None or 0.0 <= busy <= len(cpu_threads._cpus())


def test_the_setting_is_restored_and_bad_values_refused(monkeypatch):
    before = torch.get_num_threads()
    with cpu_threads.idle_core_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    monkeypatch.setattr(cpu_threads, "threads_for_idle_cores", lambda limit=None: 1)
    with cpu_threads.idle_core_threads("auto") as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be 'auto', a positive int or None, got 0"):
        with cpu_threads.idle_core_threads(0):
            pass


def test_dense_crf_gives_the_same_answer_with_any_thread_choice(monkeypatch):
    torch.manual_seed(0)
    image = torch.randint(0, 256, (24, 20, 3), dtype=torch.uint8)
    probs = torch.softmax(torch.randn(3, 24, 20), 0)
    seen = []
    real = cpu_threads.idle_core_threads

    def spy(threads="auto"):
        seen.append(threads)
        return real(threads)

    monkeypatch.setattr(sys.modules["pixelwise.crf.mean_field"], "idle_core_threads", spy)
    one = dense_crf(image, probs, threads=1)
    auto = dense_crf(image, probs)
    torch.testing.assert_close(one, auto, rtol=1e-5, atol=1e-6)
    assert seen == [1, "auto"]
