"""train.max_minutes: training stops after that much training time, the poly schedule follows the clock, the
end is checkpointed, and --resume keeps what is left of the budget."""

from __future__ import annotations

import json

import pytest
import torch

from pixelwise.config import load_config
from pixelwise.engine import train
from pixelwise.engine.builders import lr_factor

from .conftest import write_dataset
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
    assert 60 * budget <= first["train_seconds"] < 60 * budget + 5  # stopped at the budget, not at iters
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
    assert 120 * budget <= resumed["train_seconds"] < 120 * budget + 5
    assert torch.load(run / "last.pt", weights_only=True)["train_state"]["iter"] > stopped_at
