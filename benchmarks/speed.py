"""Inference latency and training-step time of pixelwise models against the peers' same
architectures, in one run, reported as ratios; and onnxruntime against eager PyTorch.

Pairs (same input, same number of classes):
- pixelwise ``deeplabv3_resnet50`` built as torchvision's (output stride 8, rates 12/24/36, the
  extra head conv: identical layers) vs ``torchvision.models.segmentation.deeplabv3_resnet50``;
- pixelwise ``deeplabv3plus_resnet50`` (output stride 16, rates 12/24/36 as smp's default) vs
  ``smp.DeepLabV3Plus("resnet50")`` (smp differs in details: no BN/ReLU after its depthwise convs,
  one separable conv in its decoder instead of the paper's two, an extra one after ASPP);
- pixelwise ``unet_resnet34`` vs ``smp.Unet("resnet34")``.

Inference: the peer as a user runs it by default (``eval()``, ``torch.no_grad()``, fp32; on CUDA with
PyTorch's default TF32 convolutions) against pixelwise's default inference path
(``optimize_for_inference``: batch norm folded, channels-last, ``torch.inference_mode()``, fp32), its
``--compile`` option (the same through torch.compile with frozen weights), its ``--amp`` option (bf16
autocast on CPU; fp16 autocast with fp16 weights on CUDA, as eval/predict run it) and, on CPU,
onnxruntime on the exported model. Variants are timed in turns (median of ``--repeats``); on CUDA
with device synchronisation, and each variant's peak memory is recorded.
Training: one SGD step (forward, cross entropy, backward, update) in fp32 for both, and pixelwise
with its ``train.channels_last`` + ``train.amp`` options (bf16 on CPU, fp16 with a gradient scaler on CUDA).

    pip install -e '.[bench,onnx]'
    python benchmarks/speed.py --threads 2 --size 512 --train-size 256 --train-batch 4
    python benchmarks/speed.py --device cuda --size 512 --batch 16 --train-size 512 --train-batch 16
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from pixelwise import build_model
from pixelwise.device import autocast, inference_dtype
from pixelwise.export import LogitsOnly
from pixelwise.inference import optimize_for_inference
from pixelwise.models import model_logits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

warnings.filterwarnings("ignore")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: int = 3):
    """Median seconds of each function, timed in turns (a, b, c, a, b, c, ...) so that a slow spell of
    the machine falls on all of them alike; on CUDA the device is synchronised around each call."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak CUDA memory allocated during one call, in MiB (None on CPU)."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def peers(num_classes: int):
    import segmentation_models_pytorch as smp
    import torchvision

    return [
        (
            "deeplabv3_resnet50 (OS 8)",
            lambda: build_model(
                "deeplabv3_resnet50",
                num_classes=num_classes,
                output_stride=8,
                multi_grid=None,
                rates=[12, 24, 36],
                head_conv=True,
            ),
            "torchvision",
            lambda: torchvision.models.segmentation.deeplabv3_resnet50(
                weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
            ),
        ),
        (
            "deeplabv3plus_resnet50 (OS 16)",
            lambda: build_model("deeplabv3plus_resnet50", num_classes=num_classes, rates=[12, 24, 36]),
            "smp",
            lambda: smp.DeepLabV3Plus("resnet50", encoder_weights=None, classes=num_classes),
        ),
        (
            "unet_resnet34",
            lambda: build_model("unet_resnet34", num_classes=num_classes),
            "smp",
            lambda: smp.Unet("resnet34", encoder_weights=None, classes=num_classes),
        ),
    ]


def inference_times(
    pw, peer, *, size: int, batch: int, repeats: int, device: torch.device, amp: str, compile: bool
) -> tuple[dict[str, float], dict[str, float | None]]:
    """Seconds per forward pass of each variant (timed in turns), and on CUDA each one's peak memory."""
    x = torch.randn(batch, 3, size, size, device=device)
    xc = x.contiguous(memory_format=torch.channels_last)
    peer = peer.to(device).eval()
    eager = LogitsOnly(copy.deepcopy(pw)).to(device).eval()  # pixelwise without its inference path
    fast = optimize_for_inference(copy.deepcopy(pw).to(device).eval())

    def run(model, inp, no_grad=torch.no_grad, amp="none"):
        def fn():
            with no_grad(), autocast(device, amp):
                return model_logits(model, inp)

        return fn

    fns = {
        "peer_eager_fp32": run(peer, x),
        "pixelwise_eager_fp32": run(eager, x),
        "pixelwise_fp32": run(fast, xc, torch.inference_mode),
        "pixelwise_amp": run(fast, xc, torch.inference_mode, amp),
    }
    weights_dtype = inference_dtype(device, amp)
    if weights_dtype is not None:  # what eval/predict --amp run on this device: half-precision weights
        fns["pixelwise_amp_fp32_weights"] = fns["pixelwise_amp"]
        half = optimize_for_inference(copy.deepcopy(pw).to(device).eval(), dtype=weights_dtype)
        fns["pixelwise_amp"] = run(half, xc, torch.inference_mode, amp)
    if compile:  # the warm-up calls include the compilation
        compiled = optimize_for_inference(copy.deepcopy(pw).to(device).eval(), compile=True)
        fns["pixelwise_compiled_fp32"] = run(compiled, xc, torch.inference_mode)
    with tempfile.TemporaryDirectory() as tmp:
        if device.type == "cpu":
            try:
                import onnxruntime as ort

                path = Path(tmp) / "m.onnx"
                torch.onnx.export(eager, (x,), str(path), dynamo=False, opset_version=17, input_names=["image"])
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = torch.get_num_threads()
                session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                feed = {"image": x.numpy()}
                fns["pixelwise_onnxruntime"] = lambda: session.run(None, feed)
            except ImportError:
                pass
        times = time_interleaved(fns, repeats, device)
    memory = {k: peak_mib(fn, device) for k, fn in fns.items() if k != "pixelwise_onnxruntime"}
    return times, memory


def train_times(
    pw, peer, *, size: int, batch: int, repeats: int, num_classes: int, device: torch.device, amp: str
) -> tuple[dict[str, float], dict[str, float | None]]:
    """Seconds per SGD step (forward, cross entropy, backward, update), timed in turns; CUDA peak memory."""
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, num_classes, (batch, size, size), device=device)

    def stepper(model, channels_last=False, amp="none"):
        model = copy.deepcopy(model).to(device).train()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt)
        xx = x.contiguous(memory_format=fmt)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")  # as the engine's fp16

        def step():
            with autocast(device, amp):
                out = model_logits(model, xx)
            loss = F.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        return step

    fns = {
        "peer_fp32": stepper(peer),
        "pixelwise_fp32": stepper(pw),
        "pixelwise_channels_last_amp": stepper(pw, channels_last=True, amp=amp),
    }
    times = time_interleaved(fns, repeats, device, warmup=2)
    return times, {k: peak_mib(fn, device) for k, fn in fns.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--size", type=int, default=512, help="inference input size")
    ap.add_argument("--batch", type=int, default=1, help="inference batch size")
    ap.add_argument("--train-size", type=int, default=256)
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5, help="timed inference calls per variant")
    ap.add_argument("--train-repeats", type=int, default=5, help="timed training steps per variant")
    ap.add_argument("--num-classes", type=int, default=21)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--out", default=None, help="JSON results (default benchmarks/results/speed[_cuda].json)")
    args = ap.parse_args()
    device = torch.device(args.device)
    amp = "fp16" if device.type == "cuda" else "bf16"  # fp16 + GradScaler on GPUs, bf16 on CPUs
    out_path = Path(args.out or f"benchmarks/results/speed{'_cuda' if device.type == 'cuda' else ''}.json")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    machine = {**machine_info(), "threads": args.threads, "torch": torch.__version__}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
        machine["tf32_conv"] = torch.backends.cudnn.allow_tf32  # PyTorch's default, left as a user has it
    results = {"machine": machine, "args": vars(args), "amp": amp, "pairs": []}
    print(
        "| architecture | peer | inference: peer eager fp32 (ms) | pixelwise fp32 (ms) | ratio | pixelwise "
        f"compiled fp32 (ms) | ratio | pixelwise {amp} (ms) | ratio | onnxruntime (ms) | vs pixelwise eager | "
        f"train step: peer fp32 (ms) | pixelwise fp32 (ms) | ratio | pixelwise CL+{amp} (ms) | ratio |"
    )
    print("|---|---" + "|---:" * 15 + "|")
    for arch, make_pw, peer_name, make_peer in peers(args.num_classes):
        pw, peer = make_pw(), make_peer()
        inf, inf_mem = inference_times(
            pw,
            peer,
            size=args.size,
            batch=args.batch,
            repeats=args.repeats,
            device=device,
            amp=amp,
            compile=not args.no_compile,
        )
        tr, tr_mem = train_times(
            pw,
            peer,
            size=args.train_size,
            batch=args.train_batch,
            repeats=args.train_repeats,
            num_classes=args.num_classes,
            device=device,
            amp=amp,
        )
        row = {
            "architecture": arch,
            "peer": peer_name,
            "inference_s": inf,
            "train_step_s": tr,
            "params_pixelwise_m": sum(p.numel() for p in pw.parameters()) / 1e6,
            "params_peer_m": sum(p.numel() for p in peer.parameters()) / 1e6,
        }
        if device.type == "cuda":
            row["inference_peak_mib"], row["train_peak_mib"] = inf_mem, tr_mem
        results["pairs"].append(row)
        ms = lambda key, d=inf: f"{1000 * d[key]:.1f}" if key in d else "n/a"  # noqa: E731
        ratio = lambda num, key, d=inf: f"{d[num] / d[key]:.2f}x" if key in d else "n/a"  # noqa: E731
        print(
            f"| {arch} | {peer_name} | {ms('peer_eager_fp32')} | {ms('pixelwise_fp32')} | "
            f"{ratio('peer_eager_fp32', 'pixelwise_fp32')} | {ms('pixelwise_compiled_fp32')} | "
            f"{ratio('peer_eager_fp32', 'pixelwise_compiled_fp32')} | {ms('pixelwise_amp')} | "
            f"{ratio('peer_eager_fp32', 'pixelwise_amp')} | {ms('pixelwise_onnxruntime')} | "
            f"{ratio('pixelwise_eager_fp32', 'pixelwise_onnxruntime')} | {ms('peer_fp32', tr)} | "
            f"{ms('pixelwise_fp32', tr)} | {ratio('peer_fp32', 'pixelwise_fp32', tr)} | "
            f"{ms('pixelwise_channels_last_amp', tr)} | {ratio('peer_fp32', 'pixelwise_channels_last_amp', tr)} |",
            flush=True,
        )
        del pw, peer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2))
    print(f"(ratio = peer time / pixelwise time; > 1 means pixelwise is faster) results in {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
