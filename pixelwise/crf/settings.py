"""The dense CRF's six parameters: their one set of defaults, and where a run's values come from.

Defaults: DeepLab-v2 (ResNet-101, PASCAL VOC 2012) CRF settings, w1 = 4, theta_alpha = 67,
theta_beta = 3, w2 = 3, theta_gamma = 1, 10 iterations (bi_w, bi_xy_std, bi_rgb_std, pos_w, pos_xy_std,
max_iter of the DenseCRF layer of the released DeepLab-v2 ResNet-101 model, as reproduced in
kazuto1011/deeplab-pytorch, configs/voc12.yaml).  The DeepLab papers (Chen et al., ICLR 2015 and TPAMI
2018, sec. 4.1) fix w2 = 3, theta_gamma = 3 and cross-validate w1, theta_alpha, theta_beta per model; other
published sets are 4/65/3/2/2 (DeepLab-v2 VGG-16, as listed by re-implementations) and 4/49/5/3/3 (the
example in deeplab-public-ver2's run_densecrf.sh).
They are tuned for ~500-pixel PASCAL images; pass other values for other data (``pixelwise crf-search``).
"""

from __future__ import annotations

import numbers
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..fileio import load_yaml, yaml_problem

FLOAT32_MAX = 3.4e38
MIN_THETA = 0.01  # a standard deviation of a hundredth of a pixel or level: every pixel its own


@dataclass
class CRFSettings:
    """Mean-field iterations; appearance kernel weight ``w1``, position std ``theta_alpha`` (pixels) and
    colour std ``theta_beta``; smoothness kernel weight ``w2`` and position std ``theta_gamma`` (pixels)."""

    iterations: int = 10  # max_iter
    w1: float = 4.0  # bi_w
    theta_alpha: float = 67.0  # bi_xy_std
    theta_beta: float = 3.0  # bi_rgb_std
    w2: float = 3.0  # pos_w
    theta_gamma: float = 1.0  # pos_xy_std

    def __post_init__(self) -> None:
        it = self.iterations
        if isinstance(it, bool) or not isinstance(it, numbers.Integral) or it < 0:
            raise ConfigError(f"crf.iterations={it!r}: a whole number >= 0 (0: no mean-field step)")
        for name in ("w1", "w2", "theta_alpha", "theta_beta", "theta_gamma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ConfigError(f"crf.{name}={value!r}: must be a number")
            # NaN fails every comparison; a negative weight would reward disagreeing neighbours; the filters run in
            # float32, where 1e300 is inf and a std under 0.01 blows the lattice's integer keys (or divides by 0)
            if name.startswith("w") and not 0 <= value <= FLOAT32_MAX:
                raise ConfigError(f"crf.{name}={value}: must be a number from 0 (kernel off) to {FLOAT32_MAX:.3g}")
            if name.startswith("theta") and not MIN_THETA <= value <= FLOAT32_MAX:
                raise ConfigError(
                    f"crf.{name}={value}: must be a number from {MIN_THETA} to {FLOAT32_MAX:.3g} (pixels, or "
                    "intensity levels)"
                )

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None, source: str = "crf") -> CRFSettings:
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise ConfigError(f"unknown {source} key(s) {', '.join(unknown)}; valid: {', '.join(cls.names())}")
        return cls(**values)

    @classmethod
    def resolve(cls, settings: CRFSettings | None, overrides: dict[str, Any]) -> dict[str, Any]:
        """``settings`` (or the defaults) with ``overrides`` by name, as a dict in field order."""
        base = asdict(settings) if settings is not None else {}
        unknown = sorted(set(overrides) - set(cls.names()))
        if unknown:
            raise TypeError(f"unknown dense CRF parameter(s) {', '.join(unknown)}; valid: {', '.join(cls.names())}")
        return asdict(cls(**{**base, **overrides}))


def settings_for(
    checkpoint: str | os.PathLike, stored: dict[str, Any] | None, overrides: dict[str, Any] | None = None
) -> CRFSettings:
    """CRF parameters: ``overrides`` (CLI flags) over the ``crf`` section of ``config.yaml`` beside the
    checkpoint (where ``crf-search`` writes), over the checkpoint's own config, over the defaults."""
    values = dict(stored or {})
    beside = Path(checkpoint).parent / "config.yaml"
    if beside.is_file():
        try:
            run_config = load_yaml(beside.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{beside}: not valid YAML ({yaml_problem(e)}); fix it or move it away") from None
        section = run_config.get("crf") if isinstance(run_config, dict) else None
        if section is not None and not isinstance(section, dict):
            raise ConfigError(f"{beside}: its crf section is {section!r}, not a mapping of CRF parameters")
        values.update(section or {})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return CRFSettings.from_dict(values)


DEFAULT_GRID: dict[str, list[float]] = {
    "w1": [3.0, 4.0, 5.0],
    "theta_alpha": [30.0, 50.0, 70.0, 90.0],
    "theta_beta": [3.0, 5.0, 10.0],
}  # w2 and theta_gamma fixed, as DeepLab: the run's own (base)
# the parameters a search may vary (crf-search's flags): all but the iterations
GRID_PARAMETERS = tuple(name for name in CRFSettings.names() if name != "iterations")
