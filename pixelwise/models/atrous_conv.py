"""Atrous (dilated) convolution, the operator of DeepLab's output stride and ASPP (Chen et al., DeepLab v2
sec. 3.1; v3 sec. 3.3)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..device import active_autocast_dtype


class AtrousConv2d(nn.Conv2d):
    """A "same"-padded atrous (dilated) convolution that skips the taps which can only read padding.

    Once the rate reaches the feature map's height (width), every off-centre kernel row (column) falls
    outside the map for every output pixel; DeepLab v3 (sec. 3.3) notes that the 3x3 filter then
    "degenerates to a simple 1x1 filter since only the center filter weight is effective". Those rows
    (columns) are dropped from the computation: the result and the gradients are exactly those of the
    full convolution, at a fraction of the cost (ASPP's rate 36 at output stride 16 on a 512x512 input,
    or rates 24 and 36 on 256x256 training crops). Same parameters and state dict as ``nn.Conv2d``.
    While tracing or exporting to ONNX it always runs the full convolution (the graph must hold for
    every input size).

    In bf16/fp16 on CPU, a conv with many input channels and a large rate (ASPP's) runs as one matrix
    product per tap, accumulated in fp32 into the shifted output window (taps that miss the map are
    skipped): oneDNN's reduced-precision dilated kernels run there at a fraction of their speed, while at
    rates 1-2, or with 256-512 input channels, its own kernels are as fast or faster (measurements in
    benchmarks/results/atrous_bf16.md).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        same = all(p == d * (k // 2) for p, d, k in zip(self.padding, self.dilation, self.kernel_size, strict=True))
        if (
            not same
            or self.stride != (1, 1)
            or self.padding_mode != "zeros"
            or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export()
        ):
            return super().forward(x)
        weight, padding = self.weight, list(self.padding)
        for dim, size in enumerate(x.shape[-2:]):
            k = self.kernel_size[dim]
            if k > 1 and self.dilation[dim] >= size:  # every off-centre tap of this dimension reads padding
                weight = weight.narrow(2 + dim, k // 2, 1)
                padding[dim] = 0
        low = _cpu_low_precision(x)
        slow_in_onednn = self.groups == 1 and self.in_channels >= 1024 and max(self.dilation) >= 4
        if low is not None and slow_in_onednn and x.dim() == 4:
            return _conv_as_tap_products(x, weight, self.bias, self.dilation, low)
        if weight is self.weight:
            return super().forward(x)
        return F.conv2d(x, weight, self.bias, 1, tuple(padding), self.dilation, self.groups)


def _cpu_low_precision(x: torch.Tensor) -> torch.dtype | None:
    """bf16/fp16 if a conv of ``x`` would run in it on the CPU (its dtype, or CPU autocast's), else None."""
    if x.device.type != "cpu":
        return None
    dtype = active_autocast_dtype("cpu") or x.dtype
    return dtype if dtype in (torch.bfloat16, torch.float16) else None


def _conv_as_tap_products(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    """A stride-1, same-padded (dilated) conv as one (pixels x C_in) @ (C_in x C_out) product per tap,
    each added in fp32 into the window of the output it shifts to. Returns channels-last, in ``dtype``."""
    n, c, h, w = x.shape
    out_channels, _, kh, kw = weight.shape
    with torch.autocast("cpu", enabled=False):
        rows = x.to(dtype).permute(0, 2, 3, 1)  # NHWC
        taps = weight.to(dtype).permute(2, 3, 1, 0)  # kh, kw, C_in, C_out
        out = torch.zeros(n, h, w, out_channels, dtype=torch.float32, device=x.device)
        if bias is not None:
            out += bias.to(dtype).float()
        for i in range(kh):
            dy = (i - kh // 2) * dilation[0]
            y0, y1 = max(0, -dy), min(h, h - dy)  # output rows whose input row y + dy is on the map
            for j in range(kw):
                dx = (j - kw // 2) * dilation[1]
                x0, x1 = max(0, -dx), min(w, w - dx)
                if y0 >= y1 or x0 >= x1:
                    continue
                src = rows[:, y0 + dy : y1 + dy, x0 + dx : x1 + dx].reshape(-1, c)
                out[:, y0:y1, x0:x1] += (src @ taps[i, j]).view(n, y1 - y0, x1 - x0, out_channels)
        return out.to(dtype).permute(0, 3, 1, 2)


def conv2d(in_channels: int, out_channels: int, kernel_size: int, **kwargs: Any) -> nn.Conv2d:
    """``nn.Conv2d``, or :class:`AtrousConv2d` when dilated."""
    dilated = kwargs.get("dilation", 1) not in (1, (1, 1))
    return (AtrousConv2d if dilated else nn.Conv2d)(in_channels, out_channels, kernel_size, **kwargs)
