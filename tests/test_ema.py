"""train.ema_decay: the moving average of the weights, hand-computed; validation scores it; checkpoints hold it
(and the trained weights for resuming); resume continues it exactly."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pixelwise.config import load_config
from pixelwise.engine import evaluate_checkpoint, train
from pixelwise.engine.ema import WeightEMA
from pixelwise.errors import ConfigError
from pixelwise.models.weights import load_checkpoint

from .conftest import write_dataset
from .test_engine import toy_config


def test_the_average_by_hand_with_the_warm_up():
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    ema = WeightEMA(model, decay=0.2)
    seen = []
    for w, mean in ((1.0, 10.0), (2.0, 20.0), (4.0, 40.0)):
        with torch.no_grad():
            model[0].weight.fill_(w)
            model[1].running_mean.fill_(mean)
            model[1].num_batches_tracked.add_(1)
        ema.update(model)
        seen.append((ema.module[0].weight.item(), ema.module[1].running_mean.item()))
    # 1st update copies; 2nd: decay min(0.2, 2/11); 3rd: min(0.2, 3/12) = 0.2
    d2 = 2 / 11
    w2 = d2 * 1.0 + (1 - d2) * 2.0
    w3 = 0.2 * w2 + 0.8 * 4.0
    assert seen[0] == pytest.approx((1.0, 10.0))
    assert seen[1] == pytest.approx((w2, 10 * w2))  # batch-norm statistics are averaged like the weights
    assert seen[2] == pytest.approx((w3, 10 * w3))
    assert ema.module[1].num_batches_tracked.item() == 3  # integer counters are copied
    assert ema.updates == 3 and model[0].weight.item() == 4.0  # the trained model is untouched
    assert ema.decay_at(10**6) == 0.2


def test_validation_scores_the_average_and_checkpoints_hold_both(tmp_path, monkeypatch):
    import pixelwise.engine.trainer as trainer

    scored = []

    def recording_evaluate(model, *args, **kwargs):
        scored.append({k: v.clone() for k, v in model.state_dict().items()})
        return evaluate(model, *args, **kwargs)

    evaluate = trainer.evaluate
    monkeypatch.setattr(trainer, "evaluate", recording_evaluate)
    root = write_dataset(tmp_path / "data", splits={"train": 4, "val": 2}).parent
    cfg = load_config(toy_config(tmp_path, iters=6, eval_interval=6, ema_decay=0.5))
    run = tmp_path / "run"
    out = train(cfg, run_dir=run, data_root=root, progress=False)
    last, best = load_checkpoint(run / "last.pt"), load_checkpoint(run / "best.pt")
    assert last["ema"] == {"updates": 6, "decay": 0.5}
    assert last["model"].keys() == last["train_model"].keys()
    assert any(not torch.equal(last["model"][k], last["train_model"][k]) for k in last["model"])
    assert "train_model" not in best and "ema" not in best
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    # validation scored the averaged weights, the ones best.pt holds and eval reads
    assert len(scored) == 1 and all(torch.equal(scored[0][k], best["model"][k]) for k in best["model"])
    val = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in x][-1]
    again = evaluate_checkpoint(run / "best.pt", split="val", data_root=root, num_workers=0, progress=False)
    assert again["metrics"]["miou"] == pytest.approx(val["miou"]) == pytest.approx(out["best_miou"])


def test_resume_continues_the_average_exactly(tmp_path):
    root = write_dataset(tmp_path / "data", splits={"train": 4, "val": 2}).parent
    common = {"eval_interval": 100, "ema_decay": 0.6, "lr_schedule": "constant"}
    straight = tmp_path / "straight"
    train(load_config(toy_config(tmp_path, iters=6, **common)), run_dir=straight, data_root=root, progress=False)
    split = tmp_path / "split"
    train(load_config(toy_config(tmp_path, iters=3, **common)), run_dir=split, data_root=root, progress=False)
    train(
        load_config(toy_config(tmp_path, iters=6, **common)),
        run_dir=split,
        data_root=root,
        resume=True,
        allow_changes=True,
        progress=False,
    )
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(split / "last.pt")
    assert a["ema"] == b["ema"] == {"updates": 6, "decay": 0.6}
    for key in ("model", "train_model"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


def test_a_run_from_before_the_setting_resumes_without_allow_changes(tmp_path):
    root = write_dataset(tmp_path / "data", splits={"train": 4, "val": 2}).parent
    cfg = load_config(toy_config(tmp_path, iters=2, eval_interval=100))
    run = tmp_path / "run"
    train(cfg, run_dir=run, data_root=root, progress=False)
    old = torch.load(run / "last.pt", weights_only=True)
    del old["config"]["train"]["ema_decay"]  # as written before train.ema_decay existed
    torch.save(old, run / "last.pt")
    more = load_config(toy_config(tmp_path, iters=4, eval_interval=100))
    with pytest.raises(ConfigError, match=r"\(train.iters: 2 -> 4\)"):  # the one real change, not ema_decay
        train(more, run_dir=run, data_root=root, resume=True, progress=False)
    train(cfg, run_dir=run, data_root=root, resume=True, progress=False)  # its own settings: resumes


@pytest.mark.parametrize("value", [1.0, -0.5, float("nan")])  # null: test_config's test of nulls
def test_a_decay_out_of_range_is_named(tmp_path, value):
    with pytest.raises(ConfigError) as err:
        load_config(toy_config(tmp_path, ema_decay=value))
    assert str(err.value) == f"train.ema_decay={value}: must be >= 0 and < 1 (e.g. 0.999; 0 turns the average off)"
