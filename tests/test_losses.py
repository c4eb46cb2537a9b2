import math

import pytest
import torch

from pixelwise.errors import ConfigError
from pixelwise.losses import build_loss


def test_cross_entropy_hand_computed():
    # two pixels, two classes; the second pixel is ignored
    logits = torch.tensor([[[[2.0, 5.0]], [[0.0, -1.0]]]])  # N=1, C=2, H=1, W=2
    target = torch.tensor([[[0, 255]]])
    loss = build_loss("cross_entropy")(logits, target)
    assert loss.item() == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 1)))


def test_cross_entropy_ignores_ignored_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, 5, requires_grad=True)
    target = torch.randint(0, 4, (2, 6, 5))
    target[:, :2] = 255
    loss_fn = build_loss("cross_entropy", ignore_index=255)
    loss = loss_fn(logits, target)
    (grad,) = torch.autograd.grad(loss, logits)

    changed = logits.detach().clone()
    changed[:, :, :2] = torch.randn(2, 4, 2, 5) * 100  # only ignored pixels change
    changed.requires_grad_(True)
    loss2 = loss_fn(changed, target)
    (grad2,) = torch.autograd.grad(loss2, changed)
    assert loss2.item() == pytest.approx(loss.item(), abs=1e-6)
    assert torch.allclose(grad, grad2)
    assert grad[:, :, :2].abs().max() == 0


def test_cross_entropy_all_ignored_is_zero_not_nan():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = build_loss("cross_entropy")(logits, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_class_weights():
    logits = torch.randn(1, 2, 3, 3)
    target = torch.randint(0, 2, (1, 3, 3))
    w = build_loss("cross_entropy", weight=[1.0, 3.0])(logits, target)
    expected = torch.nn.functional.cross_entropy(logits, target, weight=torch.tensor([1.0, 3.0]))
    assert w.item() == pytest.approx(expected.item())


def test_unknown_loss_or_argument():
    with pytest.raises(ConfigError, match="available: cross_entropy"):
        build_loss("nope")
    with pytest.raises(ConfigError, match="valid: ignore_index"):
        build_loss("cross_entropy", gamma=2)
