"""Getting a trained model ready for inference: batch norm folded into the convolutions,
channels-last weights, optionally ``torch.compile`` with frozen weights and half-precision weights."""

from __future__ import annotations

import torch
from torch import nn

from ..models import model_logits


def fold_batch_norm(model: nn.Module, example: torch.Tensor) -> int:
    """Fold every eval-mode ``BatchNorm2d`` whose input is the output of a ``Conv2d`` into that conv
    (and replace the norm by ``Identity``). The pairs are found by running ``example`` through the
    model, so any module layout works; the folded model is checked against the original on
    ``example`` and left unfolded if they disagree. Returns the number of folded pairs."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    produced: dict[int, tuple[nn.Conv2d, torch.Tensor]] = {}
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []
    convs, bns = set(), set()

    def after_conv(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        produced[id(out)] = (module, out)  # keep the tensor alive so that its id stays unique

    def before_bn(module: nn.Module, args: tuple) -> None:
        found = produced.get(id(args[0]))
        if found and found[0] not in convs and module not in bns:
            pairs.append((found[0], module))
            convs.add(found[0])
            bns.add(module)

    hooks = [m.register_forward_hook(after_conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_pre_hook(before_bn) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            reference = model_logits(model, example)
    finally:
        for h in hooks:
            h.remove()
        produced.clear()
    if not pairs:
        return 0
    parents = {id(child): (parent, name) for parent in model.modules() for name, child in parent.named_children()}
    saved = [(conv.weight, conv.bias) for conv, _ in pairs]
    for conv, bn in pairs:
        fused = fuse_conv_bn_eval(conv, bn)
        conv.weight, conv.bias = fused.weight, fused.bias
        parent, name = parents[id(bn)]
        # timm's BatchNormAct2d applies its activation (and drop) after normalising: keep those
        rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if isinstance(m, nn.Module)]
        setattr(parent, name, (nn.Sequential(*rest) if rest else nn.Identity()).eval())
    with torch.no_grad():
        folded = model_logits(model, example)
    scale = reference.abs().max().clamp(min=1.0)
    if not torch.allclose(folded, reference, atol=1e-4 * float(scale), rtol=1e-4):  # a pair was not conv -> bn only
        for (conv, bn), (weight, bias) in zip(pairs, saved, strict=True):
            conv.weight, conv.bias = weight, bias
            parent, name = parents[id(bn)]
            setattr(parent, name, bn)
        return 0
    return len(pairs)


def optimize_for_inference(
    model: nn.Module,
    *,
    in_channels: int = 3,
    channels_last: bool = True,
    compile: bool = False,
    dtype: torch.dtype | None = None,
    example_size: int = 64,
) -> nn.Module:
    """Eval mode, batch norm folded into the convolutions, channels-last weights: what ``pixelwise
    predict``/``eval`` run by default (identical outputs up to float rounding). ``compile=True`` adds
    ``torch.compile`` with Inductor's freezing (weights become constants, so convolutions are prepacked
    and fused with what follows): faster, at the cost of a compilation per new input size. ``dtype``
    (float16/bfloat16, for use under autocast) stores the folded weights in that precision, so that
    autocast does not cast every weight again on every call. ``example_size``: the side of the random image the
    folding is checked on (at least the model's smallest input)."""
    model.eval()
    try:
        device = next(model.parameters()).device
    except StopIteration:
        return model
    fold_batch_norm(model, torch.randn(1, in_channels, example_size, example_size, device=device))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if dtype is not None:
        model = model.to(dtype)
    if compile:
        # Freezing for this model only (not a global setting: a training net compiled in the same process
        # must not see its weights frozen by a no-grad validation pass).
        model = torch.compile(model, options={"freezing": True})
    return model
