"""YAML run configs: sections ``model``, ``data``, ``train``, ``crf``, ``instances`` and ``inference``.

``model`` is ``name`` plus the builder's keyword arguments, one to one (see
:func:`pixelwise.build_model`); the other sections take the keys of :data:`DEFAULTS`.
Values are checked at load time (types, and ranges such as a positive batch size). Any key
can be overridden from the command line with ``--set section.key=value`` (value parsed as YAML).
Unknown sections or keys raise :class:`~pixelwise.errors.ConfigError` listing the valid ones.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from .crf.settings import CRFSettings
from .errors import ConfigError
from .fileio import dump_yaml, load_yaml, yaml_problem
from .inference.instance_settings import InstanceSettings
from .inference.protocol import InferenceSettings
from .losses import check_loss_config
from .losses.class_weights import METHODS as CLASS_WEIGHT_METHODS
from .models import list_models, model_arguments, model_defaults
from .models.panoptic import INSTANCE_HEADS

DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {
        "dataset": None,  # folder name under the data root, e.g. "camvid"
        "root": None,  # data root; else --data-root / $PIXELWISE_DATA / ./data
        "train_split": "train",
        "val_split": "val",
        "batch_size": 4,
        "val_batch_size": 1,
        "num_workers": 2,
        "crop_size": 256,  # int or [height, width]; null trains on whole images
        "scale_range": [0.5, 2.0],  # random scale factor; null disables
        "hflip": True,
        "vflip": False,
        "rot90": False,  # random quarter turns (with a flip: the 8 symmetries); for data with no up or left
        "color_jitter": 0.0,  # brightness/contrast(/saturation) jitter strength; 0 disables
        "elastic_p": 0.0,  # probability of the U-Net paper's elastic deformation
        "elastic_sigma": 10.0,  # std of the coarse-grid displacements, pixels
        "elastic_grid": 3,
        "image_shift": None,  # [dy, dx] pixels the images are moved by (not the masks), in training and inference
        "mean": [0.485, 0.456, 0.406],  # per input channel, on [0, 1] images
        "std": [0.229, 0.224, 0.225],
    },
    "train": {
        "iters": 1000,  # total optimisation steps (with max_minutes: at most this many)
        "max_minutes": 0.0,  # stop after this many minutes of training time; the poly schedule follows it (0: off)
        "eval_interval": 200,  # validate (and checkpoint) every this many steps, and at the end
        "log_interval": 10,
        "optimizer": "sgd",  # sgd | adamw
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "norm_bias_weight_decay": None,  # weight decay of biases and norm layers (1-D parameters); null: weight_decay
        "lr_schedule": "poly",  # poly | constant
        "poly_power": 0.9,
        "warmup_iters": 0,
        "loss": "cross_entropy",  # a loss name, or a list of {name, weight, **args} terms summed
        "loss_args": {},  # keyword arguments of the loss (when train.loss is a name)
        "class_weights": None,  # median_frequency | inverse_frequency | [w_0, ..., w_C-1]: computed once, cached
        "seed": 0,
        "device": "auto",  # auto | cpu | cuda | cuda:N
        "amp": "none",  # none | auto | bf16 | fp16 (auto: bf16 where native; fp16 on CUDA only, with a gradient scaler)
        "channels_last": False,  # NHWC memory format: faster convolutions on recent CPUs and GPUs
        "aux_weight": 0.4,  # weight of the auxiliary head's loss, for models built with aux_head (PSPNet: 0.4)
        "head_lr_mult": 1.0,  # learning-rate multiple for the parameters outside the backbone (DeepLab: 10)
        "accumulate": 1,  # batches per optimizer step (gradient accumulation)
        "compile": False,  # torch.compile the model for training
        "grad_clip": 0.0,  # clip the gradient norm to this value (0: off)
        "ema_decay": 0.0,  # validate and save a moving average of the weights with this decay, e.g. 0.999 (0: off)
        "checkpoint_interval": 0,  # write last.pt every this many steps (0: at each evaluation)
        "checkpoint_minutes": 10.0,  # also write last.pt after this many minutes without one (0: off)
        "keep_last": 1,  # also keep the last k checkpoints as iter_NNNNNNN.pt when k > 1
        "deterministic": False,  # torch.use_deterministic_algorithms: bit-exact resume on CPU (CUDA: best effort)
        "sync_bn": False,  # SyncBatchNorm under torchrun
        "tensorboard": False,  # TensorBoard scalars and val overlays in RUN_DIR/tensorboard
        "init_from": None,  # weights to start from: a pixelwise checkpoint or torchvision DeepLab v3 state dict
        "init_partial": False,  # with init_from: skip tensors whose shape differs (e.g. another class count)
    },
    # dense CRF post-processing for eval/predict --crf (pixelwise.crf.CRFSettings: DeepLab-v2's released settings)
    "crf": asdict(CRFSettings()),
    # instance segmentation (pixelwise.inference.InstanceSettings): method none | connected_components | boundary |
    # panoptic, and its parameters
    "instances": InstanceSettings().to_dict(),
    # the run's inference protocol (pixelwise.inference.InferenceSettings): used by its validation, and by eval and
    # predict unless their --scales/--flip/--rot90/--mode say otherwise
    "inference": {
        "scales": [1.0],  # image scales averaged, e.g. [0.5] for a model trained on half-size images
        "flip": False,  # also average the horizontally flipped image
        "rot90": False,  # also the image turned by 90, 180, 270 degrees (with flip: the 8 symmetries of the square)
        # tau: divide the probabilities by train.class_weights ** tau (logit adjustment; 0 off, 1 undoes the weights)
        "class_weight_correction": 0.0,
    },
}
SECTIONS = ("model", "data", "train", "crf", "instances", "inference")


# keys with a value by default that null also means something for (whole images; no random scale)
_NULLABLE = {"data.crop_size", "data.scale_range", "data.val_split"}  # val_split null: no validation


# keys whose default is null: what else they may be (their own checks elsewhere: class_weights, image_shift, the
# instance settings)
_NULL_DEFAULT_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "data.dataset": ((str,), "the data set's folder name"),
    "data.root": ((str,), "a folder path"),
    "train.init_from": ((str,), "a checkpoint path"),
    "train.norm_bias_weight_decay": ((int, float), "a number"),
}


def _check_type(key: str, value: Any, default: Any) -> None:
    if default is None:
        kinds = _NULL_DEFAULT_TYPES.get(key)
        if value is not None and kinds is not None and (isinstance(value, bool) or not isinstance(value, kinds[0])):
            raise ConfigError(f"config key {key} should be {kinds[1]} or null, got {value!r}")
        return
    if value is None:
        if key in _NULLABLE:
            return
        kind = type(default).__name__
        article = "an" if kind == "int" else "a"
        raise ConfigError(f"config key {key} cannot be null; give {article} {kind} (default {default!r})")
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if key.endswith("crop_size"):
            ok = ok or isinstance(value, list)
    elif key == "train.loss":
        ok = isinstance(value, (str, list))
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"config key {key} should be {type(default).__name__}, got {value!r}")


# (key, lowest allowed value, whether the bound itself is allowed)
_RANGES = (
    ("data.batch_size", 1, True),
    ("data.val_batch_size", 1, True),
    ("data.num_workers", 0, True),
    ("data.color_jitter", 0, True),
    ("data.elastic_p", 0, True),
    ("data.elastic_sigma", 0, True),
    ("data.elastic_grid", 1, True),
    ("train.iters", 1, True),
    ("train.max_minutes", 0, True),
    ("train.eval_interval", 1, True),
    ("train.log_interval", 1, True),
    ("train.lr", 0, False),
    ("train.momentum", 0, True),
    ("train.weight_decay", 0, True),
    ("train.norm_bias_weight_decay", 0, True),
    ("train.warmup_iters", 0, True),
    ("train.poly_power", 0, True),
    ("train.accumulate", 1, True),
    ("train.grad_clip", 0, True),
    ("train.checkpoint_interval", 0, True),
    ("train.checkpoint_minutes", 0, True),
    ("train.keep_last", 1, True),
    ("train.aux_weight", 0, True),
    ("train.head_lr_mult", 0, False),
)


def _finite_numbers(values: Any) -> bool:
    """Whether ``values`` is a list of finite numbers (not bools)."""
    return isinstance(values, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )


def _check_ranges(config: dict[str, Any]) -> None:
    """Values out of range stop at load time with the key named (not as a traceback mid-run)."""
    for key, low, inclusive in _RANGES:
        section, name = key.split(".")
        value = config[section][name]
        if value is None:
            continue
        if not (value > low or (value == low and inclusive)):  # NaN fails both
            bound = f">= {low}" if inclusive else f"> {low}"
            raise ConfigError(f"{key}={value}: must be {bound}")
        if value == math.inf:
            raise ConfigError(f"{key}=inf: must be a finite number")
    if config["train"]["momentum"] >= 1:  # the velocity would never decay: SGD diverges
        raise ConfigError(f"train.momentum={config['train']['momentum']}: must be below 1 (e.g. 0.9)")
    if config["data"]["elastic_p"] > 1:
        raise ConfigError(f"data.elastic_p={config['data']['elastic_p']}: a probability, at most 1")
    decay = config["train"]["ema_decay"]
    if not 0 <= decay < 1:
        raise ConfigError(f"train.ema_decay={decay}: must be >= 0 and < 1 (e.g. 0.999; 0 turns the average off)")
    crop = config["data"]["crop_size"]
    if crop is not None:
        sides = [crop] if isinstance(crop, int) else crop
        if not (1 <= len(sides) <= 2) or not all(isinstance(v, int) and not isinstance(v, bool) for v in sides):
            raise ConfigError(f"data.crop_size={crop!r}: give one size or [height, width] in pixels, or null")
        if min(sides) <= 0:
            raise ConfigError(f"data.crop_size={crop!r}: must be positive (or null for whole images)")
        if isinstance(crop, list) and len(crop) == 1:
            config["data"]["crop_size"] = crop[0]  # [S] is S: one size for both sides
    seed = config["train"]["seed"]
    if not -(2**63) <= seed < 2**64:  # what torch.manual_seed takes
        raise ConfigError(f"train.seed={seed}: must be a 64-bit seed, from -2**63 to 2**64 - 1")
    scale = config["data"]["scale_range"]
    if scale is not None and (not _finite_numbers(scale) or len(scale) != 2 or not 0 < scale[0] <= scale[1]):
        raise ConfigError(f"data.scale_range={scale!r}: give [low, high] with 0 < low <= high, both finite, or null")
    if scale is not None and scale[0] < scale[1] and crop is None and config["data"]["batch_size"] > 1:
        raise ConfigError(
            f"data.scale_range={scale!r} with data.crop_size null: whole images scaled by different factors "
            "cannot share a batch; set data.crop_size (or data.batch_size: 1, or data.scale_range: null)"
        )
    shift = config["data"]["image_shift"]
    if shift is not None and not (_finite_numbers(shift) and len(shift) == 2):
        raise ConfigError(f"data.image_shift={shift!r}: give [dy, dx] in pixels (e.g. [-0.5, 0]), or null")
    mean, std = config["data"]["mean"], config["data"]["std"]
    if not (_finite_numbers(mean) and _finite_numbers(std) and len(mean) == len(std) >= 1 and min(std) > 0):
        raise ConfigError(
            f"data.mean={mean!r}, data.std={std!r}: give one finite mean and one std > 0 per input channel, on "
            "[0, 1] images (e.g. [0.485, 0.456, 0.406] and [0.229, 0.224, 0.225])"
        )
    if max(map(abs, mean)) > 2 or max(std) > 2:  # mmsegmentation's and OpenCV's 0-255 scale (123.675, 58.395)
        scaled = lambda values: [round(v / 255, 4) for v in values]  # noqa: E731
        raise ConfigError(
            f"data.mean={mean!r}, data.std={std!r} are on a 0-255 scale, but images are read in [0, 1]: divide "
            f"them by 255 (data.mean={scaled(mean)}, data.std={scaled(std)})"
        )
    weights = config["train"]["class_weights"]
    methods = ", ".join(CLASS_WEIGHT_METHODS)
    if isinstance(weights, list) and not (_finite_numbers(weights) and min(weights, default=0) >= 0 and any(weights)):
        raise ConfigError(
            f"train.class_weights={weights!r}: give one finite weight >= 0 per class, not all 0 (or {methods})"
        )
    if weights is not None and not isinstance(weights, list) and weights not in CLASS_WEIGHT_METHODS:
        raise ConfigError(f"train.class_weights={weights!r}; valid: {methods}, or a list of one weight per class")


def _section(config: dict[str, Any], section: str) -> dict[str, Any]:
    """A section of a raw config: an empty one (null) is all defaults; anything else not a mapping (``train: 0``,
    ``[]``, ``false``, ``model: unet``) is refused, not taken for the defaults."""
    value = config.get(section)
    if value is None:
        return {}
    if not isinstance(value, dict):
        example = {"model": "name: unet", "data": "dataset: camvid"}.get(section)
        if example is None:
            example = "{}: {}".format(*next((k, v) for k, v in DEFAULTS[section].items() if v is not None))
        raise ConfigError(f"config section {section!r} must be a mapping (e.g. {example}), got {value!r}")
    return value


def _names(keys: Any, prefix: str = "") -> str:
    """Keys for a message, sorted; YAML reads ``1:`` as an int key, which neither sorts with strings nor joins."""
    return ", ".join(sorted(f"{prefix}{k}" for k in keys))


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check sections, keys and value types; return the config with defaults filled in."""
    if not isinstance(config, dict):
        raise ConfigError("a config must be a mapping with sections model, data, train")
    unknown = set(config) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown config section(s) {_names(unknown)}; valid: {', '.join(SECTIONS)}")
    out: dict[str, Any] = {}
    for section, defaults in DEFAULTS.items():
        given = _section(config, section)
        bad = set(given) - set(defaults)
        if bad:
            raise ConfigError(
                f"unknown config key(s) {_names(bad, section + '.')}; "
                f"valid: {', '.join(f'{section}.{k}' for k in defaults)}"
            )
        for key, value in given.items():
            _check_type(f"{section}.{key}", value, defaults[key])
        out[section] = {**copy.deepcopy(defaults), **given}

    model = dict(_section(config, "model"))
    if "name" not in model:
        raise ConfigError(f"config needs model.name; available: {', '.join(list_models())}")
    if model["name"] not in list_models():
        raise ConfigError(f"unknown model.name {model['name']!r}; available: {', '.join(list_models())}")
    valid = model_arguments(model["name"])
    bad = set(model) - set(valid) - {"name"}
    if bad:
        raise ConfigError(
            f"unknown config key(s) {_names(bad, 'model.')} for model {model['name']!r}; "
            f"valid: {', '.join('model.' + k for k in ['name', *valid])}"
        )
    out["model"] = model
    built = {**model_defaults(model["name"]), **model}
    # refused in configs, not in the builder: older runs' checkpoints hold it (it was ignored) and must still load
    if built.get("tile_size") is not None and built.get("padding") == "same":
        raise ConfigError(
            "model.tile_size applies to padding: valid (the overlap-tile prediction); a same-padded U-Net runs on "
            "the whole image: remove model.tile_size, or set model.padding: valid"
        )
    if out["data"]["dataset"] is None:
        raise ConfigError("config needs data.dataset (the data set's folder name under the data root)")
    _check_ranges(out)
    check_loss_config(out["train"]["loss"], out["train"]["loss_args"])  # names and arguments, before any data
    CRFSettings.from_dict(out["crf"])  # its ranges
    method = InstanceSettings.from_dict(out["instances"])  # method name and ranges
    head = model.get("instance_head")
    # the trainer adds the head its method needs and trains no other: a panoptic head alone crashed at step 1
    if head in INSTANCE_HEADS and head != method.method:
        raise ConfigError(
            f"model.instance_head={head} needs instances.method: {head}; set it, or remove model.instance_head"
        )
    if out["train"]["init_partial"] and out["train"]["init_from"] is None:
        raise ConfigError(
            "train.init_partial: true skips the tensors of train.init_from that do not fit, and train.init_from is "
            "not set: set it, or remove train.init_partial"
        )
    if list(InferenceSettings(**out["inference"]).scales) != [1.0] and method.enabled:  # positive scales
        raise ConfigError(
            f"inference.scales apply to semantic models; instances.method={method.method} decodes instances from "
            "whole images at scale 1 (inference.flip and rot90 may be averaged): remove inference.scales"
        )
    correction = out["inference"]["class_weight_correction"]
    if correction and out["train"]["class_weights"] is None:
        raise ConfigError(
            f"inference.class_weight_correction={correction} undoes train.class_weights, which is not set: set both, "
            "or the correction to 0"
        )
    if method.method == "boundary" and out["train"]["class_weights"] is not None:
        raise ConfigError(
            "train.class_weights has one weight per class of the data set and none for the boundary class that "
            "instances.method=boundary adds: remove train.class_weights"
        )
    return out


def apply_overrides(config: dict[str, Any], overrides: str | Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (value parsed as YAML; a single ``str`` is one override) to a raw
    config; ``section.key.sub=value`` sets one entry of a mapping-valued key (``train.loss_args.gamma=1``), as
    mmsegmentation's ``--cfg-options``."""
    config = copy.deepcopy(config)
    for item in [overrides] if isinstance(overrides, str) else overrides:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.iters=100")
        if section not in SECTIONS:
            raise ConfigError(f"--set {item!r}: unknown section {section!r}; valid: {', '.join(SECTIONS)}")
        try:
            value = load_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: cannot parse the value ({yaml_problem(e)})") from None
        config[section] = _section(config, section)  # a section that is no mapping: validate_config's line
        *path, last = name.split(".")
        target = config[section]
        for depth, part in enumerate(path):  # section.key.sub=value: into a mapping-valued key (train.loss_args)
            inner = target.get(part)
            if inner is None:
                inner = target[part] = {}
            if not isinstance(inner, dict):
                where = ".".join([section, *path[: depth + 1]])
                raise ConfigError(f"--set {item!r}: {where} is {inner!r}, not a mapping; set it whole ({where}=...)")
            target = inner
        target[last] = value
    return config


def load_config(path: str | os.PathLike, overrides: str | Sequence[str] | None = None) -> dict[str, Any]:
    """Read a YAML config, apply ``overrides`` (``section.key=value`` strings, as the CLI's ``--set``; a single
    ``str`` is one) and validate it."""
    path = Path(path)
    try:
        raw = load_yaml(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except UnicodeDecodeError:  # UTF-16 from Notepad, or a checkpoint given by mistake
        raise ConfigError(
            f"config file {path} is not UTF-8 text: give a YAML config (not a checkpoint), saved as UTF-8"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {yaml_problem(e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping with sections model, data, train")
    return validate_config(apply_overrides(raw, overrides or []))


def dump_config(config: dict[str, Any]) -> str:
    return dump_yaml(config)
