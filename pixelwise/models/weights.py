"""Every way weights come into a model: pixelwise checkpoints, local state-dict files (``.pth``/``.pt``
read with ``torch.load(weights_only=True)``, or ``.safetensors``), torchvision's and timm's key layouts and
downloads, and partial initialisation. Nothing here unpickles code.

A pixelwise checkpoint is a dict of plain types and tensors::

    {"format": "pixelwise", "version": 1,
     "model": state_dict,
     "meta": {"model": {"name": ..., **builder_kwargs}, "model_defaults": {the builder's defaults at training},
              "classes": [...], "palette": [...], "ignore_index": 255, "mean": [...], "std": [...], "dataset": ...},
     "config": the resolved run config,
     # in last.pt only, for --resume (pixelwise.engine.resume):
     "train_state": {...}, "optimizer": ..., "scheduler": ..., "scaler": ..., "rng": ...}
"""

from __future__ import annotations

import logging
import os
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, PixelwiseError, ResourceError, first_line
from ..fileio import atomic_write
from .registry import build_model, model_arguments, without_pretrained

log = logging.getLogger(__name__)

FORMAT = "pixelwise"
VERSION = 1
Pretrained = bool | str | os.PathLike | None


# --- reading files --------------------------------------------------------------------------------
# what torch.save wrote before its zip format (PyTorch < 1.6, or _use_new_zipfile_serialization=False): a pickled
# magic number first
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _is_legacy_torch_file(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(_LEGACY_MAGIC)) == _LEGACY_MAGIC
    except OSError:
        return False


# a file the user may not read fails as a PermissionError in the reader: not a format problem
_NOT_READABLE = "permission denied: make it readable (chmod u+r) or give a copy you can read"


def _why_unreadable(path: Path, error: Exception) -> str:
    """Our own reason for a failed ``torch.load``: torch's messages for these cases advise turning
    ``weights_only`` off, which pixelwise never does nor suggests."""
    if isinstance(error, PermissionError):
        return _NOT_READABLE
    if path.suffix.lower() == ".onnx":
        return (
            "it is an ONNX file, not a checkpoint: predict and serve run it (--backend onnxruntime); eval, export "
            "and crf-search need the run's .pt"
        )
    text = str(error)
    if _is_legacy_torch_file(path) and "Weights only load failed" in text:
        pass  # a legacy (pre-1.6, non-zip) torch file holding objects: the reason below
    elif not zipfile.is_zipfile(path):
        # torch.save writes zip archives; anything else that fails to load (random bytes fail in many ways, e.g.
        # "pop from empty list" from the unpickler) is no PyTorch file, or a truncated one
        return "it is not a PyTorch file (truncated, or another format)"
    if "Weights only load failed" in text or "weights_only" in text:
        return (
            "it holds Python objects besides tensors and plain types (a pickled model or optimizer?), and "
            "pixelwise never unpickles code: save a state dict (model.state_dict()) or a pixelwise checkpoint"
        )
    return first_line(error)


def torch_load(path: str | os.PathLike, what: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain types only; any failure (a truncated
    file, a pickle of other objects, not a torch file) is a one-line :class:`CheckpointError`."""
    path = Path(path).expanduser()  # a config's "~/weights.pth", as data.root
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a folder: give the file in it (e.g. {path / 'best.pt'})")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    damaged = _damaged_record(path)
    if damaged:
        raise CheckpointError(
            f"cannot load {what} {path}: its bytes are damaged ({damaged}; a disk or copy error): use a good copy, "
            "or an earlier checkpoint"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes on foreign files
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot load {what} {path}: {_why_unreadable(path, e)}") from None


def _damaged_record(path: Path) -> str | None:
    """What is damaged in a torch zip file (the first record whose bytes fail their CRC-32), else None.
    ``torch.load`` does not check them, so bytes damaged inside a tensor loaded as other weights without a word;
    the check reads the file once more. Files that are no zip archive are left to ``torch.load``."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0:  # torch.serialization.set_crc32_options(False): written without checksums
                    continue
                try:
                    with archive.open(info) as record:
                        while record.read(1 << 24):  # zipfile checks the CRC-32 at the record's end
                            pass
                except zipfile.BadZipFile:
                    return f"record {info.filename} fails its checksum"
        return None
    except zipfile.BadZipFile as e:
        return first_line(e) if zipfile.is_zipfile(path) else None
    except (OSError, EOFError, zipfile.LargeZipFile, NotImplementedError):
        return None  # unreadable, or a zip form testzip cannot follow: torch.load's own reason below


def read_state_file(path: str | os.PathLike, what: str = "pretrained_backbone") -> dict[str, torch.Tensor]:
    """A state dict of tensors from a local file (``.safetensors``, or a torch file whose dict may wrap it
    under ``state_dict`` or ``model``); ``module.`` prefixes (DataParallel) are removed."""
    path = Path(path).expanduser()  # a config's "~/weights.pth", as data.root
    if path.suffix.lower() == ".safetensors":
        if not path.is_file():
            raise CheckpointError(f"{what} {path} does not exist")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path))
        except PermissionError:
            raise CheckpointError(f"cannot load {what} {path}: {_NOT_READABLE}") from None
        except (SafetensorError, OSError) as e:
            raise CheckpointError(
                f"cannot load {what} {path}: it is not a safetensors file (truncated, or another format: "
                f"{first_line(e)})"
            ) from None
    else:
        state = torch_load(path, what)
    return _state_dict(state, f"{what}: {path} holds no state dict of tensors")


def _state_dict(raw: Any, failure: str) -> dict[str, torch.Tensor]:
    """The state dict in ``raw``, unwrapped from ``state_dict`` or ``model`` (Lightning, many training scripts)
    and without DataParallel's ``module.`` prefixes; a CheckpointError saying ``failure`` otherwise."""
    for key in ("state_dict", "model"):  # common wrappers
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(failure)
    return {k.removeprefix("module."): v for k, v in raw.items()}


# --- pixelwise checkpoints ------------------------------------------------------------------------
META_KEYS = ("model", "classes", "palette", "mean", "std")  # what eval, predict, export and serve read


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    """Write a checkpoint atomically (:func:`pixelwise.fileio.atomic_write`)."""
    try:
        atomic_write(path, lambda f: torch.save({"format": FORMAT, "version": VERSION, **checkpoint}, f))
    except RuntimeError as e:
        # torch's zip writer reports a short write (a full disk, a file size limit) as a RuntimeError of its own
        if "inline_container" not in str(e):
            raise
        raise ResourceError(
            f"{path}: the checkpoint could not be written whole ({first_line(e)}): free some space there (a full "
            "disk or a file size limit), or choose another place"
        ) from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a pixelwise checkpoint safely (``weights_only=True``); CheckpointError if it is not one."""
    ckpt = torch_load(path, "checkpoint", map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt or "meta" not in ckpt:
        raise CheckpointError(f"{path} is not a pixelwise checkpoint (no 'format': 'pixelwise' / 'model' / 'meta')")
    meta = ckpt["meta"]
    lacking = [k for k in META_KEYS if not isinstance(meta, dict) or k not in meta]
    if lacking:
        raise CheckpointError(
            f"{path}: its meta lacks {', '.join(lacking)} (a checkpoint written by hand or by another tool?); "
            f"a pixelwise checkpoint's meta holds {', '.join(META_KEYS)}"
        )
    # every reader of the spec (input channels, size checks, the model itself) sees what the run was built with
    ckpt["meta"]["model"] = checkpoint_model_spec(ckpt["meta"])
    return ckpt


def checkpoint_model_spec(meta: dict[str, Any]) -> dict[str, Any]:
    """The builder arguments a checkpoint's model was trained with: its spec (``meta["model"]``) over the builder
    defaults recorded at training (``meta["model_defaults"]``; runs from before that record read today's), so a
    default changed since cannot change the model an old checkpoint builds."""
    spec = dict(meta["model"])
    try:
        valid = model_arguments(spec.get("name", ""))
    except PixelwiseError:  # a model no longer registered: building it will say so
        return spec
    recorded = {k: v for k, v in (meta.get("model_defaults") or {}).items() if k in valid}
    if spec.get("rates") == [] and "rates" in valid and spec.get("name", "").startswith("deeplabv3"):
        # DeepLab v3/v3+ took an empty list for the default rates (and trained with them) before it was refused
        del spec["rates"]
    return {**recorded, **spec}


def model_from_checkpoint(ckpt: dict[str, Any], source: str = "checkpoint") -> nn.Module:
    """Rebuild the model recorded in ``ckpt['meta']`` (:func:`checkpoint_model_spec`) and load its weights (eval
    mode)."""
    # the checkpoint's weights replace the backbone's
    model = build_model(**without_pretrained(checkpoint_model_spec(ckpt["meta"])))
    load_weights(model, ckpt["model"], source)
    return model.eval()


# --- loading a state dict into a module -----------------------------------------------------------
def _adapt_input_conv(value: torch.Tensor, channels: int) -> torch.Tensor:
    """An RGB first conv for ``channels`` inputs: summed for 1 channel, repeated and rescaled for more."""
    if channels == 1:
        return value.sum(1, keepdim=True)
    return value.repeat(1, -(-channels // 3), 1, 1)[:, :channels] * 3 / channels


def load_state_dict(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    source: str,
    strict: bool = True,
    skip_mismatched: bool = False,
    adapt_input_channels: bool = False,
) -> dict[str, list[str]]:
    """Load ``state`` into ``module`` with one-line errors naming ``source``.

    - ``strict``: missing or unexpected keys are errors; otherwise only the keys both have are loaded
      (at least one must be), and the rest is reported in the log.
    - ``skip_mismatched``: tensors whose shape differs are skipped (reported) instead of an error, e.g. the
      classifier of weights trained for another number of classes.
    - ``adapt_input_channels``: a 4-D tensor made for 3 input channels is adapted to the module's (an RGB
      first conv for grey or multi-channel images).

    Returns ``{"missing", "unexpected", "skipped"}`` key lists."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if strict and not skip_mismatched and (missing or unexpected):
        raise CheckpointError(
            f"{source} does not fit the model: {len(missing)} missing key(s) {missing[:3]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:3]}"
        )
    # the classifiers: the last weight/bias pair of the model and of each of its parts (an aux head's, the semantic
    # head's of a model whose instance head comes last)
    parts = [("", module), *((f"{name}.", child) for name, child in module.named_children())]
    classifier = {
        prefix + k
        for prefix, part in parts
        for k in [k for k in part.state_dict() if k.endswith(("weight", "bias"))][-2:]
    }
    usable, skipped = {}, []
    for key, value in state.items():
        if key not in own:
            continue
        target = own[key].shape
        if adapt_input_channels and value.dim() == 4 and len(target) == 4 and value.shape[1] == 3 != target[1]:
            value = _adapt_input_conv(value, target[1])
        if value.shape != target:
            if skip_mismatched:
                skipped.append(key)
                continue
            hint = ""
            if key in classifier and value.shape[1:] == target[1:]:
                hint = f" (a checkpoint for {value.shape[0]} classes, a model for {target[0]})"
            raise CheckpointError(
                f"{source} does not fit the model: {key} has shape {tuple(value.shape)} in the weights, "
                f"{tuple(target)} in the model{hint}"
            )
        usable[key] = value
    if not usable:
        raise CheckpointError(
            f"{source}: none of its {len(state)} tensors fits the model (keys like "
            f"{list(state)[:2]}, the model has {list(own)[:2]})"
        )
    module.load_state_dict(usable, strict=False)
    report = {"missing": sorted(set(own) - set(usable)), "unexpected": unexpected, "skipped": sorted(skipped)}
    if report["missing"] or report["unexpected"] or report["skipped"]:
        log.info(
            "%s: %d tensors loaded; skipped %d %s; unexpected %d %s; left as initialised %d %s",
            source,
            len(usable),
            len(report["skipped"]),
            report["skipped"][:4],
            len(unexpected),
            unexpected[:4],
            len(report["missing"]),
            report["missing"][:4],
        )
    return report


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict loading: every key and shape must match (a class-count mismatch is named as such)."""
    load_state_dict(model, state, source=source)


def load_state(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    what: str = "pretrained_backbone",
    complete: bool = True,
    layout: Callable[[dict[str, torch.Tensor], dict[str, Any]], dict[str, torch.Tensor]] | None = None,
) -> None:
    """Pretrained weights into a backbone or head: the keys both have (a classifier ``fc.*`` the module lacks is
    fine), an RGB first conv adapted to the module's input channels. ``complete``: every parameter and batch-norm
    statistic of the module must be in ``state``, and no tensor of a module it has may be left over (a file of
    another depth or model would leave layers at random). A whole segmentation model's weights (a pixelwise
    checkpoint: ``backbone.*``; smp's: ``encoder.*``; Lightning's ``model.*``) give their backbone's. ``layout``
    maps a state dict's keys to the module's (:func:`timm_features_layout`), after any such prefix is taken off."""
    own_state = module.state_dict()
    own = set(own_state)
    if layout is not None:
        state = layout(state, own_state)
    if not own & set(state):
        # the longest first: a timm backbone's weights sit under backbone.body. in a pixelwise model
        prefixes = (
            "model.backbone.body.",
            "backbone.body.",
            "model.backbone.",
            "model.encoder.",
            "backbone.",
            "encoder.",
        )
        for prefix in (*prefixes, "model."):
            inner = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            if layout is not None:
                inner = layout(inner, own_state)
            if own & set(inner):
                log.info("%s: the weights under %r (a whole model's backbone)", what, prefix)
                state = inner
                break
    result = load_state_dict(module, state, source=what, strict=False, adapt_input_channels=True)
    if not complete:
        return
    # every parameter and batch-norm statistic (a file of parameters alone left the running statistics at 0 and
    # 1: another network in eval mode); batch counts are not in older files and weigh nothing
    needed = [k for k in own_state if not k.endswith("num_batches_tracked")]
    missing = [k for k in result["missing"] if k in needed]
    if missing:
        raise CheckpointError(
            f"{what} lacks {len(missing)} of the {len(needed)} tensors of the {type(module).__name__} it is "
            f"for (e.g. {', '.join(missing[:3])}): weights of another model or depth, or parameters without their "
            "batch-norm statistics? give that backbone's own whole state dict"
        )
    # keys under a module the backbone has but that it lacks (layer3.6. of a ResNet-101 in a ResNet-50): another
    # depth; keys under modules it has none of are the classifier or head a backbone drops (fc., head., conv_head.)
    parts = {k.split(".")[0] for k in own}
    deeper = [k for k in result["unexpected"] if k.split(".")[0] in parts]
    if deeper:
        raise CheckpointError(
            f"{what} has {len(deeper)} tensors the {type(module).__name__} it is for lacks (e.g. "
            f"{', '.join(deeper[:3])}): weights of a deeper or other model? give that backbone's own file"
        )


def init_weights(model: nn.Module, path: str | os.PathLike, *, partial: bool = False) -> None:
    """``train.init_from``: a pixelwise checkpoint, a torchvision DeepLab v3 state dict or a plain state dict
    in the model's own layout (``.safetensors`` too; wrapped under ``state_dict``/``model``, ``module.`` prefixes
    removed, as for ``pretrained_backbone``). ``partial=True`` skips tensors whose shape differs (reported)."""
    what = "train.init_from"
    path = Path(path).expanduser()
    raw = read_state_file(path, what) if path.suffix.lower() == ".safetensors" else torch_load(path, what)
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        state = raw["model"]
    elif isinstance(raw, dict) and is_torchvision_deeplabv3(raw):
        state = map_torchvision_deeplabv3(raw)
    else:  # a plain state dict, maybe wrapped or from DDP, as pretrained_backbone takes it
        state = _state_dict(raw, f"{what}: {path} is neither a pixelwise checkpoint nor a state dict")
    load_state_dict(model, state, source=f"{what} {path}", skip_mismatched=partial)


# --- pretrained backbones -------------------------------------------------------------------------
def _torchvision_state(name: str) -> dict[str, torch.Tensor]:
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        return weights.get_state_dict(progress=True)
    except Exception as e:
        raise PixelwiseError(
            f"could not download torchvision's pretrained weights for {name} ({type(e).__name__}: {e}); "
            f"offline, pass a local file: pretrained_backbone=/path/to/{name}.pth"
        ) from None


def read_pretrained(pretrained: Pretrained, torchvision_name: str | None = None) -> dict[str, torch.Tensor]:
    """``True``: torchvision's ImageNet weights for ``torchvision_name`` (downloaded once to the torch
    hub cache); a path: a local state dict in torchvision or timm key layout (:func:`read_state_file`)."""
    if pretrained is True:
        if torchvision_name is None:
            raise PixelwiseError("this backbone downloads its weights through timm")
        return {k.removeprefix("module."): v for k, v in _torchvision_state(torchvision_name).items()}
    return read_state_file(Path(pretrained), "pretrained_backbone")


def timm_features_layout(state: dict[str, torch.Tensor], own: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A timm model's state dict in the key layout of its ``features_only`` version, which flattens module
    lists (``blocks.0.x`` -> ``blocks_0.x``) or, for models it wraps (timm's ``FeatureGetterNet``: twins, hiera),
    holds the whole model under ``model.``."""
    out = {}
    for key, value in state.items():
        fits = [k for k in (key, key.replace(".", "_", 1), f"model.{key}") if k in own]
        out[fits[0] if fits else key] = value
    return out


# --- torchvision's DeepLab v3 ---------------------------------------------------------------------
# torchvision DeepLabV3 -> pixelwise DeepLabV3 (built with head_conv=True), by key prefix
_TORCHVISION_PREFIXES = (
    ("classifier.0.", "aspp."),
    ("classifier.1.", "head_conv.0."),
    ("classifier.2.", "head_conv.1."),
    ("classifier.4.", "classifier."),
    ("aux_classifier.", "aux."),
    ("backbone.", "backbone."),
)
TORCHVISION_DEEPLABV3 = ("deeplabv3_resnet50", "deeplabv3_resnet101")


def is_torchvision_deeplabv3(state: dict[str, Any]) -> bool:
    return "classifier.0.convs.0.0.weight" in state and "backbone.layer4.0.conv1.weight" in state


def torchvision_deeplabv3_kwargs(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The pixelwise builder arguments that reproduce torchvision's DeepLab v3: output stride 8 with
    its dilation pattern (no multi-grid), ASPP rates 12/24/36, the extra 3x3 head conv."""
    return {
        "num_classes": state["classifier.4.weight"].shape[0],
        "output_stride": 8,
        "multi_grid": None,
        "rates": (12, 24, 36),
        "head_conv": True,
        "aux_head": any(k.startswith("aux_classifier.") for k in state),
    }


def map_torchvision_deeplabv3(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ``deeplabv3_resnet*`` state dict -> pixelwise key layout."""
    out = {}
    for key, value in state.items():
        for old, new in _TORCHVISION_PREFIXES:
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            raise CheckpointError(f"unexpected key {key!r} in a torchvision DeepLab v3 state dict")
    return out


def from_torchvision(
    model_or_state_dict: nn.Module | dict[str, torch.Tensor], name: str = "deeplabv3_resnet50"
) -> nn.Module:
    """A pixelwise DeepLab v3 with the weights of torchvision's ``deeplabv3_resnet50/101`` (a model
    or its state dict, e.g. the published COCO-with-VOC-labels weights). The result gives the same
    outputs as the torchvision model (``out``; ``aux`` too in training mode if it has one)."""
    if name not in TORCHVISION_DEEPLABV3:
        raise ValueError(f"from_torchvision supports {TORCHVISION_DEEPLABV3}, not {name!r}")
    state = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    if not is_torchvision_deeplabv3(state):
        raise CheckpointError("not a torchvision DeepLab v3 state dict (no classifier.0.convs / backbone.layer4)")
    model = build_model(name, **torchvision_deeplabv3_kwargs(state))
    load_weights(model, map_torchvision_deeplabv3(state), f"torchvision {name} weights")
    return model.eval()
