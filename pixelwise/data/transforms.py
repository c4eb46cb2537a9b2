"""Joint image/mask transforms built on ``torchvision.transforms.v2`` with ``tv_tensors.Mask``.

Masks are only ever resampled with nearest neighbour (``NEAREST_EXACT``, which samples pixel
centres like the bilinear image resize does) and padded with the ignore value. Instance maps
(:class:`InstanceMap`, a ``tv_tensors.Mask``) move exactly as masks do, ids preserved, padded with
:data:`OUTSIDE` (-1: past the image, which the instance targets tell from background); the mask is the ignore
value there.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as tF
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

FLOAT32_EXACT = 2**24  # every integer below is exact in float32


OUTSIDE = -1
"""The id an instance map gets where a crop pads it or a warp reaches past the image: outside the image, not
background (0), so that an object cut there gets no boundary, as at the image's own edge (a void band drawn
round an object, 0 in its map, still gives one)."""


class InstanceMap(tv_tensors.Mask):
    """An ``H x W`` map of instance ids (0 = none): resampled as a mask, filled with :data:`OUTSIDE`."""


def _spatial_size(flat_inputs: list[Any]) -> tuple[int, int]:
    for inpt in flat_inputs:
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            h, w = F.get_size(inpt)
            return h, w
    raise TypeError("expected a tv_tensors.Image or tv_tensors.Mask among the inputs")


def _interpolation(inpt: Any) -> InterpolationMode:
    return InterpolationMode.NEAREST_EXACT if isinstance(inpt, tv_tensors.Mask) else InterpolationMode.BILINEAR


def shift_image(image: torch.Tensor, shift: Sequence[float]) -> torch.Tensor:
    """``image`` (``... x H x W``) moved by ``shift = (dy, dx)`` pixels, fractions included: the content at
    ``(y, x)`` lands at ``(y + dy, x + dx)``, linearly interpolated, the edge rows and columns repeated where
    the image moves away from them. Integer images are rounded back to their dtype."""
    out = image.float()
    for axis, d in ((-2, float(shift[0])), (-1, float(shift[1]))):
        if d == 0:
            continue
        n = out.shape[axis]
        source = torch.arange(n, dtype=torch.float64, device=out.device) - d  # where each output pixel reads
        low = source.floor()
        frac = (source - low).to(out.dtype)
        low = low.long()
        first = out.index_select(axis, low.clamp(0, n - 1))
        second = out.index_select(axis, (low + 1).clamp(0, n - 1))
        frac = frac.view(-1, 1) if axis == -2 else frac
        out = first + frac * (second - first)
    if image.dtype.is_floating_point:
        return out.to(image.dtype)
    info = torch.iinfo(image.dtype)
    return out.round().clamp(info.min, info.max).to(image.dtype)


class ImageShift(v2.Transform):
    """Move the image, not its mask, by a fixed ``(dy, dx)`` pixels (:func:`shift_image`): for data sets whose
    masks were drawn offset from their images, so that the pair lines up before any flip or turn (a flip
    would otherwise mirror the offset, and the network learns neither)."""

    def __init__(self, shift: Sequence[float]) -> None:
        super().__init__()
        self.shift = (float(shift[0]), float(shift[1]))

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image):
            return inpt  # masks and instance maps stay where they were drawn
        return tv_tensors.wrap(shift_image(inpt.as_subclass(torch.Tensor), self.shift), like=inpt)


class RandomScale(v2.Transform):
    """Resize by one factor drawn uniformly from ``scale_range`` (aspect ratio kept), as DeepLab's
    random scale augmentation (0.5-2.0)."""

    def __init__(self, scale_range: Sequence[float] = (0.5, 2.0)) -> None:
        super().__init__()
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _spatial_size(flat_inputs)
        lo, hi = self.scale_range
        s = lo + (hi - lo) * torch.rand(()).item()
        # at least 2 pixels a side (or the side's own 1): torch's antialiased uint8 resize to 1x1 fails an
        # internal assertion (UpSampleKernelAVXAntialias.h), reachable with tiny images or scale_range [0.01, 0.02]
        return {"size": [max(min(2, h), round(h * s)), max(min(2, w), round(w * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            # nearest-exact here, not through F.resize: torchvision before 0.28 resized masks with legacy
            # NEAREST whatever it was asked (pytorch/vision#9188), off the image's pixel centres by up to a pixel
            x = inpt.as_subclass(torch.Tensor)
            flat = x.reshape(-1, 1, *x.shape[-2:])
            out = tF.interpolate(flat.double(), size=params["size"], mode="nearest-exact")  # ids exact in float64
            return tv_tensors.wrap(out.to(x.dtype).reshape(*x.shape[:-2], *params["size"]), like=inpt)
        return self._call_kernel(F.resize, inpt, params["size"], interpolation=_interpolation(inpt), antialias=True)


class RandomRot90(v2.Transform):
    """Turn image, mask and instance map together by 0, 90, 180 or 270 degrees, each equally likely: with a
    flip, all 8 symmetries of the square, for data with no up or left (EM sections, microscopy, aerial
    images). Runs before the crop, so non-square images and crops keep their crop size."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"turns": int(torch.randint(4, ()).item())}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not params["turns"]:
            return inpt
        if not isinstance(inpt, torch.Tensor) or isinstance(inpt, tv_tensors.BoundingBoxes):
            raise TypeError(f"RandomRot90 turns image, mask and instance-map tensors, not {type(inpt).__name__}")
        turned = torch.rot90(inpt.as_subclass(torch.Tensor), params["turns"], dims=(-2, -1)).contiguous()
        return tv_tensors.wrap(turned, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else turned


class ElasticDeformation(v2.Transform):
    """The U-Net paper's elastic deformation (Ronneberger et al. 2015, sec. 3.1): random displacement
    vectors on a coarse ``grid x grid`` grid, drawn from a Gaussian with ``sigma`` pixels standard
    deviation, interpolated bicubically to a per-pixel displacement field. Applied with probability
    ``p``; images are resampled bilinearly, masks by nearest neighbour, outside pixels filled with
    ``fill`` (image) and ``mask_fill`` (mask)."""

    def __init__(
        self, sigma: float = 10.0, grid: int = 3, p: float = 1.0, fill: float = 0, mask_fill: int = 255
    ) -> None:
        super().__init__()
        self.sigma, self.grid, self.p = float(sigma), int(grid), float(p)
        self.fill, self.mask_fill = fill, mask_fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if torch.rand(()) >= self.p:
            return {"displacement": None}
        h, w = _spatial_size(flat_inputs)
        coarse = torch.randn(1, 2, self.grid, self.grid) * self.sigma  # pixels, (dx, dy)
        dense = tF.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
        # F.elastic takes displacements in normalised [-1, 1] grid units
        dense = dense * torch.tensor([2.0 / w, 2.0 / h]).view(1, 2, 1, 1)
        return {"displacement": dense.permute(0, 2, 3, 1)}  # 1 x H x W x 2

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["displacement"] is None:
            return inpt
        plain = inpt.as_subclass(torch.Tensor)
        if isinstance(inpt, InstanceMap) and plain.numel() and int(plain.max()) >= FLOAT32_EXACT:
            # torchvision resamples through float32, exact only below 2^24: ids above would merge; warp their ranks
            # (0 among the values, so that rank 0 is id 0: the background and the fill)
            ids, ranks = torch.unique(torch.cat([plain.reshape(-1), plain.new_zeros(1)]), return_inverse=True)
            warped = self.transform(InstanceMap(ranks[:-1].reshape(plain.shape)), params).as_subclass(torch.Tensor)
            return InstanceMap(torch.where(warped < 0, OUTSIDE, ids[warped.clamp(min=0)]))
        if isinstance(inpt, InstanceMap):
            fill = OUTSIDE
        else:
            fill = self.mask_fill if isinstance(inpt, tv_tensors.Mask) else self.fill
        return self._call_kernel(
            F.elastic, inpt, displacement=params["displacement"], interpolation=_interpolation(inpt), fill=fill
        )


class JointTransform:
    """Applies a v2 pipeline to a ``(uint8 C x H x W image, H x W mask)`` pair, or a triple with an
    ``H x W`` instance map, and returns plain tensors (``float32`` normalised image, mask[, instances])."""

    def __init__(self, pipeline: v2.Transform) -> None:
        self.pipeline = pipeline

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, instances: torch.Tensor | None = None) -> tuple:
        if instances is None:
            image, mask = self.pipeline(tv_tensors.Image(image), tv_tensors.Mask(mask))
            return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
        out = self.pipeline(tv_tensors.Image(image), tv_tensors.Mask(mask), InstanceMap(instances))
        return tuple(t.as_subclass(torch.Tensor) for t in out)

    def __repr__(self) -> str:
        return f"JointTransform({self.pipeline})"


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))


def build_transforms(
    *,
    train: bool,
    mean: Sequence[float],
    std: Sequence[float],
    ignore_index: int = 255,
    crop_size: int | Sequence[int] | None = None,
    scale_range: Sequence[float] | None = (0.5, 2.0),
    hflip: bool = True,
    vflip: bool = False,
    rot90: bool = False,
    color_jitter: float = 0.0,
    elastic_p: float = 0.0,
    elastic_sigma: float = 10.0,
    elastic_grid: int = 3,
    image_shift: Sequence[float] | None = None,
) -> JointTransform:
    """Training (random scale, quarter turns, padded random crop, flips, elastic, colour jitter) or evaluation
    (normalisation only) pipeline. Order: image shift -> scale -> turn -> crop -> flips -> elastic -> jitter ->
    normalise; the elastic warp runs on the crop, not on the up-to-2x scaled full image, to stay cheap.
    ``image_shift`` (``data.image_shift``) applies to training and evaluation alike."""
    steps: list[v2.Transform] = []
    if image_shift is not None and any(image_shift):
        steps.append(ImageShift(image_shift))
    if train:
        if scale_range is not None:
            steps.append(RandomScale(scale_range))
        if rot90:
            steps.append(RandomRot90())
        if crop_size is not None:
            steps.append(
                v2.RandomCrop(
                    _pair(crop_size),
                    pad_if_needed=True,
                    fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index, InstanceMap: OUTSIDE},
                )
            )
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
        if vflip:
            steps.append(v2.RandomVerticalFlip())
        if elastic_p > 0:
            steps.append(
                ElasticDeformation(sigma=elastic_sigma, grid=elastic_grid, p=elastic_p, mask_fill=ignore_index)
            )
        if color_jitter > 0:
            # saturation/hue need 3 channels; brightness/contrast work on grayscale too
            colour = {"saturation": color_jitter} if len(mean) == 3 else {}
            steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, **colour))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return JointTransform(v2.Compose(steps))


# The data-config keys that reach build_transforms: its keyword arguments, less those a run fills in itself.
_RUN_FILLED = ("train", "mean", "std", "ignore_index")
AUGMENTATION_KEYS = tuple(name for name in inspect.signature(build_transforms).parameters if name not in _RUN_FILLED)
