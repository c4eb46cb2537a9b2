"""The one home of image, mask and instance-map reading.

Images (:func:`read_image`) come back ``H x W x C`` (C = 3 for ``"RGB"``, 1 for ``"L"``):

- 8-bit images (grey, RGB, palette, bilevel, CMYK...) as uint8, unchanged. RGBA / LA: the alpha channel is
  dropped (not composited).
- 16-bit grey (PNG or TIFF) and 32-bit integer images as float32 in [0, 1]: value / 65535, or
  ``(value - low) / (high - low)`` with a data set's ``"image_range": [low, high]`` (clipped to [0, 1]);
  an integer image with values outside 0..65535 and no image_range is a DataError.
- float TIFFs (mode ``F``) as float32 as they are, which must be in [0, 1] (else a DataError pointing
  to ``image_range``); NaN or infinite values are a DataError.
- 16-bit colour and grey+alpha PNGs as float32 in [0, 1] likewise (through torchvision's PNG decoder; alpha
  dropped). Other 16-bit colour images (TIFF) are read at 8 bits per channel: Pillow has no 16-bit colour mode
  (logged once).
- an EXIF orientation is applied (as ``PIL.ImageOps.exif_transpose``), so sizes are the oriented ones.
- a multi-page file (TIFF stack, animated PNG/WebP) is a DataError; :func:`read_image_stack` reads every
  page. A JPEG's MPO extra pictures (previews, depth maps) are not pages: the first picture is the image.

:func:`image_to_tensor` turns what :func:`read_image` returns into the model's normalised input.

Masks (:func:`read_mask`) are single-channel 8-bit (mode ``L``, or ``P`` for palette indices), mapped
through the data set's ``value_map``; :func:`mask_histogram` + :func:`check_mask_values` are the per-mask
label check (one ``bincount``) that loading and the data check share.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageSequence, UnidentifiedImageError
from torchvision.transforms import v2

from ..errors import DataError, first_line
from ..fileio import atomic_write
from .info import DatasetInfo

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".tif", ".tiff", ".bmp")
MASK_EXTENSION = ".png"
# fine for images; labels and instance ids must be stored lossless
LOSSY_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif")
MOSTLY_IGNORE = 0.5
"""A mask is "mostly ignore" when more than this fraction of its pixels is the ignore value."""

_GREY_8BIT = ("1", "L", "LA", "La")
_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_warned_16bit_colour = False


def orient_array(array: np.ndarray, orientation: int) -> np.ndarray:
    """``array`` (a mask or an id map of a stored image) turned as :func:`read_image` turns an image with this
    EXIF orientation (PIL's transposes on a 32-bit integer image, so that ids survive)."""
    method = _TRANSPOSE.get(orientation)
    if method is None:
        return array
    return np.array(Image.fromarray(array.astype(np.int32)).transpose(method)).astype(array.dtype)


def multipage_message(path: Path, pages: int) -> str:
    """The DataError message for a multi-page image where one image is expected."""
    return (
        f"image {path} has {pages} pages; split the stack into one file per slice, "
        "or predict it with pixelwise predict, which writes a mask stack"
    )


MAX_PIXELS_VARIABLE = "PIXELWISE_MAX_IMAGE_PIXELS"


_LIMIT_LOCK = threading.Lock()


def _pixel_limit() -> int | None:
    """Pillow's limit against decompression bombs (as the process has it), or ``$PIXELWISE_MAX_IMAGE_PIXELS`` for
    files a user trusts (aerial and slide images are often larger)."""
    value = os.environ.get(MAX_PIXELS_VARIABLE)
    if not value:
        return Image.MAX_IMAGE_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise DataError(f"{MAX_PIXELS_VARIABLE}={value!r}: give a whole number of pixels (e.g. 400000000)")
    return limit


def open_image(path: Path | IO[bytes], kind: str = "image", name: str | os.PathLike | None = None) -> Image.Image:
    """``path`` (a file or bytes) opened by Pillow with the pixel limit of :func:`_pixel_limit`
    (``$PIXELWISE_MAX_IMAGE_PIXELS``); a DataError naming it as ``kind`` ``name`` (default ``path``) when it is
    not an image or too large."""
    name = path if name is None else name
    # Pillow checks its process-wide limit as it opens a file: set and put back under a lock (the data check
    # opens files from several threads, and one thread's restore undid another's raised limit)
    with _LIMIT_LOCK:
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, _pixel_limit()
        try:
            return _open_file(path, kind, name)
        finally:
            Image.MAX_IMAGE_PIXELS = limit  # what the process had set (None: no limit) stays


def _open_file(path: Path, kind: str, name: str | os.PathLike) -> Image.Image:
    try:
        return Image.open(path)
    except Image.DecompressionBombError as e:
        raise DataError(
            f"cannot read {kind} {name}: {str(e).rstrip('.')}; if you trust the file, set {MAX_PIXELS_VARIABLE} to "
            "its pixel count or more"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, TypeError, SyntaxError) as e:
        # TypeError / SyntaxError: Pillow's word for some malformed headers (a TIFF without its dimensions)
        raise DataError(f"cannot read {kind} {name}: {e}") from None


def check_pixels(path: Path, name: str | os.PathLike | None = None) -> None:
    """Decode every pixel of an image file (its first page), as training will: a truncated file's header reads.
    DataError naming ``name`` (default ``path``); the pixel limit as :func:`read_image`'s."""
    name = path if name is None else name
    with open_image(Path(path), name=name) as im:
        try:
            im.load()
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"cannot read image {name}: {e}") from None


def page_count(im: Image.Image, name: str | os.PathLike | None = None) -> int:
    """Pages of an opened image (a TIFF stack's slices, an animation's frames); a JPEG's MPO extras are not pages.
    ``name`` names the image in the DataError of a broken page (default: its file name)."""
    return _pages(im, name)


def decode_image(
    im: Image.Image, path: Path, mode: str | None = "RGB", image_range: tuple[float, float] | None = None
) -> np.ndarray:
    """An opened one-page image decoded by :func:`read_image`'s rules (bit depths, EXIF orientation, channels);
    for images that come as bytes, e.g. an upload, with ``path`` naming them in messages."""
    return _decode(im, path, mode, image_range)


def has_several_pages(im: Image.Image, name: str | os.PathLike | None = None) -> bool:
    """Whether an opened image has a second page, found by seeking to it: :func:`page_count` walks every page, and
    40,000 tiny TIFF pages (4 MB) take seconds. A JPEG's MPO extras are not pages. The first page stays current.
    ``name`` names the image in the DataError of a broken second page (default: its file name)."""
    if _pictures_not_pages(im):
        return False
    try:
        im.seek(1)
    except EOFError:  # (the first page stays the current one)
        return False
    except (OSError, ValueError, TypeError, SyntaxError) as e:  # a broken second page
        raise DataError(f"cannot read image {name or getattr(im, 'filename', '')}: {e}") from None
    im.seek(0)
    return True


def _pictures_not_pages(im: Image.Image) -> bool:
    """A JPEG with extra pictures (an MPO: previews, depth maps): the first one is the image, the rest no pages."""
    return im.format == "MPO"


def _pages(im: Image.Image, name: str | os.PathLike | None = None) -> int:
    if _pictures_not_pages(im):
        return 1
    try:
        return int(getattr(im, "n_frames", 1) or 1)
    except (EOFError, OSError, ValueError, TypeError, SyntaxError) as e:  # a broken page further on (TIFF)
        raise DataError(f"cannot read image {name or getattr(im, 'filename', '')}: {e}") from None


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1 = none), from what the header holds (never decodes the pixels)."""
    try:
        if im.format == "TIFF":
            return _tiff_orientation(im)
        return int(Image.Image.getexif(im).get(_ORIENTATION, 1) or 1)
    except Exception:  # a malformed EXIF block is not worth refusing the image for
        return 1


def _tiff_orientation(im: Image.Image) -> int:
    """The orientation tag of a TIFF's current page, taken off the page: recent Pillow turns a TIFF by it as it
    loads (and reports the turned size), which pixelwise would then turn again, and it scrambles uncompressed pages
    turned by 5-8. Without the tag Pillow keeps the stored pixels, which pixelwise turns as any other format's."""
    remembered: dict[int, int] = im.__dict__.setdefault("_pixelwise_orientation", {})
    tag = im.tag_v2.get(_ORIENTATION)  # type: ignore[attr-defined]
    if tag is None:  # none, or taken off before (a seek back to the page puts it back)
        return remembered.get(im.tell(), 1)
    orientation = int(tag or 1)
    if orientation != 1:
        del im.tag_v2[_ORIENTATION]  # type: ignore[attr-defined]
        im.getexif().pop(_ORIENTATION, None)
        stored_size = getattr(im, "_tile_size", None)  # Pillow 11+ reports the turned size and keeps the stored one
        if stored_size is not None:
            im._size = tuple(stored_size)
    remembered[im.tell()] = orientation
    return orientation


def count_pages(path: Path) -> int:
    """The number of pages (frames) of an image file; DataError if unreadable."""
    with open_image(Path(path)) as im:
        return _pages(im)


def probe_image(path: Path) -> tuple[tuple[int, int], int, int]:
    """``((width, height) after the EXIF orientation, pages, orientation)`` from the header alone."""
    with open_image(Path(path)) as im:
        orientation = _orientation(im)  # first: it may restore a TIFF's stored size
        w, h = im.size
        return ((h, w) if orientation in (5, 6, 7, 8) else (w, h)), _pages(im), orientation


def mask_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of a mask (or instance map) from its header; DataError if unreadable."""
    with open_image(Path(path), "mask") as im:
        return im.size


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image as :func:`read_image` returns it (EXIF orientation applied)."""
    return probe_image(path)[0]


def _channels(arr: np.ndarray, mode: str | None) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[..., None]
    if mode == "RGB" and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return arr


def _png16_colour(im: Image.Image, path: Path, orientation: int) -> np.ndarray | None:
    """The opened 16-bit colour or grey+alpha PNG ``im`` at its full depth (Pillow decodes such files to 8 bits),
    through torchvision's libpng decoder: ``H x W x C`` uint16 (C = 3, or 1 for grey), alpha dropped, turned by
    the EXIF ``orientation``; None where this torchvision has no PNG decoder (deprecated in 0.29 for TorchCodec)
    or the image's bytes are out of reach."""
    try:
        from torchvision.io import ImageReadMode, decode_png
    except ImportError:
        return None
    fp = getattr(im, "fp", None)  # the file or the bytes it was opened from (an upload has no path)
    if fp is None:
        return None
    try:
        fp.seek(0)
        data = torch.frombuffer(bytearray(fp.read()), dtype=torch.uint8)
    except (OSError, ValueError):  # closed, or not seekable
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            arr = decode_png(data, ImageReadMode.UNCHANGED).permute(1, 2, 0).numpy()
    except RuntimeError as e:
        # torchvision prefixes its message with the C++ function and source line: "operator(), .../decode_png.cpp:79, "
        reason = re.sub(r"^[\w:()]+, \S+\.cpp:\d+, ", "", first_line(e))
        raise DataError(f"cannot read image {path}: {reason}") from None
    if arr.shape[2] in (2, 4):
        arr = arr[..., :-1]  # alpha dropped, as for 8-bit images
    return np.stack([orient_array(arr[..., c], orientation) for c in range(arr.shape[2])], axis=2)


def _unsigned_32(im: Image.Image) -> bool:
    """A TIFF of unsigned 32-bit samples (SampleFormat 1, BitsPerSample 32), which Pillow reads as mode "I"."""
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        return False
    first = lambda v: v[0] if isinstance(v, tuple) and v else v  # noqa: E731
    return first(tags.get(339, 1)) == 1 and first(tags.get(258)) == 32


def _high_depth(im: Image.Image | np.ndarray, path: Path, image_range: tuple[float, float] | None) -> np.ndarray:
    raw = np.asarray(im)
    lo_v, hi_v = float(raw.min()), float(raw.max())
    if not (np.isfinite(lo_v) and np.isfinite(hi_v)):
        raise DataError(f"image {path} holds NaN or infinite values")
    if image_range is not None:
        lo, hi = image_range
        # offset in float64 first: 32-bit values near 1e9 differ by less than float32's step there
        arr = ((raw.astype(np.float64) - lo) * (1.0 / (hi - lo))).astype(np.float32)
        return np.clip(arr, 0.0, 1.0, out=arr)
    arr = raw.astype(np.float32)
    if getattr(im, "mode", None) == "F":
        if lo_v < 0.0 or hi_v > 1.0:
            raise DataError(
                f"float image {path} holds values {lo_v:g}..{hi_v:g}, outside [0, 1] (float images are read as "
                'they are): set "image_range": [low, high] (the range of the images\' values) in classes.json'
            )
        return arr
    if lo_v < 0.0 or hi_v > 65535.0:
        raise DataError(
            f"{im.mode!r} image {path} holds values {lo_v:g}..{hi_v:g}, outside 0..65535: "
            'set "image_range": [low, high] (the range of the images\' values) in classes.json'
        )
    arr *= 1.0 / 65535.0
    return arr


def _decode(im: Image.Image, path: Path, mode: str | None, image_range: tuple[float, float] | None) -> np.ndarray:
    global _warned_16bit_colour
    if mode not in ("RGB", "L", None):
        raise ValueError(f"mode must be 'RGB', 'L' or None, not {mode!r}")
    # the raw mode of the undecoded tiles tells a 16-bit colour file (Pillow decodes it to 8 bits; a 16-bit grey
    # and alpha PNG comes as RGBA)
    colour16 = (
        im.mode in ("RGB", "RGBA")
        and im.format in ("PNG", "TIFF")  # a BMP's "BGR;16" is 5-6-5 bits per pixel, not 16 per channel
        and any(len(t) > 3 and ";16" in str(t[3]) for t in getattr(im, "tile", None) or [])
    )
    # the orientation from the header, as probe_image reads it: a PNG's eXIf chunk placed after the pixels only
    # appears once they are loaded, and the image would then be turned where the size check and masks are not
    orientation = _orientation(im)
    one_png = im.format == "PNG" and _pages(im) == 1  # (no seek: a stack's page k is being decoded)
    arr = _png16_colour(im, path, orientation) if colour16 and one_png else None
    if arr is not None:
        if mode == "L" and arr.shape[2] == 3:  # Pillow's convert("L") weights (ITU-R 601-2 luma)
            arr = arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return _channels(_high_depth(arr, path, image_range), mode)
    try:
        im.load()
        if im.mode == "I" and _unsigned_32(im) and int(np.asarray(im).min()) < 0:
            raise DataError(
                f"image {path} is an unsigned 32-bit TIFF, which Pillow reads as signed: its values of 2^31 and "
                "more come out negative; save it as float32 or 16-bit"
            )
        method = _TRANSPOSE.get(orientation)
        if method is not None:
            im = im.transpose(method)
        if im.mode in _INT_MODES or im.mode == "F":
            return _channels(_high_depth(im, path, image_range), mode)
        if colour16 and not _warned_16bit_colour:
            _warned_16bit_colour = True
            log.warning(
                "%s has 16 bits per colour channel: read at 8 bits (Pillow has no 16-bit colour mode; 16-bit colour "
                "PNGs are read at full depth)",
                path,
            )
        target = mode or ("L" if im.mode in _GREY_8BIT else "RGB")
        if im.mode != target:
            im = im.convert(target)  # RGBA/LA -> RGB/L drops alpha; P maps the palette
        return _channels(np.array(im), mode)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, TypeError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def read_image(path: Path, mode: str | None = "RGB", *, image_range: tuple[float, float] | None = None) -> np.ndarray:
    """``H x W x C`` array: uint8 for 8-bit images, float32 in [0, 1] for 16-bit/integer/float ones.

    ``mode``: ``"RGB"`` (C = 3; grey is repeated), ``"L"`` (C = 1) or None (C as stored: 1 for grey, else 3).
    ``image_range``: the data set's ``[low, high]`` for non-8-bit images (see the module docstring).
    DataError if unreadable or multi-page (:func:`read_image_stack` reads stacks)."""
    path = Path(path)
    with open_image(path) as im:
        pages = _pages(im)
        if pages > 1:
            raise DataError(multipage_message(path, pages))
        return _decode(im, path, mode, image_range)


def read_image_stack(
    path: Path, mode: str | None = "RGB", *, image_range: tuple[float, float] | None = None
) -> list[np.ndarray]:
    """Every page of a (multi-page) image, each as :func:`read_image` returns one; one item for a single image."""
    path = Path(path)
    with open_image(path) as im:
        if _pages(im) == 1:
            return [_decode(im, path, mode, image_range)]
        try:
            return [_decode(page, path, mode, image_range) for page in ImageSequence.Iterator(im)]
        except (EOFError, OSError) as e:
            raise DataError(f"cannot read image {path}: {e}") from None


def image_to_tensor(
    image: np.ndarray,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The model's input ``C x H x W`` float32 tensor from an ``H x W x C`` image of :func:`read_image`:
    uint8 / 255 or float as is, then ``(x - mean) / std`` per channel (what the eval transforms do).
    With ``device`` the raw image is moved first (uint8 travels 4x smaller)."""
    if not image.flags.writeable:  # torch.from_numpy warns on read-only arrays (e.g. from np.asarray(PIL))
        image = image.copy()
    x = torch.from_numpy(np.ascontiguousarray(image))
    if device is not None:
        x = x.to(device)
    x = x.permute(2, 0, 1)
    if x.dtype == torch.uint8:  # as the eval transforms' v2.ToDtype: x / 255 and x * (1 / 255) differ in the last bit
        x = v2.functional.to_dtype(x, torch.float32, scale=True)
    else:
        x = x.to(torch.float32, copy=True)
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).reshape(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).reshape(-1, 1, 1)
    return x.sub_(m).div_(s)


def write_image(path: str | os.PathLike, image: Image.Image | np.ndarray, **options: Any) -> None:
    """Save ``image`` (a Pillow image or an array) to ``path`` in the format its suffix names (``options`` as
    Pillow's ``save``: ``save_all``, ``append_images``, ``compression``), through a temporary file renamed into
    place: an interrupted run leaves the old file or the new one, never a truncated picture. An array is
    ``H x W`` (bool, uint8, or uint16 for ids beyond 255; a ``.tif`` also takes 8-32-bit integers and floats) or
    ``H x W x C`` uint8 with 1 to 4 channels; anything else, or a mode the format cannot hold (RGBA as JPEG), is
    a one-line DataError naming the fix (:func:`image_to_uint8` for floats in [0, 1])."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"cannot write {path}: no image format for the suffix {path.suffix!r}; use .png or .tif")
    picture = image if isinstance(image, Image.Image) else Image.fromarray(_picture_array(path, image, fmt))
    try:
        atomic_write(path, lambda f: picture.save(f, format=fmt, **options), durable=False)
    except OSError as e:  # Pillow's "cannot write mode RGBA as JPEG"
        if not str(e).startswith("cannot write mode"):
            raise
        raise DataError(
            f"cannot write {path}: {fmt} cannot hold a mode {picture.mode} image; save it as .png or .tif, "
            "or convert it first (e.g. image[..., :3] for RGB)"
        ) from None


def _picture_array(path: Path, image: Any, fmt: str) -> np.ndarray:
    """``image`` as an array Pillow saves as a picture (``H x W x 1`` as ``H x W``); else a DataError."""
    if not isinstance(image, np.ndarray):
        raise DataError(
            f"cannot write {path}: the image is a {type(image).__name__}; give a PIL image or a numpy array "
            "(a tensor: .cpu().numpy())"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] > 4) or 0 in image.shape:
        fix = (
            "it has no pixels"
            if 0 in image.shape
            else "give H x W (grey, or class indices), H x W x 3 (RGB) or H x W x 4 (RGBA)"
        )
        raise DataError(f"cannot write {path}: the image is an array of shape {image.shape}; {fix}")
    allowed = {np.dtype(np.uint8)}
    if image.ndim == 2:
        allowed |= {np.dtype(bool), np.dtype(np.uint16)}
        tiff = (np.int8, np.int16, np.int32, np.uint32, np.float32, np.float64)  # (as Pillow saved them before)
        allowed |= {np.dtype(t) for t in tiff} if fmt == "TIFF" else set()
    if image.dtype not in allowed:
        if image.dtype.kind == "f":
            fix = "pictures are uint8: pixelwise.data.image_to_uint8(image) scales floats in [0, 1] to 0..255"
        else:
            fix = "give uint8 (image.astype(np.uint8) for values 0..255)"
            fix += ", or uint16 for a map of more than 256 ids" if image.ndim == 2 else ""
        article = "an" if image.dtype.name[0] in "aeio" else "a"  # a uint8, an int64
        raise DataError(
            f"cannot write {path}: the image is {article} {image.dtype.name} array of shape {image.shape}; {fix}"
        )
    return image


def image_to_uint8(image: np.ndarray) -> np.ndarray:
    """An image of :func:`read_image` as uint8 (float [0, 1] scaled to 0..255), for overlays and pictures."""
    if image.dtype == np.uint8:
        return image
    return np.clip(image.astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def read_mask(path: Path, info: DatasetInfo | None = None, *, lut: np.ndarray | None = None) -> np.ndarray:
    """``H x W`` uint8 array of class indices, mapped through ``info``'s value_map (or ``lut``, a 256-entry
    table); DataError unless a single-channel 8-bit image."""
    path = Path(path)
    with open_image(path, "mask") as im:
        if im.mode not in ("L", "P"):
            fix = {
                "1": "; save it as 8-bit grey (mode L) with its values 0 and 1",
                "RGB": "; colour masks: `pixelwise data import rgb` maps them through a palette",
                "RGBA": "; colour masks: `pixelwise data import rgb` maps them through a palette",
            }.get(im.mode, "")
            raise DataError(
                f"mask {path} has mode {im.mode!r}; masks must be single-channel 8-bit PNGs of class indices{fix}"
            )
        try:
            if lut is None and info is not None:
                lut = info.mask_lut()
            # for mode "P" these are the palette indices; np.array copies (writable), lut[...] makes a new array
            return np.array(im) if lut is None else lut[np.asarray(im)]
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"cannot read mask {path}: {e}") from None


def read_instances(path: Path) -> np.ndarray:
    """``H x W`` integer instance map (0 = background, one id per object): 16-bit (or 8-bit) single channel."""
    path = Path(path)
    with open_image(path, "instance map") as im:
        if im.mode not in (*_INT_MODES, "L"):
            raise DataError(
                f"instance map {path} has mode {im.mode!r}; instance maps must be single-channel 16-bit PNGs "
                "(0 = background, 1..K = one id per object)"
            )
        try:
            return np.array(im)
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"cannot read instance map {path}: {e}") from None


def check_instance_classes(
    instances: np.ndarray,
    mask: np.ndarray,
    ignore_index: int,
    path: Path,
    things: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
) -> None:
    """DataError for an instance that lies on ignore pixels of the mask, spans two classes (an instance's
    class is the mask's class under it), or, with ``things`` (the data set's instance classes), lies on a class
    that has no instances (background: every instance score would count it as an object of another class). One
    ``np.unique`` over (id, class) pairs, not a mask per instance."""
    fg = instances > 0
    pairs = np.unique(instances[fg].astype(np.int64) * 256 + mask[fg])
    ids, classes = pairs // 256, pairs % 256
    on_ignore = ids[classes == ignore_index]
    if on_ignore.size:
        raise DataError(
            f"instance map {path}: instance {on_ignore[0]} lies on ignore pixels ({ignore_index}) of its mask; "
            "give those pixels the instance's class in the mask, or 0 in the instance map"
        )
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        bad = uniq[counts > 1][0]
        raise DataError(
            f"instance map {path}: instance {bad} spans classes {classes[ids == bad].tolist()} of its mask; "
            "an instance has one class"
        )
    if things is not None:
        stuff = ~np.isin(classes, list(things))
        if stuff.any():
            c = int(classes[stuff][0])
            name = f" ({class_names[c]!r})" if class_names is not None and c < len(class_names) else ""
            raise DataError(
                f"instance map {path}: instance {ids[stuff][0]} lies on class {c}{name} of its mask, which is not an "
                "instance class (instance_classes in classes.json); give those pixels an instance class in the mask, "
                "or 0 in the instance map"
            )


def count_instances(instances: np.ndarray) -> int:
    """The number of distinct non-zero ids of an instance map."""
    if instances.dtype in (np.uint8, np.uint16):
        return int(np.count_nonzero(np.bincount(instances.ravel())[1:]))
    ids = np.unique(instances)
    return int(np.count_nonzero(ids))


def mask_histogram(mask: np.ndarray) -> np.ndarray:
    """Pixels per stored value 0..255 of a uint8 mask (int64, 256 bins)."""
    return np.bincount(mask.ravel(), minlength=256)


def check_mask_values(hist: np.ndarray, info: DatasetInfo, path: Path) -> None:
    """DataError if a mask (given by its :func:`mask_histogram`, value_map applied) holds values that are no
    class and not the ignore value, or holds only 0 and 255 in a 2-class data set without a value_map."""
    n, ignore = info.num_classes, info.ignore_index
    present = np.flatnonzero(hist)
    bad = [int(v) for v in present if v >= n and v != ignore]
    if bad:
        raise DataError(
            f"mask {path} holds label value(s) {bad[:5]} but {info.name!r} has {n} classes "
            f"(0..{n - 1}, ignore {ignore}): fix the masks, or map the stored values to classes with "
            f'"value_map" in {info.source}'
        )
    if n == 2 and ignore == 255 and not info.value_map and present.tolist() == [0, 255]:
        raise DataError(
            f"mask {path} holds only the values 0 and 255 but {info.name!r} has 2 classes (255 is the ignore "
            f'value): add "value_map": {{"255": 1}} to {info.source}, or save the masks as 0/1 '
            f'(if 255 really is unlabelled here, add "value_map": {{"255": 255}})'
        )
