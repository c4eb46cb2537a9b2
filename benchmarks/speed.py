"""Inference latency and training-step time of pixelwise models against the peers' same
architectures, in one run, reported as ratios; and onnxruntime against eager PyTorch.

Pairs (same input, same number of classes):
- pixelwise ``deeplabv3_resnet50`` built as torchvision's (output stride 8, rates 12/24/36, the
  extra head conv: identical layers) vs ``torchvision.models.segmentation.deeplabv3_resnet50``;
- pixelwise ``deeplabv3plus_resnet50`` (output stride 16, rates 12/24/36 as smp's default) vs
  ``smp.DeepLabV3Plus("resnet50")`` (smp differs in details: no BN/ReLU after its depthwise convs,
  one separable conv in its decoder instead of the paper's two, an extra one after ASPP);
- pixelwise ``unet_resnet34`` vs ``smp.Unet("resnet34")``.

Inference: the peer as a user runs it by default (``eval()``, ``torch.no_grad()``, fp32) against
pixelwise's default inference path (``optimize_for_inference``: batch norm folded, channels-last,
``torch.inference_mode()``, fp32), its ``--compile`` option (the same, through torch.compile with frozen
weights; fp32), its bf16 autocast option, and onnxruntime on the exported model.
Training: one SGD step (forward, cross entropy, backward, update) in fp32 for both, and pixelwise
with its ``train.channels_last`` + ``train.amp: bf16`` options.

    pip install -e '.[bench,onnx]'
    python benchmarks/speed.py --threads 2 --size 512 --train-size 256 --train-batch 4
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from pixelwise import build_model
from pixelwise.export import LogitsOnly
from pixelwise.inference import model_logits, optimize_for_inference

warnings.filterwarnings("ignore")


def timeit(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


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


def inference_times(pw, peer, size: int, repeats: int) -> dict[str, float]:
    x = torch.randn(1, 3, size, size)
    peer.eval()
    with torch.no_grad():
        t_peer = timeit(lambda: model_logits(peer, x), repeats)
    fast = optimize_for_inference(copy.deepcopy(pw).eval())
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        t_pw = timeit(lambda: fast(xc), repeats)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            t_bf16 = timeit(lambda: fast(xc), repeats)
    compiled = optimize_for_inference(copy.deepcopy(pw).eval(), compile=True)
    with torch.inference_mode():
        t_compiled = timeit(lambda: compiled(xc), repeats)  # the warm-up runs include the compilation
    out = {
        "peer_eager_fp32": t_peer,
        "pixelwise_fp32": t_pw,
        "pixelwise_bf16": t_bf16,
        "pixelwise_compiled_fp32": t_compiled,
    }
    try:
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            model = LogitsOnly(pw).eval()
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["image"])
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed = {"image": x.numpy()}
            out["pixelwise_onnxruntime"] = timeit(lambda: session.run(None, feed), repeats)
            with torch.no_grad():
                out["pixelwise_eager_fp32"] = timeit(lambda: model(x), repeats)
    except ImportError:
        pass
    return out


def train_times(pw, peer, size: int, batch: int, repeats: int, num_classes: int) -> dict[str, float]:
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, num_classes, (batch, size, size))

    def stepper(model, channels_last=False, bf16=False):
        model = copy.deepcopy(model).train()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt)
        xx = x.contiguous(memory_format=fmt)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model_logits(model, xx)
            loss = F.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    return {
        "peer_fp32": timeit(stepper(peer), repeats, warmup=1),
        "pixelwise_fp32": timeit(stepper(pw), repeats, warmup=1),
        "pixelwise_channels_last_bf16": timeit(stepper(pw, channels_last=True, bf16=True), repeats, warmup=1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=512, help="inference input size")
    ap.add_argument("--train-size", type=int, default=256)
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--num-classes", type=int, default=21)
    ap.add_argument("--out", default="benchmarks/results/speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": args.threads,
            "torch": torch.__version__,
        },
        "args": vars(args),
        "pairs": [],
    }
    print(
        "| architecture | peer | inference: peer eager fp32 (ms) | pixelwise fp32 (ms) | ratio | pixelwise "
        "compiled fp32 (ms) | ratio | pixelwise bf16 (ms) | ratio | onnxruntime (ms) | vs pixelwise eager | "
        "train step: peer (ms) | pixelwise fp32 (ms) | ratio | pixelwise CL+bf16 (ms) | ratio |"
    )
    print("|---|---" + "|---:" * 15 + "|")
    for arch, make_pw, peer_name, make_peer in peers(args.num_classes):
        pw, peer = make_pw(), make_peer()
        inf = inference_times(pw, peer, args.size, args.repeats)
        tr = train_times(pw, peer, args.train_size, args.train_batch, max(3, args.repeats // 2), args.num_classes)
        row = {
            "architecture": arch,
            "peer": peer_name,
            "inference_s": inf,
            "train_step_s": tr,
            "params_pixelwise_m": sum(p.numel() for p in pw.parameters()) / 1e6,
            "params_peer_m": sum(p.numel() for p in peer.parameters()) / 1e6,
        }
        results["pairs"].append(row)
        ms = lambda v: f"{1000 * v:.0f}"  # noqa: E731
        ort_ms = ms(inf["pixelwise_onnxruntime"]) if "pixelwise_onnxruntime" in inf else "n/a"
        ort_ratio = (
            f"{inf['pixelwise_eager_fp32'] / inf['pixelwise_onnxruntime']:.2f}x"
            if "pixelwise_onnxruntime" in inf
            else "n/a"
        )
        print(
            f"| {arch} | {peer_name} | {ms(inf['peer_eager_fp32'])} | {ms(inf['pixelwise_fp32'])} | "
            f"{inf['peer_eager_fp32'] / inf['pixelwise_fp32']:.2f}x | {ms(inf['pixelwise_compiled_fp32'])} | "
            f"{inf['peer_eager_fp32'] / inf['pixelwise_compiled_fp32']:.2f}x | {ms(inf['pixelwise_bf16'])} | "
            f"{inf['peer_eager_fp32'] / inf['pixelwise_bf16']:.2f}x | {ort_ms} | {ort_ratio} | "
            f"{ms(tr['peer_fp32'])} | {ms(tr['pixelwise_fp32'])} | {tr['peer_fp32'] / tr['pixelwise_fp32']:.2f}x | "
            f"{ms(tr['pixelwise_channels_last_bf16'])} | "
            f"{tr['peer_fp32'] / tr['pixelwise_channels_last_bf16']:.2f}x |",
            flush=True,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"(ratio = peer time / pixelwise time; > 1 means pixelwise is faster) results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
