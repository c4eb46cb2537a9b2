"""Command-line option groups that several verbs share (inference protocol and precision, dense CRF, data root
and progress), and their translation into the library's arguments."""

from __future__ import annotations

import argparse

# one line of help per CRF parameter; the parameters themselves are pixelwise.crf.CRFSettings's fields
CRF_HELP = {
    "iterations": (int, "mean-field iterations"),
    "w1": (float, "appearance (bilateral) kernel weight"),
    "theta_alpha": (float, "appearance kernel: position std (pixels)"),
    "theta_beta": (float, "appearance kernel: colour std"),
    "w2": (float, "smoothness kernel weight"),
    "theta_gamma": (float, "smoothness kernel: position std (pixels)"),
}


def add_inference_options(p: argparse.ArgumentParser, *, compile: bool = True) -> None:
    """The protocol flags over the run's ``inference`` section, ``--amp`` and (with ``compile``) ``--compile``."""
    g = p.add_argument_group("inference protocol")
    g.add_argument("--mode", choices=["whole", "slide"], help="whole image (default) or sliding window")
    g.add_argument("--crop", type=int, nargs="+", help="sliding window size: S or H W")
    g.add_argument("--stride", type=int, nargs="+", help="sliding window step: S or H W (default 2/3 of crop)")
    g.add_argument(
        "--blend", choices=["uniform", "gaussian"], help="how overlapping windows are averaged (default uniform)"
    )
    g.add_argument(
        "--scales",
        type=float,
        nargs="+",
        help="average over these image scales, e.g. 0.5 0.75 1.0 1.25 1.5 1.75 (default: the run's "
        "inference.scales, 1.0 unless its config says otherwise)",
    )
    g.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        help="also average the horizontally flipped image; --no-flip turns the run's flip off "
        "(default: the run's inference.flip)",
    )
    g.add_argument(
        "--rot90",
        action=argparse.BooleanOptionalAction,
        help="also average the image turned by 90, 180 and 270 degrees; with --flip the 8 symmetries of the square, "
        "for images without an up or a left; --no-rot90 turns the run's off (default: the run's inference.rot90)",
    )
    g.add_argument(
        "--class-weight-correction",
        type=float,
        metavar="TAU",
        help="divide the probabilities by the run's train.class_weights to the power TAU before the argmax: 0 keeps "
        "the weighted model's bias towards rare classes, 1 undoes it (default: the run's "
        "inference.class_weight_correction)",
    )
    g.add_argument(
        "--amp",
        choices=["auto", "none", "bf16", "fp16"],
        default="auto",
        help="precision: auto (default) = the run's training precision where this device computes it natively "
        "(bf16 on CPUs with AVX-512 BF16 or AMX), else fp32; none = fp32 "
        "(on CUDA the weights are held in the half precision too)",
    )
    if not compile:
        return
    g.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the folded model (Inductor, frozen weights): faster, compiles once per input size",
    )


def add_decoding_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("instance decoding (defaults: the run's instances section)")
    g.add_argument("--center-threshold", type=float, help="Panoptic-DeepLab: centres above this heatmap value")
    g.add_argument("--nms-kernel", type=int, help="Panoptic-DeepLab: max-pooling window of the centre NMS")
    g.add_argument("--top-k", type=int, help="Panoptic-DeepLab: at most this many centres per image")
    g.add_argument("--min-size", type=int, help="drop decoded instances with fewer pixels")


def decoding_overrides(args: argparse.Namespace) -> dict | None:
    """The instance decoding flags given, as overrides of the run's ``instances`` section, or ``None``."""
    from ..inference.instance_settings import DECODING_KEYS

    given = {k: getattr(args, k) for k in DECODING_KEYS}
    given = {k: v for k, v in given.items() if v is not None}
    return given or None


def add_crf_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dense CRF (defaults: the run's config.yaml crf section, else DeepLab-v2's)")
    g.add_argument("--crf", action="store_true", help="refine the probabilities with the fully connected CRF")
    for name, (kind, text) in CRF_HELP.items():
        g.add_argument(f"--crf-{name.replace('_', '-')}", type=kind, help=text)


def add_common_options(p: argparse.ArgumentParser, data: bool = True) -> None:
    if data:
        p.add_argument("--data-root", help="folder holding the data sets (default: $PIXELWISE_DATA, then ./data)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def inference_settings(args: argparse.Namespace) -> dict | None:
    """The protocol flags given, as overrides of the run's own protocol (its ``inference`` section), or ``None``."""
    given = {
        "mode": args.mode,
        "crop": args.crop,
        "stride": args.stride,
        "blend": args.blend,
        "scales": args.scales,
        "flip": args.flip,
        "rot90": args.rot90,
        "class_weight_correction": args.class_weight_correction,
    }
    given = {k: v for k, v in given.items() if v is not None}
    return given or None


def crf_overrides(args: argparse.Namespace) -> dict | None:
    """With --crf: the --crf-* flags given, over the run's settings (resolved by the library)."""
    from ..crf import CRFSettings
    from ..errors import ConfigError

    given = {k: getattr(args, f"crf_{k}") for k in CRFSettings.names()}
    if not args.crf and any(v is not None for v in given.values()):
        flags = " ".join(f"--crf-{k.replace('_', '-')}" for k, v in given.items() if v is not None)
        raise ConfigError(f"{flags} given without --crf, which turns the CRF on: add --crf (or drop them)")
    return given if args.crf else None
