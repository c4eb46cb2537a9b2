"""The ``instances`` section of a run config: which instance method a model is trained and decoded with, and
that method's parameters (what each method does: :mod:`pixelwise.engine.instance_methods`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import ConfigError

METHODS = ("none", "connected_components", "boundary", "panoptic")
DECODING_KEYS = ("center_threshold", "nms_kernel", "top_k", "min_size")
"""The settings that only change how a trained model's output is decoded, so eval and predict may override them
(chosen on val with ``benchmarks/instance_decoding_search.py``)."""
CENTRE_KEYS = ("center_threshold", "nms_kernel", "top_k")
"""Those of :data:`DECODING_KEYS` that choose Panoptic-DeepLab's centres: for ``panoptic`` only."""


@dataclass
class InstanceSettings:
    """The ``instances`` section of a run config (keys one to one)."""

    method: str = "none"
    boundary_width: int = 2  # boundary: pixels on each side of a contact
    center_sigma: float = 8.0  # panoptic: std of the centre Gaussians, pixels (the paper's 8)
    # panoptic: each instance's std min(center_sigma, this x its equivalent radius), >= 1 px; None: center_sigma
    center_sigma_per_radius: float | None = None
    small_instance_area: int = 0  # panoptic: instances under this many pixels (in the crop) weigh more in ...
    small_instance_weight: float = 1.0  # ... the semantic loss, by this factor (the paper: 64 x 64 and 3)
    center_weight: float = 200.0  # panoptic: weight of the centre MSE (the paper's 200)
    offset_weight: float = 0.01  # panoptic: weight of the offset L1 (the paper's 0.01)
    center_threshold: float = 0.1  # panoptic decoding: centres above this heatmap value
    nms_kernel: int = 7  # panoptic decoding: max-pooling window of the keypoint NMS
    top_k: int = 200  # panoptic decoding: at most this many centres per image
    min_size: int = 0  # decoding: drop instances with fewer pixels
    # data sets without instances/: the objects are the connected components of this class (name or index) of
    # the masks, e.g. ISBI 2012's cells; None reads instances/<split>
    from_class: str | int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"instances.method={self.method!r}; valid: {', '.join(METHODS)}")
        for key in ("boundary_width", "nms_kernel", "top_k"):
            if getattr(self, key) < 1:
                raise ConfigError(f"instances.{key}={getattr(self, key)}: must be >= 1")
        for key in ("center_weight", "offset_weight"):
            if not 0 <= getattr(self, key) < math.inf:  # NaN too
                raise ConfigError(f"instances.{key}={getattr(self, key)}: must be a finite number >= 0")
        if not math.isfinite(self.center_threshold):  # the regressed heatmap is not bounded: any finite number
            raise ConfigError(f"instances.center_threshold={self.center_threshold}: must be a finite number")
        if self.min_size < 0:
            raise ConfigError(f"instances.min_size={self.min_size}: must be >= 0 pixels (0 keeps every instance)")
        if self.nms_kernel % 2 == 0:
            # a centred max-pooling window needs a middle pixel
            raise ConfigError(f"instances.nms_kernel={self.nms_kernel}: must be odd (e.g. {self.nms_kernel + 1})")
        if not 0 < self.center_sigma < math.inf:  # NaN too
            raise ConfigError(f"instances.center_sigma={self.center_sigma}: must be a finite number > 0")
        per_radius = self.center_sigma_per_radius
        if per_radius is not None and (isinstance(per_radius, bool) or not isinstance(per_radius, (int, float))):
            # null-default keys escape the config's type check, which compares with the default's type
            raise ConfigError(f"instances.center_sigma_per_radius={per_radius!r}: must be a number (e.g. 0.5), or null")
        if self.center_sigma_per_radius is not None and not 0 < self.center_sigma_per_radius < math.inf:
            raise ConfigError(
                f"instances.center_sigma_per_radius={self.center_sigma_per_radius}: must be > 0, or null for one "
                "center_sigma for all instances"
            )
        if self.small_instance_area < 0 or not 0 < self.small_instance_weight < math.inf:
            raise ConfigError(
                f"instances.small_instance_area={self.small_instance_area}, small_instance_weight="
                f"{self.small_instance_weight}: the area must be >= 0 pixels and the weight a finite number > 0"
            )
        if self.small_instance_weight != 1.0 and self.small_instance_area <= 0:
            raise ConfigError(
                f"instances.small_instance_weight={self.small_instance_weight} needs instances.small_instance_area: "
                "the pixel count under which an instance is small (e.g. 128)"
            )

    @property
    def weighs_small_instances(self) -> bool:
        """Whether the semantic loss weighs the pixels of small instances differently."""
        return self.small_instance_area > 0 and self.small_instance_weight != 1.0

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> InstanceSettings:
        values = dict(values or {})
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            valid = ", ".join(f"instances.{f.name}" for f in fields(cls))
            raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; valid: {valid}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_decoding(self, decoding: dict[str, Any]) -> InstanceSettings:
        """These settings with ``decoding`` (keys of :data:`DECODING_KEYS`) over them, checked as the config is."""
        unknown = sorted(set(decoding) - set(DECODING_KEYS))
        if unknown:
            raise ConfigError(f"decoding setting(s) {', '.join(unknown)}; valid: {', '.join(DECODING_KEYS)}")
        return InstanceSettings.from_dict({**self.to_dict(), **decoding})

    @property
    def decoding(self) -> dict[str, Any]:
        """The decoding settings that apply to this method (:data:`DECODING_KEYS`; the :data:`CENTRE_KEYS` for
        ``panoptic`` only) and their values."""
        return {k: getattr(self, k) for k in DECODING_KEYS if self.method == "panoptic" or k not in CENTRE_KEYS}

    def from_class_index(self, classes: list[str]) -> int | None:
        """``from_class`` as a class index of ``classes`` (a ConfigError naming the valid ones)."""
        if self.from_class is None:
            return None
        if isinstance(self.from_class, int) and not isinstance(self.from_class, bool):
            if 0 <= self.from_class < len(classes):
                return self.from_class
        elif self.from_class in classes:
            return classes.index(self.from_class)
        raise ConfigError(
            f"instances.from_class={self.from_class!r} is not a class of the data set; valid: {', '.join(classes)} "
            f"or 0..{len(classes) - 1}"
        )

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @property
    def trains_on_instances(self) -> bool:
        """Whether training reads the instance maps (the targets come from them)."""
        return self.method in ("boundary", "panoptic")
