"""smp's models registered as pixelwise models, so that a config trains them with pixelwise's own engine
(``model.name: smp_unet_resnet34``): the peers of ``unet_vs_smp.py``, ``peer_same_budget.py`` and
``train_throughput.py``. Random initialisation (no pretrained weights), smp's defaults otherwise."""

from __future__ import annotations

import torch

from pixelwise.models import list_models, register_model


class PadToStride(torch.nn.Module):
    """Pad the input's sides up to the encoder's output stride and crop the scores back, as smp asks of its users
    ("Consider pad your images"): most smp models refuse sides that do not divide by it (CamVid's 360 rows at
    full size, 270 at 0.75). Zeros are the mean image after normalisation."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.stride = model.encoder.output_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.stride, -w % self.stride
        if pad_h or pad_w:
            x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h))
        return self.model(x)[..., :h, :w]


def _smp(arch: str, encoder: str, num_classes: int, in_channels: int, pad: bool = True) -> torch.nn.Module:
    """smp's ``arch`` on a randomly initialised ``encoder``, padded to its stride unless ``pad`` is False."""
    import segmentation_models_pytorch as smp

    model = getattr(smp, arch)(encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes)
    return PadToStride(model) if pad else model


def smp_unet_resnet34(*, num_classes: int, in_channels: int = 3) -> torch.nn.Module:
    """segmentation_models_pytorch.Unet with a randomly initialised ResNet-34 encoder. Not padded: smp's Unet takes
    any size (it resizes its skips), and every earlier peer figure was measured that way."""
    return _smp("Unet", "resnet34", num_classes, in_channels, pad=False)


def smp_deeplabv3plus_mobilenet_v2(*, num_classes: int, in_channels: int = 3) -> torch.nn.Module:
    """segmentation_models_pytorch.DeepLabV3Plus with a randomly initialised MobileNetV2 encoder (output stride 16)."""
    return _smp("DeepLabV3Plus", "mobilenet_v2", num_classes, in_channels)


# Candidates for "smp's best model at the same minutes": the encoders smp users reach for on a small budget (ResNet-18;
# timm's MobileNetV3-Large, pixelwise's CamVid recipe's own backbone) under smp's light decoders.
def smp_unet_resnet18(*, num_classes: int, in_channels: int = 3) -> torch.nn.Module:
    """segmentation_models_pytorch.Unet, randomly initialised ResNet-18 encoder; padded like the other candidates
    (smp's Unet would take any size)."""
    return _smp("Unet", "resnet18", num_classes, in_channels)


def smp_linknet_resnet18(*, num_classes: int, in_channels: int = 3) -> torch.nn.Module:
    """segmentation_models_pytorch.Linknet, randomly initialised ResNet-18 encoder."""
    return _smp("Linknet", "resnet18", num_classes, in_channels)


def smp_fpn_resnet18(*, num_classes: int, in_channels: int = 3) -> torch.nn.Module:
    """segmentation_models_pytorch.FPN, randomly initialised ResNet-18 encoder."""
    return _smp("FPN", "resnet18", num_classes, in_channels)


def smp_fpn_mobilenetv3(*, num_classes: int, in_channels: int = 3) -> torch.nn.Module:
    """segmentation_models_pytorch.FPN, randomly initialised timm MobileNetV3-Large encoder."""
    return _smp("FPN", "tu-mobilenetv3_large_100", num_classes, in_channels)


def smp_deeplabv3plus_mobilenetv3(*, num_classes: int, in_channels: int = 3) -> torch.nn.Module:
    """segmentation_models_pytorch.DeepLabV3Plus (output stride 16), randomly initialised timm MobileNetV3-Large."""
    return _smp("DeepLabV3Plus", "tu-mobilenetv3_large_100", num_classes, in_channels)


PEERS = (
    smp_unet_resnet34,
    smp_deeplabv3plus_mobilenet_v2,
    smp_unet_resnet18,
    smp_linknet_resnet18,
    smp_fpn_resnet18,
    smp_fpn_mobilenetv3,
    smp_deeplabv3plus_mobilenetv3,
)


def scores(evaluation: dict) -> dict:
    """The figures the peer comparisons report, from an ``evaluate_checkpoint`` result."""
    m = evaluation["metrics"]
    # two-class data sets (ISBI 2012): also the challenge's pixel error (1 - the best F-score of "cell")
    challenge = (
        {"challenge_pixel_error": m["challenge_pixel_error"]["pixel_error"]} if m.get("challenge_pixel_error") else {}
    )
    return {
        **challenge,
        "miou": m["miou"],
        "pixel_accuracy": m["pixel_accuracy"],
        "pixel_error": 1 - m["pixel_accuracy"],
        "fwiou": m["fwiou"],
        "mean_f1": m["mean_f1"],
        "iou": dict(zip(evaluation["classes"], m["iou"], strict=True)),
    }


def print_table(runs: dict[str, dict], split: str, iterations: str, digits: int) -> None:
    """A markdown table of ``runs`` (label -> :func:`scores` plus ``iterations`` and ``train_minutes``)."""
    classes = list(next(iter(runs.values()))["iou"])
    challenge = all("challenge_pixel_error" in r for r in runs.values())
    extra = " challenge pixel error |" if challenge else ""
    header = f"| model | iterations | training (min) | {split} mIoU | pixel error |{extra} "
    print("\n" + header + " | ".join(classes) + " |")
    print("|---|---:|---:|---:|---:|" + "---:|" * (len(classes) + challenge))
    for label, r in runs.items():
        cells = f"{r['pixel_error']:.4f} | " + (f"{r['challenge_pixel_error']:.4f} | " if challenge else "")
        print(
            f"| {label} | {r[iterations]} | {r['train_minutes']:.1f} | {100 * r['miou']:.{digits}f} | "
            + cells
            + " | ".join(f"{100 * v:.{digits}f}" for v in r["iou"].values())
            + " |"
        )


def register_smp_peers() -> None:
    """Register the peers (once per process)."""
    for builder in PEERS:
        if builder.__name__ not in list_models():
            register_model(builder)
