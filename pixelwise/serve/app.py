"""The HTTP application of ``pixelwise serve``: a model loaded once, ``POST /v1/segment``, ``GET /v1/model``,
``GET /healthz`` and the web page at ``GET /``, with every limit enforced before work is done.

Every refusal is JSON ``{"error": "<one line>"}`` with a 4xx/5xx status; nothing a client sends stops the
server (a failure in one request is that request's 500, logged with its traceback)."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..argmax import class_argmax
from ..data import image_to_uint8
from ..engine.predictor import Predictor
from ..engine.video import image_probabilities
from ..errors import ConfigError, DataError, ResourceError
from ..fileio import file_sha256
from ..inference import InferenceSettings, effects
from ..models import input_channels
from ..models.registry import smallest_input
from ..visualize import colorize, instance_overlay, overlay, overlay_palette
from . import ip_literal
from .upload import RequestError, decode_upload, one_line, safe_name
from .worker import BoundedWorker, ClientGone, QueueFull

log = logging.getLogger(__name__)

OUTPUTS = ("mask", "color", "overlay", "image", "effect", "instances")
"""What ``?output=`` may ask for, each returned as a base64-encoded PNG (``instances`` under the key
``instance_overlay``)."""


@dataclass(frozen=True)
class ServeLimits:
    """What one request may cost. ``max_queue``: requests waiting behind the one running (more: 503);
    ``max_bytes``: request body (more: 413); ``max_pixels``: width x height of the image, read from its header
    (more: 413); ``timeout_s``: body upload, queue wait and prediction together (more: 408 while uploading, 504
    after)."""

    max_queue: int = 8
    max_bytes: int = 20 * 2**20
    max_pixels: int = 25_000_000
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_queue < 0:
            raise ConfigError(f"max_queue={self.max_queue}: must be >= 0")
        for name in ("max_bytes", "max_pixels", "timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)}: must be > 0")


@dataclass
class SegmentOptions:
    """The query of one ``POST /v1/segment``, checked before the upload is read."""

    outputs: tuple[str, ...] = ()
    alpha: float = 0.5
    effect: effects.Effect | None = None  # with ?output=effect


def png_base64(array: np.ndarray, compress_level: int = 1) -> str:
    """An ``H x W`` / ``H x W x 3`` / ``H x W x 4`` uint8 array as a base64-encoded PNG. Level 1: quicker to
    encode than Pillow's default level, for somewhat larger files (the worker's time is what limits throughput)."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=compress_level)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


class LoopbackHosts:
    """ASGI middleware for a server bound to a loopback address: a request whose ``Host`` header names another
    host is refused (400). A web page whose own name an attacker points at 127.0.0.1 (DNS rebinding) would
    otherwise read the model's answers and spend its CPU from the visitor's browser. Requests without a
    ``Host`` header (HTTP/1.0 tools; browsers always send one) pass, and so does any loopback address literal
    (``127.0.0.2``, ``[0:0:0:0:0:0:0:1]``: no page can rebind an address, and the bound one is among them)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    @staticmethod
    def allowed(host: str) -> bool:
        """Whether the ``Host`` header ``host`` (with or without a port) names this machine."""
        if host.startswith("["):  # [IPv6]:port, nothing after the bracket but the port
            name, bracket, rest = host[1:].partition("]")
            if not bracket or rest and not rest.startswith(":"):
                return False
        else:
            name = host.rsplit(":", 1)[0]
        address = ip_literal(name)
        return name.lower() == "localhost" if address is None else address.is_loopback

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if host and not self.allowed(host):
                response = error_response(
                    400,
                    f"host {host!r} is not this server's: it listens on a loopback address and answers requests "
                    "for localhost or 127.0.0.1 only (serve with --host 0.0.0.0 to be reached by other names)",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def request_limit(limits: ServeLimits) -> int:
    """Requests the app takes at once (each may hold an upload of up to ``max_bytes`` while its body is read):
    the running one and the queue's, twice over, and 16 for the page, /healthz and /v1/model."""
    return 16 + 2 * (1 + limits.max_queue)


class RequestLimit:
    """ASGI middleware: at most ``limit`` HTTP requests in the app at once; beyond, our JSON 503 with
    ``Retry-After`` at once, before the body is read (uvicorn's own limit, kept above this one as a backstop,
    answers in plain text, which clients expecting JSON, the page among them, cannot read)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit, self.active = app, limit, 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            response = error_response(
                503, f"server busy: {self.active} requests in progress, at most {self.limit}; retry later",
                {"Retry-After": "1"},
            )  # fmt: skip
            await response(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


class Segmenter:
    """A :class:`Predictor` and what the server says about it; :meth:`segment` is the job the worker runs."""

    def __init__(self, predictor: Predictor, limits: ServeLimits) -> None:
        self.predictor, self.limits = predictor, limits
        self.classes = predictor.classes
        self.palette = [list(map(int, c)) for c in predictor.meta["palette"]]
        self.contrast = overlay_palette(self.palette)  # what overlays are drawn with (grey palettes made vivid)
        self.instance_model = bool(predictor.instance_method.enabled)
        self.checkpoint = Path(predictor.checkpoint)
        self.sha256 = file_sha256(self.checkpoint)  # once: the file does not change under a running server
        self.min_side = self._min_side()

    def _min_side(self) -> int | None:
        try:
            return int(smallest_input(self.predictor.meta["model"]))
        except Exception:  # a model the registry cannot build on the meta device: the server still runs
            log.debug("no smallest input size for this model", exc_info=True)
            return None

    def describe(self) -> dict[str, Any]:
        """The body of ``GET /v1/model``."""
        meta = self.predictor.meta
        method = self.predictor.instance_method
        return {
            "name": meta["model"].get("name"),
            "classes": self.classes,
            "palette": self.palette,
            "overlay_palette": self.contrast,
            "input_channels": int(input_channels(meta["model"])),
            "image_mode": self.predictor.image_mode,
            "min_side": self.min_side,
            "checkpoint": self.checkpoint.name,
            "sha256": self.sha256,
            "backend": "onnxruntime" if getattr(self.predictor, "ckpt", None) is None else "torch",
            "inference": asdict(getattr(self.predictor, "inference", None) or InferenceSettings()),  # None: plain
            "instance_method": asdict(method) if self.instance_model else None,
            "thing_classes": self.predictor.thing_classes if self.instance_model else [],
            "outputs": [o for o in OUTPUTS if o != "instances" or self.instance_model],
            "effects": list(effects.EFFECTS),
            "limits": asdict(self.limits),
            "pixelwise": __version__,
        }

    # --- the query ------------------------------------------------------------------------------------------
    def options(self, query: Any) -> SegmentOptions:
        """:class:`SegmentOptions` from the query string; :class:`RequestError` 400 naming the bad parameter."""
        outputs: list[str] = []
        for value in query.getlist("output"):
            for item in value.split(","):
                item = item.strip().lower()
                if not item:
                    continue
                if item not in OUTPUTS:
                    raise RequestError(400, f"unknown output {item!r}; valid: {', '.join(OUTPUTS)}")
                if item == "instances" and not self.instance_model:
                    raise RequestError(
                        400, "output 'instances' needs an instance model; this one is semantic (ask for mask/overlay)"
                    )
                if item not in outputs:
                    outputs.append(item)
        options = SegmentOptions(outputs=tuple(outputs))
        if "alpha" in query:
            try:
                options.alpha = float(query["alpha"])
            except ValueError:
                options.alpha = float("nan")
            if not 0.0 <= options.alpha <= 1.0:  # NaN fails too
                raise RequestError(400, f"alpha={query['alpha']!r}: the overlay opacity must be a number in [0, 1]")
        if "effect" in outputs:
            options.effect = self._effect(query.get("effect", "blur"), query.get("foreground"))
        else:
            given = [key for key in ("effect", "foreground") if key in query]
            if given:  # as the CLI: a setting that would do nothing is refused, not ignored
                verb = "applies" if len(given) == 1 else "apply"
                raise RequestError(400, f"{' and '.join(given)} {verb} to output=effect: add it to ?output=")
        return options

    def _effect(self, spec: str, foreground: str | None) -> effects.Effect:
        """An :class:`~pixelwise.inference.effects.Effect` from ``?effect=`` (as ``--effect``) and
        ``?foreground=``. ``replace`` takes a colour only: a path would let a client read the server's files."""
        name, _, value = spec.partition("=")
        name, value = name.strip().lower(), value.strip()
        syntax = "blur[=SIGMA], replace=COLOUR, cutout, highlight[=OPACITY]"
        if name not in effects.EFFECTS or (value and name == "cutout"):
            raise RequestError(400, f"effect={spec!r}; valid: {syntax}")
        try:
            if foreground:
                fg = effects.parse_classes(foreground, self.classes, option="foreground")
            elif "background" in [c.lower() for c in self.classes] and len(self.classes) > 1:
                fg = effects.default_foreground(self.classes, name)
            else:
                raise RequestError(
                    400,
                    f"effect {name} needs ?foreground=CLASS[,CLASS...]; the model's classes are "
                    f"{effects.class_list(self.classes)}",
                )
            kwargs: dict[str, Any] = {"palette": self.contrast}  # the overlays' colours, as predict's highlight
            if name in ("blur", "highlight") and value:
                try:
                    kwargs["sigma" if name == "blur" else "opacity"] = float(value)
                except ValueError:
                    raise RequestError(400, f"effect={spec!r}: {value!r} is not a number; valid: {syntax}") from None
            if name == "replace":
                colour = effects.parse_colour(value) if value else None
                if colour is None:
                    raise RequestError(
                        400,
                        f"effect={spec!r}: give the background colour, e.g. replace=#00b140, replace=green (each "
                        "channel 0 to 255)",
                    )
                kwargs["background"], kwargs["background_source"] = colour, value
            return effects.Effect(name, fg, **kwargs)
        except ConfigError as e:
            message = str(e).replace("--effect ", "effect=").replace("--foreground", "foreground")
            raise RequestError(400, message) from None

    # --- the job ----------------------------------------------------------------------------------------------
    def segment(self, data: bytes, name: str, options: SegmentOptions) -> dict[str, Any]:
        """Decode, predict and draw one upload (runs on the worker thread)."""
        start = time.perf_counter()
        p = self.predictor
        image = decode_upload(
            data, name, p.image_mode, max_pixels=self.limits.max_pixels, image_range=getattr(p, "image_range", None)
        )
        h, w = image.shape[:2]
        sigma = getattr(options.effect, "sigma", None)
        if sigma is not None and sigma > max(h, w):  # the blur's kernel grows with it: bounded by the image
            raise RequestError(
                422, f"effect=blur={sigma:g}: the strength must be at most the image's longer side ({max(h, w)} px)"
            )
        found, probs = None, None
        try:
            if self.instance_model:
                found = p.predict_instances(image, name)
                mask = found.semantic.astype(np.uint8)
            elif options.effect is not None:  # as pixelwise predict --effect: the mask is the argmax of these
                probs = image_probabilities(p, image, name)
                mask = class_argmax(probs, 0).to(torch.uint8).cpu().numpy()
            else:
                mask = p.predict(image, name)
        except DataError as e:  # too small for the model's stride, too many instances...
            raise RequestError(422, str(e)) from None
        except ResourceError as e:  # more than the free memory takes, even in windows: not now, maybe later
            raise RequestError(503, str(e)) from None
        n = len(self.classes)
        counts = np.bincount(mask.ravel(), minlength=n)
        result: dict[str, Any] = {
            "width": int(w),
            "height": int(h),
            "classes": self.classes,
            "pixel_counts": [int(c) for c in counts[:n]],
        }
        if found is not None:
            per_class = np.bincount(found.classes.astype(np.int64), minlength=n)[:n] if found.classes.size else []
            result["instances"] = {
                "count": int(found.classes.size),
                "per_class": {self.classes[c]: int(k) for c, k in enumerate(per_class) if k},
            }
        wanted = set(options.outputs)
        if wanted:
            picture = image_to_uint8(image)
            color = colorize(mask, self.contrast)
            if "mask" in wanted:
                result["mask"] = png_base64(mask)
            if "color" in wanted:
                result["color"] = png_base64(color)
            if "image" in wanted:
                result["image"] = png_base64(picture)
            if "overlay" in wanted:
                result["overlay"] = png_base64(overlay(picture, color, options.alpha))
            if options.effect is not None:
                if probs is None:  # an instance model: the effect from its hard semantic mask
                    probs = torch.from_numpy(effects.one_hot(mask, n))
                result["effect"] = png_base64(options.effect.apply(picture, probs))
                result["effect_settings"] = options.effect.describe()
            if "instances" in wanted and found is not None:
                result["instance_overlay"] = png_base64(instance_overlay(picture, found.instances, options.alpha))
        result["time_ms"] = round(1000 * (time.perf_counter() - start), 1)
        return result


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """The image bytes and their name: the multipart field ``image`` (file name from the form), else the whole
    body (``upload``). The body is counted as it arrives and refused past ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdecimal() and len(declared.lstrip("0")) > 18:  # int(): 4300 digits at most
        raise RequestError(413, f"request body is over the limit of {max_bytes} bytes")
    if declared is not None and declared.isdecimal() and int(declared) > max_bytes:
        raise RequestError(413, f"request body is {int(declared)} bytes, over the limit of {max_bytes} bytes")
    chunks, total = [], 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes:  # a chunked body has no length up front
                raise RequestError(413, f"request body is over the limit of {max_bytes} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError(400, "the client disconnected before the body was complete") from None
    body = b"".join(chunks)
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        return body, "upload"

    async def replay() -> dict[str, Any]:  # the form parser reads the body we already hold
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
    except Exception as e:  # python-multipart's and Starlette's parse errors
        raise RequestError(400, f"malformed multipart form: {getattr(e, 'detail', None) or e}") from None
    try:
        part = form.get("image")
        if part is None:
            names = ", ".join(sorted(set(form.keys()))) or "none"
            raise RequestError(400, f"the multipart form has no field 'image' (its fields: {names})")
        if not isinstance(part, UploadFile):
            raise RequestError(400, "the form field 'image' is text; send the image file in it")
        return await part.read(), safe_name(part.filename)
    finally:
        await form.close()


async def disconnected(request: Request) -> None:
    """Returns once the client of ``request``, whose body has been read, has disconnected (the server's
    ``http.disconnect``, as Starlette's streaming responses listen for it). A server that cannot say never returns."""
    try:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    except Exception:  # a server whose receive fails here: the request is served as if its client stayed
        log.debug("cannot listen for the client's disconnection", exc_info=True)
        await asyncio.Event().wait()


def page_html() -> str:
    """The web page (``static/index.html`` in this package)."""
    return resources.files(__package__).joinpath("static", "index.html").read_text(encoding="utf-8")


def create_app(
    checkpoint: str | os.PathLike | Predictor,
    *,
    backend: str = "auto",
    device: str = "auto",
    amp: str = "none",
    inference: Any = None,
    crf: Any = None,
    max_queue: int = ServeLimits.max_queue,
    max_bytes: int = ServeLimits.max_bytes,
    max_pixels: int = ServeLimits.max_pixels,
    timeout_s: float = ServeLimits.timeout_s,
) -> FastAPI:
    """The FastAPI application serving one model: ``checkpoint`` (a ``.pt`` checkpoint, an ``.onnx`` file from
    ``pixelwise export``, or a :class:`Predictor` already loaded) is loaded here, once. ``backend``: ``"auto"``
    (onnxruntime for an ``.onnx`` file, else torch), ``"torch"`` or ``"onnxruntime"``; ``device``, ``amp``,
    ``inference`` and ``crf`` as :class:`Predictor`; the limits as :class:`ServeLimits`."""
    limits = ServeLimits(max_queue=max_queue, max_bytes=max_bytes, max_pixels=max_pixels, timeout_s=timeout_s)
    if isinstance(checkpoint, (str, os.PathLike)):
        predictor = Predictor(checkpoint, backend=backend, device=device, amp=amp, inference=inference, crf=crf)
    else:
        predictor = checkpoint
    segmenter = Segmenter(predictor, limits)
    worker = BoundedWorker(limits.max_queue)
    page = page_html()
    log.info(
        "model %s (%s, %d classes, sha256 %s) loaded; queue %d, body <= %d bytes, image <= %d pixels, %g s a request",
        segmenter.checkpoint,
        segmenter.describe()["name"],
        len(segmenter.classes),
        segmenter.sha256[:12],
        limits.max_queue,
        limits.max_bytes,
        limits.max_pixels,
        limits.timeout_s,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            worker.shutdown()

    # no /docs or /redoc: those pages load their scripts from a CDN, and the server should work offline
    app = FastAPI(title="pixelwise", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.segmenter, app.state.worker, app.state.limits = segmenter, worker, limits
    app.add_middleware(RequestLimit, limit=request_limit(limits))

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, e: RequestError) -> JSONResponse:
        return error_response(e.status, e.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        if e.status_code == 404:
            return error_response(404, f"no such path {request.url.path}; see GET / and GET /v1/model")
        if e.status_code == 405:
            allowed = {k.lower(): v for k, v in (e.headers or {}).items()}.get("allow", "POST")
            return error_response(
                405, f"{request.method} is not allowed on {request.url.path} (allowed: {allowed})", e.headers
            )
        return error_response(e.status_code, str(e.detail), e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(400, f"bad request: {e.errors()[0].get('msg', e) if e.errors() else e}")

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    @app.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz() -> JSONResponse:
        """Liveness: answers while a prediction runs (predictions run on the worker thread); 503 "not running"
        when the worker thread is not running, i.e. the app is served without its lifespan (which starts it). A
        shutdown never shows here: the server stops taking requests before the lifespan stops the worker."""
        body = {
            "status": "ok" if worker.running else "not running",
            "pending": worker.pending,
            "max_queue": limits.max_queue,
            "finished": worker.finished,
            "cancelled": worker.cancelled,
            "dropped": worker.dropped,
            "refused": worker.refused,
        }
        return JSONResponse(body, status_code=200 if worker.running else 503)

    @app.get("/v1/model")
    async def model_info() -> dict[str, Any]:
        return segmenter.describe()

    @app.post("/v1/segment")
    async def segment(request: Request) -> JSONResponse:
        """An image (multipart field ``image``, or the raw body) -> classes, pixel counts and the PNGs asked for
        with ``?output=``."""
        start = time.monotonic()
        options = segmenter.options(request.query_params)
        name = "upload"
        try:
            worker.check()  # before the body is read: a refused upload costs neither bandwidth nor memory
            try:
                data, name = await asyncio.wait_for(read_upload(request, limits.max_bytes), limits.timeout_s)
            except (asyncio.TimeoutError, TimeoutError):
                return error_response(408, f"the request body did not arrive within {limits.timeout_s:g} s")
            remaining = max(0.0, limits.timeout_s - (time.monotonic() - start))
            result = await worker.run(
                segmenter.segment, data, name, options, timeout=remaining, gone=lambda: disconnected(request)
            )
        except ClientGone as e:  # nobody reads the answer: a waiting job was dropped, a running one finishes
            log.info("%s a request to /v1/segment: %s", "abandoned" if e.started else "dropped", e)
            return error_response(499, f"client closed the request: {e}")  # (not sent: the connection has gone)
        except QueueFull as e:
            log.warning("refused a request: %s", e)
            return error_response(503, f"server busy: {e}; retry later", {"Retry-After": "1"})
        except TimeoutError:
            log.warning("a request ran past the limit of %g s", limits.timeout_s)
            return error_response(504, f"the prediction did not finish within the limit of {limits.timeout_s:g} s")
        except RequestError as e:
            log.info("refused %s: %d %s", name, e.status, e.message)
            return error_response(e.status, e.message)
        except Exception as e:  # a bug or an exhausted machine: this request's 500, never the server's end
            log.exception("segmenting %s failed", name)
            return error_response(500, f"internal error: {type(e).__name__}: {e}")
        return JSONResponse(result)

    return app
