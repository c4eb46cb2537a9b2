"""Pictures of predictions: colour masks and overlays."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import DataError
from .fileio import atomic_write


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_color: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """``H x W`` class indices -> ``H x W x 3`` uint8 RGB with the data set's palette; indices
    outside the palette (the ignore value) get ``ignore_color``."""
    lut = np.zeros((len(palette) + 1, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    lut[-1] = ignore_color
    m = np.asarray(mask).astype(np.int64)
    return lut[np.where((m >= 0) & (m < len(palette)), m, len(palette))]  # no wrap of ids >= 256 into classes


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
    more = instance_colors(max(0, len(colours) - len(VIVID)))[1:].tolist()  # golden-angle hues past tab20's lights
    return [VIVID[i] if i < len(VIVID) else more[i - len(VIVID)] for i in range(len(colours))]


def _legend_font(image_font):
    """matplotlib's DejaVu Sans (a dependency): Pillow's built-in font has ASCII letters only (the ß of "Straße"
    was a box)."""
    import os

    import matplotlib

    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
    try:
        return image_font.truetype(path, 13)
    except OSError:  # a matplotlib without its bundled fonts
        return image_font.load_default(size=14)


def plain_text(name: str) -> str:
    """``name`` as matplotlib draws it literally: a ``$`` would start mathtext (``$\\nope$`` stopped the
    picture with a parse error)."""
    return name.replace("$", r"\$")


def legend(classes: Sequence[str], palette: Sequence[Sequence[int]]) -> np.ndarray:
    """An RGB picture naming each class beside its colour in ``color/`` masks and in overlays (they differ where
    the palette is grey: :func:`overlay_palette`)."""
    from PIL import Image, ImageDraw, ImageFont

    font = _legend_font(ImageFont)
    vivid = overlay_palette(palette)
    row, swatch, text_x = 24, 18, 130
    names = [f"{i}  {name}" for i, name in enumerate(classes)]
    width = text_x + max((int(font.getlength(n)) for n in names), default=40) + 12
    img = Image.new("RGB", (max(width, 200), row * (len(classes) + 1) + 8), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for x, title in ((8, "mask"), (64, "overlay"), (text_x, "class")):
        draw.text((x, 6), title, fill=(0, 0, 0), font=font)
    for i, (name, plain, bright) in enumerate(zip(names, palette, vivid, strict=True)):
        y = row * (i + 1) + 8
        for x, colour in ((14, plain), (76, bright)):
            draw.rectangle([x, y, x + swatch, y + swatch], fill=tuple(int(c) for c in colour), outline=(120, 120, 120))
        draw.text((text_x, y + 1), name, fill=(0, 0, 0), font=font)
    return np.asarray(img)


def as_rgb8(image: np.ndarray) -> np.ndarray:
    """An image as ``H x W x 3`` uint8 for pictures: grey repeated, alpha dropped, float in [0, 1] and 16-bit
    integers (0..65535) scaled to 0..255."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] in (2, 4):  # grey + alpha, RGBA
        image = image[..., :-1]
    if image.dtype.kind == "f":
        image = np.clip(image.astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = (np.clip(image.astype(np.int64), 0, 65535) // 257).astype(np.uint8)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image


def overlay(image: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour mask over an image (grey, RGB or RGBA; uint8, 16-bit, or float in [0, 1]: :func:`as_rgb8`)."""
    image = as_rgb8(image)
    out = (1 - alpha) * image.astype(np.float32) + alpha * color.astype(np.float32)
    return out.round().clip(0, 255).astype(np.uint8)


def instance_colors(count: int) -> np.ndarray:
    """``count + 1`` x 3 uint8 colours: black for 0 (no instance), then hues spaced by the golden angle, so
    neighbouring ids (often touching objects) differ and an id keeps its colour between pictures."""
    return np.concatenate([np.zeros((1, 3), np.uint8), _golden_hues(np.arange(count))])


def _golden_hues(ids: np.ndarray) -> np.ndarray:
    """The colour of each 0-based id (HSV with saturation 0.85 and value 1, hue ``id x`` the golden ratio), as
    ``colorsys.hsv_to_rgb`` gives it, for many ids at once."""
    h = (np.asarray(ids, np.float64) * 0.618033988749895) % 1.0
    s, v = 0.85, 1.0
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    rgb = np.zeros(h.shape + (3,))
    for k, (r, g, b) in enumerate(table):
        sel = i == k
        for c, value in enumerate((r, g, b)):
            rgb[sel, c] = value[sel] if isinstance(value, np.ndarray) else value
    return np.round(rgb * 255).astype(np.uint8)


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
    inst = np.maximum(np.asarray(instances).astype(np.int64), 0)
    ids, inverse = np.unique(inst, return_inverse=True)  # colours for the ids present, not for 0..max id
    palette = _golden_hues(ids - 1)
    palette[ids == 0] = 0
    colors = palette[inverse.reshape(inst.shape)]
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
    """``fig`` into ``path`` whole or not at all, in the format its suffix names; the figure is closed."""
    path = Path(path)
    try:
        kind = path.suffix.lower().lstrip(".")
        kinds = fig.canvas.get_supported_filetypes()
        if kind not in kinds:
            raise DataError(f"{path}: a picture is written as one of {', '.join('.' + k for k in sorted(kinds))}")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format=kind)
        atomic_write(path, lambda f: f.write(buffer.getvalue()), durable=False)
    finally:
        fig.clf()
        _pyplot().close(fig)
    return path


NO_PIXELS_GREY = "#d9d9d9"  # a confusion matrix's row of a class without ground-truth pixels


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Row-normalised confusion matrix (each ground-truth row sums to 1) as a PNG; the row of a class without
    ground-truth pixels is grey and says so (not 0 % everywhere)."""
    plt = _pyplot()
    m = np.asarray(matrix, dtype=np.float64)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.full_like(m, np.nan), where=rows > 0)
    n = len(class_names)
    side = min(n, 40)  # beyond 40 classes the picture stops growing (and cells lose their numbers)
    fig, ax = plt.subplots(figsize=(max(4.8, 1.8 + 0.55 * side), max(4.0, 1.4 + 0.5 * side)), dpi=110)
    cmap = plt.get_cmap("Blues").with_extremes(bad=NO_PIXELS_GREY)
    im = ax.imshow(np.ma.masked_invalid(norm), cmap=cmap, vmin=0, vmax=1)
    names = [plain_text(name) for name in class_names]
    ax.set_xticks(range(n), names, rotation=60, ha="right")
    empty = rows[:, 0] == 0
    ax.set_yticks(range(n), [f"{name} (no pixels)" if e else name for name, e in zip(names, empty, strict=True)])
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if n > 30:  # the numbers would not fit their cells
        ax.tick_params(labelsize=max(3, int(7 * 30 / n)))
    else:
        for i, j in zip(*np.nonzero(norm >= 0.005), strict=True):
            value = norm[i, j]
            color = "white" if value > 0.5 else "black"
            ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=7, color=color)
    ax.set_title(title or "confusion matrix (% of each ground-truth class)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_per_class(values: Sequence[float], class_names: Sequence[str], path: str | Path, label: str = "IoU") -> Path:
    """Horizontal bars of a per-class score (NaN shown as missing)."""
    plt = _pyplot()
    v = np.asarray([np.nan if x is None else x for x in values], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 0.8 + 0.35 * len(class_names)), dpi=110)
    ax.barh(range(len(v)), np.nan_to_num(v * 100), color="#4878a8")
    ax.set_yticks(range(len(v)), [plain_text(name) for name in class_names])
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
