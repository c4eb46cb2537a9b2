"""ONNX export (the onnxruntime backend that runs the result: :mod:`pixelwise.inference.onnx_backend`).

``export_onnx`` writes the model with a dynamic batch, height and width (where the model allows;
verified by running onnxruntime at a second, odd size), stores the checkpoint's metadata (classes,
palette, normalisation, model) in the ONNX file's ``metadata_props``, and reports the largest
absolute difference between onnxruntime's and PyTorch's logits.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .crf import settings_for
from .errors import ConfigError, PixelwiseError, ResourceError
from .fileio import check_output_file
from .inference.onnx_backend import META_KEY, onnxruntime_module
from .models import input_channels, load_checkpoint, model_from_checkpoint, model_logits
from .models.registry import input_size_problem

DEFAULT_OPSET = 17
EXPORTERS = ("torchscript", "dynamo")
DYNAMO_MIN_OPSET = 18
"""The lowest opset the dynamo exporter writes (asked for less, it writes 18)."""
log = logging.getLogger(__name__)


class LogitsOnly(torch.nn.Module):
    """``model(x)`` as one tensor: the exported graph's single input and output."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return model_logits(self.model, x)


INSTANCE_OUTPUTS = ("logits", "center", "offset")


class InstanceOutputs(torch.nn.Module):
    """A model with a Panoptic-DeepLab instance branch as the graph's three outputs: the semantic logits, the
    centre heatmap and the offsets. The post-processing (centre NMS, grouping, class vote) stays in torch:
    :func:`pixelwise.inference.panoptic_postprocess` runs on onnxruntime's outputs (``predict --backend
    onnxruntime``); :class:`pixelwise.inference.PanopticPostProcess` exports on its own where a graph must
    hold it."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(x)
        return out["out"], out["center"], out["offset"]


def _graph(model: torch.nn.Module, meta: dict[str, Any]) -> tuple[torch.nn.Module, tuple[str, ...]]:
    """The module to export and its output names: the logits, plus the instance branch's outputs."""
    if meta["model"].get("instance_head"):
        return InstanceOutputs(model).eval(), INSTANCE_OUTPUTS
    return LogitsOnly(model).eval(), ("logits",)


def _export(
    model: torch.nn.Module, x: torch.Tensor, out: Path, opset: int, dynamic: bool, exporter: str, meta: dict[str, Any]
) -> None:
    model, outputs = _graph(model, meta)
    names = {"input_names": ["image"], "output_names": list(outputs)}
    with warnings.catch_warnings(), torch.no_grad(), _quiet():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dims = None
            if dynamic:
                dims = {"x": {i: torch.export.Dim(n) for i, n in ((0, "batch"), (2, "height"), (3, "width"))}}
            torch.onnx.export(
                model, (x,), str(out), dynamo=True, opset_version=opset, dynamic_shapes=dims, verbose=False, **names
            )
        elif exporter == "torchscript":
            axes = {name: {0: "batch", 2: "height", 3: "width"} for name in ("image", *outputs)}
            torch.onnx.export(
                model,
                (x,),
                str(out),
                dynamo=False,
                opset_version=opset,
                dynamic_axes=axes if dynamic else None,
                **names,
            )
        else:
            raise PixelwiseError(f"exporter {exporter!r}; valid: {', '.join(EXPORTERS)}")


@contextlib.contextmanager
def _quiet():
    """The exporters' own printing off (a failed dynamo attempt prints its whole graph, onnxscript tracebacks):
    an attempt that fails is reported in one line (``"failures"``)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    # the TorchScript exporter prints from C++, past sys.stdout: the process's own descriptors are swapped (where it
    # has them: without, only Python's own streams are)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:
        saved = []
    try:
        with tempfile.TemporaryFile() as sink:
            for fd in (1, 2) if saved else ():
                os.dup2(sink.fileno(), fd)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        for fd, copy in zip((1, 2), saved, strict=False):
            os.dup2(copy, fd)
            os.close(copy)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _file_opset(path: Path) -> int:
    """The ONNX operator set the file was written with (the dynamo exporter may raise the one asked for)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _add_metadata(path: Path, meta: dict[str, Any]) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    entry = model.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    onnx.save(model, str(path))


def export_onnx(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    height: int = 512,
    width: int = 512,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
    exporter: str = "torchscript",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export a checkpoint's model to ONNX and check it with onnxruntime. Returns a report:
    ``{"out", "opset", "exporter", "dynamic", "max_abs_diff": {"NxHxW": value, ..., "relative": r}}``.
    If the graph does not take other sizes (or an op lacks dynamic-shape support), it is exported
    with the fixed example size, then with the other exporter; ``"failures"`` says why. ``out`` appears only
    once the graph has passed the check (an existing file is replaced only with ``overwrite``)."""
    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise PixelwiseError(f"ONNX export needs {', '.join(missing)}: pip install 'pixelwise[onnx]'")
    from torch.onnx import _constants

    low, high = _constants.ONNX_MIN_OPSET, _constants.ONNX_MAX_OPSET
    # the messages name the argument and the CLI's flag: a Python caller gave one, a shell user the other
    if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
        # an opset no exporter writes failed both ways and fell back to a fixed-size graph of another opset
        raise ConfigError(
            f"opset={opset!r} (--opset): torch's exporters write opsets {low} to {high} (whole numbers); "
            f"{DEFAULT_OPSET} by default"
        )
    if exporter not in EXPORTERS:
        # a misspelt one failed every attempt but the fallback's, which wrote a fixed-size graph of the other
        raise ConfigError(f"exporter={exporter!r} (--exporter); valid: {', '.join(EXPORTERS)}")
    if exporter == "dynamo" and opset < DYNAMO_MIN_OPSET:
        raise ConfigError(
            f"opset={opset} (--opset): the dynamo exporter writes opsets {DYNAMO_MIN_OPSET} and up; give "
            f"{DYNAMO_MIN_OPSET} or more, or exporter='torchscript' (--exporter torchscript)"
        )
    out = Path(out)
    check_output_file(out, "--out", overwrite, folder_hint=f"give the ONNX file's name (e.g. {out / 'model.onnx'})")
    ckpt = load_checkpoint(checkpoint)
    meta = ckpt["meta"]
    problem = "sizes are positive" if min(height, width) < 1 else input_size_problem(meta["model"], height, width)
    if problem is not None:
        raise ConfigError(f"--size {height} {width}: {problem}; give a larger example size")
    model = model_from_checkpoint(ckpt, str(checkpoint)).float().eval()
    # built and checked beside out, then renamed over it: a failed export leaves nothing unchecked behind
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    except OSError as e:
        raise PixelwiseError(
            f"--out {out}: cannot write in {out.parent} ({e.strerror}); choose another folder"
        ) from None
    try:
        report = _export_checked(model, meta, work / out.name, height, width, opset, dynamic, exporter)
        # the run's inference protocol travels with the graph (the onnxruntime backend runs it as the checkpoint
        # would)
        protocol = (ckpt.get("config") or {}).get("inference")
        # and the CRF parameters --crf uses with the checkpoint (crf-search's, beside it), wherever the file goes
        crf = asdict(settings_for(checkpoint, (ckpt.get("config") or {}).get("crf")))
        onnx_meta = {k: report[k] for k in ("opset", "dynamic")}
        # the class weights the checkpoint resolves (older ones from their run: config, class_weights.json beside
        # it), which the protocol's class_weight_correction divides by: the file is read away from the run
        weights = _class_weights(meta, checkpoint, ckpt.get("config"), protocol)
        if not report["dynamic"]:
            _say_fixed_size_problem(out, protocol, weights, height, width, asked_static=not dynamic)
        _add_metadata(work / out.name, {**meta, **weights, "inference": protocol, "crf": crf, "onnx": onnx_meta})
        # a graph over 2 GB keeps its weights in files beside it, which it names relative to itself: they go first
        sidecars = sorted(f for f in work.iterdir() if f.name != out.name)
        taken = [out.parent / f.name for f in sidecars if (out.parent / f.name).exists()]
        if taken and not overwrite:
            raise PixelwiseError(
                f"the graph keeps its weights beside it in {taken[0]}, which exists: pass --overwrite to replace it, "
                "or choose another --out"
            )
        for sidecar in sidecars:
            os.replace(sidecar, out.parent / sidecar.name)
        os.replace(work / out.name, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"out": str(out), **report}


def _class_weights(
    meta: dict[str, Any], checkpoint: str | os.PathLike, config: dict[str, Any] | None, protocol: Any
) -> dict[str, Any]:
    """``{"class_weights": ...}`` for the file's metadata where the checkpoint's meta lacks them (runs from before
    they were recorded) and its run resolves them (:func:`~pixelwise.engine.predictor.recorded_class_weights`, as
    predicting with the checkpoint does), or says it trained without; else nothing (warned where the protocol's
    class weight correction needs them)."""
    from .engine.predictor import recorded_class_weights

    if "class_weights" in meta:
        return {}
    weights = recorded_class_weights(meta, checkpoint, config)
    method = ((config or {}).get("train") or {}).get("class_weights")
    if weights is not None or method is None:
        return {"class_weights": weights}
    if isinstance(protocol, dict) and protocol.get("class_weight_correction"):
        log.warning(
            "%s trained with class weights (%s) its meta does not record, and no class_weights.json of them is "
            "beside it: the ONNX file records none, and predicting with it needs --class-weight-correction 0",
            checkpoint, method,
        )  # fmt: skip
    return {}


def _say_fixed_size_problem(
    out: Path, protocol: Any, weights: dict[str, Any], height: int, width: int, asked_static: bool
) -> None:
    """One warning where the run's inference protocol is one a graph of one size cannot run (several scales,
    quarter turns of a non-square size): the onnxruntime backend refuses it unless predict leaves that out."""
    from .engine.predictor import run_inference
    from .inference.onnx_backend import fixed_size_problem

    try:
        settings = run_inference(protocol if isinstance(protocol, dict) else None, None, weights.get("class_weights"))
    except ConfigError:  # a protocol predict refuses anyway, saying why
        return
    problem = fixed_size_problem(settings, (height, width))
    if problem is None:
        return
    what, flags, _ = problem
    how = "--static" if asked_static else "the model exports at one size only"
    fix = "export without --static" if asked_static else "predict with the checkpoint"
    log.warning(
        "%s takes one size (%dx%d, %s): the run's inference protocol %s; predict it with %s, or %s",
        out, height, width, how, what, flags, fix,
    )  # fmt: skip


def _export_checked(
    model: torch.nn.Module,
    meta: dict[str, Any],
    out: Path,
    height: int,
    width: int,
    opset: int,
    dynamic: bool,
    exporter: str,
) -> dict[str, Any]:
    """Export to ``out`` and check with onnxruntime, falling back to a fixed size and the other exporter."""
    in_channels = input_channels(meta["model"])
    torch.manual_seed(0)
    try:
        x = torch.randn(1, in_channels, height, width)
    except (RuntimeError, MemoryError) as e:  # DefaultCPUAllocator: can't allocate ...
        raise ResourceError(
            f"--size {height} {width}: not enough memory for an example image of this size ({str(e).strip()[:80]}); "
            "give a smaller one (a dynamic graph takes other sizes)"
        ) from None
    # a second, odd size checks that the graph takes others (smaller where the model takes it)
    smaller = height > 13 and input_size_problem(meta["model"], height - 13, width + 7) is None
    other_height = height - 13 if smaller else height + 13
    sizes = [(1, height, width)] + ([(2, other_height, width + 7)] if dynamic else [])
    other = "dynamo" if exporter == "torchscript" else "torchscript"
    attempts = [(exporter, True), (exporter, False), (other, False)] if dynamic else [(exporter, False), (other, False)]
    # the dynamo exporter writes 18 at the lowest: a fallback from the default 17 to it is kept (with a warning),
    # an older opset asked for (a runtime that reads no newer) is not silently raised past it
    attempts = [(how, dyn) for how, dyn in attempts if how != "dynamo" or opset >= DEFAULT_OPSET]
    failures = []
    for how, dyn in attempts:
        try:
            _export(model, x, out, opset, dyn, how, meta)
            diffs = verify_onnx(_graph(model, meta)[0], out, in_channels, sizes if dyn else sizes[:1])
            break
        except Exception as e:  # an op without (dynamic-shape) support, or a graph that fixed the export size
            failures.append(f"{how}{' dynamic' if dyn else ''}: {type(e).__name__}: {str(e).strip()[:160]}")
    else:
        higher = f"; a higher --opset ({DEFAULT_OPSET} by default) may express it" if opset < DEFAULT_OPSET else ""
        raise PixelwiseError(
            f"ONNX export of {meta['model']['name']} at opset {opset} failed: " + " | ".join(failures) + higher
        )
    written = _file_opset(out)
    if written != opset:
        log.warning("the %s exporter wrote ONNX opset %d, not the %d asked for", how, written, opset)
    outputs = list(_graph(model, meta)[1])
    report = {"opset": written, "exporter": how, "dynamic": dyn, "outputs": outputs, "max_abs_diff": diffs}
    if failures:
        report["failures"] = failures
    return report


def verify_onnx(
    model: torch.nn.Module, path: Path, in_channels: int, sizes: list[tuple[int, int, int]]
) -> dict[str, float]:
    """Largest |onnxruntime - PyTorch| over the outputs (the logits; also the instance branch's), per input
    size ``(batch, H, W)``; ``model`` is the exported module (:class:`LogitsOnly` or :class:`InstanceOutputs`)."""
    ort = onnxruntime_module()
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a graph it cannot run is an attempt's failure, said once in one line
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    diffs: dict[str, float] = {}
    relative = 0.0
    for n, h, w in sizes:
        x = torch.randn(n, in_channels, h, w)
        with torch.no_grad():
            refs = model(x)
        refs = [r.numpy() for r in (refs if isinstance(refs, tuple) else (refs,))]
        gots = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        key = f"{n}x{h}x{w}"
        diffs[key] = 0.0
        for got, ref in zip(gots, refs, strict=True):
            if got.shape != ref.shape:
                raise RuntimeError(f"onnxruntime output {got.shape} != PyTorch {ref.shape} at {key}")
            diff = float(np.abs(got - ref).max())
            diffs[key] = max(diffs[key], diff)
            relative = max(relative, diff / max(float(np.abs(ref).max()), 1e-12))
        if relative > 1e-3:
            raise RuntimeError(f"onnxruntime's outputs differ from PyTorch's at {key} (relative {relative:.1e})")
    return {**diffs, "relative": relative}
