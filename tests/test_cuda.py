"""CUDA paths, skipped without a GPU (CI has none; run them where one is: ``pytest -m cuda``): every
model on the GPU against the CPU, fp16 autocast, the dense CRF, the confusion matrix, training with
fp16 + GradScaler and with bf16, evaluation on the GPU against the CPU, deterministic mode, and
torchrun's NCCL + DDP + SyncBatchNorm path in a group of one process."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from pixelwise import build_model, list_models
from pixelwise.config import load_config
from pixelwise.crf import dense_crf, dense_crf_batch
from pixelwise.engine import evaluate_checkpoint, train
from pixelwise.inference import optimize_for_inference
from pixelwise.metrics import ConfusionMatrix
from pixelwise.models import model_logits
from pixelwise.models.weights import load_checkpoint

from .conftest import write_dataset
from .test_crf import SMALL, scene
from .test_engine import torchrun_one_process_and_plain, toy_config, train_stopped_by_sigterm

# PIXELWISE_TEST_DEVICE=cpu runs these tests' logic on the CPU (bf16 for fp16, no SyncBatchNorm): a check of the
# tests themselves before spending GPU time on them; the comparisons are then trivially CPU against CPU.
DEVICE = os.environ.get("PIXELWISE_TEST_DEVICE", "cuda")
HALF = torch.float16 if DEVICE == "cuda" else torch.bfloat16
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA device"),
]


@pytest.fixture(autouse=True)
def full_fp32():
    """Compare in true fp32: TF32 (cuDNN's default for convolutions on Ampere and later) off."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", list_models())
def test_model_on_cuda_matches_cpu(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3).eval()
    with torch.no_grad():
        for p in model.parameters():  # FCN's score layers start at zero: give every output a signal
            if p.abs().max() == 0:
                p.normal_(0, 0.01)
    x = torch.randn(2, 3, 65, 79)
    peak = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: peak.append(o.abs().max().item()))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))
    ]
    with torch.no_grad():
        ref = model_logits(model, x)
    for h in hooks:
        h.remove()
    # untrained ResNet-101s' activations exceed fp16's range (65504): those in bf16
    dtype = HALF if max(peak) < 3e4 else torch.bfloat16
    gpu = model.to(DEVICE)
    xg = x.to(DEVICE)
    with torch.no_grad():
        assert rel(model_logits(gpu, xg), ref) < 1e-4
        fast = optimize_for_inference(copy.deepcopy(gpu))  # folded BN, channels-last: the eval/predict path
        assert rel(fast(xg.contiguous(memory_format=torch.channels_last)), ref) < 1e-4
        with torch.autocast(DEVICE, dtype=dtype):
            half = model_logits(gpu, xg)
        assert rel(half, ref) < 3e-2, dtype
    gpu.train()
    xg.requires_grad_(True)
    with torch.autocast(DEVICE, dtype=dtype):
        out = model_logits(gpu, xg)
    (out.float() * torch.randn_like(out, dtype=torch.float32)).mean().backward()
    grads = [p.grad for p in gpu.parameters() if p.grad is not None]
    assert torch.isfinite(xg.grad).all() and grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("smoothness_filter", ["exact", "lattice"])
def test_dense_crf_on_cuda_matches_cpu(smoothness_filter):
    image, probs, _ = scene(0, height=37, width=53)
    cpu = dense_crf(image, probs, **SMALL, smoothness_filter=smoothness_filter)
    gpu = dense_crf(image, probs.to(DEVICE), **SMALL, smoothness_filter=smoothness_filter)
    assert gpu.device.type == DEVICE
    diff = (gpu.cpu() - cpu).abs()
    same = (gpu.cpu().argmax(0) == cpu.argmax(0)).float().mean()
    # measured on an H100: max 4e-4, so not the 1e-6 of CPU-only runs; the labels agree
    assert diff.max() < 2e-3 and diff.mean() < 1e-5 and same > 0.999, (diff.max(), diff.mean(), same)
    # batched and differentiable on the GPU too
    images = torch.as_tensor(np.stack([image, image[::-1].copy()])).to(DEVICE)
    p = torch.stack([probs, probs.flip(1)]).to(DEVICE).requires_grad_(True)
    out = dense_crf_batch(images, p, **SMALL, smoothness_filter=smoothness_filter)
    assert (out[0] - gpu).abs().max() < 1e-5
    out[:, 1].sum().backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_confusion_matrix_on_cuda_matches_cpu():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randint(0, 5, (3, 40, 30), generator=g), torch.randint(0, 5, (3, 40, 30), generator=g)
    target[0, :5] = 255
    a, b = ConfusionMatrix(5, 255), ConfusionMatrix(5, 255, device=DEVICE)
    a.update(pred, target)
    b.update(pred.to(DEVICE), target.to(DEVICE))
    assert b.matrix.device.type == DEVICE and torch.equal(a.matrix, b.matrix.cpu())


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_train_with_amp_on_cuda_then_eval_matches_cpu(tmp_path, amp):
    if amp == "fp16" and DEVICE != "cuda":
        pytest.skip("fp16 training needs CUDA")
    root = write_dataset(tmp_path / "data", splits={"train": 6, "val": 3}, size=(48, 40)).parent
    settings = dict(iters=40, eval_interval=40, device=DEVICE, amp=amp, channels_last=True, deterministic=False)
    cfg = load_config(toy_config(tmp_path, **settings))
    result = train(cfg, run_dir=tmp_path / "run", data_root=root, progress=False)
    ckpt = load_checkpoint(tmp_path / "run/last.pt")
    if amp == "fp16":  # the gradient scaler ran and its state is checkpointed
        assert ckpt["scaler"] and ckpt["scaler"]["scale"] > 0
    log = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["type"] == "train"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert result["best_miou"] > 0.25  # above chance (a constant prediction scores about 0.11)
    on_gpu = evaluate_checkpoint(tmp_path / "run/best.pt", data_root=root, device=DEVICE, num_workers=0, progress=False)
    on_cpu = evaluate_checkpoint(tmp_path / "run/best.pt", data_root=root, device="cpu", num_workers=0, progress=False)
    a, b = np.array(on_gpu["metrics"]["confusion_matrix"]), np.array(on_cpu["metrics"]["confusion_matrix"])
    assert a.sum() == b.sum() and np.abs(a - b).sum() <= 0.002 * a.sum()  # rounding can flip a near-tie pixel
    gpu_amp = evaluate_checkpoint(
        tmp_path / "run/best.pt", data_root=root, device=DEVICE, amp=amp, num_workers=0, progress=False
    )
    assert abs(gpu_amp["metrics"]["miou"] - on_cpu["metrics"]["miou"]) < 0.02


def test_deterministic_mode_runs_on_cuda(tmp_path, monkeypatch):
    """2-D NLL loss and bilinear upsampling backward have no deterministic CUDA kernels: deterministic mode
    warns about them (warn_only on CUDA, errors on CPU where every kernel has one) and runs."""
    import pixelwise.engine.trainer as trainer

    root = write_dataset(tmp_path / "data").parent
    cfg = load_config(toy_config(tmp_path, iters=2, device=DEVICE, deterministic=True))
    real, seen = trainer.step_loss, []

    def spy(*args, **kwargs):
        seen.append(
            (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        )
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "step_loss", spy)
    try:
        train(cfg, run_dir=tmp_path / "run", data_root=root, progress=False)
    finally:
        torch.use_deterministic_algorithms(False)
    assert load_checkpoint(tmp_path / "run/last.pt")["train_state"]["iter"] == 2
    assert seen and set(seen) == {(True, torch.device(DEVICE).type == "cuda")}


def test_torchrun_nccl_ddp_sync_bn_one_process_equals_plain_run(tmp_path):
    """torchrun with one process on the GPU: NCCL group, DistributedDataParallel and SyncBatchNorm
    (which in a group of one normalises like BatchNorm) end where a plain single-process run ends."""
    root = write_dataset(tmp_path / "data", splits={"train": 6, "val": 2}, size=(48, 40)).parent
    cfg = toy_config(tmp_path, iters=8, eval_interval=4, device=DEVICE, deterministic=False)
    env = {**os.environ, "PIXELWISE_DATA": str(root)}
    runs = torchrun_one_process_and_plain(
        tmp_path,
        cfg,
        env,
        ddp_args=["--set", f"train.sync_bn={str(DEVICE == 'cuda').lower()}"],
        args=["--set", "data.scale_range=null"],
        timeout=300,
    )
    a, b = runs["ddp"][0], runs["plain"][0]
    assert a.keys() == b.keys()
    assert max(rel(a[k], b[k]) for k in a if a[k].is_floating_point() and b[k].norm() > 0) < 1e-3


def test_resume_with_dropout_on_cuda_continues_the_gpus_random_stream(tmp_path, monkeypatch):
    """Dropout on a GPU draws from that device's generator: last.pt holds its state, so a run stopped by SIGTERM
    and resumed ends where the uninterrupted run ends (up to the GPU's non-deterministic summation order; another
    dropout mask would move the weights far more)."""

    root = write_dataset(tmp_path / "data", splits={"train": 6, "val": 2}).parent
    cfg = load_config(toy_config(tmp_path, iters=6, eval_interval=6, device=DEVICE, deterministic=False))
    cfg["model"]["dropout"] = 0.5
    train(cfg, run_dir=tmp_path / "straight", data_root=root, progress=False)
    train_stopped_by_sigterm(cfg, tmp_path / "killed", root, monkeypatch)
    assert ("cuda" in load_checkpoint(tmp_path / "killed/last.pt")["rng"]) == (DEVICE == "cuda")
    train(cfg, run_dir=tmp_path / "killed", data_root=root, progress=False, resume=True)
    a = load_checkpoint(tmp_path / "straight/last.pt")["model"]
    b = load_checkpoint(tmp_path / "killed/last.pt")["model"]
    assert max(rel(b[k], a[k]) for k in a if a[k].is_floating_point() and a[k].norm() > 0) < 1e-4
