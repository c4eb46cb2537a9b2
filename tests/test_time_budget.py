"""train.max_minutes: training stops after that much training time, the poly schedule follows the clock, the
end is checkpointed, and --resume keeps what is left of the budget."""

from __future__ import annotations

import json
import logging
import os
import re
import signal

import pytest
import torch

import pixelwise.engine.trainer as trainer
from pixelwise.config import load_config
from pixelwise.engine import train
from pixelwise.engine.builders import lr_factor
from pixelwise.engine.trainer import TrainingInterrupted

from .conftest import FakeClock, write_dataset
from .test_engine import toy_config


def test_the_poly_schedule_follows_the_clock():
    clock = [0.0]
    cfg = {"iters": 10**6, "warmup_iters": 0, "poly_power": 0.9, "lr_schedule": "poly", "max_minutes": 2.0}
    factor = lr_factor(cfg, lambda: clock[0])
    assert factor(5) == 1.0
    clock[0] = 60.0  # half of the 120 s budget, whatever the iteration
    assert factor(5) == pytest.approx(0.5**0.9) and factor(900_000) == pytest.approx(0.5**0.9)
    clock[0] = 500.0
    assert factor(7) == 0.0
    cfg["max_minutes"] = 0.0  # off: by iteration as before
    assert lr_factor(cfg)(500_000) == pytest.approx(0.5**0.9)


def test_training_stops_at_the_budget_then_resume_keeps_the_rest(tmp_path):
    root = write_dataset(tmp_path / "data").parent
    budget = 0.02  # minutes: 1.2 s of training
    cfg = load_config(toy_config(tmp_path, iters=100000, max_minutes=budget, eval_interval=100000))
    run = tmp_path / "run"
    first = train(cfg, run_dir=run, data_root=root, progress=False)
    # stopped at the budget, not at iters (100 000 toy steps take minutes; the margin is for a loaded machine)
    assert 60 * budget <= first["train_seconds"] < 60 * budget + 30
    last = torch.load(run / "last.pt", weights_only=True)
    stopped_at = last["train_state"]["iter"]
    assert 1 <= stopped_at < 100000 and (run / "best.pt").exists()
    vals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert vals[-1]["type"] == "val" and vals[-1]["iter"] == stopped_at  # the end was evaluated and saved
    # the budget is spent: resuming trains nothing more
    again = train(cfg, run_dir=run, data_root=root, resume=True, progress=False)
    assert torch.load(run / "last.pt", weights_only=True)["train_state"]["iter"] == stopped_at
    assert again["train_seconds"] == pytest.approx(first["train_seconds"])
    # a larger budget (an allowed change) continues from the time already spent
    more = load_config(toy_config(tmp_path, iters=100000, max_minutes=2 * budget, eval_interval=100000))
    resumed = train(more, run_dir=run, data_root=root, resume=True, allow_changes=True, progress=False)
    assert 120 * budget <= resumed["train_seconds"] < 120 * budget + 30
    assert torch.load(run / "last.pt", weights_only=True)["train_state"]["iter"] > stopped_at


def test_a_resume_with_changes_sets_the_rate_of_the_time_already_spent(tmp_path, monkeypatch):
    # --allow-changes resets the rates from the schedule: its clock must be the checkpoint's, not zero
    import pixelwise.engine.resume as resume

    root = write_dataset(tmp_path / "data").parent
    budget = 0.02
    run = tmp_path / "run"
    train(
        load_config(toy_config(tmp_path, iters=100000, max_minutes=budget, eval_interval=100000)),
        run_dir=run,
        data_root=root,
        progress=False,
    )
    spent = torch.load(run / "last.pt", weights_only=True)["train_state"]["train_seconds"]
    more = load_config(toy_config(tmp_path, iters=100000, max_minutes=4 * budget, eval_interval=100000))
    real, rates = resume.apply_optimizer_changes, []

    def recording(changes, optimizer, *args, **kwargs):
        real(changes, optimizer, *args, **kwargs)
        rates.append(optimizer.param_groups[0]["lr"])

    monkeypatch.setattr(resume, "apply_optimizer_changes", recording)
    train(more, run_dir=run, data_root=root, resume=True, allow_changes=True, progress=False)
    expected = more["train"]["lr"] * (1 - spent / (240 * budget)) ** more["train"]["poly_power"]
    assert rates == [pytest.approx(expected)] and expected < 0.9 * more["train"]["lr"]


def test_a_step_stopped_by_a_signal_counts_its_time(tmp_path, monkeypatch, caplog):
    """The step a SIGTERM interrupts is finished and counted in the iterations, so its seconds count against the
    budget too (else --resume would grant them again)."""
    root = write_dataset(tmp_path / "data").parent
    cfg = load_config(toy_config(tmp_path, iters=100, eval_interval=100, max_minutes=10))
    clock = FakeClock()  # the trainer's clock stands still but for the third step, which takes 100 s

    real, calls = trainer.step_loss, [0]

    def slow_third_step(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:  # the signal comes during a long step
            clock.now += 100.0
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "time", clock)
    monkeypatch.setattr(trainer, "step_loss", slow_third_step)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM at iteration 3"):
        train(cfg, run_dir=run, data_root=root, progress=False)
    state = torch.load(run / "last.pt", weights_only=True)["train_state"]
    assert state["iter"] == 3 and state["train_seconds"] == 100.0
    # a run whose budget is spent trains nothing on a resume, and says so (it said only its summary)
    caplog.set_level(logging.WARNING, logger="pixelwise")
    spent = load_config(toy_config(tmp_path, iters=100, eval_interval=100, max_minutes=1))
    train(spent, run_dir=run, data_root=root, progress=False, resume=True, allow_changes=True)
    assert (
        f"--resume: {run / 'last.pt'} has reached its train.max_minutes already: nothing to train (raise "
        "train.max_minutes with --allow-changes to go on)"
    ) in caplog.text
    assert torch.load(run / "last.pt", weights_only=True)["train_state"]["iter"] == 3


def test_warmup_scales_the_schedule_without_a_jump_where_it_ends():
    cfg = {"iters": 100, "warmup_iters": 10, "poly_power": 1.0, "lr_schedule": "poly", "max_minutes": 0.0}
    factor = lr_factor(cfg)
    assert factor(0) == pytest.approx(0.1 * 1.0)  # ramp 1/10 of poly (1 - 0/100)
    assert factor(4) == pytest.approx(0.5 * 0.96)
    assert factor(9) == pytest.approx(1.0 * 0.91)
    assert factor(10) == pytest.approx(0.90)  # the step after warmup continues the poly line
    assert max(abs(factor(i + 1) - factor(i)) for i in range(9, 99)) == pytest.approx(0.01)
    cfg["lr_schedule"] = "constant"
    assert [lr_factor(cfg)(i) for i in (0, 9, 10, 99)] == pytest.approx([0.1, 1.0, 1.0, 1.0])


def test_a_budgeted_run_says_so_counts_its_seconds_and_warns_when_iters_end_it_first(tmp_path, caplog, capsys):
    """A 1-minute run showed a bar of 1 000 000 iterations (100+ hours to go); `--set train.iters=20` on a
    budgeted recipe ended with the learning rate undecayed (the schedule follows the clock), without a word."""
    import logging

    root = write_dataset(tmp_path / "data").parent
    cfg = load_config(toy_config(tmp_path, iters=3, max_minutes=10, eval_interval=100000, warmup_iters=5))
    logging.getLogger("pixelwise").propagate = True  # an in-process CLI run may have stopped it at its handler
    with caplog.at_level("INFO", logger="pixelwise"):
        train(cfg, run_dir=tmp_path / "run", data_root=root, progress=True)
    text = caplog.text
    assert "train.max_minutes 10 (the schedule follows the clock), at most 3 iterations" in text
    assert "train.warmup_iters=5 is not below train.iters=3: the run ends inside its warmup" in text
    left = re.search(
        r"train.iters=3 ended the run with (\d+) s of train.max_minutes=10 left: the learning rate follows the clock",
        text,
    )
    assert left and 540 <= int(left.group(1)) <= 600, text  # 3 toy steps: well under a minute, even on a busy machine
    bar = capsys.readouterr().err
    assert "s of training" in bar and "/600 s" in bar and "it=3" in bar


def test_each_step_takes_the_rate_of_its_own_start_and_a_signal_keeps_its_log_line(tmp_path, monkeypatch):
    """Every step takes 10 s of a fake clock, 6 steps in the 1-minute budget: step k runs at the linear poly rate
    of 10 (k - 1) s (it took that of the step before's start), and the step a SIGTERM stops has its log line."""
    root = write_dataset(tmp_path / "data").parent
    overrides = ["train.log_interval=1", "train.poly_power=1.0", "train.warmup_iters=0", "train.lr=0.01"]
    cfg = load_config(toy_config(tmp_path, iters=100, eval_interval=100, max_minutes=1), overrides)
    clock = FakeClock()

    optimizers, rates = [], []
    real_optimizer, real_loss = trainer.build_optimizer, trainer.step_loss

    def keep(*args, **kwargs):
        optimizers.append(real_optimizer(*args, **kwargs))
        return optimizers[-1]

    def timed(*args, **kwargs):
        rates.append(optimizers[-1].param_groups[0]["lr"])
        clock.now += 10.0
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(trainer, "time", clock)
    monkeypatch.setattr(trainer, "build_optimizer", keep)
    monkeypatch.setattr(trainer, "step_loss", timed)
    run = tmp_path / "run"
    train(cfg, run_dir=run, data_root=root, progress=False)
    assert rates == pytest.approx([0.01 * (1 - 10 * k / 60) for k in range(6)])
    logged = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "train"]
    assert [r["lr"] for r in logged] == pytest.approx(rates)  # the rate each step took

    def stop_in_third(*args, **kwargs):
        if len(rates) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return timed(*args, **kwargs)

    rates.clear()
    clock.now = 0.0
    monkeypatch.setattr(trainer, "step_loss", stop_in_third)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM at iteration 3"):
        train(cfg, run_dir=tmp_path / "stopped", data_root=root, progress=False)
    logged = (tmp_path / "stopped/metrics.jsonl").read_text().splitlines()
    assert [r["iter"] for r in map(json.loads, logged) if r["type"] == "train"] == [1, 2, 3]
