"""The training engine: torchrun data parallel, exact resume after SIGKILL, run files and reports."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from pixelwise.config import load_config
from pixelwise.engine import EpochSampler, train
from pixelwise.engine.resume import truncate_log
from pixelwise.errors import ConfigError, DataError, TrainingDiverged
from pixelwise.metrics import SUMMARY_KEYS
from pixelwise.models.weights import load_checkpoint
from pixelwise.report import read_log, write_report

from .conftest import REPO, FakeClock, write_dataset


def test_sampler_ranks_split_the_global_batches():
    one = iter(EpochSampler(10, 4, seed=3))
    ranks = [iter(EpochSampler(10, 2, seed=3, rank=r, world_size=2)) for r in range(2)]
    for _ in range(5):  # 2 batches per epoch: crosses epochs
        whole = [next(one) for _ in range(4)]
        parts = [next(ranks[0]) for _ in range(2)] + [next(ranks[1]) for _ in range(2)]
        assert whole == parts
    resumed = iter(EpochSampler(10, 4, seed=3, start_iter=3))
    fresh = iter(EpochSampler(10, 4, seed=3))
    for _ in range(3 * 4):
        next(fresh)
    assert [next(resumed) for _ in range(8)] == [next(fresh) for _ in range(8)]


DDP_SETTINGS = [
    "train.iters=3",
    "train.eval_interval=3",
    "data.crop_size=64",
    "model.base_channels=4",
    "model.batch_norm=false",
    "data.num_workers=0",
    "data.scale_range=null",
    "data.elastic_p=0",
    "train.amp=none",
    "train.channels_last=false",
    "train.warmup_iters=0",
]


@pytest.mark.realdata
@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(data_root, tmp_path):
    """2 gloo processes x batch 2 end with the weights of 1 process x batch 4 (same global batch).
    Tolerance 1e-6 absolute plus 1e-5 of each weight: only float summation order differs (a wrong average of the
    gradients is off by a percent). (With batch norm the per-process
    batch statistics differ unless SyncBatchNorm, which PyTorch has on CUDA only.)"""
    env = {**os.environ, "PIXELWISE_DATA": str(data_root), "OMP_NUM_THREADS": "1"}
    sets = [a for s in DDP_SETTINGS for a in ("--set", s)]
    cfg = REPO / "configs/isbi2012_unet.yaml"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    for run, launcher, batch in (("two", torchrun, 2), ("one", [sys.executable], 4)):
        cmd = [*launcher, "-m", "pixelwise", "train", str(cfg), "--run-dir", str(tmp_path / run), "--no-progress"]
        proc = subprocess.run(
            [*cmd, "--set", f"data.batch_size={batch}", *sets],
            env=env,
            cwd=REPO,
            timeout=600,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, f"{run}: {proc.stderr[-3000:]}"  # the child's own error, not only its exit code
        # rank 0 alone says how it went (every process printed its summary and validation lines)
        assert proc.stdout.count("done in") == 1 and (proc.stdout + proc.stderr).count(": val mIoU") == 1, proc.stderr
    a = load_checkpoint(tmp_path / "one/last.pt")["model"]
    b = load_checkpoint(tmp_path / "two/last.pt")["model"]
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    assert sum((a[k] - load_checkpoint(tmp_path / "one/best.pt")["model"][k]).abs().sum() for k in a) == 0
    logs = [[json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in ("one", "two")]
    assert logs[0][0]["loss"] == pytest.approx(logs[1][0]["loss"], rel=1e-6)  # loss averaged over processes
    assert logs[0][1]["confusion_matrix"] == logs[1][1]["confusion_matrix"]  # val all-reduced over shards
    assert not (tmp_path / "two" / "rank1").exists() and len(list((tmp_path / "two").glob("*.pt"))) == 2


def torchrun_one_process_and_plain(tmp_path, cfg, env, *, ddp_args=(), args=(), timeout=600):
    """Train ``cfg`` under ``torchrun --nproc_per_node=1`` (with ``ddp_args``) and as a plain process;
    both runs' final weights and standard outputs: ``{"ddp": (state, stdout), "plain": (state, stdout)}``."""
    common = ["-m", "pixelwise", "train", str(cfg), "--no-progress", *args]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    runs = {}
    for cmd, run in (([*torchrun, *common, *ddp_args], "ddp"), ([sys.executable, *common], "plain")):
        proc = subprocess.run(
            [*cmd, "--run-dir", str(tmp_path / run)], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[run] = (load_checkpoint(tmp_path / run / "last.pt")["model"], proc.stdout)
    return runs


@pytest.mark.slow
def test_torchrun_one_process_joins_a_group_and_matches_a_plain_run(tmp_path):
    """``torchrun --nproc_per_node=1`` runs the distributed path (a gloo group of one, DistributedDataParallel;
    on a GPU, NCCL and SyncBatchNorm: tests/test_cuda.py) and ends with the plain run's weights."""
    root = write_dataset(tmp_path / "data", splits={"train": 4, "val": 2}).parent
    cfg = toy_config(tmp_path, iters=4, eval_interval=4, deterministic=True)
    env = {**os.environ, "PIXELWISE_DATA": str(root), "OMP_NUM_THREADS": "1"}
    runs = torchrun_one_process_and_plain(tmp_path, cfg, env)
    for run, (_, stdout) in runs.items():
        assert ("distributed: 1 process(es), gloo on cpu" in stdout) == (run == "ddp"), stdout[-2000:]
    a, b = runs["ddp"][0], runs["plain"][0]
    assert a.keys() == b.keys() and max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-6


def toy_config(tmp_path, **train):
    path = tmp_path / "toy.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"name": "unet", "base_channels": 4, "depth": 2},
                "data": {
                    "dataset": "toy",
                    "crop_size": 16,
                    "batch_size": 2,
                    "num_workers": 0,
                    "color_jitter": 0.2,
                    "elastic_p": 0.5,
                },
                "train": {"eval_interval": 1000, "lr_schedule": "poly", "lr": 0.05, "deterministic": True, **train},
            }
        )
    )
    return path


def tiny_run(tmp_path, **train_cfg):
    """A checkpoint of two training steps on the toy data set: ``(best.pt, data root)``."""
    root = write_dataset(tmp_path / "data", splits={"train": 2, "val": 2}, size=(40, 32)).parent
    cfg = load_config(toy_config(tmp_path, iters=2, eval_interval=2, **train_cfg))
    train(cfg, run_dir=tmp_path / "run", data_root=root, progress=False)
    return tmp_path / "run" / "best.pt", root


@pytest.mark.slow
def test_sigkill_at_any_point_then_resume_equals_uninterrupted(tmp_path):
    root = write_dataset(tmp_path / "data", splits={"train": 6, "val": 2}).parent
    cfg = toy_config(tmp_path, iters=150, checkpoint_interval=7)
    env = {**os.environ, "PIXELWISE_DATA": str(root), "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "pixelwise", "train", str(cfg), "--no-progress"]
    subprocess.run([*base, "--run-dir", str(tmp_path / "straight")], check=True, env=env, timeout=600)
    killed_at = []

    def logged_up_to(run, iteration):
        # the train log's line for `iteration` is written: the process is past it, and, 150 iterations long,
        # still running (a sleep instead raced a fast machine to the end of training)
        log = run / "metrics.jsonl"
        return log.exists() and f'"iter": {iteration},' in log.read_text()

    # killed right after its first checkpoint is written, then between two checkpoints (iteration 80 is logged,
    # 77 the last checkpoint)
    for attempt, ready in enumerate((lambda run: (run / "last.pt").exists(), lambda run: logged_up_to(run, 80))):
        run = tmp_path / f"killed{attempt}"
        proc = subprocess.Popen([*base, "--run-dir", str(run)], env=env)
        deadline = time.time() + 120
        while not ready(run) and time.time() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at.append(load_checkpoint(run / "last.pt")["train_state"]["iter"])
        subprocess.run([*base, "--run-dir", str(run), "--resume"], check=True, env=env, timeout=600)
        a = load_checkpoint(tmp_path / "straight/last.pt")
        b = load_checkpoint(run / "last.pt")
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
        assert a["train_state"]["best_miou"] == b["train_state"]["best_miou"]
        log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["iter"] for r in log if r["type"] == "train"] == list(range(10, 151, 10))
    assert all(k < 150 for k in killed_at), killed_at  # it really was interrupted mid-run


def test_keep_last_report_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    root = write_dataset(tmp_path / "data").parent
    cfg = load_config(
        toy_config(
            tmp_path, iters=6, checkpoint_interval=2, keep_last=2, eval_interval=3, tensorboard=True, log_interval=1
        )
    )
    train(cfg, run_dir=tmp_path / "r", data_root=root, progress=False)
    run = tmp_path / "r"
    assert sorted(p.name for p in run.glob("iter_*.pt")) == ["iter_0000004.pt", "iter_0000006.pt"]
    assert "optimizer" not in load_checkpoint(run / "best.pt")
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 1000  # scalars and two val overlay images
    summary = write_report(run)
    text = summary.read_text()
    assert "Best validation mIoU" in text and "| c0 |" in text
    for name in ("loss.png", "val.png", "per_class_iou.png", "confusion.png"):
        assert (summary.parent / name).stat().st_size > 5000


def test_the_log_says_how_much_of_a_step_waits_for_data(tmp_path, monkeypatch):
    """A slow data set (num_workers 0, so nothing hides it) shows as its share of each step. The trainer's clock
    is a fake one: each image takes 1 s to load and each forward 0.5 s, whatever the machine's load, so the share
    is exactly 2 / 2.5 (a batch of 2 images per step)."""

    import pixelwise.engine.trainer as trainer
    from pixelwise.data import SegmentationDataset

    clock = FakeClock()

    root = write_dataset(tmp_path / "data").parent
    cfg = load_config(toy_config(tmp_path, iters=4, log_interval=2))
    slow, real_loss = SegmentationDataset.__getitem__, trainer.step_loss

    def loading(self, index):
        clock.now += 1.0
        return slow(self, index)

    def computing(*args, **kwargs):
        clock.now += 0.5
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(SegmentationDataset, "__getitem__", loading)
    monkeypatch.setattr(trainer, "step_loss", computing)
    monkeypatch.setattr(trainer, "time", clock)
    train(cfg, run_dir=tmp_path / "r", data_root=root, progress=False, check_data=False)
    log = [json.loads(x) for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    shares = [r["data_wait_share"] for r in log if r["type"] == "train"]
    assert shares == [pytest.approx(0.8), pytest.approx(0.8)], shares
    assert "% of it waiting for data" in write_report(tmp_path / "r").read_text()


def test_the_speed_after_a_validation_counts_the_steps_of_its_own_window(tmp_path, monkeypatch):
    """Every step takes 1 s of the (fake) clock: 2 images per step, 2 images/s. A validation in the middle of a
    logging window restarted its time but not its steps: the next record said 4 images/s."""
    import pixelwise.engine.trainer as trainer

    clock = FakeClock()
    root = write_dataset(tmp_path / "data", splits={"train": 6, "val": 2}).parent
    cfg = load_config(toy_config(tmp_path, iters=8, log_interval=4, eval_interval=6))
    real_loss = trainer.step_loss

    def computing(*args, **kwargs):
        clock.now += 1.0
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(trainer, "step_loss", computing)
    monkeypatch.setattr(trainer, "time", clock)
    train(cfg, run_dir=tmp_path / "r", data_root=root, progress=False, check_data=False)
    log = [json.loads(x) for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    assert [(r["iter"], r["images_per_s"]) for r in log if r["type"] == "train"] == [(4, 2.0), (8, 2.0)]


def test_resume_refusals_and_what_a_resume_ignores(tmp_path, caplog):
    """A weights-only file as last.pt was a KeyError traceback; train.iters below the run's iteration was taken
    silently (config.yaml then contradicted last.pt); train.init_from changed on a resume was logged as applied
    and ignored (the checkpoint's weights are the run's); a lowered keep_last of 1 left the iter_*.pt files."""
    import logging
    import shutil

    from pixelwise.errors import CheckpointError

    root = write_dataset(tmp_path / "data").parent
    run = tmp_path / "r"
    first = load_config(toy_config(tmp_path, iters=4, keep_last=3, checkpoint_interval=1))
    train(first, run_dir=run, data_root=root, progress=False)
    assert sorted(p.name for p in run.glob("iter_*.pt")) == [f"iter_000000{i}.pt" for i in (2, 3, 4)]
    weights_only = tmp_path / "w"
    weights_only.mkdir()
    shutil.copy(run / "best.pt", weights_only / "last.pt")
    with pytest.raises(CheckpointError) as e:
        train(load_config(toy_config(tmp_path, iters=6)), run_dir=weights_only, data_root=root, resume=True)
    assert str(e.value) == (
        f"--resume: {weights_only / 'last.pt'} holds a model's weights only (as best.pt does), not the training "
        "state a resume needs (train_state, optimizer, scheduler, scaler, rng); start a new run from its weights "
        f"with train.init_from: {weights_only / 'last.pt'}"
    )
    lower = load_config(toy_config(tmp_path, iters=3, keep_last=3, checkpoint_interval=1))
    with pytest.raises(ConfigError) as e:
        train(lower, run_dir=run, data_root=root, progress=False, resume=True, allow_changes=True)
    assert str(e.value) == (
        f"--resume: train.iters=3 is below the iteration {run / 'last.pt'} is at (4); give train.iters above it to "
        "train on, or leave the run as it is"
    )
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["iters"] == 4
    caplog.set_level(logging.WARNING, logger="pixelwise")
    same = load_config(toy_config(tmp_path, iters=4, keep_last=3, checkpoint_interval=1))
    train(same, run_dir=run, data_root=root, progress=False, resume=True)
    assert (
        f"--resume: {run / 'last.pt'} has reached train.iters=4 already: nothing to train (raise train.iters with "
        "--allow-changes to go on)"
    ) in caplog.text
    more = load_config(
        toy_config(tmp_path, iters=5, keep_last=1, checkpoint_interval=1, init_from=str(run / "best.pt"))
    )
    train(more, run_dir=run, data_root=root, progress=False, resume=True, allow_changes=True)
    assert "init_from" not in caplog.text and list(run.glob("iter_*.pt")) == []
    # a new run (keep_last 1, the default) leaves the iter_*.pt it finds alone: they may be anyone's
    other = tmp_path / "other"
    other.mkdir()
    (other / "iter_0000001.pt").write_bytes(b"someone's")
    train(load_config(toy_config(tmp_path, iters=2, checkpoint_interval=1)), run_dir=other, data_root=root)
    assert (other / "iter_0000001.pt").read_bytes() == b"someone's"


def test_existing_run_is_not_overwritten(tmp_path):
    root = write_dataset(tmp_path / "data").parent
    cfg = load_config(toy_config(tmp_path, iters=1))
    train(cfg, run_dir=tmp_path / "r", data_root=root, progress=False)
    before = (tmp_path / "r/last.pt").read_bytes()
    with pytest.raises(ConfigError) as e:
        train(cfg, run_dir=tmp_path / "r", data_root=root, progress=False)
    assert str(e.value) == (
        f"{tmp_path / 'r'} already holds a run (last.pt): pass --resume to continue it, or a new --run-dir"
    )
    assert (tmp_path / "r/last.pt").read_bytes() == before
    # a run killed while writing its first last.pt left best.pt alone: not replaced by a new run either
    (tmp_path / "r/last.pt").unlink()
    best = (tmp_path / "r/best.pt").read_bytes()
    with pytest.raises(ConfigError) as e:
        train(cfg, run_dir=tmp_path / "r", data_root=root, progress=False)
    assert str(e.value) == (
        f"{tmp_path / 'r'} holds best.pt of a run that wrote no last.pt (stopped during its first checkpoint): move "
        "best.pt away to train there again, or give a new --run-dir"
    )
    assert (tmp_path / "r/best.pt").read_bytes() == best


def _plain_toy(tmp_path, **train_cfg):
    """No batch norm, no ignored pixels: the gradient of a batch is the mean of its halves'."""
    path = tmp_path / f"plain{len(list(tmp_path.glob('plain*.yaml')))}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"name": "unet", "base_channels": 4, "depth": 2, "batch_norm": False},
                "data": {"dataset": "toy", "crop_size": 16, "num_workers": 0, "scale_range": None},
                "train": {
                    "eval_interval": 100,
                    "lr": 0.05,
                    "lr_schedule": "constant",
                    "deterministic": True,
                    **train_cfg,
                },
            }
        )
    )
    return load_config(path)


def test_gradient_accumulation_equals_the_bigger_batch(tmp_path):
    root = write_dataset(tmp_path / "data", splits={"train": 8, "val": 2}).parent
    big = _plain_toy(tmp_path, iters=3)
    big["data"]["batch_size"] = 4
    small = _plain_toy(tmp_path, iters=3, accumulate=2)
    small["data"]["batch_size"] = 2
    train(big, run_dir=tmp_path / "big", data_root=root, progress=False)
    train(small, run_dir=tmp_path / "small", data_root=root, progress=False)
    a = load_checkpoint(tmp_path / "big/last.pt")["model"]
    b = load_checkpoint(tmp_path / "small/last.pt")["model"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    halves = _plain_toy(tmp_path, iters=6)  # the same 12 batches of 2, one step each: not the same
    halves["data"]["batch_size"] = 2
    train(halves, run_dir=tmp_path / "halves", data_root=root, progress=False)
    c = load_checkpoint(tmp_path / "halves/last.pt")["model"]
    assert max((a[k] - c[k]).abs().max().item() for k in a) > 1e-4


def test_head_learning_rate_multiplier():
    from pixelwise import build_model
    from pixelwise.config import DEFAULTS
    from pixelwise.engine import build_optimizer as _optimizer

    model = build_model("deeplabv3plus_mobilenetv2", num_classes=3)
    opt = _optimizer(model, {**DEFAULTS["train"], "lr": 0.01, "head_lr_mult": 10.0})
    backbone, head = opt.param_groups
    assert backbone["lr"] == 0.01 and head["lr"] == pytest.approx(0.1)
    assert len(backbone["params"]) == len(list(model.backbone.parameters()))
    assert len(backbone["params"]) + len(head["params"]) == len(list(model.parameters()))
    assert len(_optimizer(model, {**DEFAULTS["train"]}).param_groups) == 1
    # FCN's and DeepLab-VGG's fc6/fc7 are VGG's ImageNet classifier: at the base rate (DeepLab's fc8 alone gets 10x)
    fcn_head = {"score_fr", "score_pool4", "score_pool3", "upscore2", "upscore_pool4", "upscore8"}
    for name, head_names in (("deeplabv2_vgg16", {"fc8"}), ("fcn8s_vgg16", fcn_head)):
        model = build_model(name, num_classes=3)
        backbone, head = _optimizer(model, {**DEFAULTS["train"], "lr": 0.01, "head_lr_mult": 10.0}).param_groups
        in_head = {id(p) for p in head["params"]}
        named = {n.split(".")[-2] for n, p in model.named_parameters() if id(p) in in_head}
        assert named == head_names, (name, named)
    with pytest.raises(ConfigError) as e:
        _optimizer(build_model("unet", num_classes=3, base_channels=4), {**DEFAULTS["train"], "head_lr_mult": 10.0})
    assert str(e.value) == (
        "train.head_lr_mult=10.0: model UNet has no backbone (model.backbone) to tell from its head; "
        "set train.head_lr_mult: 1"
    )


def test_a_resume_cannot_split_the_optimizer_state_into_backbone_and_head(tmp_path):
    """head_lr_mult 1 -> 10 on --resume --allow-changes makes two parameter groups of one: a clear refusal, not
    the optimizer's own mismatch traceback (or, with a new optimizer type, a fresh state as asked)."""
    import copy

    from pixelwise import build_model
    from pixelwise.config import DEFAULTS
    from pixelwise.engine.builders import build_optimizer, build_scheduler
    from pixelwise.engine.resume import TrainState, pack, restore
    from pixelwise.models.weights import FORMAT

    spec = {"name": "deeplabv3plus_mobilenetv2", "num_classes": 3}
    config = copy.deepcopy({k: DEFAULTS[k] for k in ("data", "train", "instances", "inference")})

    def objects(train_cfg):
        model = build_model(**spec)
        optimizer = build_optimizer(model, train_cfg)
        return model, optimizer, build_scheduler(optimizer, train_cfg), torch.amp.GradScaler("cpu", enabled=False)

    model, optimizer, scheduler, scaler = objects(config["train"])
    ckpt = pack(
        model=model,
        meta={
            "model": spec,
            "classes": ["a", "b", "c"],
            "palette": [[0, 0, 0]] * 3,
            "mean": [0.5] * 3,
            "std": [0.2] * 3,
        },
        config=config,
        state=TrainState(iter=1),
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
    )
    torch.save({"format": FORMAT, **ckpt}, tmp_path / "last.pt")
    changed = copy.deepcopy(config)
    changed["train"]["head_lr_mult"] = 10.0
    model, optimizer, scheduler, scaler = objects(changed["train"])
    kwargs = dict(model=model, spec=spec, optimizer=optimizer, scheduler=scheduler, scaler=scaler, device="cpu")
    with pytest.raises(ConfigError) as e:
        restore(tmp_path / "last.pt", config=changed, allow_changes=True, **kwargs)
    sizes = [len(g["params"]) for g in optimizer.param_groups]
    assert len(sizes) == 2 and str(e.value) == (
        f"--resume: train.head_lr_mult: 1.0 -> 10.0 turns the parameter groups of {tmp_path / 'last.pt'}'s optimizer "
        f"([{sum(sizes)}] parameters) into {sizes}, which its state cannot follow; keep the run's "
        "train.head_lr_mult and train.norm_bias_weight_decay, or also change train.optimizer (a fresh optimizer state)"
    )
    changed["train"]["optimizer"] = "adamw"
    model, optimizer, scheduler, scaler = objects(changed["train"])
    kwargs = dict(model=model, spec=spec, optimizer=optimizer, scheduler=scheduler, scaler=scaler, device="cpu")
    assert restore(tmp_path / "last.pt", config=changed, allow_changes=True, **kwargs).iter == 1
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.1])


@pytest.mark.slow
def test_torch_compile_option_trains_and_saves_plain_keys(tmp_path, monkeypatch):
    root = write_dataset(tmp_path / "data").parent
    real, compiled = torch.compile, []

    def spy(model, *args, **kwargs):
        compiled.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    for flag in (False, True):
        cfg = _plain_toy(tmp_path, iters=2, compile=flag)
        cfg["data"]["batch_size"] = 2
        train(cfg, run_dir=tmp_path / f"r{flag}", data_root=root, progress=False)
        assert len(compiled) == int(flag)  # the model is compiled exactly when asked
    assert type(compiled[0]).__name__ == "UNet"
    keys = list(load_checkpoint(tmp_path / "rTrue/last.pt")["model"])
    assert keys and not any(k.startswith("_orig_mod") for k in keys)


def test_report_reads_a_log_cut_short_by_a_kill(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = [{"type": "train", "iter": 1, "loss": 0.5}, {"type": "val", "iter": 1, "miou": 0.25}]
    whole = "".join(json.dumps(r) + "\n" for r in records)
    (run / "metrics.jsonl").write_text(whole + '{"type": "train", "it')  # killed mid-write
    assert read_log(run) == ([records[0]], [records[1]])
    truncate_log(run / "metrics.jsonl", upto_iter=1)  # --resume after such a kill reads it the same way
    assert read_log(run) == ([records[0]], [records[1]])
    (run / "metrics.jsonl").write_text('{"type": "tr\n' + whole)  # damage elsewhere is not a kill: say where
    with pytest.raises(DataError) as e:
        read_log(run)
    assert str(e.value) == f"{run / 'metrics.jsonl'}: line 1 is not a JSON record; remove it or restore the file"


def train_stopped_by_sigterm(cfg, run_dir, root, monkeypatch, step: int = 3):
    """Train ``cfg`` with a SIGTERM sent to this process during step ``step`` (the run ends with last.pt written);
    returns the TrainingInterrupted it raised."""
    import pixelwise.engine.trainer as trainer

    real, calls = trainer.step_loss, [0]

    def stopped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "step_loss", stopped)
    try:
        with pytest.raises(trainer.TrainingInterrupted) as e:
            train(cfg, run_dir=run_dir, data_root=root, progress=False)
    finally:
        monkeypatch.setattr(trainer, "step_loss", real)
    return e.value


def test_a_resumed_run_with_dropout_ends_with_the_uninterrupted_weights(tmp_path, monkeypatch):
    """Dropout draws from the global RNG, which the checkpoint restores: nothing between the restore and the next
    step may draw from it (the loader's iterator did)."""

    root = write_dataset(tmp_path / "data", splits={"train": 6, "val": 2}).parent
    cfg = load_config(toy_config(tmp_path, iters=6, eval_interval=6))
    cfg["model"]["dropout"] = 0.5
    train(cfg, run_dir=tmp_path / "straight", data_root=root, progress=False)
    train_stopped_by_sigterm(cfg, tmp_path / "killed", root, monkeypatch)
    train(cfg, run_dir=tmp_path / "killed", data_root=root, progress=False, resume=True)
    a = load_checkpoint(tmp_path / "straight/last.pt")["model"]
    b = load_checkpoint(tmp_path / "killed/last.pt")["model"]
    assert load_checkpoint(tmp_path / "killed/last.pt")["train_state"]["iter"] == 6
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_step_of_micro_batches_cut_short_by_its_loader_resumes_exactly(tmp_path, monkeypatch):
    """accumulate 3, a SIGINT that stops the loader's workers before the second micro-batch of step 3: the step is
    saved to be redone, and the batch-norm statistics its first forward moved went into last.pt with it (moved
    twice on resume: every running statistic off, a batch counted twice)."""
    import pixelwise.engine.trainer as trainer

    root = write_dataset(tmp_path / "data", splits={"train": 6, "val": 2}).parent
    cfg = load_config(toy_config(tmp_path, iters=6, eval_interval=6, accumulate=3, ema_decay=0.9))
    train(cfg, run_dir=tmp_path / "straight", data_root=root, progress=False)
    real = trainer.DataLoader

    class DyingLoader(real):
        def __iter__(self):
            inner, calls = super().__iter__(), [0]

            class Batches:
                def __next__(self):
                    calls[0] += 1
                    if calls[0] == 8:  # step 3's second micro-batch
                        os.kill(os.getpid(), signal.SIGINT)
                        raise RuntimeError("DataLoader worker (pid 1234) exited unexpectedly")
                    return next(inner)

            return Batches()

    monkeypatch.setattr(trainer, "DataLoader", DyingLoader)
    with pytest.raises(trainer.TrainingInterrupted):
        train(cfg, run_dir=tmp_path / "cut", data_root=root, progress=False)
    monkeypatch.setattr(trainer, "DataLoader", real)
    assert load_checkpoint(tmp_path / "cut/last.pt")["train_state"]["iter"] == 2
    train(cfg, run_dir=tmp_path / "cut", data_root=root, progress=False, resume=True)
    a, b = load_checkpoint(tmp_path / "straight/last.pt"), load_checkpoint(tmp_path / "cut/last.pt")
    for key in ("model", "train_model"):  # the average and the trained weights, statistics included
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


def test_a_signal_after_a_step_due_for_validation_validates_it_on_resume(tmp_path, monkeypatch):
    """SIGTERM during step 3 of a run validating every 3 steps: the step finishes and is saved, and --resume
    validates it first, so the log and the checkpoints are the uninterrupted run's (the validation was lost)."""

    root = write_dataset(tmp_path / "data", splits={"train": 6, "val": 2}).parent
    cfg = load_config(toy_config(tmp_path, iters=6, eval_interval=3))
    train(cfg, run_dir=tmp_path / "straight", data_root=root, progress=False)
    stopped = train_stopped_by_sigterm(cfg, tmp_path / "killed", root, monkeypatch)
    assert str(stopped).startswith("stopped by SIGTERM at iteration 3:")
    assert load_checkpoint(tmp_path / "killed/last.pt")["train_state"]["eval_due"] is True
    train(cfg, run_dir=tmp_path / "killed", data_root=root, progress=False, resume=True)

    def validations(run):
        records = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [(r["iter"], r["confusion_matrix"]) for r in records if r["type"] == "val"]

    assert [it for it, _ in validations("straight")] == [3, 6]
    assert validations("killed") == validations("straight")
    for name in ("last.pt", "best.pt"):
        a = load_checkpoint(tmp_path / "straight" / name)
        b = load_checkpoint(tmp_path / "killed" / name)
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert load_checkpoint(tmp_path / "killed/last.pt")["train_state"]["eval_due"] is False


STOPPED_IN_VALIDATION = """
import os, signal, sys
import pixelwise.engine.evaluator as evaluator
from pixelwise.config import load_config
from pixelwise.engine import train
from pixelwise.engine.stop_signals import TrainingInterrupted

real = evaluator.batch_scores

def signalled(*args, **kwargs):  # SIGTERM to the whole group (this process and its loader workers), as Ctrl-C
    os.killpg(0, signal.SIGTERM)
    return real(*args, **kwargs)

if sys.argv[4] == "signal":
    evaluator.batch_scores = signalled
try:
    resume = sys.argv[4] == "resume"
    train(load_config(sys.argv[1]), run_dir=sys.argv[2], data_root=sys.argv[3], progress=False, resume=resume)
except TrainingInterrupted as e:
    print(e)
    sys.exit(3)
"""


def test_a_signal_during_a_validation_stops_it_and_resume_validates_that_step_first(tmp_path):
    """SIGTERM to the process group during the validation of step 2: the validation gives up at the next image
    (with a loader worker, which the signal ended, it was a traceback and the steps since the last checkpoint
    lost; without one the whole validation ran first), last.pt is written, and --resume validates step 2 first:
    the log and checkpoints are the uninterrupted run's."""
    workers = 1
    root = write_dataset(tmp_path / "data", splits={"train": 6, "val": 4}).parent
    path = toy_config(tmp_path, iters=4, eval_interval=2, checkpoint_interval=4)
    raw = yaml.safe_load(path.read_text())
    raw["data"]["num_workers"] = workers
    path.write_text(yaml.safe_dump(raw))
    killed = tmp_path / "killed"

    def run(run_dir, how):  # each part in a process of one thread: the same float sums in all three
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        args = [sys.executable, "-c", STOPPED_IN_VALIDATION, str(path), str(run_dir), str(root), how]
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, start_new_session=True)

    assert run(tmp_path / "straight", "plain").returncode == 0
    done = run(killed, "signal")
    assert done.returncode == 3, done.stderr[-2000:]
    assert done.stdout.startswith("stopped by SIGTERM at iteration 2:")
    assert load_checkpoint(killed / "last.pt")["train_state"]["eval_due"] is True
    assert not [x for x in (killed / "metrics.jsonl").read_text().splitlines() if '"val"' in x]
    assert run(killed, "resume").returncode == 0

    def validations(run):
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["iter"], r["confusion_matrix"]) for r in records if r["type"] == "val"]

    assert [it for it, _ in validations(tmp_path / "straight")] == [2, 4]
    assert validations(killed) == validations(tmp_path / "straight")
    a, b = load_checkpoint(tmp_path / "straight/best.pt"), load_checkpoint(killed / "best.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_biases_and_norm_layers_can_have_their_own_weight_decay():
    """train.norm_bias_weight_decay: the 1-D parameters (biases, BatchNorm's scale and shift) get it, the
    convolution kernels keep train.weight_decay; with head_lr_mult, backbone and head are split too."""
    from pixelwise import build_model
    from pixelwise.config import DEFAULTS
    from pixelwise.engine import build_optimizer

    model = build_model("deeplabv3plus_mobilenetv2", num_classes=3)
    opt = build_optimizer(model, {**DEFAULTS["train"], "weight_decay": 0.05, "norm_bias_weight_decay": 0.0})
    decayed, norm_bias = opt.param_groups
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    assert {id(bn.weight), id(bn.bias)} <= ids(norm_bias) and id(conv.weight) in ids(decayed)
    assert (decayed["weight_decay"], norm_bias["weight_decay"]) == (0.05, 0.0)
    assert all(p.ndim <= 1 for p in norm_bias["params"]) and all(p.ndim > 1 for p in decayed["params"])
    settings = {**DEFAULTS["train"], "lr": 0.01, "head_lr_mult": 10.0, "norm_bias_weight_decay": 0.0}
    groups = build_optimizer(model, settings).param_groups
    assert [(g["lr"], g["weight_decay"], g["lr_mult"], g["norm_bias"]) for g in groups] == [
        (0.01, 1e-4, 1.0, False),
        (0.01, 0.0, 1.0, True),
        (pytest.approx(0.1), 1e-4, 10.0, False),
        (pytest.approx(0.1), 0.0, 10.0, True),
    ]
    backbone = {id(p) for p in model.backbone.parameters()}
    assert ids(groups[0]) | ids(groups[1]) == backbone and not (ids(groups[2]) | ids(groups[3])) & backbone
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_a_resume_with_a_new_weight_decay_keeps_the_norm_and_bias_decay(tmp_path):
    root = write_dataset(tmp_path / "data").parent
    cfg = load_config(toy_config(tmp_path, iters=2, eval_interval=2, norm_bias_weight_decay=0.0))
    train(cfg, run_dir=tmp_path / "run", data_root=root, progress=False)
    more = load_config(toy_config(tmp_path, iters=3, eval_interval=3, norm_bias_weight_decay=0.0, weight_decay=0.01))
    train(more, run_dir=tmp_path / "run", data_root=root, progress=False, resume=True, allow_changes=True)
    groups = load_checkpoint(tmp_path / "run/last.pt")["optimizer"]["param_groups"]
    assert [(g["weight_decay"], g["norm_bias"]) for g in groups] == [(0.01, False), (0.0, True)]


def test_tensorboard_overlays_of_16_bit_images_are_not_black(tmp_path, monkeypatch):
    """16-bit and float images load as float in [0, 1]: the overlay takes them to 0..255 first (it read 0.8 as
    0.8 of 255, a black picture). The same image loaded as float or as uint8 gives the same overlay."""
    import numpy as np

    from pixelwise import build_model
    from pixelwise.config import DEFAULTS
    from pixelwise.data import SegmentationDataset, build_transforms
    from pixelwise.engine.run_dir import tensorboard_val

    root = write_dataset(tmp_path / "data", splits={"val": 1}).parent
    norm = {k: DEFAULTS["data"][k] for k in ("mean", "std")}
    ds = SegmentationDataset(root, "toy", "val", transforms=build_transforms(train=False, **norm))
    pictures = []

    class Writer:
        def add_scalar(self, *args):
            pass

        def add_image(self, tag, picture, it, dataformats):
            pictures.append(picture)

    torch.manual_seed(0)
    model = build_model("unet", num_classes=3, base_channels=4, depth=2).eval()
    metrics = {k: 0.0 for k in SUMMARY_KEYS} | {"iou": [0.0, 0.0, 0.0]}
    tensorboard_val(Writer(), model, ds, metrics, {"palette": ds.info.palette}, torch.device("cpu"), 1, images=1)
    raw, mask = ds.load(0)
    monkeypatch.setattr(ds, "load", lambda i: (raw.astype(np.float32) / 255, mask))  # as a 16-bit file reads
    tensorboard_val(Writer(), model, ds, metrics, {"palette": ds.info.palette}, torch.device("cpu"), 1, images=1)
    as_uint8, as_float = pictures
    assert as_float.dtype == np.uint8 and np.abs(as_float.astype(int) - as_uint8).max() <= 1


def test_a_loss_gone_non_finite_at_a_signalled_step_is_the_error(tmp_path, monkeypatch):
    """A SIGTERM during a step whose loss is NaN: the run stops with the loss's error, and no last.pt marks that
    step for validation on --resume (it would validate and save NaN weights)."""
    import pixelwise.engine.trainer as trainer

    root = write_dataset(tmp_path / "data", splits={"train": 6, "val": 2}).parent
    cfg = load_config(toy_config(tmp_path, iters=6, eval_interval=3))
    real, calls = trainer.step_loss, [0]

    def nan_at_three(*args, **kwargs):
        calls[0] += 1
        loss = real(*args, **kwargs)
        if calls[0] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
            return loss * float("nan")
        return loss

    monkeypatch.setattr(trainer, "step_loss", nan_at_three)
    with pytest.raises(TrainingDiverged, match="loss became nan at iteration 3; lower train.lr"):
        train(cfg, run_dir=tmp_path / "r", data_root=root, progress=False)
    assert not (tmp_path / "r/last.pt").exists()


def test_a_large_seed_trains_and_small_seeds_keep_their_stream():
    """torch.manual_seed takes values below 2**63; the augmentation seeds of train.seed=2**31-1 went past it."""
    big = iter(EpochSampler(10, 2, seed=2**31 - 1))
    for _ in range(4):
        _, aug = next(big)
        assert 0 <= aug < 2**63
        torch.manual_seed(aug)
    small = iter(EpochSampler(10, 2, seed=3))
    assert [next(small)[1] for _ in range(3)] == [(3 * 1_000_003) * 100_003 + pos for pos in range(3)]


def test_the_sample_order_continues_after_a_resume_with_another_batch_size():
    from pixelwise.engine.resume import TrainState, sampler_start

    assert sampler_start(TrainState(iter=2, samples=8), 4, 10) == 2  # 8 samples drawn: the third batch of 4 is next
    assert sampler_start(TrainState(iter=3, samples=6), 4, 10) == 2  # a partial batch is skipped, never repeated
    # 367 images in batches of 8 (45 a epoch, 7 dropped), 4500 iterations: epoch 100 begins. In batches of 4 (91 a
    # epoch) that is batch 9100, and in batches of 16 (22 a epoch) batch 2200; counting samples alone (36 000 / 4,
    # / 16) started 1.1 epochs back (epoch 98, batch 82) or 2 epochs on (epoch 102, batch 6)
    state = TrainState(iter=4500, samples=36_000, sample_batch=8)
    assert sampler_start(state, 8, 367) == 4500
    assert sampler_start(state, 4, 367) == 100 * 91
    assert sampler_start(state, 16, 367) == 100 * 22
    # mid-epoch: 3 batches of 8 into epoch 1 are position 24: batch 6 of 4, batch 2 of 16 (position 32; 24-31 skipped)
    state = TrainState(iter=48, samples=48 * 8, sample_batch=8)
    assert sampler_start(state, 4, 367) == 91 + 6
    assert sampler_start(state, 16, 367) == 22 + 2
    # the last whole batch of 4 of epoch 1 (position 360 + 4 = 364 of 367): batches of 16 have none left there
    assert sampler_start(TrainState(iter=181, samples=181 * 4, sample_batch=4), 16, 367) == 2 * 22
    # every place and batch size of a small data set: never a sample skipped beyond the partial batch, none repeated
    for size in range(2, 30):
        for old in range(1, size + 1):
            for new in range(1, size + 1):
                for drawn in range(0, 3 * (size // old)):
                    start = sampler_start(TrainState(samples=drawn * old, sample_batch=old), new, size)
                    epoch, batch = divmod(drawn, size // old)
                    place = batch * old  # where the next old batch would begin in that epoch's order
                    new_epoch, new_batch = divmod(start, size // new)
                    if new_epoch == epoch:
                        assert place <= new_batch * new < place + new
                    else:  # nothing of this epoch left in whole new batches
                        assert (new_epoch, new_batch) == (epoch + 1, 0) and place + new > (size // new) * new


def test_a_checkpoint_without_its_sample_batch_resumes_in_its_own_batching(tmp_path):
    """A last.pt from before the batch was recorded: its settings give it (2 a step), so a resume in batches of 1
    starts where its samples end in the epoch (7 images, 3 batches of 2 a epoch: after 5 steps, epoch 1 at place
    4, batch 1 * 7 + 4 = 11 of 1) and not at sample 10 counted across the dropped image."""
    from pixelwise.models.weights import save_checkpoint

    root = write_dataset(tmp_path / "data", splits={"train": 7, "val": 1}).parent
    cfg = load_config(toy_config(tmp_path, iters=5, eval_interval=1000))
    run = tmp_path / "r"
    train(cfg, run_dir=run, data_root=root, progress=False)
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["train_state"]["sample_batch"] == 2 and ckpt["train_state"]["samples"] == 10
    del ckpt["train_state"]["sample_batch"]
    save_checkpoint(run / "last.pt", {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    cfg["data"]["batch_size"], cfg["train"]["iters"] = 1, 6
    train(cfg, run_dir=run, data_root=root, progress=False, resume=True, allow_changes=True)
    state = load_checkpoint(run / "last.pt")["train_state"]
    assert (state["sample_batch"], state["samples"]) == (1, 11 + 1)


def test_how_often_a_run_validates_does_not_change_its_weights(tmp_path):
    """Each validation's loader drew its seed from the global RNG, moving every later dropout mask: eval_interval
    (free to change on resume) changed the trained model."""
    root = write_dataset(tmp_path / "data", splits={"train": 6, "val": 2}).parent
    weights = []
    for interval in (1, 1000):
        cfg = load_config(toy_config(tmp_path, iters=4, eval_interval=interval))
        cfg["model"]["dropout"] = 0.5
        train(cfg, run_dir=tmp_path / f"e{interval}", data_root=root, progress=False)
        weights.append(load_checkpoint(tmp_path / f"e{interval}/last.pt")["model"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_keep_last_rotates_by_number_and_leaves_an_earlier_runs_later_files(tmp_path):
    root = write_dataset(tmp_path / "data").parent
    run = tmp_path / "run"
    run.mkdir()
    for stale in ("iter_0000800.pt", "iter_0000900.pt"):  # an earlier run's, its last.pt deleted
        (run / stale).write_bytes(b"old")
    cfg = load_config(toy_config(tmp_path, iters=3, eval_interval=1000, checkpoint_interval=1, keep_last=2))
    train(cfg, run_dir=run, data_root=root, progress=False)
    assert sorted(p.name for p in run.glob("iter_*.pt")) == [
        "iter_0000002.pt", "iter_0000003.pt", "iter_0000800.pt", "iter_0000900.pt"
    ]  # fmt: skip


def test_a_resume_keeps_the_runs_searched_crf_and_a_refused_one_changes_nothing(tmp_path):
    from pixelwise.crf.search import write_crf_to_run_config
    from pixelwise.fileio import load_yaml

    root = write_dataset(tmp_path / "data").parent
    run = tmp_path / "run"
    train(load_config(toy_config(tmp_path, iters=2, eval_interval=2)), run_dir=run, data_root=root, progress=False)
    searched = {**load_yaml((run / "config.yaml").read_text())["crf"], "w1": 5.5, "theta_alpha": 20.0}
    write_crf_to_run_config(run / "config.yaml", searched)
    more = load_config(toy_config(tmp_path, iters=3, eval_interval=3))
    train(more, run_dir=run, data_root=root, progress=False, resume=True, allow_changes=True)
    assert load_yaml((run / "config.yaml").read_text())["crf"] == searched  # was: the defaults back
    before = (run / "config.yaml").read_text()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(["{damaged", *lines]) + "\n")
    with pytest.raises(DataError):
        train(load_config(toy_config(tmp_path, iters=4, eval_interval=4)), run_dir=run, data_root=root,
              progress=False, resume=True, allow_changes=True)  # fmt: skip
    assert (run / "config.yaml").read_text() == before


def test_auto_precision_on_a_gpu_before_ampere_is_fp16(monkeypatch):
    from pixelwise import device as device_module

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))  # a V100
    assert device_module.native_precisions(torch.device("cuda", 0)) == ("fp16",)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert device_module.native_precisions(torch.device("cuda", 0)) == ("bf16", "fp16")


def test_the_auxiliary_head_s_loss_is_weighted_in():
    from pixelwise.engine.trainer import step_loss
    from pixelwise.losses import build_loss

    torch.manual_seed(0)
    ce = build_loss("cross_entropy")
    a, b, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    assert step_loss(ce, {"out": a, "aux": b}, t, 0.4).item() == pytest.approx((ce(a, t) + 0.4 * ce(b, t)).item())
    assert step_loss(ce, a, t, 0.4).item() == pytest.approx(ce(a, t).item())


def test_grad_clip_bounds_the_first_step(tmp_path):
    """One SGD step without momentum moves the weights by lr x the clipped gradient: at most lr x grad_clip."""
    root = write_dataset(tmp_path / "data").parent
    moved = {}
    for clip in (0.0, 1e-3):
        cfg = load_config(toy_config(tmp_path, iters=1, eval_interval=1000, grad_clip=clip, momentum=0.0,
                                     weight_decay=0.0, lr_schedule="constant"))  # fmt: skip
        from pixelwise import build_model

        torch.manual_seed(cfg["train"]["seed"])  # as the trainer builds its model
        model = build_model(**{**cfg["model"], "num_classes": 3})
        start = {k: v.detach().clone() for k, v in model.named_parameters()}  # parameters: not BN statistics
        train(cfg, run_dir=tmp_path / f"c{clip}", data_root=root, progress=False)
        end = load_checkpoint(tmp_path / f"c{clip}/last.pt")["model"]
        moved[clip] = torch.sqrt(sum(((end[k] - start[k]) ** 2).sum() for k in start))
    lr = cfg["train"]["lr"]
    assert moved[1e-3] <= lr * 1e-3 * 1.001 < moved[0.0]  # clipped, and the unclipped step was larger


def test_without_a_val_split_the_latest_model_is_best(tmp_path):
    root = write_dataset(tmp_path / "data", splits={"train": 4}).parent
    cfg = _plain_toy(tmp_path, iters=3, eval_interval=2)
    cfg["data"]["val_split"] = None
    result = train(cfg, run_dir=tmp_path / "run", data_root=root, progress=False)
    assert (result["best_iter"], result["iterations"]) == (3, 3)
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert records and not [r for r in records if r["type"] == "val"]
    best, last = load_checkpoint(tmp_path / "run/best.pt")["model"], load_checkpoint(tmp_path / "run/last.pt")["model"]
    assert all(torch.equal(best[k], last[k]) for k in last)


def test_init_from_starts_training_from_the_checkpoint_s_weights(tmp_path):
    root = write_dataset(tmp_path / "data", splits={"train": 4, "val": 2}).parent
    train(_plain_toy(tmp_path, iters=3), run_dir=tmp_path / "a", data_root=root, progress=False)
    start = load_checkpoint(tmp_path / "a/last.pt")["model"]
    # a learning rate so small that one step leaves the weights where they start
    for name, init in (("b", str(tmp_path / "a/last.pt")), ("fresh", None)):
        cfg = _plain_toy(tmp_path, iters=1, lr=1e-12, init_from=init, seed=1)
        train(cfg, run_dir=tmp_path / name, data_root=root, progress=False)
    b = load_checkpoint(tmp_path / "b/last.pt")["model"]
    fresh = load_checkpoint(tmp_path / "fresh/last.pt")["model"]
    assert max((b[k] - start[k]).abs().max().item() for k in start) < 1e-9
    assert max((fresh[k] - start[k]).abs().max().item() for k in start) > 1e-3


def test_a_missing_split_names_the_setting_and_leaves_no_empty_run_folder(tmp_path):
    """A data set imported without val/: the message pointed at `data check` (which said OK) and
    --no-check-data (which failed the same way); the failed run left its empty folder behind."""
    root = write_dataset(tmp_path / "data", splits={"train": 4}).parent
    cfg = _plain_toy(tmp_path, iters=1)
    with pytest.raises(ConfigError) as e:
        train(cfg, run_dir=tmp_path / "runs" / "new", data_root=root, progress=False)
    assert str(e.value) == (
        "data.val_split='val': data set 'toy' has no split 'val' (it has train): set data.val_split to one of them, "
        "or null to train without validation"
    )
    assert not (tmp_path / "runs" / "new").exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    with pytest.raises(ConfigError):
        train(cfg, run_dir=existing, data_root=root, progress=False)
    assert existing.is_dir()  # a folder that was there stays


def test_a_run_from_a_pretrained_file_resumes_without_it(tmp_path):
    """The checkpoint holds the weights: a resume needs neither the pretrained file nor the network, and naming
    another one (or none) is no change of model."""
    import torchvision

    root = write_dataset(tmp_path / "data", splits={"train": 4, "val": 2}).parent
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    cfg = tmp_path / "c.yaml"
    model = {"name": "deeplabv3", "backbone": "resnet18", "pretrained_backbone": str(tmp_path / "r18.pth")}
    config = {
        "model": model,
        "data": {"dataset": "toy", "crop_size": 32, "batch_size": 2, "num_workers": 0},
        "train": {"iters": 2, "eval_interval": 2, "checkpoint_interval": 1},
    }
    cfg.write_text(yaml.safe_dump(config))
    train(load_config(cfg), run_dir=tmp_path / "r", data_root=root, progress=False)
    (tmp_path / "r18.pth").unlink()
    more = {"run_dir": tmp_path / "r", "data_root": root, "progress": False, "resume": True, "allow_changes": True}
    train(load_config(cfg, ["train.iters=3"]), **more)
    assert load_checkpoint(tmp_path / "r/last.pt")["train_state"]["iter"] == 3
    train(load_config(cfg, ["train.iters=4", "model.pretrained_backbone=false"]), **more)
    assert load_checkpoint(tmp_path / "r/last.pt")["train_state"]["iter"] == 4


def test_validation_settings_the_messages_name_and_odd_but_valid_values(tmp_path, monkeypatch):
    """data.val_split null (the trainer's own advice) trains without validation; data.val_batch_size is used
    (it was read by nothing), and refused for a split of several sizes; crop_size [S] is S; any 64-bit seed."""
    import pixelwise.engine.trainer as trainer

    root = write_dataset(tmp_path / "data", splits={"train": 4, "val": 2}).parent
    cfg = toy_config(tmp_path, iters=2, eval_interval=2)
    seen = []
    real = trainer.evaluate
    monkeypatch.setattr(trainer, "evaluate", lambda *a, **k: seen.append(k["batch_size"]) or real(*a, **k))
    config = load_config(cfg, ["data.val_batch_size=2", "data.crop_size=[16]", f"train.seed={2**64 - 1}"])
    assert config["data"]["crop_size"] == 16
    train(config, run_dir=tmp_path / "a", data_root=root, progress=False)
    assert seen == [2]
    train(load_config(cfg, ["data.val_split=null"]), run_dir=tmp_path / "b", data_root=root, progress=False)
    assert seen == [2] and (tmp_path / "b/last.pt").exists()  # no validation
    with pytest.raises(ConfigError) as e:
        load_config(cfg, [f"train.seed={2**64}"])
    assert str(e.value) == f"train.seed={2**64}: must be a 64-bit seed, from -2**63 to 2**64 - 1"
    assert load_config(cfg, ["train.seed=-1"])["train"]["seed"] == -1  # torch takes it: older runs used it
    with pytest.raises(ConfigError, match=r"^train.momentum=1.5: must be below 1 \(e.g. 0.9\)$"):
        load_config(cfg, ["train.momentum=1.5"])
    from PIL import Image

    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(root / "toy/images/val/s01.png")  # another size
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "toy/masks/val/s01.png")
    with pytest.raises(ConfigError) as e:
        train(load_config(cfg, ["data.val_batch_size=2"]), run_dir=tmp_path / "c", data_root=root, progress=False)
    assert str(e.value) == (
        "data.val_batch_size=2: the images of split 'val' differ in size (12x10, 24x20, ...) and are validated "
        "whole, so they cannot share a batch; set data.val_batch_size: 1"
    )
    # the same for whole training images (crop_size null): a collate traceback at the first step
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(root / "toy/images/train/s01.png")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "toy/masks/train/s01.png")
    whole = ["data.crop_size=null", "data.scale_range=null", "data.val_split=null"]
    with pytest.raises(ConfigError) as e:
        train(load_config(cfg, whole), run_dir=tmp_path / "d", data_root=root, progress=False)
    assert str(e.value) == (
        "data.crop_size null with data.batch_size=2: the images of split 'train' differ in size (12x10, 24x20, ...) "
        "and cannot share a batch whole; set data.crop_size (or data.batch_size: 1)"
    )
    train(load_config(cfg, [*whole, "data.batch_size=1"]), run_dir=tmp_path / "d", data_root=root, progress=False)


def test_a_batch_of_one_that_batch_norm_cannot_train_on_is_refused_before_training(tmp_path):
    root = write_dataset(tmp_path / "data", splits={"train": 4, "val": 2}, size=(40, 36)).parent
    cfg = tmp_path / "c.yaml"
    model = {"name": "deeplabv3", "backbone": "resnet18", "output_stride": 32}
    data = {"dataset": "toy", "crop_size": 32, "batch_size": 1, "num_workers": 0}
    cfg.write_text(yaml.safe_dump({"model": model, "data": data, "train": {"iters": 1, "eval_interval": 1}}))
    with pytest.raises(ConfigError) as e:
        train(load_config(cfg), run_dir=tmp_path / "r", data_root=root, progress=False)
    assert str(e.value) == (
        "data.batch_size=1 with data.crop_size=32: model deeplabv3's batch norm would get one value per channel "
        "(a map of 1x512x1x1), which cannot train; use a batch size of 2 or more"
    )
    train(load_config(cfg, ["data.batch_size=2"]), run_dir=tmp_path / "r2", data_root=root, progress=False)
    model = {"name": "unet", "base_channels": 4, "depth": 2}  # no 1x1 map: trains at batch 1
    cfg.write_text(yaml.safe_dump({"model": model, "data": data, "train": {"iters": 1, "eval_interval": 1}}))
    train(load_config(cfg), run_dir=tmp_path / "r3", data_root=root, progress=False)


def test_a_data_set_of_one_class_is_refused(tmp_path):
    """Softmax over one class: loss 0, mIoU 1.0 whatever the model learns (it trained "successfully")."""
    root = write_dataset(tmp_path / "data", splits={"train": 2, "val": 1}, num_classes=1).parent
    with pytest.raises(DataError) as e:
        train(load_config(toy_config(tmp_path, iters=1)), run_dir=tmp_path / "r", data_root=root, progress=False)
    classes = root / "toy/classes.json"
    name = json.loads(classes.read_text())["classes"][0]
    assert str(e.value) == (
        f"{classes} lists one class ({name!r}): a segmentation model needs two or more; add the background, e.g. "
        f'"classes": ["background", "{name}"]'
    )
    assert not (tmp_path / "r").exists()


def test_an_instance_method_on_a_model_without_an_instance_branch_names_the_models_that_have_one(tmp_path):
    root = write_dataset(tmp_path / "data", splits={"train": 2, "val": 1}).parent
    cfg = load_config(toy_config(tmp_path, iters=1), ["instances.method=panoptic"])
    cfg["model"] = {"name": "pspnet", "backbone": "resnet18"}
    with pytest.raises(ConfigError) as e:
        train(cfg, run_dir=tmp_path / "r", data_root=root, progress=False)
    assert str(e.value).startswith(
        "instances.method=panoptic: model pspnet has no instance branch (instance_head); use one that has: "
    )
    assert "deeplabv3plus" in str(e.value) and "unet" in str(e.value)


def test_the_loss_logged_after_a_resume_is_the_uninterrupted_runs(tmp_path, monkeypatch):
    """Logged every 5 steps, stopped at step 7: the line of step 10 is the mean of steps 6-10 as without the stop
    (the loss of steps 6-7 is kept in the checkpoint; it was the mean of 8-10)."""
    root = write_dataset(tmp_path / "data", splits={"train": 6, "val": 2}).parent
    cfg = load_config(toy_config(tmp_path, iters=10, eval_interval=10, log_interval=5, deterministic=True))
    train(cfg, run_dir=tmp_path / "straight", data_root=root, progress=False)
    train_stopped_by_sigterm(cfg, tmp_path / "killed", root, monkeypatch, step=7)
    train(cfg, run_dir=tmp_path / "killed", data_root=root, progress=False, resume=True)

    def losses(run):
        records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        return [(r["iter"], r["loss"]) for r in records if r["type"] == "train"]

    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "killed")
    assert [i for i, _ in resumed] == [5, 10]
    assert resumed == [(i, pytest.approx(v, rel=1e-6)) for i, v in straight]


def test_a_run_grouped_the_old_way_names_the_change_on_resume(tmp_path, monkeypatch):
    """A DeepLab-VGG run trained with head_lr_mult before fc6/fc7 counted with the backbone: the settings are the
    run's, the grouping is not; the refusal says so (it listed "the model's parameters" as the change)."""
    import copy

    from pixelwise import build_model
    from pixelwise.config import DEFAULTS
    from pixelwise.engine.builders import build_optimizer, build_scheduler
    from pixelwise.engine.resume import TrainState, pack, restore
    from pixelwise.models.deeplab import DeepLabVGG
    from pixelwise.models.weights import FORMAT

    spec = {"name": "deeplabv1_vgg16_largefov", "num_classes": 3}
    config = copy.deepcopy({k: DEFAULTS[k] for k in ("data", "train", "instances", "inference")})
    config["train"]["head_lr_mult"] = 10.0

    def objects():
        model = build_model(**spec)
        optimizer = build_optimizer(model, config["train"])
        return model, optimizer, build_scheduler(optimizer, config["train"]), torch.amp.GradScaler("cpu", enabled=False)

    with monkeypatch.context() as m:
        m.setattr(DeepLabVGG, "backbone_layers", None)  # the grouping before this change
        model, optimizer, scheduler, scaler = objects()
    meta = {"model": spec, "classes": ["a", "b", "c"], "palette": [[0, 0, 0]] * 3, "mean": [0.5] * 3, "std": [0.2] * 3}
    ckpt = pack(
        model=model, meta=meta, config=config, state=TrainState(iter=1), optimizer=optimizer, scheduler=scheduler,
        scaler=scaler,
    )  # fmt: skip
    torch.save({"format": FORMAT, **ckpt}, tmp_path / "last.pt")
    model, optimizer, scheduler, scaler = objects()
    kwargs = dict(model=model, spec=spec, optimizer=optimizer, scheduler=scheduler, scaler=scaler, device="cpu")
    with pytest.raises(ConfigError) as e:
        restore(tmp_path / "last.pt", config=config, **kwargs)
    assert str(e.value).startswith(
        f"--resume: this version of pixelwise groups the parameters of {tmp_path / 'last.pt'}'s model otherwise ("
    )
    assert "leaves FCN's and DeepLab-VGG's fc6/fc7 at the base rate" in str(e.value)


def test_cached_class_weights_are_reused_only_for_the_same_data(tmp_path, monkeypatch):
    """class_weights.json was reused whenever the method and class count matched: a run folder reused for
    another data set, split, class list or a grown data set trained with the old data's weights, silently."""
    from pixelwise.data import SegmentationDataset
    from pixelwise.engine.builders import resolve_class_weights

    def weights(root, split="train", run=tmp_path / "run", write=True):
        ds = SegmentationDataset(root, "toy", split)
        return resolve_class_weights("median_frequency", ds, run, progress=False, write=write)

    def fresh(root, split="train"):  # computed from the masks, no cache
        return weights(root, split, run=tmp_path / "none", write=False)

    first = write_dataset(tmp_path / "a", splits={"train": 3, "val": 2}, seed=0).parent
    other = write_dataset(tmp_path / "b", splits={"train": 3}, seed=5).parent
    original = weights(first)
    cached = json.loads((tmp_path / "run/class_weights.json").read_text())
    assert cached["dataset"] == {"root": str(first.resolve()), "name": "toy", "split": "train", "images": 3}
    for root, split in ((other, "train"), (first, "val")):
        assert weights(root, split) == fresh(root, split) != original  # recomputed, and the cache rewritten
    assert weights(first) == original and json.loads((tmp_path / "run/class_weights.json").read_text()) == cached
    ds = SegmentationDataset(first, "toy", "train")  # another method on the same data: counted again
    inverse = resolve_class_weights("inverse_frequency", ds, tmp_path / "run", progress=False, write=True)
    assert inverse != original
    assert json.loads((tmp_path / "run/class_weights.json").read_text())["method"] == "inverse_frequency"
    assert weights(first) == original  # and back
    classes = first / "toy/classes.json"
    classes.write_text(json.dumps({**json.loads(classes.read_text()), "classes": ["sky", "road", "car"]}))
    with monkeypatch.context() as m:  # another class list alone: counted again
        counted = []
        m.setattr(SegmentationDataset, "class_counts", lambda self, **k: counted.append(1) or ([5, 3, 2], [3, 3, 3]))
        weights(first)
        assert counted and json.loads((tmp_path / "run/class_weights.json").read_text())["classes"][0] == "sky"
    write_dataset(tmp_path / "a", splits={"train": 4}, seed=1)  # a fourth training image (and the names back)
    grown = weights(first)
    assert grown == fresh(first) != original
    monkeypatch.setattr(SegmentationDataset, "class_counts", lambda *a, **k: pytest.fail("counted again"))
    assert weights(first) == grown  # the same data: the cache


def test_train_takes_a_config_file_and_validates_a_mapping(tmp_path):
    """train() trusted its config: a path gave "TypeError: string indices must be integers", {} KeyError: 'train',
    an unknown key KeyError: 'device'."""
    root = write_dataset(tmp_path / "data", splits={"train": 2, "val": 1}).parent
    result = train(toy_config(tmp_path, iters=1), run_dir=tmp_path / "from_path", data_root=root, progress=False)
    assert result["iterations"] == 1
    for given, expected in (
        ({}, "config needs model.name; available: "),
        ({"model": {"name": "unet"}, "train": {"nonsense": 1}}, "unknown config key(s) train.nonsense; valid: "),
        ([1], "a config must be a mapping with sections model, data, train"),
        (tmp_path / "missing.yaml", f"config file {tmp_path / 'missing.yaml'} does not exist"),
    ):
        with pytest.raises(ConfigError) as e:
            train(given, run_dir=tmp_path / "never", data_root=root, progress=False)
        assert str(e.value).startswith(expected), str(e.value)
        assert "\n" not in str(e.value)
    assert not (tmp_path / "never").exists()


def test_evaluate_checkpoint_refuses_a_num_images_that_is_no_whole_number(tmp_path):
    """num_images="2" gave "TypeError: '<' not supported between instances of 'str' and 'int'"."""
    from pixelwise.engine import evaluate_checkpoint

    ckpt, root = tiny_run(tmp_path)
    for bad in ("2", 1.5, True):
        with pytest.raises(ConfigError) as e:
            evaluate_checkpoint(ckpt, num_images=bad, data_root=root, progress=False, num_workers=0)
        assert str(e.value) == (
            f"num_images={bad!r} (--num-images): give a whole number >= 1, or leave it out for the whole split"
        )
    assert evaluate_checkpoint(ckpt, num_images=1, data_root=root, progress=False, num_workers=0)["num_images"] == 1
