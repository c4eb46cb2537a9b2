"""Pictures of predictions: colour masks and overlays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_color: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """``H x W`` class indices -> ``H x W x 3`` uint8 RGB with the data set's palette; indices
    outside the palette (the ignore value) get ``ignore_color``."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:] = ignore_color
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut[mask.astype(np.uint8)]


# Vivid colours (matplotlib's tab10, then its tab20 lights) for overlays of data sets whose palette is grey
VIVID = [
    [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
    [140, 86, 75], [227, 119, 194], [188, 189, 34], [23, 190, 207], [174, 199, 232],
    [255, 187, 120], [152, 223, 138], [255, 152, 150], [197, 176, 213], [196, 156, 148],
]  # fmt: skip


def overlay_palette(palette: Sequence[Sequence[int]]) -> list[list[int]]:
    """The palette to blend over an image: the data set's, unless its colours are all grey (black/white
    membranes, say), which vanish over a grey image at any opacity; then vivid colours, one per class."""
    colours = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    if len(colours) and (colours.max(1) - colours.min(1)).max() > 24:
        return [list(map(int, c)) for c in colours]
    return [VIVID[i % len(VIVID)] for i in range(len(colours))]


def overlay(image: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour mask over an image (``H x W x 1`` or ``H x W x 3`` uint8)."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    out = (1 - alpha) * image.astype(np.float32) + alpha * color.astype(np.float32)
    return out.round().clip(0, 255).astype(np.uint8)


def instance_colors(count: int) -> np.ndarray:
    """``count + 1`` x 3 uint8 colours: black for 0 (no instance), then hues spaced by the golden angle, so
    neighbouring ids (often touching objects) differ and an id keeps its colour between pictures."""
    import colorsys

    hues = (np.arange(count) * 0.618033988749895) % 1.0
    out = np.zeros((count + 1, 3), np.uint8)
    for i, h in enumerate(hues):
        out[i + 1] = np.round(np.asarray(colorsys.hsv_to_rgb(h, 0.85, 1.0)) * 255)
    return out


def instance_contours(instances: np.ndarray) -> np.ndarray:
    """``H x W`` bool: the pixels of an instance with a 4-neighbour of another id (its one-pixel contour)."""
    inst = np.asarray(instances)
    edge = np.zeros(inst.shape, bool)
    diff_y = inst[1:] != inst[:-1]
    diff_x = inst[:, 1:] != inst[:, :-1]
    edge[1:] |= diff_y
    edge[:-1] |= diff_y
    edge[:, 1:] |= diff_x
    edge[:, :-1] |= diff_x
    return edge & (inst > 0)


def instance_overlay(image: np.ndarray, instances: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Each instance in its own colour (:func:`instance_colors`) blended over the image, with a white contour;
    pixels of no instance keep the image."""
    inst = np.asarray(instances).astype(np.int64)
    colors = instance_colors(int(inst.max()) if inst.size else 0)[inst]
    base = overlay(image, np.zeros_like(colors), 0.0)  # the image as H x W x 3 uint8
    out = np.where((inst > 0)[..., None], overlay(base, colors, alpha), base)
    out[instance_contours(inst)] = 255
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    fig.clf()
    _pyplot().close(fig)
    return path


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Row-normalised confusion matrix (each ground-truth row sums to 1) as a PNG."""
    plt = _pyplot()
    m = np.asarray(matrix, dtype=np.float64)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(max(4.8, 1.8 + 0.55 * n), max(4.0, 1.4 + 0.5 * n)), dpi=110)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=60, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    for i in range(n):
        for j in range(n):
            if norm[i, j] >= 0.005:
                ax.text(
                    j,
                    i,
                    f"{100 * norm[i, j]:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_title(title or "confusion matrix (% of each ground-truth class)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_per_class(values: Sequence[float], class_names: Sequence[str], path: str | Path, label: str = "IoU") -> Path:
    """Horizontal bars of a per-class score (NaN shown as missing)."""
    plt = _pyplot()
    v = np.asarray([np.nan if x is None else x for x in values], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 0.8 + 0.35 * len(class_names)), dpi=110)
    ax.barh(range(len(v)), np.nan_to_num(v * 100), color="#4878a8")
    ax.set_yticks(range(len(v)), class_names)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"{label} (%)")
    for i, x in enumerate(v):
        ax.text(
            (0 if np.isnan(x) else x * 100) + 1, i, "n/a" if np.isnan(x) else f"{100 * x:.1f}", va="center", fontsize=8
        )
    return _save(fig, path)


def save_heatmap(values: np.ndarray, path: str | Path, title: str = "") -> Path:
    """A 2-D array (e.g. a U-Net weight map) as a colour-mapped PNG with a colour bar."""
    plt = _pyplot()
    h, w = values.shape
    fig, ax = plt.subplots(figsize=(2 + 5 * w / max(h, w), 5 * h / max(h, w)), dpi=110)
    im = ax.imshow(values, cmap="magma")
    ax.set_axis_off()
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)
