"""Nothing silently wrong, nothing lost: each bad input a user brings gets its exact one-line message, run
directories are locked and survive signals, kills and restarts, prediction never mixes or overwrites outputs."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pixelwise.config import load_config
from pixelwise.engine import evaluate_checkpoint, predict, train
from pixelwise.engine.resume import _section_changes, changed_settings
from pixelwise.errors import CheckpointError, ConfigError, DataError, PixelwiseError, ResourceError
from pixelwise.inference import InferenceSettings
from pixelwise.models import model_defaults
from pixelwise.models.weights import checkpoint_model_spec, load_checkpoint, model_from_checkpoint, save_checkpoint
from pixelwise.visualize import overlay_palette

from .conftest import write_dataset
from .test_cli import run_cli
from .test_engine import toy_config


def config_error(tmp_path, *overrides):
    with pytest.raises(ConfigError) as e:
        load_config(toy_config(tmp_path, iters=3), list(overrides))
    return str(e.value)


# --- config values are checked at load time, with the key named ------------------------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=0", "data.batch_size=0: must be >= 1"),
        ("data.batch_size=-2", "data.batch_size=-2: must be >= 1"),
        ("train.eval_interval=0", "train.eval_interval=0: must be >= 1"),
        ("train.lr=-0.1", "train.lr=-0.1: must be > 0"),
        ("train.lr=0", "train.lr=0: must be > 0"),
        ("train.iters=0", "train.iters=0: must be >= 1"),
        ("train.iters=-5", "train.iters=-5: must be >= 1"),
        ("data.crop_size=0", "data.crop_size=0: must be positive (or null for whole images)"),
        ("data.crop_size=[32, -1]", "data.crop_size=[32, -1]: must be positive (or null for whole images)"),
        (
            "data.scale_range=[2.0, 0.5]",
            "data.scale_range=[2.0, 0.5]: give [low, high] with 0 < low <= high, both finite, or null",
        ),
        ("data.image_shift=0.5", "data.image_shift=0.5: give [dy, dx] in pixels (e.g. [-0.5, 0]), or null"),
        ("data.image_shift=[0.5]", "data.image_shift=[0.5]: give [dy, dx] in pixels (e.g. [-0.5, 0]), or null"),
        ("data.image_shift=[true, 0]", "data.image_shift=[True, 0]: give [dy, dx] in pixels (e.g. [-0.5, 0]), or null"),
        ("data.image_shift=[0, 1, 2]", "data.image_shift=[0, 1, 2]: give [dy, dx] in pixels (e.g. [-0.5, 0]), or null"),
        (
            "data.image_shift=[0.5, .nan]",
            "data.image_shift=[0.5, nan]: give [dy, dx] in pixels (e.g. [-0.5, 0]), or null",
        ),
        # NaN compares false with every bound, so it used to pass them all; infinity passed the lower bounds
        ("train.lr=.nan", "train.lr=nan: must be > 0"),
        ("train.max_minutes=.nan", "train.max_minutes=nan: must be >= 0"),
        ("train.lr=.inf", "train.lr=inf: must be a finite number"),
        ("data.color_jitter=.inf", "data.color_jitter=inf: must be a finite number"),  # a torchvision traceback
        (
            "data.scale_range=[0.5, .inf]",
            "data.scale_range=[0.5, inf]: give [low, high] with 0 < low <= high, both finite, or null",
        ),
        (
            "data.scale_range=[0.5, a]",
            "data.scale_range=[0.5, 'a']: give [low, high] with 0 < low <= high, both finite, or null",
        ),
        # silently off (negative, NaN) or a traceback at the first batch (grid 0)
        ("data.color_jitter=-0.2", "data.color_jitter=-0.2: must be >= 0"),
        ("data.elastic_p=.nan", "data.elastic_p=nan: must be >= 0"),
        ("data.elastic_p=1.5", "data.elastic_p=1.5: a probability, at most 1"),
        ("data.elastic_grid=0", "data.elastic_grid=0: must be >= 1"),
        ("train.poly_power=-1", "train.poly_power=-1: must be >= 0"),
        # keys whose default is null were not type-checked: a traceback later, or weight decay 1.0 from "true"
        (
            "train.norm_bias_weight_decay=abc",
            "config key train.norm_bias_weight_decay should be a number or null, got 'abc'",
        ),
        (
            "train.norm_bias_weight_decay=true",
            "config key train.norm_bias_weight_decay should be a number or null, got True",
        ),
        ("data.dataset=2012", "config key data.dataset should be the data set's folder name or null, got 2012"),
        ("train.init_from=[a]", "config key train.init_from should be a checkpoint path or null, got ['a']"),
        # loss names and arguments at load time, before the data check and class counting
        (
            "train.loss=nosuch",
            "unknown loss 'nosuch'; available: cross_entropy, dice, focal, lovasz, ohem, sum, unet_weighted",
        ),
        (
            "train.loss_args={gama: 2}",
            "loss 'cross_entropy' has no argument(s) gama; valid: ignore_index, weight, label_smoothing, top_k_percent",
        ),
    ],
)
def test_bad_config_values(tmp_path, override, message):
    assert config_error(tmp_path, override) == message


def test_set_reaches_one_entry_of_a_mapping_valued_key(tmp_path):
    path = toy_config(tmp_path, iters=3)
    config = load_config(path, ["train.loss=focal", "train.loss_args.gamma=1", "train.loss_args.alpha=0.5"])
    assert config["train"]["loss_args"] == {"gamma": 1, "alpha": 0.5}
    with pytest.raises(ConfigError) as e:
        load_config(path, ["train.lr.x=1"])
    assert str(e.value) == "--set 'train.lr.x=1': train.lr is 0.05, not a mapping; set it whole (train.lr=...)"


def test_yaml_12_floats_in_configs_and_overrides(tmp_path):
    """PyYAML reads 1e-4 (no dot) as a string, and the config refused it as a float; configs now read YAML 1.2's
    numbers, in files and in --set."""
    path = toy_config(tmp_path, iters=3)
    path.write_text(path.read_text() + "crf:\n  theta_alpha: 1e2\n")
    config = load_config(path, ["train.lr=1e-4", "train.loss_args={label_smoothing: 1e-1}"])
    assert config["train"]["lr"] == 1e-4 and config["crf"]["theta_alpha"] == 100.0
    assert config["train"]["loss_args"] == {"label_smoothing": 0.1}
    assert load_config(path, ["data.dataset='2012'"])["data"]["dataset"] == "2012"  # quoted: still a name
    from pixelwise.config import dump_config
    from pixelwise.fileio import load_yaml

    named = load_config(path, ["data.dataset='1e5'"])  # a name that YAML 1.2 would read as a number unquoted
    assert load_yaml(dump_config(named)) == named  # the run's config.yaml reads back as written
    bare = tmp_path / "bare.yaml"
    bare.write_text("model: unet\ndata:\n  dataset: toy\n")
    with pytest.raises(ConfigError) as e:
        load_config(bare)
    assert str(e.value) == "config section 'model' must be a mapping (e.g. name: unet), got 'unet'"


def test_random_scales_of_whole_images_need_a_crop_or_batches_of_one(tmp_path):
    assert config_error(tmp_path, "data.crop_size=null", "data.scale_range=[0.5, 2.0]") == (
        "data.scale_range=[0.5, 2.0] with data.crop_size null: whole images scaled by different factors cannot "
        "share a batch; set data.crop_size (or data.batch_size: 1, or data.scale_range: null)"
    )
    path = toy_config(tmp_path, iters=3)
    for ok in (["data.batch_size=1"], ["data.scale_range=null"], ["data.scale_range=[0.5, 0.5]"]):
        assert load_config(path, ["data.crop_size=null", "data.scale_range=[0.5, 2.0]", *ok])


def test_rot90_of_whole_images_needs_square_images_a_crop_or_batches_of_one(tmp_path):
    whole = ["data.rot90=true", "data.crop_size=null", "data.scale_range=null", "data.batch_size=2"]
    oblong = write_dataset(tmp_path / "oblong", size=(24, 20)).parent  # 24 wide, 20 high
    cfg = load_config(toy_config(tmp_path, iters=1), whole)
    with pytest.raises(ConfigError) as e:
        train(cfg, run_dir=tmp_path / "r", data_root=oblong, progress=False)
    image = oblong / "toy" / "images" / "train" / "s00.png"
    assert str(e.value) == (
        f"data.rot90 with data.crop_size null: {image} is 24x20, and turned it cannot share a batch with unturned "
        "images; set data.crop_size (or data.batch_size: 1)"
    )
    square = write_dataset(tmp_path / "square", size=(20, 20)).parent
    result = train(cfg, run_dir=tmp_path / "sq", data_root=square, progress=False)
    assert result["iterations"] == 1
    result = train(
        load_config(toy_config(tmp_path, iters=1), [*whole, "data.batch_size=1"]),
        run_dir=tmp_path / "b1",
        data_root=oblong,
        progress=False,
    )
    assert result["iterations"] == 1


def test_crop_smaller_than_the_model_stride(tmp_path):
    root = write_dataset(tmp_path / "data").parent
    cfg = load_config(toy_config(tmp_path, iters=2), ["data.crop_size=10", "model.depth=4"])
    with pytest.raises(ConfigError) as e:
        train(cfg, run_dir=tmp_path / "r", data_root=root, progress=False)
    assert str(e.value) == (
        "data.crop_size=10: model unet needs inputs of at least 16x16 pixels (its total stride); use a larger crop"
    )
    assert not (tmp_path / "r" / ".lock").exists()  # released on the error


def test_images_too_small_for_the_model_are_refused_before_training(tmp_path):
    """An image smaller than the model's total stride trained on whole (data.crop_size null) or validated (at the
    run's inference scales) was a warning, then all the training, then PyTorch's "Output size is too small" at the
    first validation: it is eval's one line, before the first step."""
    root = write_dataset(tmp_path / "data").parent  # 24x20 images; unet of depth 2 takes 4x4 and up
    thin = root / "toy" / "images" / "val" / "thin.png"
    Image.fromarray(np.zeros((3, 24, 3), np.uint8)).save(thin)
    Image.fromarray(np.zeros((3, 24), np.uint8)).save(root / "toy" / "masks" / "val" / "thin.png")
    path = toy_config(tmp_path, iters=2, eval_interval=2)
    with pytest.raises(DataError) as e:
        train(load_config(path), run_dir=tmp_path / "r1", data_root=root, progress=False)
    assert str(e.value) == (
        f"image {thin} is 24x3, smaller than model unet takes (at least 4x4 pixels, its total stride): upscale it "
        "or pad it"
    )
    assert not (tmp_path / "r1" / "last.pt").exists() and not (tmp_path / "r1" / ".lock").exists()
    thin.unlink()
    (root / "toy" / "masks" / "val" / "thin.png").unlink()
    # at the run's inference scales: 24x20 at 0.1 is 2x2
    first = root / "toy" / "images" / "val" / "s00.png"
    with pytest.raises(DataError) as e:
        train(
            load_config(path, ["inference.scales=[0.1, 1.0]"]), run_dir=tmp_path / "r2", data_root=root, progress=False
        )
    assert str(e.value) == (
        f"image {first} is 24x20, and at inference scale 0.1 2x2, smaller than model unet takes (at least 4x4 "
        "pixels, its total stride): leave out the scales below 0.2, or upscale the image"
    )
    assert not (tmp_path / "r2" / "last.pt").exists()
    # a training image trained on whole; a crop pads it up, and trains
    small = root / "toy" / "images" / "train" / "s03.png"
    Image.fromarray(np.zeros((3, 24, 3), np.uint8)).save(small)
    Image.fromarray(np.zeros((3, 24), np.uint8)).save(root / "toy" / "masks" / "train" / "s03.png")
    whole = ["data.crop_size=null", "data.scale_range=null", "data.batch_size=1"]
    with pytest.raises(DataError) as e:
        train(load_config(path, whole), run_dir=tmp_path / "r3", data_root=root, progress=False)
    assert str(e.value) == (
        f"image {small} is 24x3, smaller than model unet takes (at least 4x4 pixels, its total stride): upscale it "
        "or pad it"
    )
    assert not (tmp_path / "r3" / "last.pt").exists()
    assert train(load_config(path), run_dir=tmp_path / "r4", data_root=root, progress=False)["iterations"] == 2


# --- run directories -------------------------------------------------------------------------------------
@pytest.fixture
def toy_run(tmp_path):
    root = write_dataset(tmp_path / "data").parent
    cfg = load_config(toy_config(tmp_path, iters=2, eval_interval=2))
    train(cfg, run_dir=tmp_path / "run", data_root=root, progress=False)
    return tmp_path / "run", root, cfg


def test_a_live_run_is_locked_and_a_stale_lock_is_taken_over(tmp_path, caplog):
    root = write_dataset(tmp_path / "data").parent
    cfg = load_config(toy_config(tmp_path, iters=2, eval_interval=2))
    run = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.mkdir()
        (run / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename, "started": "t0"}))
        with pytest.raises(ConfigError) as e:
            train(cfg, run_dir=run, data_root=root, progress=False)
        assert str(e.value) == (
            f"{run} is in use by the training with pid {sleeper.pid} on host {os.uname().nodename} (since t0): "
            f"wait for it, stop it, or choose another --run-dir (delete {run / '.lock'} only if that process is gone)"
        )
        assert (run / ".lock").exists() and not (run / "last.pt").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    caplog.set_level(logging.WARNING, logger="pixelwise")
    train(cfg, run_dir=run, data_root=root, progress=False)  # the owner is dead now: taken over
    assert "taking over the stale lock" in caplog.text
    assert (run / "last.pt").exists() and not (run / ".lock").exists()


def test_a_lock_whose_pid_was_reused_is_stale(tmp_path, caplog):
    """After a restart (a container's), the dead training's pid may be this process's own or a newer process's:
    neither is the owner (the lock records its process's boot id and start tick). A live owner still holds it."""
    from pixelwise.engine.run_dir import RunLock

    host = os.uname().nodename
    caplog.set_level(logging.WARNING, logger="pixelwise")
    (tmp_path / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": host, "started": "t0"}))
    lock = RunLock(tmp_path)
    lock.acquire()  # its own pid, in a lock it does not hold: taken over, not "in use by pid <itself>"
    assert "taking over the stale lock" in caplog.text
    with pytest.raises(ConfigError):  # but a lock this process does hold stays held
        RunLock(tmp_path).acquire()
    lock.release()
    from pixelwise.engine.run_dir import process_identity

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        boot, start = process_identity(sleeper.pid)
        for identity, stale in (([boot, start - 1], True), ([boot, start], False)):
            caplog.clear()
            owner = {"pid": sleeper.pid, "host": host, "started": "t0", "process": identity}
            (tmp_path / ".lock").write_text(json.dumps(owner))
            if stale:  # the lock's process started at another tick: the pid is another process's now
                RunLock(tmp_path).acquire()
                assert "taking over the stale lock" in caplog.text
                (tmp_path / ".lock").unlink()
            else:
                with pytest.raises(ConfigError):
                    RunLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_lock_copied_with_its_run_directory_guards_the_original_only(tmp_path, caplog):
    """``cp -a`` of a live run: the copy's lock names a live training, of the original directory (its device and
    inode), so the copy can be resumed; the original stays locked."""
    from pixelwise.engine.run_dir import RunLock

    original, copy = tmp_path / "run", tmp_path / "copy"
    original.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from pixelwise.engine.run_dir import RunLock; "
            "RunLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(60)",
            str(original),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        copy.mkdir()
        (copy / ".lock").write_text((original / ".lock").read_text())
        caplog.set_level(logging.WARNING, logger="pixelwise")
        RunLock(copy).acquire()
        assert "taking over the stale lock" in caplog.text
        with pytest.raises(ConfigError, match=f"is in use by the training with pid {holder.pid}"):
            RunLock(original).acquire()
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_being_written_is_not_taken_for_a_dead_ones(tmp_path, caplog):
    """The lock appears with its owner in it; an unreadable one (a file system without hard links, mid-write) is
    stale only once it is older than a few seconds; one naming no process is taken over, not a traceback."""
    from pixelwise.engine.run_dir import CLAIM_SECONDS, RunLock

    lock = RunLock(tmp_path)
    lock.acquire()
    owner = json.loads((tmp_path / ".lock").read_text())
    assert owner["pid"] == os.getpid() and [p.name for p in tmp_path.iterdir()] == [".lock"]
    lock.release()
    (tmp_path / ".lock").write_text("")  # created by another process, its owner not yet written
    with pytest.raises(ConfigError) as e:
        RunLock(tmp_path).acquire()
    assert str(e.value) == (
        f"{tmp_path} is being claimed by another training right now ({tmp_path / '.lock'} was created moments ago): "
        "wait for it, or choose another --run-dir"
    )
    for text in ("", json.dumps({"pid": "12x", "host": "h"}), json.dumps({"host": os.uname().nodename})):
        (tmp_path / ".lock").write_text(text)
        past = time.time() - CLAIM_SECONDS - 1
        os.utime(tmp_path / ".lock", (past, past))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pixelwise"):
            lock = RunLock(tmp_path)
            lock.acquire()
        assert "taking over the stale lock" in caplog.text and lock.held
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        lock.release()


def test_two_concurrent_trainings_into_one_directory(tmp_path):
    write_dataset(tmp_path / "data", splits={"train": 6, "val": 2})
    cfg = toy_config(tmp_path, iters=100000, eval_interval=100000)
    env = {**os.environ, "PIXELWISE_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pixelwise", "train", str(cfg), "--no-progress", "--run-dir", str(tmp_path / "r")]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (tmp_path / "r" / ".lock").exists() and time.time() < deadline:
        time.sleep(0.02)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    assert second.returncode == 2
    assert f"pixelwise train: error: {tmp_path / 'r'} is in use by the training with pid {first.pid}" in second.stderr
    assert second.stderr.strip().count("\n") == 0


def test_rerun_without_resume_keeps_the_old_log_and_cleans_temporaries(tmp_path, caplog):
    root = write_dataset(tmp_path / "data").parent
    cfg = load_config(toy_config(tmp_path, iters=2, eval_interval=2))
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"type": "train", "iter": 99}\n')  # a run killed before its checkpoint
    (run / ".last.pt.abc123.tmp").write_bytes(b"x" * 1000)  # a write a kill interrupted
    caplog.set_level(logging.INFO, logger="pixelwise")
    train(cfg, run_dir=run, data_root=root, progress=False)
    assert (run / "metrics.old-1.jsonl").read_text() == '{"type": "train", "iter": 99}\n'
    assert all(json.loads(line)["iter"] <= 2 for line in (run / "metrics.jsonl").read_text().splitlines())
    assert not list(run.glob(".*.tmp"))
    assert f"{run / '.last.pt.abc123.tmp'}, left by an interrupted write" in caplog.text


def test_a_new_run_keeps_a_config_yaml_already_in_its_folder(tmp_path, caplog):
    """``train exp/config.yaml --run-dir exp``: the user's own file (comments, layout) was replaced by the resolved
    config; it is kept as config.old-1.yaml, as an old log is. The run's own, unchanged, is not set aside."""
    root = write_dataset(tmp_path / "data").parent
    run = tmp_path / "exp"
    run.mkdir()
    mine = "# my settings\n" + toy_config(tmp_path, iters=2, eval_interval=2).read_text()
    (run / "config.yaml").write_text(mine)
    cfg = load_config(run / "config.yaml")
    train(cfg, run_dir=run, data_root=root, progress=False)
    assert (run / "config.old-1.yaml").read_text() == mine
    assert f"{run / 'config.yaml'} is not this run's: kept as config.old-1.yaml" in caplog.text
    assert load_config(run / "config.yaml")["train"]["iters"] == 2
    for p in run.glob("*.pt"):
        p.unlink()
    train(cfg, run_dir=run, data_root=root, progress=False)  # again: its own config.yaml is no one else's
    assert not (run / "config.old-2.yaml").exists()


def test_resume_reads_a_missing_model_key_as_its_default_and_names_a_real_model_change(toy_run, tmp_path):
    """The toy run's config never wrote model.padding or model.batch_norm; a config that spells out their
    defaults is the same model and resumes. A changed width is not: its weights cannot be loaded."""
    run, root, _ = toy_run
    config = toy_config(tmp_path, iters=2, eval_interval=2)
    spelled = load_config(config, ["model.padding=same", "model.batch_norm=true"])
    train(spelled, run_dir=run, resume=True, data_root=root, progress=False)  # no --allow-changes needed
    wider = load_config(config, ["model.base_channels=8", "model.padding=same"])
    with pytest.raises(ConfigError) as e:
        train(wider, run_dir=run, resume=True, allow_changes=True, data_root=root, progress=False)
    assert str(e.value) == (
        f"--resume: the config's model is not the one {run / 'last.pt'} was trained with "
        "(model.base_channels: 4 -> 8); its weights would not fit: resume with the run's own model, "
        "or train the new one in a new --run-dir"
    )
    # a builder's tuple default (PSPNet's bins; recorded as a list) and the same items as a tuple: the same setting
    pspnet = {"name": "pspnet", "num_classes": 2}
    assert _section_changes(pspnet, {**pspnet, "bins": (1, 2, 3, 6)}, model_defaults("pspnet")) == {}
    assert _section_changes(pspnet, {**pspnet, "bins": [1, 2, 4]}, model_defaults("pspnet")) == {
        "bins": ([1, 2, 3, 6], [1, 2, 4])
    }


def test_a_builder_default_changed_since_training_neither_rebuilds_nor_resumes_silently(toy_run, tmp_path):
    """The run records its builder's defaults: the toy run never wrote model.padding and was built with 'same'.
    Were the default another one by now (simulated by the record saying 'valid'), the checkpoint still builds the
    model it was trained as, and a config that leaves the key out does not resume it under the new default."""
    run, root, _ = toy_run
    ckpt = torch.load(run / "last.pt", weights_only=True)  # as written, before load_checkpoint fills the spec
    assert "padding" not in ckpt["meta"]["model"] and ckpt["meta"]["model_defaults"]["padding"] == "same"
    ckpt["meta"]["model_defaults"]["padding"] = "valid"
    assert model_from_checkpoint(ckpt).padding == "valid"
    save_checkpoint(run / "last.pt", ckpt)
    with pytest.raises(ConfigError) as e:
        train(load_config(toy_config(tmp_path, iters=2, eval_interval=2)), run_dir=run, resume=True, data_root=root)
    assert "(model.padding: 'valid' -> 'same'); its weights would not fit" in str(e.value)
    # every reader of the loaded spec (input channels, size checks) sees the recorded default too
    assert load_checkpoint(run / "last.pt")["meta"]["model"]["padding"] == "valid"
    # a recorded default the builder no longer takes is dropped, not passed to it
    ckpt["meta"]["model_defaults"]["retired_argument"] = 1
    assert "retired_argument" not in checkpoint_model_spec(ckpt["meta"])
    assert model_from_checkpoint(ckpt).padding == "valid"
    # without the record (a run from before it), today's defaults are read, as before
    del ckpt["meta"]["model_defaults"]
    assert model_from_checkpoint(ckpt).padding == "same"


def test_resume_compares_the_instances_section_but_not_its_decoding():
    saved = {"instances": {"method": "panoptic", "center_sigma": 4.0}}
    new = {"instances": {"method": "panoptic", "center_sigma": 4.0, "center_threshold": 0.5, "nms_kernel": 3}}
    assert changed_settings(saved, new) == {}  # decoding only: eval and predict override it too
    new["instances"] |= {"center_sigma_per_radius": 0.5, "small_instance_area": 128}
    assert changed_settings(saved, new) == {
        "instances.center_sigma_per_radius": (None, 0.5),
        "instances.small_instance_area": (0, 128),
    }


def test_resume_compares_the_inference_section_that_validation_scores_with():
    saved = {"inference": {"flip": True}}
    assert changed_settings(saved, {"inference": {"flip": True, "scales": [1.0]}}) == {}  # a spelled-out default
    assert changed_settings(saved, {"inference": {"flip": True, "scales": [0.75, 1.0]}}) == {
        "inference.scales": ([1.0], [0.75, 1.0])
    }
    assert changed_settings({}, {"inference": {"class_weight_correction": 0.5}}) == {
        "inference.class_weight_correction": (0.0, 0.5)
    }


def test_resume_refuses_changed_settings_unless_allowed(toy_run, tmp_path):
    run, root, _ = toy_run
    changed = load_config(toy_config(tmp_path, iters=4, eval_interval=2), ["train.lr=0.01"])
    with pytest.raises(ConfigError) as e:
        train(changed, run_dir=run, resume=True, data_root=root, progress=False)
    assert str(e.value) == (
        f"--resume: the config changes settings that {run / 'last.pt'} was trained with "
        "(train.iters: 2 -> 4; train.lr: 0.05 -> 0.01); resume with the run's own settings, "
        "or add --allow-changes to apply these from here on"
    )
    train(changed, run_dir=run, resume=True, allow_changes=True, data_root=root, progress=False)
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["train_state"]["iter"] == 4
    group = ckpt["optimizer"]["param_groups"][0]
    # the new base lr, under the new schedule: poly (1 - 4/4)^0.9 clipped at iters - 1 -> (1 - 3/4)^0.9
    assert group["initial_lr"] == pytest.approx(0.01)
    assert group["lr"] == pytest.approx(0.01 * (1 - 3 / 4) ** 0.9)
    assert ckpt["config"]["train"]["lr"] == 0.01
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 0.01


@pytest.mark.parametrize(
    "limit, name, width",
    [(1000, "config.yaml", 4), (20000, "best.pt", 4), (200_000, "best.pt", 32)],  # 32: torch's zip writer errs
)
def test_a_full_disk_is_one_line_naming_the_file(tmp_path, limit, name, width):
    """Writes that fail without a file name (a full disk, here a file size limit: EFBIG) were a traceback; no
    temporary file or lock claim is left behind."""
    import resource

    root = write_dataset(tmp_path / "data", splits={"train": 2, "val": 1}).parent
    cfg = toy_config(tmp_path, iters=2, eval_interval=2)
    run = tmp_path / "run"
    env = {**os.environ, "PIXELWISE_DATA": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pixelwise", "train", str(cfg), "--run-dir", str(run), "--no-progress"]
    cmd += ["--set", f"model.base_channels={width}"]

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith(f"pixelwise train: error: {run / name}: ")
    assert message.endswith("free some space there, or choose another place") or message.endswith(
        "free some space there (a full disk or a file size limit), or choose another place"
    )
    assert not (run / ".lock").exists()
    assert not [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or ".lock" in p.name]


@pytest.mark.slow
def test_sigterm_ends_a_training_blocked_waiting_for_its_process_group(tmp_path):
    """Rank 0 of two whose peer never comes waits in torch's rendezvous (C++): SIGTERM must end it at once. A
    Python handler taking SIGTERM as Ctrl-C for every verb waited for the interpreter, which never came back."""
    import socket

    write_dataset(tmp_path / "data")
    cfg = toy_config(tmp_path, iters=2, eval_interval=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "PIXELWISE_DATA": str(tmp_path / "data"),
        "OMP_NUM_THREADS": "1",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    cmd = [sys.executable, "-m", "pixelwise", "train", str(cfg), "--run-dir", str(tmp_path / "r"), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # rank 0 hosts the rendezvous store: listening there, it waits in C++
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM)


@pytest.mark.slow
@pytest.mark.parametrize("group", [False, True])
def test_sigterm_mid_run_then_resume_equals_uninterrupted(tmp_path, group):
    """SIGTERM to the training process; or, with a loader worker, to its whole process group (GNU timeout, a batch
    system stopping a job), which killed the worker and made the loader raise before last.pt was written."""
    root = write_dataset(tmp_path / "data", splits={"train": 6, "val": 2}).parent
    cfg = toy_config(tmp_path, iters=120, checkpoint_interval=1000, eval_interval=1000, checkpoint_minutes=0)
    env = {**os.environ, "PIXELWISE_DATA": str(root), "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "pixelwise", "train", str(cfg), "--no-progress"]
    if group:
        base += ["--set", "data.num_workers=1"]
    subprocess.run([*base, "--run-dir", str(tmp_path / "straight")], check=True, env=env, timeout=600)
    run = tmp_path / "stopped"
    proc = subprocess.Popen(
        [*base, "--run-dir", str(run)], env=env, stderr=subprocess.PIPE, text=True, start_new_session=group
    )
    deadline = time.time() + 120
    log = run / "metrics.jsonl"
    while not (log.exists() and log.stat().st_size) and time.time() < deadline:  # the first 10 steps are done
        time.sleep(0.01)
    assert not (run / "last.pt").exists()  # no checkpoint yet: only the signal writes one
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    stopped_at = load_checkpoint(run / "last.pt")["train_state"]["iter"]
    assert 10 <= stopped_at < 120
    assert f"pixelwise train: stopped by SIGTERM at iteration {stopped_at}: {run / 'last.pt'} written" in err
    assert not (run / ".lock").exists()
    subprocess.run([*base, "--run-dir", str(run), "--resume"], check=True, env=env, timeout=600)
    a, b = load_checkpoint(tmp_path / "straight/last.pt"), load_checkpoint(run / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


KILL_DURING_WRITE = """
import os, signal, sys
import pixelwise.models.weights as weights
real, count = weights.torch.save, [0]
def save_then_die(obj, f, *args, **kwargs):
    count[0] += 1
    if count[0] == int(os.environ["KILL_AT_SAVE"]):
        f.write(b"half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real(obj, f, *args, **kwargs)
weights.torch.save = save_then_die
from pixelwise.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_write_then_resume_equals_uninterrupted(tmp_path):
    root = write_dataset(tmp_path / "data", splits={"train": 6, "val": 2}).parent
    cfg = toy_config(tmp_path, iters=30, checkpoint_interval=10, eval_interval=1000)
    env = {**os.environ, "PIXELWISE_DATA": str(root), "OMP_NUM_THREADS": "1", "KILL_AT_SAVE": "2"}
    args = ["train", str(cfg), "--no-progress"]
    subprocess.run([sys.executable, "-m", "pixelwise", *args, "--run-dir", str(tmp_path / "straight")], check=True,
                   env=env, timeout=600)  # fmt: skip
    run = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_WRITE, *args, "--run-dir", str(run)], env=env,
                          timeout=600)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(run / "last.pt")["train_state"]["iter"] == 10  # the write at 20 never replaced it
    assert len(list(run.glob(".last.pt.*.tmp"))) == 1 and (run / ".lock").exists()
    subprocess.run([sys.executable, "-m", "pixelwise", *args, "--run-dir", str(run), "--resume"], check=True,
                   env=env, timeout=600)  # fmt: skip
    assert not list(run.glob(".*.tmp")) and not (run / ".lock").exists()
    a, b = load_checkpoint(tmp_path / "straight/last.pt"), load_checkpoint(run / "last.pt")
    assert b["train_state"]["iter"] == 30
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_checkpoint_minutes_bounds_the_lost_work(tmp_path):
    root = write_dataset(tmp_path / "data").parent
    cfg = load_config(
        toy_config(tmp_path, iters=4, eval_interval=1000, checkpoint_interval=1000, keep_last=10),
        ["train.checkpoint_minutes=0.000001"],
    )
    train(cfg, run_dir=tmp_path / "r", data_root=root, progress=False)
    assert sorted(p.name for p in (tmp_path / "r").glob("iter_*.pt")) == [f"iter_000000{i}.pt" for i in (1, 2, 3, 4)]


# --- checkpoints and foreign files -----------------------------------------------------------------------
class Thing:
    pass


def test_foreign_files_get_their_own_messages(tmp_path, toy_run):
    (tmp_path / "random.pt").write_bytes(os.urandom(2000))
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "module.pt")
    (tmp_path / "pickle.pt").write_bytes(pickle.dumps({"x": Thing()}))
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07\x12\x07pytorch")
    cases = {
        "random.pt": "it is not a PyTorch file (truncated, or another format)",
        "pickle.pt": "it is not a PyTorch file (truncated, or another format)",
        "module.pt": "it holds Python objects besides tensors and plain types (a pickled model or optimizer?), "
        "and pixelwise never unpickles code: save a state dict (model.state_dict()) or a pixelwise checkpoint",
    }
    for name, reason in cases.items():
        with pytest.raises(CheckpointError) as e:
            evaluate_checkpoint(tmp_path / name, progress=False)
        assert str(e.value) == f"cannot load checkpoint {tmp_path / name}: {reason}"
        assert "weights_only=False" not in str(e.value)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "image.png")
    with pytest.raises(CheckpointError) as e:
        predict(tmp_path / "model.onnx", [tmp_path / "image.png"], tmp_path / "out", backend="torch", progress=False)
    assert str(e.value) == (
        f"{tmp_path / 'model.onnx'} is an ONNX file: predict and serve run it with --backend onnxruntime; eval and "
        "crf-search need the run's .pt"
    )


def test_class_names_of_checkpoint_and_data_set_are_compared(toy_run):
    run, root, _ = toy_run
    info = json.loads((root / "toy" / "classes.json").read_text())
    info["classes"] = ["c0", "road", "c2"]
    (root / "toy" / "classes.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError) as e:
        evaluate_checkpoint(run / "best.pt", data_root=root, progress=False)
    assert str(e.value) == (
        f"{run / 'best.pt'} was trained with other class names than data set 'toy' under {root} has "
        "(checkpoint vs data set, 1: 'c1' vs 'road'): the class indices would mean other things"
    )


def test_eval_reuses_the_data_root_of_the_run(toy_run, monkeypatch, tmp_path):
    run, root, _ = toy_run
    monkeypatch.delenv("PIXELWISE_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    result = evaluate_checkpoint(run / "best.pt", progress=False)  # no --data-root: the run's
    assert result["num_images"] == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["root"] == str(root.resolve())


def test_export_without_onnx_names_the_extra(toy_run, monkeypatch):
    import importlib.util

    from pixelwise.export import export_onnx

    run, _, _ = toy_run
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    with pytest.raises(PixelwiseError) as e:
        export_onnx(run / "best.pt", run / "m.onnx")
    assert str(e.value) == "ONNX export needs onnx: pip install 'pixelwise[onnx]'"


# --- prediction --------------------------------------------------------------------------------------------
def test_predict_out_folder_rules_and_manifest(toy_run, tmp_path):
    run, root, _ = toy_run
    images = root / "toy" / "images" / "val"
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DataError) as e:
        predict(run / "best.pt", [images], tmp_path / "a_file", progress=False)
    assert str(e.value) == f"--out {tmp_path / 'a_file'} is a file: give a folder for the masks, colours and overlays"
    out = tmp_path / "out"
    written = predict(run / "best.pt", [images], out, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    import hashlib

    assert manifest["sha256"] == hashlib.sha256((run / "best.pt").read_bytes()).hexdigest()
    assert manifest["checkpoint"] == str((run / "best.pt").resolve())
    assert manifest["files"] == written and len(written) == 2 and manifest["failed"] == []
    with pytest.raises(DataError) as e:
        predict(run / "best.pt", [images], out, progress=False)
    assert str(e.value) == (
        f"--out {out} is not empty (8 files, e.g. color/s00.png): pass --overwrite to replace what is there, "
        "or choose another folder"
    )
    assert predict(run / "best.pt", [images], out, overwrite=True, progress=False) == written


def test_predict_skip_errors_and_tiny_images(toy_run, tmp_path):
    from pixelwise.engine.prediction_files import PredictionErrors

    run, root, _ = toy_run
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(folder / "tiny.png")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        predict(run / "best.pt", [folder], tmp_path / "o1", progress=False)
    stopped = json.loads((tmp_path / "o1" / "manifest.json").read_text())  # it said nothing had failed
    assert [Path(f["image"]).name for f in stopped["failed"]] == ["broken.png"]
    with pytest.raises(PredictionErrors) as e:
        predict(run / "best.pt", [folder], tmp_path / "o2", skip_errors=True, progress=False)
    assert str(e.value) == (
        f"2 of 3 image(s) could not be predicted (broken.png; tiny.png); the others were written, "
        f"see {tmp_path / 'o2' / 'manifest.json'}"
    )
    assert [Path(w["image"]).name for w in e.value.written] == ["good.png"]
    assert (tmp_path / "o2" / "masks" / "good.png").exists()
    failed = json.loads((tmp_path / "o2" / "manifest.json").read_text())["failed"]
    assert failed[1]["error"] == (
        f"image {folder / 'tiny.png'} is 3x3, smaller than model unet takes (at least 4x4 pixels, its total "
        "stride): upscale it or pad it"
    )


def test_sizes_the_network_sees_at_a_scale_or_in_windows_are_checked(toy_run, tmp_path):
    """The network sees images at the protocol's scales and windows at the crop: too small there is a one-line
    error (an image's DataError, which --skip-errors skips; a crop's ConfigError at once), not a traceback."""
    from pixelwise.engine import Predictor

    run, _, _ = toy_run
    small = np.zeros((10, 13, 3), np.uint8)
    with pytest.raises(DataError) as e:
        Predictor(run / "best.pt", device="cpu", inference={"scales": [0.25, 1.0]}).predict(small, source="s.png")
    assert str(e.value) == (
        "image s.png is 13x10, and at inference scale 0.25 3x2, smaller than model unet takes (at least 4x4 pixels, "
        "its total stride): leave out the scales below 0.4, or upscale the image"
    )
    assert Predictor(run / "best.pt", device="cpu", inference={"scales": [0.5, 1.0]}).predict(small).shape == (10, 13)
    with pytest.raises(ConfigError) as e:
        Predictor(run / "best.pt", device="cpu", inference={"mode": "slide", "crop": 3})
    assert str(e.value) == (
        "inference crop 3: windows smaller than model unet takes (at least 4x4 pixels, its total stride); give a "
        "crop of at least 4"
    )


def test_flags_that_would_be_ignored_are_refused(toy_run, tmp_path):
    from pixelwise.models.stats import model_table

    run, _, _ = toy_run
    with pytest.raises(ConfigError) as e:
        predict(run / "best.pt", [tmp_path], tmp_path / "o", foreground="c1", progress=False)
    assert str(e.value) == "--foreground chooses the classes an --effect keeps: add --effect, or leave it out"
    with pytest.raises(ConfigError) as e:
        InferenceSettings(blend="gaussian")
    assert (
        str(e.value) == "inference blend gaussian weights the windows of mode slide: add --mode slide, or leave it out"
    )
    with pytest.raises(ConfigError) as e:
        model_table(num_classes=3, size=1)
    assert str(e.value) == (
        "--size 1: model unet needs inputs of at least 16x16 pixels (its total stride); give a larger size"
    )
    assert {r["name"] for r in model_table(num_classes=3, size=64)} >= {"unet", "lraspp"}


def test_a_protocol_override_replaces_the_runs_windows_with_its_mode():
    from pixelwise.engine.predictor import run_inference

    slide = {"mode": "slide", "crop": 16, "stride": 12, "blend": "gaussian", "flip": True}
    assert run_inference(slide, {"mode": "whole"}) == InferenceSettings(flip=True)  # was: "leave crop/stride out"
    assert run_inference({**slide, "crop": 512, "stride": 341}, {"crop": 256}).stride is None  # its own default
    assert run_inference(slide, {"crop": 32, "stride": 8}).stride == 8
    # an older run's whole-image section with a blend (which then did nothing) still predicts; a flag does not
    assert run_inference({"blend": "gaussian", "flip": True}, None) == InferenceSettings(flip=True)
    with pytest.raises(ConfigError) as e:
        run_inference({"flip": True}, {"blend": "gaussian"})
    assert str(e.value) == (
        "inference blend gaussian weights the windows of mode slide: add --mode slide, or leave it out"
    )


def test_batch_norm_is_folded_in_a_model_that_takes_nothing_below_128_pixels():
    """Folding checks itself on a random image, which was 64 x 64 whatever the model: a U-Net of depth 7 (total
    stride 128) stopped predict, eval and serve with a traceback."""
    from pixelwise import build_model
    from pixelwise.engine.predictor import inference_model

    torch.manual_seed(0)
    spec = {"name": "unet", "num_classes": 2, "base_channels": 2, "depth": 7, "batch_norm": True}
    model = build_model(**spec).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    folded = inference_model({"meta": {"model": spec}, "model": model.state_dict()}, "u.pt", torch.device("cpu"),
                             amp="none", compile=False)  # fmt: skip
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)


def test_whole_image_mode_switches_to_windows_when_memory_is_short(toy_run, tmp_path, monkeypatch, caplog):
    import pixelwise.engine.predictor as predictor_module
    from pixelwise.engine import Predictor
    from pixelwise.inference import InferenceSettings

    run, root, _ = toy_run
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    p = Predictor(run / "best.pt", device="cpu")
    whole = p.predict(image)
    # room for the image's class probabilities (windows cannot spare those), not for a whole-image pass of a TB
    monkeypatch.setattr(predictor_module, "available_memory", lambda device: 2**24)
    monkeypatch.setattr(predictor_module, "inference_bytes", lambda spec, h, w: 2**40)
    caplog.set_level(logging.WARNING, logger="pixelwise")
    switched = p.predict(image, "big.png")
    assert "image big.png (128x96): a whole-image pass needs about 1024.0 GiB, more than 70% of the 0.02 GiB free" in (
        caplog.text
    )
    assert "predicting it in 32x32 sliding windows" in caplog.text
    Image.fromarray(image).save(tmp_path / "big.png")  # predict's manifest says what that image ran (it said whole)
    manifest = predict(run / "best.pt", [tmp_path / "big.png"], tmp_path / "out", progress=False)
    assert (manifest[0]["inference"]["mode"], manifest[0]["inference"]["crop"]) == ("slide", 32)
    saved = json.loads((tmp_path / "out/manifest.json").read_text())
    assert saved["settings"]["inference"] is None and saved["files"][0]["inference"]["mode"] == "slide"
    p.inference = InferenceSettings(mode="slide", crop=32, blend="gaussian", window_batch=1)
    assert np.array_equal(switched, p.predict(image))  # the same as asking for those windows
    assert (switched == whole).mean() > 0.5  # and still a prediction of the same image
    p.inference = InferenceSettings(scales=(0.5, 1.0), flip=True, rot90=True)
    windows = p.settings_for_size(96, 128, "big.png")  # the switch keeps the rest of the protocol
    assert (windows.mode, windows.scales, windows.flip, windows.rot90) == ("slide", (0.5, 1.0), True, True)
    # without room for the probabilities themselves windows cannot help: one line, not an out-of-memory kill
    monkeypatch.setattr(predictor_module, "available_memory", lambda device: 1000)
    with pytest.raises(ResourceError) as e:
        p.predict(image, "big.png")
    assert str(e.value) == (
        f"image big.png (128x96): its {len(p.classes)} class probabilities alone take about 0.0 GiB as blended and "
        "averaged, more than 70% of the 0.0 GiB free, even in sliding windows: predict it in parts, at a smaller "
        "size, or where more memory is free"
    )


def test_eval_at_a_scale_too_small_for_the_network_is_one_line(toy_run):
    """predict said so in one line; eval ran into PyTorch's "Output size is too small" traceback."""
    from pixelwise.engine import evaluate_checkpoint

    run, root, _ = toy_run
    first = sorted((root / "toy" / "images" / "val").iterdir())[0]
    for settings in ({"scales": [0.02]}, {"scales": [0.02], "mode": "slide", "crop": 16}):
        with pytest.raises(DataError) as e:
            evaluate_checkpoint(run / "best.pt", data_root=root, inference=settings, progress=False)
        assert str(e.value) == (
            f"image {first} is 24x20, and at inference scale 0.02 1x1, smaller than model unet takes (at least 4x4 "
            "pixels, its total stride): leave out the scales below 0.2, or upscale the image"
        )


def test_the_switch_sizes_its_windows_on_the_image_as_the_scales_resize_it(toy_run, monkeypatch):
    """The windows slide over each scale's resized image: at scale 0.5 the crop was taken from the full-size side
    (1200x1600: windows of 704, almost the whole 600x800 image, 2.4 times the room left). Half the scale, half the
    crop, for the same share of a pass that grows with the pixels."""
    import pixelwise.engine.predictor as predictor_module
    from pixelwise.engine import Predictor
    from pixelwise.inference import InferenceSettings

    run, _, _ = toy_run
    p = Predictor(run / "best.pt", device="cpu")
    free, h, w = 2**28, 1200, 1600

    def pass_bytes(spec, height, width):  # a pass that grows with the pixels
        return 1024 * height * width

    monkeypatch.setattr(predictor_module, "available_memory", lambda device: free)
    monkeypatch.setattr(predictor_module, "inference_bytes", pass_bytes)
    for scale in (0.5, 1.0):
        p.inference = InferenceSettings(scales=(scale,))
        crop = p.settings_for_size(h, w, "big.png").crop
        probabilities = len(p.classes) * 4 * (h * w + round(h * scale) * round(w * scale))
        room = predictor_module.MEMORY_SHARE * free - probabilities
        assert pass_bytes(None, crop, crop) <= room < 2 * pass_bytes(None, crop + 32, crop + 32)  # 672 at 0.5


def test_overlay_colours_contrast_with_grey_images():
    assert overlay_palette([[0, 0, 0], [255, 255, 255]]) == [[31, 119, 180], [255, 127, 14]]  # ISBI's palette
    camvid = [[128, 128, 128], [128, 0, 0], [192, 192, 128]]
    assert overlay_palette(camvid) == camvid


def test_training_prints_a_summary_before_its_first_step(tmp_path):
    write_dataset(tmp_path / "data")
    cfg = toy_config(tmp_path, iters=2, eval_interval=2)
    proc = run_cli("train", cfg, "--no-progress", "--run-dir", tmp_path / "r", env_root=tmp_path / "data")
    lines = proc.stdout.splitlines()
    assert lines[0] == f"run directory {tmp_path / 'r'}"
    assert lines[1].startswith("device cpu (") and lines[1].endswith("1 process(es), precision fp32")
    assert lines[2] == f"data toy under {tmp_path / 'data'}: 4 train, 2 val images, 3 classes"
    assert lines[3] == "model unet: 0.01 M parameters; 2 iterations"


def test_help_and_version():
    proc = run_cli("--help")
    for verb in ("train", "eval", "predict", "crf-search", "export", "report", "weight-map", "models"):
        assert f"    {verb}" in proc.stdout
    assert ":func:" not in proc.stdout and "``" not in proc.stdout
    assert run_cli("--version").stdout.strip() == "pixelwise 0.1.0"


def test_cli_messages_for_a_file_out_and_an_onnx_checkpoint(toy_run, tmp_path):
    run, root, _ = toy_run
    (tmp_path / "x.onnx").write_bytes(b"\x08\x07")
    proc = run_cli(
        "predict", tmp_path / "x.onnx", root / "toy/images/val", "--out", tmp_path / "o", "--backend", "torch",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"pixelwise predict: error: {tmp_path / 'x.onnx'} is an ONNX file: predict and serve run it with --backend "
        "onnxruntime; eval and crf-search need the run's .pt"
    )


# --- data check: the CLI verb lists every bad file; train runs it first ---------------------------------
def test_data_check_cli_lists_every_bad_file(tmp_path):
    root = tmp_path / "data"
    base = write_dataset(root, splits={"train": 3, "val": 1})
    (base / "images/train/s00.png").write_bytes(b"not a png")
    Image.fromarray(np.full((20, 24), 7, np.uint8), mode="L").save(base / "masks/train/s01.png")
    report_path = tmp_path / "r.json"
    proc = run_cli("data", "check", "toy", "--data-root", root, "--no-progress", "--json", report_path, check=False)
    assert proc.returncode == 1
    assert f"cannot read image {base / 'images/train/s00.png'}" in proc.stdout
    assert f"{base / 'masks/train/s01.png'}" in proc.stdout  # the second bad file is listed too
    report = json.loads(report_path.read_text())
    assert report["ok"] is False and report["splits"]["train"]["images"] == 3
    assert sorted(Path(p["file"]).name for p in report["problems"] if p["level"] == "error") == ["s00.png", "s01.png"]
    ok = run_cli("data", "check", "toy", "--data-root", root, "--split", "val", "--no-progress")
    assert ok.returncode == 0 and "val" in ok.stdout


def test_training_stops_on_a_bad_file_before_its_first_step(tmp_path):
    root = write_dataset(tmp_path / "data").parent
    Image.fromarray(np.full((20, 24), 9, np.uint8), mode="L").save(root / "toy/masks/val/s01.png")
    Image.fromarray(np.full((20, 24), 8, np.uint8), mode="L").save(root / "toy/masks/train/s02.png")
    cfg = load_config(toy_config(tmp_path, iters=2, eval_interval=2))
    with pytest.raises(DataError) as e:
        train(cfg, run_dir=tmp_path / "run", data_root=root, progress=False)
    message = str(e.value)
    assert message.startswith("data check of 'toy' (train, val): ")
    assert "s02.png" in message and message.endswith(
        " (and 1 more); `pixelwise data check toy` lists every problem "
        "(or train with --no-check-data to skip the check)"
    )
    assert not (tmp_path / "run" / "last.pt").exists()


# --- predict: stacks and 16-bit images -----------------------------------------------------------------
def test_predict_writes_a_mask_stack_for_a_multipage_tiff_and_reads_16_bit(toy_run, tmp_path):
    from pixelwise.engine.predictor import Predictor

    run, root, _ = toy_run
    slices = [np.asarray(Image.open(root / f"toy/images/val/s0{i}.png")) for i in range(2)]
    folder = tmp_path / "in"
    folder.mkdir()
    frames = [Image.fromarray(s) for s in slices]
    frames[0].save(folder / "stack.tif", save_all=True, append_images=frames[1:])
    out = tmp_path / "out"
    written = predict(run / "best.pt", [folder], out, progress=False)
    assert written[0]["pages"] == 2 and written[0]["masks"] == str(out / "masks/stack.tif")
    manifest = json.loads((out / "manifest.json").read_text())["files"][0]  # every file written, each slice's too
    assert manifest["slices"] == {
        sub: [str(out / f"{sub}/stack_z000{z}.png") for z in range(2)] for sub in ("color", "overlay")
    }
    stack = Image.open(out / "masks/stack.tif")
    assert stack.n_frames == 2
    predictor = Predictor(run / "best.pt")
    for z in range(2):
        stack.seek(z)
        np.testing.assert_array_equal(np.asarray(stack), predictor.predict(slices[z]))  # each slice, in order
        assert (out / f"overlay/stack_z000{z}.png").exists() and (out / f"color/stack_z000{z}.png").exists()
    # a 16-bit grey image is scaled by 65535, not clipped to 8 bits: holding the 8-bit values x 257
    # (= 65535 / 255), it is predicted as its 8-bit twin
    grey = slices[0].mean(axis=2).round().astype(np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    page16, page8 = predictor.read(tmp_path / "grey16.png"), predictor.read(tmp_path / "grey8.png")
    assert page16[0].dtype == np.float32 and page16[0].max() <= 1.0 and page16[0].max() > 0.1
    np.testing.assert_array_equal(predictor.predict(page16[0]), predictor.predict(page8[0]))


def test_a_file_named_like_a_stacks_slice_gets_its_own_outputs(toy_run, tmp_path):
    """stack.tif's slice pictures are color/stack_z0001.png ...; an input stack_z0001.png beside it took that name
    too and one overwrote the other (which one, by sort order). Now the later one's stem moves aside."""
    run, root, _ = toy_run
    slices = [Image.open(root / f"toy/images/val/s0{i}.png") for i in range(2)]
    folder = tmp_path / "in"
    folder.mkdir()
    slices[0].save(folder / "stack.tif", save_all=True, append_images=slices[1:])
    Image.fromarray(np.zeros((30, 36, 3), np.uint8)).save(folder / "stack_z0001.png")
    written = predict(run / "best.pt", [folder], tmp_path / "out", progress=False)
    by_input = {Path(w["image"]).name: w for w in written}
    out = tmp_path / "out"
    assert by_input["stack_z0001.png"]["color"] == str(out / "color/stack_z0001_.png")  # after the stack (sorted)
    assert Image.open(out / "color/stack_z0001_.png").size == (36, 30)
    for z in range(2):  # the stack's slices, both its own
        assert Image.open(out / f"color/stack_z000{z}.png").size == slices[z].size != (36, 30)


def test_image_shift_reaches_every_inference_path(tmp_path):
    # a run trained with data.image_shift records it; eval's data set and predict's input both move the image by it
    from pixelwise.data import shift_image
    from pixelwise.engine.evaluator import checkpoint_dataset
    from pixelwise.engine.predictor import Predictor

    root = write_dataset(tmp_path / "data").parent
    cfg = load_config(toy_config(tmp_path, iters=2), ["data.image_shift=[-0.5, 1]"])
    train(cfg, run_dir=tmp_path / "r", data_root=root, progress=False)
    ckpt_path = tmp_path / "r" / "last.pt"
    predictor = Predictor(ckpt_path)
    assert predictor.meta["image_shift"] == [-0.5, 1]
    ds = checkpoint_dataset(predictor.ckpt, ckpt_path, "val", root)
    image, _ = ds.load(0)
    from_eval = ds[0][0]
    from_predict = predictor.normalise(image)
    assert torch.allclose(from_eval, from_predict, atol=1e-5)  # both move the raw uint8 image, then normalise
    moved = shift_image(torch.from_numpy(image).permute(2, 0, 1), (-0.5, 1)).float() / 255  # once, this way
    mean = torch.tensor(predictor.meta["mean"]).view(3, 1, 1)
    std = torch.tensor(predictor.meta["std"]).view(3, 1, 1)
    assert torch.allclose(from_predict, (moved - mean) / std, atol=1e-5)


def test_instances_class_by_name_or_index():
    from pixelwise.engine.evaluator import class_index

    classes = ["membrane", "cell"]
    assert class_index("cell", classes, "--instances") == 1
    assert class_index("Cell", classes, "--instances") == 1
    assert class_index(0, classes, "--instances") == 0
    # an index past the classes used to pass and score no instances at all
    for bad in (2, "2", "nucleus", "²"):  # "²".isdigit() is true and int("²") a ValueError
        with pytest.raises(ConfigError) as e:
            class_index(bad, classes, "--instances")
        assert str(e.value) == f"--instances '{bad}': no such class; the model's classes are 0 membrane, 1 cell"
    with pytest.raises(ConfigError, match=r"^--instances 'cell,membrane': give one class; the model's classes are"):
        class_index("cell,membrane", classes, "--instances")


def test_cli_numbers_out_of_range_are_one_line_before_anything_is_written(toy_run, tmp_path, capsys):
    from pixelwise.cli import main

    run, root, _ = toy_run
    ckpt, images, out = str(run / "best.pt"), str(root / "toy/images/val"), str(tmp_path / "out")
    config = str(run / "config.yaml")
    cases = [
        # silently ignored: the CRF flags without --crf
        (
            ["eval", ckpt, "--crf-w1", "3", "--crf-theta-beta", "5"],
            "pixelwise eval: error: --crf-w1 --crf-theta-beta given without --crf, which turns the CRF on: add --crf "
            "(or drop them)",
        ),
        # tracebacks after the model and data had loaded
        (["eval", ckpt, "--boundary-width", "-1"], "pixelwise eval: error: --boundary-width -1: must be >= 0 pixels"),
        (
            ["eval", ckpt, "--watershed"],
            "pixelwise eval: error: --watershed splits the instances of --instances CLASS: add --instances "
            "(or drop it)",
        ),
        (
            ["eval", ckpt, "--num-workers", "-1"],
            "pixelwise eval: error: --num-workers -1: must be >= 0 (0 loads in this process)",
        ),
        # an overlay extrapolated (2) or black (NaN)
        (
            ["predict", ckpt, images, "--out", out, "--alpha", "2"],
            "pixelwise predict: error: --alpha 2.0: the overlay's opacity must be between 0 and 1",
        ),
        (
            ["predict", ckpt, images, "--out", out, "--alpha", "nan"],
            "pixelwise predict: error: --alpha nan: the overlay's opacity must be between 0 and 1",
        ),
        # checked only when a video came, after the images before it were written (or never, for images only)
        (
            ["predict", ckpt, images, "--out", out, "--smooth", "0"],
            "pixelwise predict: error: --smooth 0.0: the moving average's factor must be in (0, 1] (1 = no smoothing)",
        ),
        # did nothing without a video (as --crf-* without --crf, refused)
        (
            ["predict", ckpt, images, "--out", out, "--smooth", "0.5", "--video-masks", "png"],
            "pixelwise predict: error: --smooth and --video-masks apply to videos, and no input is one: drop them",
        ),
        (
            ["predict", ckpt, images, "--out", out, "--batch-size", "0"],
            "pixelwise predict: error: --batch-size 0: must be >= 1 (video frames per forward pass)",
        ),
        # int(nan) was a ValueError traceback; port 70000 listened on 4464
        (["serve", ckpt, "--max-mb", "nan"], "pixelwise serve: error: --max-mb nan: must be a finite number > 0"),
        (
            ["serve", ckpt, "--max-mb", "1e-9"],
            "pixelwise serve: error: --max-mb 1e-09: under one byte; give at least 9.54e-07",
        ),
        (
            ["serve", ckpt, "--max-megapixels", "1e-7"],
            "pixelwise serve: error: --max-megapixels 1e-07: under one pixel; give at least 1e-06",
        ),
        (["serve", ckpt, "--port", "70000"], "pixelwise serve: error: --port 70000: must be 0-65535 (0: a free one)"),
        # "tiny.yaml: File exists"; --allow-changes without --resume did nothing
        (
            ["train", config, "--run-dir", config],
            f"pixelwise train: error: --run-dir {config} is a file: give the folder the run's checkpoints and log "
            "go to",
        ),
        (
            ["train", config, "--allow-changes"],
            "pixelwise train: error: --allow-changes applies settings changed since a run's checkpoint: add --resume",
        ),
        # named as the library's settings (max_queue=-1, timeout_s=0.0), the port checked after the model loaded
        (
            ["serve", ckpt, "--max-queue", "-1"],
            "pixelwise serve: error: --max-queue -1: the requests that may wait, must be >= 0",
        ),
        (
            ["serve", ckpt, "--timeout", "0"],
            "pixelwise serve: error: --timeout 0.0: seconds per request, must be a finite number > 0",
        ),
        # a torch traceback (negative), a silent fall-back to a fixed-size graph, a third size ignored
        (
            ["export", ckpt, "--out", f"{out}.onnx", "--size", "1", "2", "3"],
            "pixelwise export: error: --size 1 2 3: give S or H W",
        ),
    ]
    if importlib.util.find_spec("onnxruntime") is not None:
        cases.append(
            (
                ["export", ckpt, "--out", f"{out}.onnx", "--size", "-5"],
                "pixelwise export: error: --size -5 -5: sizes are positive; give a larger example size",
            )
        )
    for argv, message in cases:
        assert main([*argv, "--no-progress"] if argv[0] in ("eval", "predict") else argv) == 2, argv
        assert capsys.readouterr().err.strip() == message
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.onnx").exists()


def test_predict_overwrite_replaces_an_earlier_prediction_and_leaves_other_files(toy_run, tmp_path):
    """--overwrite left the earlier run's six masks beside this run's one, while manifest.json listed one."""
    run, root, _ = toy_run
    images = sorted((root / "toy/images/val").glob("*.png"))
    out = tmp_path / "pred"
    predict(run / "best.pt", images, out, progress=False)
    assert len(list((out / "masks").iterdir())) == len(images) > 1
    (out / "notes.txt").write_text("mine")
    predict(run / "best.pt", images[:1], out, overwrite=True, progress=False)
    for sub in ("masks", "color", "overlay"):
        assert [p.name for p in (out / sub).iterdir()] == [images[0].name]
    assert len(json.loads((out / "manifest.json").read_text())["files"]) == 1
    assert (out / "notes.txt").read_text() == "mine"
    assert Image.open(out / "legend.png").mode == "RGB"  # which colour is which class, in masks and overlays


def test_eval_can_score_the_first_images_of_a_split(toy_run):
    """A quick look (e.g. with --crf) needed the whole split; --num-images N scores its first N."""
    run, root, _ = toy_run
    whole = evaluate_checkpoint(run / "best.pt", num_workers=0, progress=False)
    first = evaluate_checkpoint(run / "best.pt", num_workers=0, progress=False, num_images=1)
    assert whole["num_images"] == 2 and first["num_images"] == 1
    h, w = np.asarray(Image.open(sorted((root / "toy/masks/val").glob("*.png"))[0])).shape
    assert (
        sum(map(sum, first["metrics"]["confusion_matrix"]))
        <= h * w
        < sum(map(sum, whole["metrics"]["confusion_matrix"]))
    )
    with pytest.raises(ConfigError) as e:
        evaluate_checkpoint(run / "best.pt", progress=False, num_images=0)
    assert str(e.value) == "--num-images 0: must be >= 1 (leave it out for the whole split)"


def test_predict_overwrite_removes_only_what_an_earlier_manifest_lists(tmp_path):
    """The first --overwrite cleared every file under masks/, color/, ... (a data set's ground truth when --out
    was its folder) and took an input video lying in --out for an output."""
    from pixelwise.engine.prediction_out_dir import prepare_out_dir

    data = tmp_path / "dataset"
    (data / "masks").mkdir(parents=True)
    (data / "masks/gt_0001.png").write_bytes(b"truth")
    prepare_out_dir(data, overwrite=True)  # no manifest of ours: nothing goes
    assert (data / "masks/gt_0001.png").read_bytes() == b"truth"

    out = tmp_path / "out"
    for name in ("clip.mp4", "clip_overlay.mp4", "masks/a.png", "color/a.png", "color/s_z0000.png",
                 "color/s_z0001.png", "masks/clip/f000000.png", "masks/mine.png", "color/t_z0000.png",
                 "color/t_z0001.png", "color/u_z0000.png", "color/u_z0001.png"):  # fmt: skip
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"x")
    manifest = {"pixelwise": "0.1.0", "files": [
        {"image": str(out / "a.png"), "masks": str(out / "masks/a.png"), "color": str(out / "color/a.png")},
        {"image": str(out / "s.tif"), "pages": 2, "color": str(out / "color/s_z0000.png")},  # an older manifest
        {"image": str(out / "t.tif"), "pages": 2, "color": str(out / "color/t_z0000.png"),
         "slices": {"color": [str(out / "color/t_z0000.png"), str(out / "color/t_z0001.png")]}},
        # one image whose own name ends in _z0000: its _z0001 neighbour is not its slice
        {"image": str(out / "u_z0000.png"), "color": str(out / "color/u_z0000.png")},
        {"video": str(out / "clip.mp4"), "frames": 10, "overlay": str(out / "clip_overlay.mp4"),
         "masks": str(out / "masks/clip"), "smooth": None},
        {"image": "/elsewhere/b.png", "masks": "/elsewhere/masks/b.png", "color": "..", "overlay": "overlay/.."},
    ]}  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest))
    prepare_out_dir(out, overwrite=True)
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert left == ["clip.mp4", "color/u_z0001.png", "masks/mine.png"]  # the input video, files no manifest lists


def test_predict_overwrite_finds_the_earlier_outputs_from_another_working_directory(toy_run, tmp_path, monkeypatch):
    """The manifest holds paths as typed ("preds/masks/s00.png"): run again from another folder (--out ../preds),
    they pointed elsewhere and the earlier outputs stayed."""
    run, root, _ = toy_run
    images = sorted((root / "toy/images/val").glob("*.png"))
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    predict(run / "best.pt", images, Path("preds"), progress=False)
    monkeypatch.chdir(tmp_path / "sub")
    predict(run / "best.pt", images[:1], Path("../preds"), overwrite=True, progress=False)
    assert [p.name for p in (tmp_path / "preds/masks").iterdir()] == [images[0].name]


def test_predict_into_its_own_input_folder_does_not_read_its_legend(toy_run, tmp_path):
    run, root, _ = toy_run
    folder = tmp_path / "inout"
    folder.mkdir()
    for p in sorted((root / "toy/images/val").glob("*.png")):
        (folder / p.name).write_bytes(p.read_bytes())
    first = predict(run / "best.pt", [folder], folder, progress=False, overwrite=True)
    assert (folder / "legend.png").exists()
    again = predict(run / "best.pt", [folder], folder, progress=False, overwrite=True)
    assert [w["image"] for w in again] == [w["image"] for w in first]  # legend.png was read as a third image


def test_predict_never_replaces_a_legend_png_of_the_users_own(toy_run, tmp_path):
    """A legend.png in --out that no earlier prediction wrote is the user's: an input like any other, and the
    run is refused before anything is written rather than replacing it (it was skipped and overwritten)."""
    run, root, _ = toy_run
    folder = tmp_path / "inout"
    folder.mkdir()
    for p in sorted((root / "toy/images/val").glob("*.png")):
        (folder / p.name).write_bytes(p.read_bytes())
    mine = folder / "legend.png"
    mine.write_bytes((folder / sorted(p.name for p in folder.iterdir())[0]).read_bytes())
    before = sorted(p.name for p in folder.rglob("*"))
    with pytest.raises(DataError) as e:
        predict(run / "best.pt", [folder], folder, progress=False, overwrite=True)
    assert str(e.value) == (
        f"--out {folder} holds a legend.png that no earlier prediction wrote (no manifest.json of ours beside it), "
        "and a prediction writes its own there: move or rename it, or choose another --out"
    )
    assert sorted(p.name for p in folder.rglob("*")) == before
    out = tmp_path / "elsewhere"  # as an input it is predicted like the other images
    written = predict(run / "best.pt", [folder], out, progress=False)
    assert str(mine) in [w["image"] for w in written]


def test_rerun_without_resume_moves_the_old_tensorboard_events_aside_with_the_old_log(tmp_path, caplog):
    """A run killed before its first checkpoint, started again on its --run-dir: its log went to metrics.old-1.jsonl,
    but its TensorBoard events stayed in tensorboard/ beside the new run's, which TensorBoard read as one history
    with each step twice. They are kept as tensorboard.old-1/, numbered as the log is."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def loss_steps(folder):
        events = EventAccumulator(str(folder))
        events.Reload()
        return [s.step for s in events.Scalars("train/loss")]

    root = write_dataset(tmp_path / "data").parent
    cfg = load_config(toy_config(tmp_path, iters=2, eval_interval=2, log_interval=1, tensorboard=True))
    run = tmp_path / "run"
    (run / "metrics.old-1.jsonl").parent.mkdir()
    (run / "metrics.old-1.jsonl").write_text('{"type": "train", "iter": 7}\n')  # an earlier rerun's: kept as is
    train(cfg, run_dir=run, data_root=root, progress=False)
    for p in run.glob("*.pt"):  # as if killed before its first checkpoint
        p.unlink()
    first_log = (run / "metrics.jsonl").read_text()
    caplog.set_level(logging.WARNING, logger="pixelwise")
    train(cfg, run_dir=run, data_root=root, progress=False)
    assert (run / "metrics.old-2.jsonl").read_text() == first_log
    assert not (run / "tensorboard.old-1").exists()  # the number is the log's
    assert loss_steps(run / "tensorboard.old-2") == [1, 2]
    assert loss_steps(run / "tensorboard") == [1, 2]  # one history: the new run's
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert "kept as metrics.old-2.jsonl and tensorboard.old-2" in caplog.text


def _slices(root, folder, count):
    """``count`` copies of the toy images, named slice_01.png ... (more inputs than the toy split holds)."""
    images = sorted((root / "toy/images").rglob("*.png"))
    folder.mkdir()
    for i in range(count):
        (folder / f"slice_{i + 1:02d}.png").write_bytes(images[i % len(images)].read_bytes())
    return sorted(folder.iterdir())


def _listed(out):
    """The files the manifest in ``out`` lists (every output key and slice), as paths."""
    from pixelwise.engine.prediction_out_dir import OUTPUT_KEYS

    listed = set()
    for entry in json.loads((out / "manifest.json").read_text())["files"]:
        listed |= {Path(entry[k]) for k in OUTPUT_KEYS if k in entry}
        listed |= {Path(p) for paths in entry.get("slices", {}).values() for p in paths}
    return listed


def test_predict_ctrl_c_lists_the_half_written_image_and_overwrite_removes_it(toy_run, tmp_path, monkeypatch):
    """Ctrl-C while an image was being written left its mask and colour file (no overlay) and the manifest did not
    list them: a later --overwrite run left them behind, mixed with its own outputs."""
    import pixelwise.engine.prediction_files as pf

    run, root, _ = toy_run
    slices = _slices(root, tmp_path / "in", 4)
    out = tmp_path / "pred"
    real = pf.write_image

    def interrupted(path, image, **kwargs):
        real(path, image, **kwargs)
        if Path(path) == out / "masks" / "slice_02.png":
            raise KeyboardInterrupt

    monkeypatch.setattr(pf, "write_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict(run / "best.pt", slices, out, progress=False)
    left = {p for p in out.rglob("*") if p.is_file()} - {out / "manifest.json", out / "legend.png"}
    assert out / "masks/slice_02.png" in left and not (out / "color/slice_02.png").exists()
    assert left == _listed(out)  # every file it left, the half-written image's too
    monkeypatch.setattr(pf, "write_image", real)
    (out / "notes.txt").write_text("mine")
    predict(run / "best.pt", slices[2:], out, overwrite=True, progress=False)
    for sub in ("masks", "color", "overlay"):
        assert sorted(p.name for p in (out / sub).iterdir()) == ["slice_03.png", "slice_04.png"]
    assert (out / "notes.txt").read_text() == "mine"


def test_predict_persists_its_manifest_while_it_runs(toy_run, tmp_path, monkeypatch):
    """The manifest was written at the start (empty) and at the end: a run killed with kill -9 left one listing no
    file. It is written again as files are written (at most every MANIFEST_EVERY_S seconds, here every time)."""
    import pixelwise.engine.prediction_files as pf

    run, root, _ = toy_run
    slices = _slices(root, tmp_path / "in", 3)
    out = tmp_path / "pred"
    real, seen = pf.write_image, []

    def looking(path, image, **kwargs):
        if Path(path) == out / "overlay" / "slice_03.png":
            seen.append(_listed(out))
        real(path, image, **kwargs)

    monkeypatch.setattr(pf, "MANIFEST_EVERY_S", 0.0, raising=False)
    monkeypatch.setattr(pf, "write_image", looking)
    predict(run / "best.pt", slices, out, progress=False)
    assert seen == [{out / sub / f"slice_{i:02d}.png" for sub in ("masks", "color", "overlay") for i in (1, 2)}
                    | {out / "masks/slice_03.png", out / "color/slice_03.png"}]  # fmt: skip


KILL_DURING_PREDICT = """
import os, signal, sys
from pathlib import Path
import pixelwise.engine.prediction_files as pf
from pixelwise.fileio import atomic_write
real = pf.write_image
def write_then_die(path, image, **kwargs):
    if Path(path).parent.name == "overlay" and Path(path).name == os.environ["KILL_AT"]:
        def half(f):
            f.write(b"half a picture")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        atomic_write(path, half, durable=False)
    return real(path, image, **kwargs)
pf.write_image = write_then_die
from pixelwise.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_predict_overwrite_after_kill_9_leaves_none_of_the_killed_runs_files(toy_run, tmp_path):
    """kill -9 left a manifest listing no file and a .slice_04.png.<hex>.tmp in overlay/: a later --overwrite run with
    other inputs left all of the killed run's outputs and the temporary file beside its own. A file of the user's
    named like an output of an input the killed run never reached stays (it is older than the killed run)."""
    run, root, _ = toy_run
    slices = _slices(root, tmp_path / "in", 5)
    out = tmp_path / "pred"
    (out / "color").mkdir(parents=True)
    (out / "color/slice_05.png").write_bytes(b"mine, from before")
    hour_ago = time.time() - 3600
    os.utime(out / "color/slice_05.png", (hour_ago, hour_ago))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILL_AT": "slice_04.png"}
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_PREDICT, "predict", str(run / "best.pt"),
                           *map(str, slices), "--out", str(out), "--overwrite", "--no-progress"], env=env,
                          timeout=600)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL
    assert len(list((out / "overlay").glob(".slice_04.png.*.tmp"))) == 1
    assert (out / "masks/slice_04.png").exists() and (out / "masks/slice_01.png").exists()
    (out / "notes.txt").write_text("mine")
    other = tmp_path / "other"
    other.mkdir()
    (other / "fresh.png").write_bytes(slices[0].read_bytes())
    predict(run / "best.pt", [other / "fresh.png"], out, overwrite=True, progress=False)
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert left == ["color/fresh.png", "color/slice_05.png", "legend.png", "manifest.json", "masks/fresh.png",
                    "notes.txt", "overlay/fresh.png"]  # fmt: skip
    assert (out / "color/slice_05.png").read_bytes() == b"mine, from before"
    assert sorted(p.name for p in slices) == [f"slice_{i:02d}.png" for i in range(1, 6)]  # inputs untouched
