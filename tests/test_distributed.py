"""Data-parallel training: rank 0's buffers for every process before an evaluation, what the processes agree
on every step, a resume in two processes, what only rank 0 writes."""

from __future__ import annotations

import json
import os
import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from pixelwise.config import load_config
from pixelwise.data import SegmentationDataset, build_transforms
from pixelwise.engine import train, trainer
from pixelwise.engine.builders import resolve_class_weights
from pixelwise.engine.distributed import Distributed, agree_over_processes, broadcast_buffers
from pixelwise.engine.evaluator import evaluate
from pixelwise.errors import ConfigError
from pixelwise.models import build_model

from .conftest import run_in_processes, write_dataset
from .test_engine import toy_config


def _buffers_after_broadcast(rank: int) -> list:
    bn = nn.BatchNorm2d(2)
    bn.running_mean.fill_(float(rank + 1))  # each process's own last update
    bn.running_var.fill_(float(10 * (rank + 1)))
    broadcast_buffers(bn, Distributed(rank=rank, world_size=2, enabled=True))
    return [bn.running_mean.tolist(), bn.running_var.tolist(), int(bn.num_batches_tracked)]


@pytest.mark.slow
def test_every_process_evaluates_with_rank_0s_running_statistics():
    results = run_in_processes(_buffers_after_broadcast)
    assert results[0] == results[1] == [[1.0, 1.0], [10.0, 10.0], 0]


def test_one_process_keeps_its_buffers():
    bn = nn.BatchNorm2d(2)
    bn.running_mean.fill_(3.0)
    broadcast_buffers(bn, Distributed())
    assert torch.equal(bn.running_mean, torch.full((2,), 3.0))


def _time_budget_rank(rank: int, root: str, config: dict, run_dir: str) -> dict:
    """Train ``config`` as process ``rank`` of 2 with a time budget; process 1's clock runs three times fast."""
    import os
    import time

    import pixelwise.engine.trainer as trainer
    from pixelwise.engine import train

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    built = {}
    real_build = trainer.build_optimizer

    def keep(model, train_cfg):
        built["model"], built["optimizer"] = model, real_build(model, train_cfg)
        return built["optimizer"]

    class FastClock:
        def __getattr__(self, name):
            return getattr(time, name)

        def perf_counter(self):
            return 3 * time.perf_counter()

    trainer.build_optimizer = keep
    if rank == 1:
        trainer.time = FastClock()
    result = train(config, run_dir=run_dir, data_root=root, progress=False)
    return {
        "iterations": result["iterations"],
        "lr": [g["lr"] for g in built["optimizer"].param_groups],
        "weights": [p.detach().flatten().tolist() for p in built["model"].parameters()],  # no tensors: shared memory
    }


@pytest.mark.slow
def test_processes_with_clocks_apart_share_the_time_budget_and_its_rates(tmp_path):
    """A time budget sets the learning rate from the training clock: every process must use the same clock, or
    the replicas step apart (same averaged gradients, other rates) and stop at different steps."""
    from functools import partial

    from pixelwise.config import load_config

    from .conftest import write_dataset
    from .test_engine import toy_config

    root = write_dataset(tmp_path / "data", splits={"train": 4, "val": 2}).parent
    config = load_config(toy_config(tmp_path, iters=100000, max_minutes=0.3, eval_interval=100000))
    results = run_in_processes(partial(_time_budget_rank, root=str(root), config=config, run_dir=str(tmp_path / "r")))
    assert (
        results[0]["iterations"] == results[1]["iterations"] > 2
    )  # about 6 s of process 0's time (3 s made 2 under load)
    assert results[0]["lr"] == results[1]["lr"] and results[0]["lr"][0] < config["train"]["lr"]
    assert results[0]["weights"] == results[1]["weights"]


def _count_gradient_all_reduces(rank: int, root: str, config: dict, run_dir: str) -> int:
    """Train as process ``rank`` of 2 and count the gradient buckets DDP all-reduced."""
    import os

    import torch.distributed as dist

    from pixelwise.engine import train

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    calls = [0]

    def counting_hook(state, bucket):
        calls[0] += 1
        work = dist.all_reduce(bucket.buffer().div_(dist.get_world_size()), async_op=True)
        return work.get_future().then(lambda fut: fut.value()[0])

    real = nn.parallel.DistributedDataParallel

    class Counted(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.register_comm_hook(None, counting_hook)

    nn.parallel.DistributedDataParallel = Counted
    try:
        train(config, run_dir=run_dir, data_root=root, progress=False)
    finally:
        nn.parallel.DistributedDataParallel = real
    return calls[0]


@pytest.mark.slow
def test_gradient_accumulation_all_reduces_once_per_optimizer_step(tmp_path):
    """With train.accumulate: 3 the gradients travel between the processes once per step, not once per
    micro-batch (the micro-batches' forwards too run under no_sync)."""
    from functools import partial

    from pixelwise.config import load_config

    from .conftest import write_dataset
    from .test_engine import toy_config

    root = write_dataset(tmp_path / "data", splits={"train": 12, "val": 2}).parent
    counts = {}
    for accumulate in (1, 3):
        config = load_config(toy_config(tmp_path, iters=4, eval_interval=100, accumulate=accumulate))
        run = partial(
            _count_gradient_all_reduces, root=str(root), config=config, run_dir=str(tmp_path / f"a{accumulate}")
        )
        counts[accumulate] = run_in_processes(run)
    assert counts[1][0] == counts[1][1] > 0
    assert counts[3] == counts[1]


def _agreed(rank: int) -> tuple[list[float], list[float]]:
    # process 0: the later clock; process 1: a signal and a non-finite loss; their losses 1 and 4
    maxima = [[7.5, 0, 0], [2.0, 15, 1]][rank]
    return agree_over_processes(maxima, [1.0 + 3 * rank], Distributed(rank=rank, world_size=2, enabled=True), "cpu")


@pytest.mark.slow
def test_processes_agree_on_the_largest_clock_and_signal_and_the_mean_loss_in_one_collective():
    results = run_in_processes(_agreed)
    assert results[0] == results[1] == ([7.5, 15.0, 1.0], [2.5])


def test_one_process_agrees_with_itself():
    assert agree_over_processes([3.0, 0, 0], [0.25], Distributed(), "cpu") == ([3.0, 0, 0], [0.25])


def _train_in_a_group(rank: int, cfg: dict, run_dir: str, root: str, resume: bool) -> list:
    """``train()`` as under torchrun: the environment names this process's place in the group it is in."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    train(cfg, run_dir=run_dir, data_root=root, progress=False, resume=resume)
    records = map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())
    return [(r["iter"], r["loss"]) for r in records if r["type"] == "train"]


def _dropout_states(rank: int, cfg: dict, run_dir: str, root: str, resume: bool) -> list[str]:
    """The generator state each training forward's dropout draws its mask from, in this process."""
    import hashlib

    states = []
    original = nn.Dropout2d.forward

    def recording(self, x):
        if self.training:  # not the validation passes
            states.append(hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest())
        return original(self, x)

    nn.Dropout2d.forward = recording
    _train_in_a_group(rank, cfg, run_dir, root, resume)
    return states


@pytest.mark.slow
def test_each_process_draws_its_own_dropout_masks_and_draws_them_again_on_resume(tmp_path):
    """Every process starts from the seed (the replicas' weights must be equal): without a seed per process and
    step, the dropout masks of the two processes' slices of each batch were the same."""
    root = write_dataset(tmp_path / "data", splits={"train": 8, "val": 2}).parent
    cfg = load_config(toy_config(tmp_path, iters=4, eval_interval=4, checkpoint_interval=2, keep_last=5))
    cfg["model"]["dropout"] = 0.5
    straight = run_in_processes(
        partial(_dropout_states, cfg=cfg, run_dir=str(tmp_path / "a"), root=str(root), resume=False)
    )
    assert len(straight[0]) == len(straight[1]) == 4
    assert all(a != b for a, b in zip(straight[0], straight[1], strict=True))
    assert len(set(straight[0])) == 4  # and a new draw every step
    stopped = tmp_path / "b"
    shutil.copytree(tmp_path / "a", stopped)
    os.replace(stopped / "iter_0000002.pt", stopped / "last.pt")
    resumed = run_in_processes(partial(_dropout_states, cfg=cfg, run_dir=str(stopped), root=str(root), resume=True))
    assert resumed == {rank: states[2:] for rank, states in straight.items()}


def _signalled_in_validation(rank: int, cfg: dict, run_dir: str, root: str) -> str:
    """Train in a group; process 1 alone gets SIGTERM at its first validation batch."""
    import signal

    import pixelwise.engine.evaluator as evaluator

    real = evaluator.batch_scores

    def signalled(*args, **kwargs):
        if rank == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    evaluator.batch_scores = signalled
    try:
        _train_in_a_group(rank, cfg, run_dir, root, resume=False)
    except trainer.TrainingInterrupted as e:
        return str(e).split(":")[0]
    return "not stopped"


@pytest.mark.slow
def test_a_signal_to_one_process_during_a_validation_stops_both_after_the_next_step(tmp_path):
    """A process that gave up its validation alone left the other in the counts' all-reduce (a gloo error), and
    wrote no last.pt (only rank 0 writes): under torchrun the validation runs to its end and the processes stop
    together after the next step, as for a signal at any other time."""
    root = write_dataset(tmp_path / "data", splits={"train": 8, "val": 4}).parent
    cfg = load_config(toy_config(tmp_path, iters=6, eval_interval=2))
    stopped = run_in_processes(partial(_signalled_in_validation, cfg=cfg, run_dir=str(tmp_path / "r"), root=str(root)))
    assert stopped == {0: "stopped by SIGTERM at iteration 3", 1: "stopped by SIGTERM at iteration 3"}
    assert (tmp_path / "r" / "last.pt").is_file()


def _signalled_with_a_slow_save(rank: int, cfg: dict, run_dir: str, root: str) -> tuple[str, float, float]:
    """Process 1 alone gets SIGTERM at its second step; rank 0's checkpoint writes take a second. Returns the stop
    message, and when this process left train() and (rank 0) when its last.pt was written."""
    import signal
    import time

    from pixelwise.engine import run_dir as run_files

    real_save, real_step = run_files.RunFiles.save, trainer.seed_step
    written = [0.0]

    def slow_save(self, *args, **kwargs):
        time.sleep(1.0)  # a large model, a slow shared file system
        real_save(self, *args, **kwargs)
        written[0] = time.time()

    def signalled_step(seed, iteration, ddp):
        if rank == 1 and iteration == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        real_step(seed, iteration, ddp)

    run_files.RunFiles.save, trainer.seed_step = slow_save, signalled_step
    try:
        _train_in_a_group(rank, cfg, run_dir, root, resume=False)
    except trainer.TrainingInterrupted as e:
        return str(e).split(":")[0], time.time(), written[0]
    return "not stopped", time.time(), written[0]


@pytest.mark.slow
def test_no_process_of_a_stopped_run_exits_before_rank_0_has_written_last_pt(tmp_path):
    """A signal to process 1 stopped both, and process 1 exited (130) at once while rank 0 was still writing
    last.pt: torchrun then ends the job, rank 0 with it, and a save longer than its 30 s grace was lost."""
    root = write_dataset(tmp_path / "data", splits={"train": 8, "val": 2}).parent
    cfg = load_config(toy_config(tmp_path, iters=6, eval_interval=6))
    got = run_in_processes(partial(_signalled_with_a_slow_save, cfg=cfg, run_dir=str(tmp_path / "r"), root=str(root)))
    assert got[0][0] == got[1][0] == "stopped by SIGTERM at iteration 2"
    assert got[1][1] >= got[0][2] > 0  # process 1 left after rank 0's last.pt was written
    assert (tmp_path / "r" / "last.pt").is_file()


def _sync_bn_on_cpu(rank: int, cfg: dict, run_dir: str, root: str) -> str:
    try:
        _train_in_a_group(rank, cfg, run_dir, root, resume=False)
    except ConfigError as e:
        return str(e)
    return "trained"


@pytest.mark.slow
def test_sync_bn_on_cpu_is_refused_before_the_run_folder_is_written(tmp_path):
    """It was refused after config.yaml and metrics.jsonl were written, which the next run then set aside."""
    root = write_dataset(tmp_path / "data", splits={"train": 8, "val": 2}).parent
    cfg = load_config(toy_config(tmp_path, iters=2, eval_interval=2))
    cfg["train"]["sync_bn"] = True
    got = run_in_processes(partial(_sync_bn_on_cpu, cfg=cfg, run_dir=str(tmp_path / "r"), root=str(root)))
    assert got == {r: "train.sync_bn needs CUDA (PyTorch's SyncBatchNorm is GPU-only)" for r in (0, 1)}
    assert not (tmp_path / "r" / "config.yaml").exists() and not (tmp_path / "r" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_the_loss_logged_after_a_resume_in_two_processes_is_the_uninterrupted_runs(tmp_path):
    """Two processes, logged every 4 steps, resumed from the checkpoint of step 2: the line of step 4 is the mean
    of steps 1-4 over both processes as without the stop (each process restored rank 0's own losses of steps 1-2:
    1.12666 against 1.12166 in the reviewer's run)."""
    root = write_dataset(tmp_path / "data", splits={"train": 8, "val": 2}).parent
    train_cfg = dict(iters=6, eval_interval=6, log_interval=4, checkpoint_interval=2, keep_last=5)
    cfg = load_config(toy_config(tmp_path, **train_cfg))
    straight = run_in_processes(
        partial(_train_in_a_group, cfg=cfg, run_dir=str(tmp_path / "a"), root=str(root), resume=False)
    )
    assert straight[0] == straight[1] and [i for i, _ in straight[0]] == [4, 6]
    # the run as a stop after step 2 leaves it: that step's checkpoint its last, the log cut back to it
    stopped = tmp_path / "b"
    shutil.copytree(tmp_path / "a", stopped)
    os.replace(stopped / "iter_0000002.pt", stopped / "last.pt")
    resumed = run_in_processes(partial(_train_in_a_group, cfg=cfg, run_dir=str(stopped), root=str(root), resume=True))
    assert resumed[0] == resumed[1] == [(i, pytest.approx(v, rel=1e-6)) for i, v in straight[0]]
    assert sorted(p.name for p in stopped.glob("rank*")) == []


def test_only_the_process_holding_the_run_folder_caches_the_class_weights(tmp_path):
    """Every process computes the weights; the others write nothing into a run folder whose lock they do not
    hold (a second job's other ranks replaced a live run's class_weights.json)."""
    root = write_dataset(tmp_path / "data", splits={"train": 2, "val": 1}).parent
    ds = SegmentationDataset(root, "toy", "train")
    weights = resolve_class_weights("median_frequency", ds, tmp_path / "run", progress=False, write=False)
    assert not (tmp_path / "run").exists()
    assert resolve_class_weights("median_frequency", ds, tmp_path / "run", progress=False) == weights
    assert json.loads((tmp_path / "run/class_weights.json").read_text())["weights"] == weights


def test_a_resume_in_another_number_of_processes_names_the_global_batch(tmp_path, monkeypatch):
    """The same data.batch_size in 2 processes is another global batch, which no setting shows: refused unless
    --allow-changes (it went on silently with half the batch)."""
    root = write_dataset(tmp_path / "data", splits={"train": 6, "val": 2}).parent
    cfg = load_config(toy_config(tmp_path, iters=4, eval_interval=4, checkpoint_interval=2, keep_last=5))
    train(cfg, run_dir=tmp_path / "run", data_root=root, progress=False)
    os.replace(tmp_path / "run/iter_0000002.pt", tmp_path / "run/last.pt")  # as a stop after step 2 leaves it
    two = Distributed(rank=0, world_size=2, enabled=False)  # no group: the resume is refused before any collective
    monkeypatch.setattr(trainer, "setup_distributed", lambda device: (two, device))
    with pytest.raises(ConfigError) as e:
        train(cfg, run_dir=tmp_path / "run", data_root=root, progress=False, resume=True)
    assert str(e.value) == (
        f"--resume: {tmp_path / 'run' / 'last.pt'} was trained in 1 process(es) with a global batch of 2, this resume "
        "runs in 2 (a global batch of 4); resume with as many processes (torchrun --nproc_per_node), or add "
        "--allow-changes to go on with the new global batch"
    )


def _evaluated_whole(rank: int, root: str) -> dict:
    torch.manual_seed(0)  # the same untrained model in every process
    model = build_model(name="unet", num_classes=2, base_channels=4, depth=2)
    ds = SegmentationDataset(root, "toy", "val", transforms=build_transforms(train=False, mean=[0.5], std=[0.25]))
    m = evaluate(model, ds, boundary_width=1, instances=1, progress=False)
    return {
        "cm": m["confusion_matrix"],
        "challenge": m["challenge_pixel_error"]["pixel_error"],
        "boundary": m["boundary"]["f1"],
        "slices": m["instances"]["num_slices"],
    }


@pytest.mark.slow
def test_a_whole_split_scored_in_each_process_of_a_group_is_counted_once(tmp_path):
    """evaluate() without a shard inside a process group (evaluate_checkpoint after train() under torchrun): each
    process scored every image, and the counts were summed over the group, twice the pixels and slices."""
    root = write_dataset(tmp_path / "data", splits={"train": 1, "val": 3}, num_classes=2).parent
    grouped = run_in_processes(partial(_evaluated_whole, root=str(root)))
    alone = _evaluated_whole(0, str(root))
    assert grouped[0] == grouped[1] == alone
    assert sum(map(sum, alone["cm"])) == 3 * 24 * 20 and alone["slices"] == 3
