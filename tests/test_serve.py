"""pixelwise serve, in process (FastAPI's TestClient): every endpoint; the mask and the pictures equal what the
library computes for the same file; each bad upload's exact status and one-line reason; the limits on body size,
image size, queue length and time; and the server still answering after every refusal."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="pixelwise serve needs the [serve] extra: pip install -e '.[serve]'")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from fastapi.testclient import TestClient  # noqa: E402

from pixelwise.config import load_config  # noqa: E402
from pixelwise.data import read_image  # noqa: E402
from pixelwise.engine import Predictor, train  # noqa: E402
from pixelwise.errors import ConfigError  # noqa: E402
from pixelwise.fileio import file_sha256  # noqa: E402
from pixelwise.inference import effects  # noqa: E402
from pixelwise.serve import bind, check_host, create_app, make_server  # noqa: E402
from pixelwise.visualize import colorize, instance_overlay, overlay, overlay_palette  # noqa: E402

from .conftest import write_dataset  # noqa: E402
from .test_engine import toy_config  # noqa: E402


# --- fixtures: one toy model for the module (the toy_run fixture's code, trained once) ------------------------
@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("serve_toy")
    root = write_dataset(tmp / "data").parent
    cfg = load_config(toy_config(tmp, iters=2, eval_interval=2))
    train(cfg, run_dir=tmp / "run", data_root=root, progress=False)
    return tmp / "run" / "best.pt"


@pytest.fixture(scope="module")
def predictor(toy_checkpoint) -> Predictor:
    return Predictor(toy_checkpoint)


@pytest.fixture(scope="module")
def client(toy_checkpoint):
    with TestClient(create_app(toy_checkpoint, max_pixels=200_000)) as c:
        yield c


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def picture(width: int = 48, height: int = 40, seed: int = 0) -> np.ndarray:
    """Stripes of the toy data set's three class looks (mask * 60 + noise), so every class is predicted."""
    rng = np.random.default_rng(seed)
    classes = (np.arange(width)[None, :] * 3 // width).repeat(height, 0)
    return (classes[..., None] * 60 + rng.integers(0, 30, (height, width, 3))).astype(np.uint8)


def png_array(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def assert_alive(client) -> None:
    """The server answers, and still segments an image, after whatever came before."""
    assert client.get("/healthz").json()["status"] == "ok"
    r = client.post("/v1/segment", content=encode(Image.fromarray(picture())))
    assert r.status_code == 200, r.text


# --- the endpoints ------------------------------------------------------------------------------------------------
def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["pending"] == 0 and body["max_queue"] == 8


def test_model_description(client, toy_checkpoint, predictor):
    r = client.get("/v1/model")
    assert r.status_code == 200
    body = r.json()
    assert body["classes"] == predictor.classes == ["c0", "c1", "c2"]
    assert body["palette"] == predictor.meta["palette"]
    assert body["overlay_palette"] == overlay_palette(predictor.meta["palette"])
    assert body["input_channels"] == 3 and body["image_mode"] == "RGB"
    assert body["sha256"] == file_sha256(toy_checkpoint)
    assert body["checkpoint"] == "best.pt" and body["backend"] == "torch" and body["name"] == "unet"
    assert body["instance_method"] is None and body["min_side"] >= 1
    assert body["limits"] == {"max_queue": 8, "max_bytes": 20 * 2**20, "max_pixels": 200_000, "timeout_s": 30.0}
    assert "instances" not in body["outputs"]


def test_the_run_s_protocol_and_its_flags(toy_checkpoint, client):
    """serve takes eval's protocol flags over the run's own (e.g. --no-flip for half the work); /v1/model says
    which protocol runs."""
    from pixelwise.cli import build_parser
    from pixelwise.cli.options import inference_settings

    args = build_parser().parse_args(["serve", "m.pt", "--no-flip", "--scales", "0.5", "--amp", "none"])
    assert inference_settings(args) == {"scales": [0.5], "flip": False} and args.amp == "none"
    assert client.get("/v1/model").json()["inference"]["flip"] is False  # the toy run's own: no flip
    with TestClient(create_app(toy_checkpoint, inference={"flip": True, "scales": [0.5]})) as c:
        protocol = c.get("/v1/model").json()["inference"]
    assert protocol["flip"] is True and protocol["scales"] == [0.5]


def test_page(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for element in ('id="file"', 'id="drop"', 'id="opacity"', 'id="legend"', 'id="download"', 'id="effect"'):
        assert element in r.text
    assert 'src="http' not in r.text and 'href="http' not in r.text  # nothing fetched from elsewhere


def test_unknown_paths_and_methods_are_json(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json() == {"error": "no such path /v1/nothing; see GET / and GET /v1/model"}
    r = client.get("/v1/segment")
    assert r.status_code == 405 and r.json() == {"error": "GET is not allowed on /v1/segment (allowed: POST)"}


# --- what /v1/segment returns is what the library computes -----------------------------------------------------
def exif_rotated_jpeg(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display: width and height swap
    Image.fromarray(picture(48, 40)).save(path, "JPEG", quality=95, exif=exif)


FIXTURES = {
    "rgb.png": lambda p: Image.fromarray(picture()).save(p),
    "rgba.png": lambda p: Image.fromarray(np.dstack([picture(), np.full((40, 48), 128, np.uint8)])).save(p),
    "palette.png": lambda p: Image.fromarray(picture()).convert("P").save(p),
    "grey16.png": lambda p: Image.fromarray(picture()[..., 0].astype(np.uint16) * 257).save(p),
    "exif.jpg": exif_rotated_jpeg,
    "rgb.webp": lambda p: Image.fromarray(picture()).save(p, "WEBP", lossless=True),
}


@pytest.mark.parametrize("name", list(FIXTURES))
@pytest.mark.parametrize("how", ["raw", "multipart"])
def test_mask_equals_predictor_predict(client, predictor, tmp_path, name, how):
    path = tmp_path / name
    FIXTURES[name](path)
    data = path.read_bytes()
    if how == "raw":
        r = client.post("/v1/segment?output=mask", content=data, headers={"content-type": "application/octet-stream"})
    else:
        r = client.post("/v1/segment?output=mask", files={"image": (name, data, "application/octet-stream")})
    assert r.status_code == 200, r.text
    body = r.json()
    [image] = predictor.read(path)  # the library's reading rules: EXIF orientation, 16 bits, alpha dropped
    expected = predictor.predict(image)
    mask = png_array(body["mask"])
    assert mask.dtype == np.uint8 and mask.shape == expected.shape
    np.testing.assert_array_equal(mask, expected)
    assert (body["height"], body["width"]) == expected.shape
    assert body["classes"] == predictor.classes
    assert body["pixel_counts"] == np.bincount(expected.ravel(), minlength=3).tolist()
    assert sum(body["pixel_counts"]) == body["width"] * body["height"]
    if name == "exif.jpg":
        assert (body["width"], body["height"]) == (40, 48)  # oriented as displayed


def test_the_pictures_equal_the_library_s(client, predictor, tmp_path):
    path = tmp_path / "x.png"
    FIXTURES["rgb.png"](path)
    r = client.post("/v1/segment?output=color,overlay,image&alpha=0.3", content=path.read_bytes())
    body = r.json()
    image = read_image(path)
    mask = predictor.predict(image)
    color = colorize(mask, overlay_palette(predictor.meta["palette"]))
    np.testing.assert_array_equal(png_array(body["image"]), image)
    np.testing.assert_array_equal(png_array(body["color"]), color)
    np.testing.assert_array_equal(png_array(body["overlay"]), overlay(image, color, 0.3))
    assert "mask" not in body and "effect" not in body  # only what was asked for
    r = client.post("/v1/segment", content=path.read_bytes())
    assert set(r.json()) == {"width", "height", "classes", "pixel_counts", "time_ms"}


def test_effects(client, predictor, tmp_path):
    path = tmp_path / "x.png"
    FIXTURES["rgb.png"](path)
    data = path.read_bytes()
    image = read_image(path)
    r = client.post("/v1/segment?output=effect,mask&effect=cutout&foreground=c1,c2", content=data)
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(png_array(r.json()["mask"]), predictor.predict(image))
    rgba = png_array(r.json()["effect"])
    # the effect of the library on the model's probabilities (the logits' softmax; soft edges, not the mask)
    with torch.inference_mode():
        probs = torch.softmax(predictor.scores(predictor.normalise(image)[None])[0].float(), 0)
    np.testing.assert_array_equal(rgba, effects.cutout(image, effects.foreground_alpha(probs, [1, 2])))
    mask = predictor.predict(image)
    for spec in ("blur", "blur=3", "replace=green", "highlight=0.7"):
        r = client.post(f"/v1/segment?output=effect&effect={spec}&foreground=c1", content=data)
        assert r.status_code == 200, r.text
        assert png_array(r.json()["effect"]).shape == (40, 48, 3)
        assert r.json()["effect_settings"]["effect"] == spec.split("=")[0]
    assert r.json()["effect_settings"]["opacity"] == 0.7
    huge = client.post("/v1/segment?output=effect&effect=blur=1e9&foreground=c1", content=data)
    assert (huge.status_code, huge.json()) == (
        422,
        {"error": "effect=blur=1e+09: the strength must be at most the image's longer side (48 px)"},
    )
    hard = effects.Effect("highlight", [1], opacity=0.7, palette=predictor.meta["palette"])
    # soft edges: the probabilities, not the hard mask, drive the tint
    assert not np.array_equal(png_array(r.json()["effect"]), hard.apply(image, effects.one_hot(mask, 3)))


# --- bad uploads: exact status and reason, and the server answers after each ------------------------------------
def tiff_pages() -> bytes:
    first = Image.fromarray(picture())
    return encode(first, "TIFF", save_all=True, append_images=[first])


PNG = encode(Image.fromarray(picture()))
BAD_UPLOADS = {
    "empty": (b"", 400, "empty upload: send an image as the multipart form field 'image' or as the body"),
    "text": (
        b"hello, world",
        415,
        "upload is not an image: none of the readable formats (PNG, JPEG, WebP, TIFF or BMP) recognises its 12 bytes",
    ),
    "truncated png": (PNG[:300], 422, "cannot read image upload: image file is truncated"),
    "corrupt png": (PNG[:60] + bytes(500), 422, "cannot read image upload: broken data stream when reading image file"),
    "truncated jpeg": (
        encode(Image.fromarray(picture()), "JPEG")[:400],
        422,
        "cannot read image upload: Truncated File Read",
    ),
    "float out of range": (
        encode(Image.fromarray(np.full((40, 48), 3.5, np.float32)), "TIFF"),
        422,
        "float image upload holds values 3.5..3.5, outside [0, 1] (float images are read as they are): this model "
        "reads float images in [0, 1], integer ones in 0..65535",
    ),
    "NaN": (
        encode(Image.fromarray(np.full((40, 48), np.nan, np.float32)), "TIFF"),
        422,
        "image upload holds NaN or infinite values",
    ),
    "negative integers": (
        encode(Image.fromarray(np.full((40, 48), -5, np.int32)), "TIFF"),
        422,
        "'I' image upload holds values -5..-5, outside 0..65535: this model reads float images in [0, 1], integer "
        "ones in 0..65535",
    ),
    # formats Pillow has but the server does not read (EPS would be handed to Ghostscript)
    "ppm": (
        encode(Image.fromarray(picture()), "PPM"),
        415,
        f"upload is not an image: none of the readable formats (PNG, JPEG, WebP, TIFF or BMP) recognises its "
        f"{len(encode(Image.fromarray(picture()), 'PPM'))} bytes",
    ),
    "eps": (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        415,
        "upload is not an image: none of the readable formats (PNG, JPEG, WebP, TIFF or BMP) recognises its 58 bytes",
    ),
    "two pages": (tiff_pages(), 422, "image upload has more than one page: send one image (one request per page)"),
    "too many pixels": (
        encode(Image.fromarray(np.zeros((500, 401, 3), np.uint8))),
        413,
        "image upload is 401x500 = 200500 pixels, over the limit of 200000 pixels per image",
    ),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload(client, case):
    data, status, message = BAD_UPLOADS[case]
    r = client.post("/v1/segment?output=mask", content=data)
    assert (r.status_code, r.json()) == (status, {"error": message})
    assert_alive(client)


def many_page_tiff(pages: int) -> bytes:
    """A little-endian TIFF of ``pages`` 1x1 grey pages sharing one strip: 100 bytes a page."""
    tags = [(256, 3, 1), (257, 3, 1), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8), (278, 3, 1), (279, 4, 1)]
    out = bytearray(b"II*\x00" + struct.pack("<I", 9) + b"\x80")  # the header, the first page at 9, the pixel at 8
    for i in range(pages):
        following = 9 + (i + 1) * 102 if i < pages - 1 else 0
        out += struct.pack("<H", len(tags))
        out += b"".join(
            struct.pack("<HHII" if t == 4 else "<HHIHH", tag, t, 1, v, *([] if t == 4 else [0])) for tag, t, v in tags
        )
        out += struct.pack("<I", following)
    return bytes(out)


def test_a_many_page_tiff_is_refused_without_counting_its_pages(client):
    """Counting 40,000 pages (4 MB) walked every one, super-linearly: the only worker was held for 16 s."""
    data = many_page_tiff(40_000)
    start = time.perf_counter()
    r = client.post("/v1/segment?output=mask", content=data)
    assert time.perf_counter() - start < 3
    message = "image upload has more than one page: send one image (one request per page)"
    assert (r.status_code, r.json()) == (422, {"error": message})
    r = client.post("/v1/segment?output=mask", content=many_page_tiff(1))  # one page: no second to find
    assert r.status_code == 422 and "page" not in r.json()["error"]  # (1x1 is below the model's stride)


def test_an_image_the_free_memory_cannot_take_is_503_not_500(client, monkeypatch):
    """A ResourceError (the image's probabilities beyond the free memory) was a 500 with a traceback in the log."""
    import pixelwise.engine.predictor as predictor_module

    monkeypatch.setattr(predictor_module, "available_memory", lambda device: 1000)
    r = client.post("/v1/segment?output=mask", content=encode(Image.fromarray(picture(64, 80))))
    assert r.status_code == 503
    assert r.json()["error"].startswith("image upload (64x80): its 3 class probabilities alone take about 0.0 GiB")
    monkeypatch.undo()
    assert_alive(client)


def test_an_image_smaller_than_the_model_takes(client, predictor):
    side = client.get("/v1/model").json()["min_side"]
    assert side > 1
    r = client.post("/v1/segment", content=encode(Image.fromarray(picture(side - 1, side - 1))))
    assert r.status_code == 422
    assert r.json()["error"] == (
        f"image upload is {side - 1}x{side - 1}, smaller than model unet takes (at least {side}x{side} pixels, its "
        "total stride): upscale it or pad it"
    )
    assert_alive(client)


def test_the_multipart_file_name_names_the_upload(client):
    r = client.post("/v1/segment", files={"image": ("../secret/notes.txt", b"plain text", "text/plain")})
    assert r.status_code == 415
    assert r.json()["error"].startswith("notes.txt is not an image:")


MULTIPART = "multipart/form-data; boundary=zzz"
BAD_FORMS = {
    "no image field": (
        {"files": {"picture": ("a.png", PNG, "image/png")}},
        "the multipart form has no field 'image' (its fields: picture)",
    ),
    "a text field": (
        {"data": {"image": "not a file"}, "files": {"x": ("x", b"1")}},
        "the form field 'image' is text; send the image file in it",
    ),
    "no parts": (
        {"content": b"--zzz\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc",
         "headers": {"content-type": MULTIPART}},
        "the multipart form has no field 'image' (its fields: none)",
    ),
    "no boundary": (
        {"content": PNG, "headers": {"content-type": "multipart/form-data"}},
        "malformed multipart form: Missing boundary in multipart.",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_FORMS))
def test_bad_multipart_forms(client, case):
    request, message = BAD_FORMS[case]
    r = client.post("/v1/segment", **request)
    assert (r.status_code, r.json()) == (400, {"error": message})
    assert_alive(client)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("output=mask,zebra", "unknown output 'zebra'; valid: mask, color, overlay, image, effect, instances"),
        ("output=instances", "output 'instances' needs an instance model; this one is semantic (ask for mask/overlay)"),
        ("alpha=2", "alpha='2': the overlay opacity must be a number in [0, 1]"),
        ("alpha=nan", "alpha='nan': the overlay opacity must be a number in [0, 1]"),
        ("output=effect&effect=sparkle",
         "effect='sparkle'; valid: blur[=SIGMA], replace=COLOUR, cutout, highlight[=OPACITY]"),
        ("output=effect&effect=replace=/etc/passwd&foreground=c1",
         "effect='replace=/etc/passwd': give the background colour, e.g. replace=#00b140, replace=green (each "
         "channel 0 to 255)"),
        # channels outside 0..255 wrapped (rgb(300,0,0) painted (44,0,0)) or overflowed in a 500
        *((f"output=effect&effect=replace={c}&foreground=c1", f"effect='replace={c}': give the background colour, "
           "e.g. replace=#00b140, replace=green (each channel 0 to 255)")
          for c in ("rgb(300,0,0)", "hsl(0,100%,150%)", "rgb(99999999999999999999,0,0)", "1" * 4400 + ",0,0")),
        # over 4300 digits int() raised ValueError: a plain-text 500
        ("output=effect&foreground=" + "1" * 4400,
         f"foreground '{'1' * 4400}': no such class; the model's classes are 0 c0, 1 c1, 2 c2"),
        ("output=effect&foreground=c7", "foreground 'c7': no such class; the model's classes are 0 c0, 1 c1, 2 c2"),
        ("output=effect", "effect blur needs ?foreground=CLASS[,CLASS...]; the model's classes are 0 c0, 1 c1, 2 c2"),
    ],
)  # fmt: skip
def test_bad_queries(client, query, message):
    r = client.post(f"/v1/segment?{query}", content=PNG)
    assert (r.status_code, r.json()) == (400, {"error": message})
    assert_alive(client)


# --- limits ---------------------------------------------------------------------------------------------------------
def test_request_over_the_size_limit(toy_checkpoint):
    with TestClient(create_app(toy_checkpoint, max_bytes=1000)) as c:
        big = encode(Image.fromarray(picture(64, 64, seed=3)))
        assert len(big) > 1000
        r = c.post("/v1/segment", content=big)
        assert (r.status_code, r.json()) == (
            413,
            {"error": f"request body is {len(big)} bytes, over the limit of 1000 bytes"},
        )
        # a chunked body (no Content-Length) is counted as it arrives
        r = c.post("/v1/segment", content=iter([big[:600], big[600:]]))
        assert (r.status_code, r.json()) == (413, {"error": "request body is over the limit of 1000 bytes"})
        r = c.post("/v1/segment", content=encode(Image.fromarray(np.zeros((16, 16, 3), np.uint8))))
        assert r.status_code == 200
        # a Content-Length of over 4300 digits: int() raised ValueError (a 500)
        r = c.post("/v1/segment", content=b"x", headers={"content-length": "9" * 4400})
        assert (r.status_code, r.json()) == (413, {"error": "request body is over the limit of 1000 bytes"})


class Blocking:
    """A Predictor whose predict waits for ``release`` (or raises ``error``): a request that holds the worker."""

    def __init__(self, predictor: Predictor, error: Exception | None = None) -> None:
        self._predictor, self.error = predictor, error
        self.release = threading.Event()
        self.started = threading.Event()
        self.calls = 0  # predictions started

    def __getattr__(self, name):
        return getattr(self._predictor, name)

    def predict(self, image, source="image"):
        self.calls += 1
        if self.error is not None:
            raise self.error
        self.started.set()
        assert self.release.wait(30)
        return self._predictor.predict(image, source)


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_queue_limit(predictor):
    fake = Blocking(predictor)
    with TestClient(create_app(fake, max_queue=1)) as c:
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(c.post("/v1/segment", content=PNG))) for _ in range(2)
        ]
        for t in threads:
            t.start()
        wait_for(lambda: c.get("/healthz").json()["pending"] == 2)  # one running, one waiting: the queue is full
        assert fake.started.wait(30)  # pending counts a job when it is submitted, before the thread starts it
        r = c.post("/v1/segment", content=PNG)
        assert (r.status_code, r.json()) == (
            503,
            {"error": "server busy: the queue is full (1 waiting, the limit is 1); retry later"},
        )
        assert r.headers["retry-after"] == "1"
        assert c.get("/healthz").status_code == 200  # answers while the worker is busy
        fake.release.set()
        for t in threads:
            t.join(30)
        assert [x.status_code for x in results] == [200, 200]
        health = c.get("/healthz").json()
        assert health["pending"] == 0 and health["refused"] == 1 and health["finished"] == 2
        assert c.post("/v1/segment", content=PNG).status_code == 200


def test_a_request_whose_client_left_while_it_waited_is_not_run(predictor, caplog):
    """A client that disconnected while its request waited for the worker still had its prediction run when its
    turn came: a burst of impatient clients that retry kept the only worker busy on answers nobody read. Now a job
    still waiting is dropped when its client goes, and the log says so; the running one is not disturbed."""
    import httpx

    caplog.set_level(logging.INFO, logger="pixelwise")
    fake = Blocking(predictor)
    app = create_app(fake, max_queue=2)
    worker = app.state.worker
    server, sock = make_server(app, "127.0.0.1", 0, log_level="warning")
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started)
        url = f"http://127.0.0.1:{port}"
        results = []
        post = lambda: results.append(httpx.post(f"{url}/v1/segment", content=PNG, timeout=30))  # noqa: E731
        first = threading.Thread(target=post)
        first.start()
        assert fake.started.wait(30)  # the first request holds the worker
        with socket.create_connection(("127.0.0.1", port), timeout=30) as impatient:
            head = b"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(PNG)
            impatient.sendall(head + PNG)
            wait_for(lambda: worker.pending == 2)  # its body has arrived: it waits behind the first
        # the impatient client has gone while its job waits: the job is dropped (not waited for, on the old code)
        deadline = time.monotonic() + 5
        while worker.pending == 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        fake.release.set()
        first.join(30)
        wait_for(lambda: worker.pending == 0)
        assert fake.calls == 1, "the prediction of the client that left was run"
        assert results[0].status_code == 200, results[0].text
        health = httpx.get(f"{url}/healthz", timeout=30).json()
        assert (health["finished"], health["dropped"], health["cancelled"], health["pending"]) == (1, 1, 0, 0)
        assert "dropped a request to /v1/segment: its client disconnected before its prediction started" in caplog.text
        assert httpx.post(f"{url}/v1/segment", content=PNG, timeout=30).status_code == 200  # the next one runs
        assert fake.calls == 2
    finally:
        fake.release.set()
        server.should_exit = True
        thread.join(30)
        sock.close()


def test_a_waiting_job_is_dropped_when_its_client_goes_or_its_task_is_cancelled():
    """BoundedWorker.run: a job still waiting is cancelled, never run, when ``gone`` returns (its client
    disconnected) or the awaiting task is cancelled (a server that cancels the request's task); a job already
    running finishes, unobserved."""
    from pixelwise.serve.worker import BoundedWorker, ClientGone

    ran, release = [], threading.Event()

    def job(name):
        ran.append(name)
        assert release.wait(30)
        return name

    async def scenario():
        worker = BoundedWorker(max_queue=2)
        worker.start()
        first_left, second_left = asyncio.Event(), asyncio.Event()
        running = asyncio.ensure_future(worker.run(job, "running", timeout=30, gone=first_left.wait))
        while not ran:
            await asyncio.sleep(0.01)
        waiting = asyncio.ensure_future(worker.run(job, "waiting", timeout=30, gone=second_left.wait))
        cancelled = asyncio.ensure_future(worker.run(job, "cancelled", timeout=30))
        await asyncio.sleep(0)
        assert worker.pending == 3
        second_left.set()
        with pytest.raises(ClientGone, match="before its prediction started"):
            await waiting
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert worker.pending == 1 and worker.dropped == 2
        first_left.set()  # the running job's client goes: it is not interrupted, nor awaited
        with pytest.raises(ClientGone, match="while its prediction ran"):
            await running
        assert worker.pending == 1
        release.set()
        while worker.pending:
            await asyncio.sleep(0.01)
        worker.shutdown()
        return worker

    worker = asyncio.run(scenario())
    assert ran == ["running"]
    assert (worker.finished, worker.cancelled, worker.dropped) == (1, 0, 2)


def test_healthz_says_when_the_worker_is_not_running(predictor):
    """/healthz said "stopping" when the worker was not running, which a shutdown never shows (uvicorn closes the
    sockets before the lifespan stops the worker): it happens when the app is served without its lifespan."""
    c = TestClient(create_app(predictor))  # no `with`: the lifespan, which starts the worker, does not run
    r = c.get("/healthz")
    assert r.status_code == 503 and r.json()["status"] == "not running"


def test_an_app_started_again_after_a_stop_still_segments(predictor):
    """The worker thread is made at start-up, not once per app: a second start (tests, a restarted server) used
    to answer every request with 500 "cannot schedule new futures after shutdown" while /healthz said ok."""
    app = create_app(predictor)
    for _ in range(2):
        with TestClient(app) as c:
            assert c.post("/v1/segment", content=PNG).status_code == 200
            assert c.head("/healthz").status_code == 200 and c.head("/").status_code == 200
    assert app.state.worker.finished == 2 and not app.state.worker.running


def test_a_blur_too_small_to_move_a_pixel_keeps_the_background(client):
    """blur=1e-50 underflowed to a NaN kernel in float32: the background came back black."""
    r = client.post("/v1/segment?output=image,effect&effect=blur=1e-50&foreground=c2", content=PNG)
    assert r.status_code == 200
    np.testing.assert_array_equal(png_array(r.json()["effect"]), png_array(r.json()["image"]))


def test_an_effect_without_output_effect_is_refused(client):
    r = client.post("/v1/segment?effect=replace=green&foreground=c1", content=PNG)
    assert (r.status_code, r.json()) == (
        400,
        {"error": "effect and foreground apply to output=effect: add it to ?output="},
    )


def test_time_limit(predictor, caplog):
    fake = Blocking(predictor)
    caplog.set_level(logging.WARNING, logger="pixelwise")
    with TestClient(create_app(fake, timeout_s=0.5)) as c:
        r = c.post("/v1/segment", content=PNG)
        assert (r.status_code, r.json()) == (
            504,
            {"error": "the prediction did not finish within the limit of 0.5 s"},
        )
        assert "a request ran past the limit of 0.5 s" in caplog.text
        fake.release.set()
        wait_for(lambda: c.get("/healthz").json()["pending"] == 0)  # the late job ends; its slot is released
        assert c.post("/v1/segment", content=PNG).status_code == 200


def test_an_internal_error_is_that_request_s_500(predictor, caplog):
    caplog.set_level(logging.ERROR, logger="pixelwise")
    fake = Blocking(predictor, error=RuntimeError("out of memory, say"))
    with TestClient(create_app(fake)) as c:
        r = c.post("/v1/segment", content=PNG)
        assert (r.status_code, r.json()) == (500, {"error": "internal error: RuntimeError: out of memory, say"})
        assert "segmenting upload failed" in caplog.text
        fake.error = None
        fake.release.set()
        assert c.post("/v1/segment", content=PNG).status_code == 200


def test_limits_are_checked(toy_checkpoint):
    with pytest.raises(ConfigError, match=r"^max_queue=-1: must be >= 0$"):
        create_app(toy_checkpoint, max_queue=-1)
    with pytest.raises(ConfigError, match=r"^max_bytes=0: must be > 0$"):
        create_app(toy_checkpoint, max_bytes=0)


# --- instance models and the ONNX backend ----------------------------------------------------------------------------
def test_instance_model(tmp_path):
    from .test_instance_data import instance_dataset
    from .test_instance_methods import instance_config

    data = tmp_path / "data"
    instance_dataset(data, splits={"train": 3, "val": 2})
    train(instance_config(tmp_path, "boundary"), run_dir=tmp_path / "run", data_root=data, progress=False)
    checkpoint = tmp_path / "run" / "best.pt"
    path = data / "toy/images/val/s00.png"
    predictor = Predictor(checkpoint)
    [image] = predictor.read(path)
    found = predictor.predict_instances(image)
    with TestClient(create_app(checkpoint)) as c:
        described = c.get("/v1/model").json()
        assert described["instance_method"]["method"] == "boundary" and described["thing_classes"] == [1]
        assert "instances" in described["outputs"]
        r = c.post("/v1/segment?output=mask,instances&alpha=0.5", content=path.read_bytes())
        assert r.status_code == 200, r.text
        body = r.json()
    assert body["instances"]["count"] == int(found.classes.size)
    np.testing.assert_array_equal(png_array(body["mask"]), predictor.predict(image))
    np.testing.assert_array_equal(png_array(body["instance_overlay"]), instance_overlay(image, found.instances, 0.5))


def test_onnx_backend(toy_checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    from pixelwise.export import export_onnx

    onnx = tmp_path / "toy.onnx"
    export_onnx(toy_checkpoint, onnx, height=40, width=48)
    predictor = Predictor(onnx, backend="onnxruntime")
    with TestClient(create_app(onnx)) as c:  # the backend follows the file's suffix
        described = c.get("/v1/model").json()
        assert described["backend"] == "onnxruntime" and described["sha256"] == file_sha256(onnx)
        r = c.post("/v1/segment?output=mask", content=PNG)
    np.testing.assert_array_equal(png_array(r.json()["mask"]), predictor.predict(picture()))


# --- the real server: bound to the host given ---------------------------------------------------------------------
def test_a_client_of_the_said_address_is_answered_before_the_server_has_started(predictor):
    """`pixelwise serve` says its address once the socket is bound, before uvicorn starts: a client connecting
    then was refused (the socket was bound but not listening); now it waits in the queue and is answered."""
    server, sock = make_server(create_app(predictor), "127.0.0.1", 0, log_level="warning")
    port = sock.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as early:
        early.sendall(b"GET /v1/model HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            assert early.recv(65536).startswith(b"HTTP/1.1 200 OK")
        finally:
            server.should_exit = True
            thread.join(timeout=30)


def test_server_on_loopback(predictor):
    import httpx

    server, sock = make_server(create_app(predictor, timeout_s=1.0), "127.0.0.1", 0, log_level="warning")
    host, port = sock.getsockname()[:2]
    assert host == "127.0.0.1" and port > 0
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/segment?output=mask", content=PNG, timeout=30)
        assert r.status_code == 200 and sum(r.json()["pixel_counts"]) == 48 * 40
        with pytest.raises(ConfigError, match=rf"^cannot listen on 127.0.0.1:{port}: Address already in use$"):
            bind("127.0.0.1", port)
        # a client that announces a body and never sends it: 408 once the time limit has passed
        with socket.create_connection(("127.0.0.1", port), timeout=30) as stalled:
            stalled.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n" + PNG[:10])
            reply = b""
            while not reply.endswith(b"}"):  # the headers and the JSON body may come in two packets
                chunk = stalled.recv(65536)
                assert chunk, reply
                reply += chunk
            reply = reply.decode()
        assert reply.startswith("HTTP/1.1 408 ")
        assert reply.endswith('{"error":"the request body did not arrive within 1 s"}')
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).json()["status"] == "ok"
        assert httpx.get(f"http://localhost:{port}/healthz", timeout=30).status_code == 200
        # a page of another name pointed at 127.0.0.1 (DNS rebinding) is refused
        rebound = httpx.get(f"http://127.0.0.1:{port}/v1/model", headers={"Host": "evil.example"}, timeout=30)
        assert (rebound.status_code, rebound.json()) == (
            400,
            {
                "error": "host 'evil.example' is not this server's: it listens on a loopback address and answers "
                "requests for localhost or 127.0.0.1 only (serve with --host 0.0.0.0 to be reached by other names)"
            },
        )
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.mark.parametrize(
    ("header", "status"),
    [("127.0.0.2:8000", 200), ("[0:0:0:0:0:0:0:1]:8000", 200), ("127.1:8000", 200), ("[::ffff:127.0.0.1]", 200),
     ("LOCALHOST:8000", 200), ("127.0.0.1.evil.example", 400), ("[::1].evil.example", 400), ("10.0.0.1:8000", 400)],
)  # fmt: skip
def test_the_loopback_filter_takes_every_loopback_address(header, status):
    """--host 127.0.0.2 installed the filter, which then refused Host: 127.0.0.2:8000 (it knew three names only);
    [0:0:0:0:0:0:0:1] was refused too. An address literal cannot be rebound: any loopback one is this machine."""
    from pixelwise.serve.app import LoopbackHosts

    sent = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(LoopbackHosts(app)({"type": "http", "headers": [(b"host", header.encode())]}, receive, send))
    assert sent[0]["status"] == status
    assert check_host("127.1") and check_host("127.0.0.2") and check_host("0:0:0:0:0:0:0:1")


def test_a_wildcard_host_is_warned_about(caplog):
    caplog.set_level(logging.WARNING, logger="pixelwise")
    assert check_host("127.0.0.1") and check_host("localhost") and check_host("::1")
    assert caplog.text == ""
    assert not check_host("0.0.0.0")  # only checked: nothing is bound to it
    assert "listens on every network interface" in caplog.text


# --- the command line ---------------------------------------------------------------------------------------------
CLI = [sys.executable, "-m", "pixelwise"]


def test_the_serve_command(toy_checkpoint):
    import httpx

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*CLI, "serve", str(toy_checkpoint), "--port", "0", "--max-queue", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killer = threading.Timer(120, proc.kill)  # a server that never says where it listens is not waited for forever
    killer.start()
    try:
        url = None
        for line in proc.stdout:
            if line.startswith("pixelwise serve: http://127.0.0.1:"):
                url = line.split()[2].rstrip("/")
                break
        assert url is not None, proc.stderr.read()
        assert httpx.get(f"{url}/v1/model", timeout=30).json()["limits"]["max_queue"] == 2
        r = httpx.post(f"{url}/v1/segment", content=PNG, timeout=30)
        assert r.status_code == 200 and sum(r.json()["pixel_counts"]) == 48 * 40
        port = url.rsplit(":", 1)[1]
        busy = subprocess.run(
            [*CLI, "serve", str(toy_checkpoint), "--port", port], env=env, capture_output=True, text=True, timeout=120
        )
        assert busy.returncode == 2
        assert busy.stderr.strip().splitlines()[-1] == (
            f"pixelwise serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"
        )
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and err.strip().endswith("pixelwise serve: interrupted")
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_run_reports_a_signal_stop_as_an_interrupt(toy_checkpoint, monkeypatch):
    """Ctrl+C ends ``serve.run`` with KeyboardInterrupt (the CLI's exit 130) even when uvicorn's ``Server.run``
    returns normally after the signal, as it sometimes does: asyncio.run does not always turn the SIGINT that
    uvicorn re-raises at shutdown into KeyboardInterrupt. A server that stops without a signal returns."""
    import uvicorn

    from pixelwise.serve import run

    def stopped(signum):
        def server_run(self, sockets=None):
            self.started = True
            if signum is not None:
                self.handle_exit(signum, None)  # what uvicorn's own handler does on Ctrl+C

        return server_run

    monkeypatch.setattr(uvicorn.Server, "run", stopped(signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        run(toy_checkpoint, port=0, log_level="warning")
    monkeypatch.setattr(uvicorn.Server, "run", stopped(None))
    assert run(toy_checkpoint, port=0, log_level="warning") is None


def test_requests_beyond_the_limit_get_our_json_503_before_their_body_is_read():
    """Past uvicorn's connection limit the answer was its plain-text 503, which the page (and any JSON client)
    failed to parse; the app's own limit answers in JSON with Retry-After, without reading the body."""
    import asyncio
    import json

    from pixelwise.serve.app import RequestLimit

    started, release = asyncio.Event(), asyncio.Event()
    calls = []

    async def slow_app(scope, receive, send):
        calls.append(scope["path"])
        started.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    limited = RequestLimit(slow_app, limit=1)

    async def scenario():
        sent = []

        async def receive():
            raise AssertionError("the refused request's body must not be read")

        async def send(message):
            sent.append(message)

        first = asyncio.create_task(limited({"type": "http", "path": "/a", "headers": []}, receive, send))
        await started.wait()
        await limited({"type": "http", "path": "/b", "headers": []}, receive, send)  # refused at once
        refused = list(sent)
        release.set()
        await first
        return refused

    refused = asyncio.run(scenario())
    head, body = refused[0], refused[1]
    assert head["status"] == 503 and (b"retry-after", b"1") in head["headers"]
    assert json.loads(body["body"]) == {"error": "server busy: 1 requests in progress, at most 1; retry later"}
    assert calls == ["/a"] and limited.active == 0


def test_a_job_that_ends_as_its_client_goes_counts_as_finished():
    """The job ends on the worker thread while _drop is cancelling it (too late): it was counted as dropped."""
    import threading

    from pixelwise.serve.worker import BoundedWorker

    worker = BoundedWorker(2)
    worker.start()
    go = threading.Event()
    future = worker.submit(lambda: go.wait(5) or "done")
    while not future.running():
        time.sleep(0.01)
    cancel = future.cancel

    def cancel_after_the_job_ended():  # the thread finishes the job between _drop's bookkeeping and its cancel
        go.set()
        future.result()
        time.sleep(0.05)  # (the done callback, _release, has run)
        return cancel()

    future.cancel = cancel_after_the_job_ended
    try:
        assert worker._drop(future) is False
        assert (worker.finished, worker.dropped) == (1, 0)
    finally:
        worker.shutdown()
