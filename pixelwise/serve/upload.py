"""Uploaded bytes -> the image array a :class:`~pixelwise.engine.Predictor` takes, by the rules of
:mod:`pixelwise.data.io` (EXIF orientation, bit depths, alpha dropped, ``image_range``), with each way an upload
can be bad mapped to an HTTP status and a one-line reason."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data import io as image_io
from ..errors import DataError

READABLE = "PNG, JPEG, WebP, TIFF or BMP"
# the Pillow formats the server decodes: those of data.io's image files (JPEG's opener also gives a camera's MPO).
# Any other plugin a client could pick by the bytes alone is refused, EPS above all (Pillow runs Ghostscript on it).
PILLOW_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP")


class RequestError(Exception):
    """A request the server refuses: the HTTP status and a one-line reason for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = one_line(message)


def one_line(text: str) -> str:
    """``text`` on one line (a reason in a JSON body or a log line never spans several)."""
    return " ".join(str(text).split())


def safe_name(filename: str | None) -> str:
    """The name an upload is called by in messages: the client's file name without folders, printable, at most
    80 characters (it is echoed back), else ``upload``."""
    name = Path(filename or "").name
    name = "".join(c for c in name if c.isprintable())[:80].strip()
    return name or "upload"


def _for_clients(message: str) -> str:
    """A decoding message as a client can act on it: the data-set advice (set ``image_range`` in classes.json)
    is for whoever trains, not for who sends an image to a trained model."""
    if '"image_range"' in message:
        return message.split(": set ", 1)[0] + ": this model reads float images in [0, 1], integer ones in 0..65535"
    return message


def decode_upload(
    data: bytes,
    name: str,
    mode: str | None,
    *,
    max_pixels: int,
    image_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """The ``H x W x C`` image of an upload, as :func:`pixelwise.data.read_image` returns a file's.

    The pixel count is checked from the header, before any pixel is decoded, so an oversized (or
    decompression-bomb) image costs nothing. Raises :class:`RequestError`: 400 empty, 415 not an image,
    413 too many pixels, 422 unreadable (truncated, corrupt, values out of range, several pages)."""
    if not data:
        raise RequestError(400, "empty upload: send an image as the multipart form field 'image' or as the body")
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own pixel limit; ours is checked (and reported) below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
    except Image.DecompressionBombError as e:
        raise RequestError(413, f"{name}: {e}") from None
    except UnidentifiedImageError:
        raise RequestError(
            415, f"{name} is not an image: none of the readable formats ({READABLE}) recognises its {len(data)} bytes"
        ) from None
    except (OSError, ValueError, TypeError, SyntaxError) as e:
        raise RequestError(422, f"cannot read image {name}: {e}") from None
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise RequestError(
                413, f"image {name} is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} pixels per image"
            )
        try:
            if image_io.has_several_pages(im, name):
                raise RequestError(422, f"image {name} has more than one page: send one image (one request per page)")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                # the one home of the decoding rules (read_image's own body), applied to the upload
                return image_io.decode_image(im, Path(name), mode, image_range)
        except DataError as e:
            raise RequestError(422, _for_clients(str(e))) from None
        except Image.DecompressionBombError as e:
            raise RequestError(413, f"{name}: {e}") from None
