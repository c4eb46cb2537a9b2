"""pixelwise serve's web page in a real headless browser: Debian's chromium (/usr/bin/chromium) driven by
Playwright pointed at it (nothing is downloaded at run time), against uvicorn on 127.0.0.1 with a free port.

The test uploads a fixture PNG through the file input, waits for the overlay and the legend, checks the legend
against the model's prediction and the download link against the mask, moves the opacity slider, tries an
effect, a bad upload and a drop, and takes a screenshot into its tmp dir (and to ``$PIXELWISE_SERVE_SCREENSHOT``
when set: how docs/images/serve_page.png is made)."""

from __future__ import annotations

import base64
import io
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"no browser at {CHROMIUM}: apt-get install chromium (Debian's package)"
    ),
]
pytest.importorskip("fastapi", reason="pixelwise serve needs the [serve] extra: pip install -e '.[serve]'")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the page test drives chromium with Playwright: pip install playwright"
)

from pixelwise.config import load_config  # noqa: E402
from pixelwise.engine import Predictor, train  # noqa: E402
from pixelwise.serve import create_app, make_server  # noqa: E402

from .conftest import write_dataset  # noqa: E402
from .test_engine import toy_config  # noqa: E402


def stripes(width: int = 192, height: int = 128, seed: int = 0) -> np.ndarray:
    """Vertical bands of the toy data set's three class looks (class * 60 + noise), so each class is predicted."""
    rng = np.random.default_rng(seed)
    classes = (np.arange(width)[None, :] * 3 // width).repeat(height, 0)
    return (classes[..., None] * 60 + rng.integers(0, 30, (height, width, 3))).astype(np.uint8)


@pytest.fixture
def served(tmp_path):
    """A toy model (the toy_run fixture's code) served by uvicorn on 127.0.0.1 in a thread: (url, checkpoint)."""
    root = write_dataset(tmp_path / "data").parent
    train(load_config(toy_config(tmp_path, iters=30, eval_interval=30)), run_dir=tmp_path / "run", data_root=root,
          progress=False)  # fmt: skip
    checkpoint = tmp_path / "run" / "best.pt"
    server, sock = make_server(create_app(checkpoint), "127.0.0.1", 0, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", checkpoint
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def test_the_page_segments_an_upload(served, tmp_path):
    url, checkpoint = served
    fixture = tmp_path / "street.png"
    Image.fromarray(stripes()).save(fixture)
    predictor = Predictor(checkpoint)
    [image] = predictor.read(fixture)
    mask = predictor.predict(image)
    counts = np.bincount(mask.ravel(), minlength=len(predictor.classes))
    present = [predictor.classes[i] for i in np.argsort(-counts, kind="stable") if counts[i] > 0]

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            sync_api.expect(page.locator("#model")).to_contain_text("unet")

            page.set_input_files("#file", str(fixture))
            page.wait_for_function(
                "document.querySelector('#overlay').complete && document.querySelector('#overlay').naturalWidth > 0 "
                "&& document.querySelectorAll('#legend li').length > 0"
            )
            assert page.locator("#result").is_visible() and page.locator("#overlay").is_visible()
            assert page.eval_on_selector("#overlay", "e => [e.naturalWidth, e.naturalHeight]") == [192, 128]
            assert page.locator("#legend li .name").all_inner_texts() == present
            swatches = page.locator("#legend li .swatch").evaluate_all(
                "els => els.map(e => getComputedStyle(e).backgroundColor)"
            )
            palette = page.evaluate("fetch('/v1/model').then(r => r.json()).then(m => m.overlay_palette)")
            assert swatches == ["rgb({}, {}, {})".format(*palette[predictor.classes.index(name)]) for name in present]

            href = page.get_attribute("#download", "href")
            assert page.get_attribute("#download", "download") == "street_mask.png"
            assert href.startswith("data:image/png;base64,")
            downloaded = np.asarray(Image.open(io.BytesIO(base64.b64decode(href.split(",", 1)[1]))))
            np.testing.assert_array_equal(downloaded, mask)  # the download is the model's mask

            assert page.eval_on_selector("#overlay", "e => getComputedStyle(e).opacity") == "0.5"
            page.locator("#opacity").fill("60")
            assert page.eval_on_selector("#overlay", "e => getComputedStyle(e).opacity") == "0.6"
            assert page.inner_text("#opacity-value") == "60 %"
            page.locator("#opacity").press("ArrowLeft")
            assert page.eval_on_selector("#overlay", "e => getComputedStyle(e).opacity") == "0.59"

            page.wait_for_selector("#effect-controls", state="visible", timeout=30_000)  # not skipped if missing
            page.select_option("#effect", "blur")
            page.wait_for_function("document.querySelector('#effect-image').naturalWidth > 0")
            assert page.locator("#effect-figure").is_visible()
            assert page.inner_text("#effect-caption") == "effect: blur"

            shot = tmp_path / "serve_page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert Image.open(shot).size[0] >= 1100
            if os.environ.get("PIXELWISE_SERVE_SCREENSHOT"):
                shutil.copyfile(shot, os.environ["PIXELWISE_SERVE_SCREENSHOT"])

            # a bad upload: the server's one-line reason shown, the page still usable
            page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hi"}])
            sync_api.expect(page.locator("#status")).to_have_class("error")
            assert page.inner_text("#status").startswith("415: notes.txt is not an image:")
            # dropped on the drop zone instead of picked
            page.evaluate(
                """b64 => {
                    const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                    const data = new DataTransfer();
                    data.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
                    document.querySelector("#drop").dispatchEvent(
                        new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
                }""",
                base64.b64encode(fixture.read_bytes()).decode(),
            )
            sync_api.expect(page.locator("#status")).to_have_text(f"dropped.png: {len(present)} classes present")
            assert page.get_attribute("#download", "download") == "dropped_mask.png"
            assert errors == []
        finally:
            browser.close()
