"""FLOPs of a training step, counted by ``torch.utils.flop_counter`` with one formula corrected.

torch's ``convolution_backward`` formula counts the weight gradient of a grouped convolution as if it were not
grouped (``groups`` times too many: 32x for MobileNetV2's 32-channel depthwise layers), which put the depthwise
models above the CPU's peak. Here the backward of a convolution costs what its forward costs for each gradient
asked for (input, weight): the same multiply-adds, rearranged.
"""

from __future__ import annotations

from collections.abc import Callable
from math import prod

import torch
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _conv_backward_flop(
    grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed, *args, out_shape=None, **kw
) -> int:
    output_mask = args[2]  # after output_padding and groups
    # forward multiply-adds: each output pixel (each input pixel when transposed) meets every weight of its group
    spatial = (x_shape if transposed else grad_out_shape)[2:]
    macs = grad_out_shape[0] * prod(spatial) * prod(w_shape)
    return 2 * macs * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def step_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs of ``fn()`` (forward and backward), grouped convolutions counted right."""
    with FlopCounterMode(display=False, custom_mapping={aten.convolution_backward: _conv_backward_flop}) as counter:
        fn()
    return counter.get_total_flops()
