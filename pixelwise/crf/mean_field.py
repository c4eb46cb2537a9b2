"""Fully connected (dense) CRF post-processing in pure PyTorch.

The model and its inference are those of Krähenbühl & Koltun, "Efficient Inference in Fully Connected CRFs
with Gaussian Edge Potentials" (NIPS 2011); the Gaussian filtering that makes mean field O(N) is the
permutohedral lattice of Adams, Baek & Davis, "Fast High-Dimensional Filtering Using the Permutohedral
Lattice" (Eurographics 2010).  No compiled extension: every step is a tensor operation, so it runs on any
device torch supports (the code never names one) and is differentiable with respect to the probabilities.

Model.  Unary psi_u(l) = -log(clamp(p_l, clip, 1)) (pydensecrf's ``unary_from_softmax``, clip = 1e-5) or
-log_softmax(logits).  Pairwise mu(l, l') [w1 k_a + w2 k_s], with the appearance kernel
k_a = exp(-|p_i - p_j|^2 / (2 theta_alpha^2) - |I_i - I_j|^2 / (2 theta_beta^2)) and the smoothness kernel
k_s = exp(-|p_i - p_j|^2 / (2 theta_gamma^2)) (p: pixel position, I: RGB), mu Potts ([l != l']) or a
(C, C) ``compat`` matrix (symmetrised, as pydensecrf does).

Mean field, as in Krähenbühl's released densecrf code (densecrf.cpp, pairwise.cpp, permutohedral.cpp),
which pydensecrf2 wraps and DeepLab used:  Q = softmax(-psi_u);  repeat:
m_k = D_k^-1/2 K_k D_k^-1/2 Q (K_k the lattice-filtered kernel, D_k = K_k 1: pydensecrf's default
NORMALIZE_SYMMETRIC, DIAG_KERNEL for both addPairwiseGaussian and addPairwiseBilateral);
Q = softmax(-psi_u - mu (w1 m_a + w2 m_s)), which for Potts is softmax(-psi_u + w1 m_a + w2 m_s)
(pydensecrf's PottsCompatibility(w) returns -w m, subtracted; the two differ by a per-pixel constant).
Like that code, the filtering includes the j = i term: Algorithm 1 of the paper sums over j != i, but
densecrf filters without subtracting anything, and so does this module, to give pydensecrf2's results.
With the normalisation the self term weighs w / D_i: tiny for the appearance kernel (D_i sums over every
similar pixel within ~theta_alpha), about w2 / (2 pi theta_gamma^2) for the smoothness kernel.

Smoothness kernel.  ``smoothness_filter="exact"`` (default): an exact separable Gaussian convolution over
the pixel grid (depthwise conv2d, zero outside the image, truncated at 4 theta_gamma; cost grows with
theta_gamma), with the same symmetric normalisation; faster than a 2-D lattice, and the kernel the paper
defines.  ``"lattice"``: a d = 2 lattice on (x, y) / theta_gamma as densecrf does, reproducing pydensecrf2
(cached per image size, as it does not depend on the image).

Parameters: :class:`pixelwise.crf.CRFSettings` (defaults and their sources there).

Accuracy, measured (tests/test_crf.py):
- the lattice approximation reaches, against the exact Gaussian filter on 1000 random points, 1.0 %
  (d = 2) and 2.4 % (d = 5) relative error once symmetrically normalised (the unnormalised filter also
  carries a global factor of 0.88 / 0.65 that densecrf's constant does not remove; with that factor
  fitted it is within 1.7 % / 4.0 %);
- mean field against an O(N^2) brute force with the dense kernel matrices (float64, same normalisation,
  24x20 three-region images, 3 classes, w1 = 4, theta_alpha = 5, theta_beta = 13, w2 = 3, theta_gamma = 1,
  10 iterations, 5 images): max |Q difference| 0.0101 (exact smoothness) / 0.0128 (lattice smoothness),
  argmax agreement 100 %.  Where the points are isolated in feature space (colour noise several
  theta_beta), the lattice kernel departs from the exact one much more (densecrf's approximation, which
  this module reproduces);
- against pydensecrf2 on CamVid test images with the defaults: ``smoothness_filter="lattice"`` gives the
  same probabilities to 3.4e-6 (100 % argmax agreement); the default exact smoothness agrees on 99.95 %
  of the pixels (mean over 20 images; lowest 99.93 %).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..cpu_threads import idle_core_threads
from ..device import available_memory
from ..errors import ResourceError
from .lattice import PermutohedralLattice, _Kernel, _LinearOpFn
from .settings import CRFSettings

# Peak memory of a call per pixel of the batch, at the least: a flat image, whose appearance lattice has the
# fewest vertices (about 740-770 bytes; photos and EM slices 740-850, colour noise about 1700:
# benchmarks/crf_memory.py). A call that cannot fit even so is refused before it starts swapping or is killed.
MIN_BYTES_PER_PIXEL = 640
# ... and per class, where the classes' buffers outweigh the lattice (about 1380-1490 bytes a pixel for 60 classes,
# 2920-2980 for 150, at 512x512)
MIN_BYTES_PER_PIXEL_AND_CLASS = 16

DEFAULT_CLIP = 1e-5  # pydensecrf.utils.unary_from_softmax(clip=1e-5)


class _Appearance:
    """The appearance kernel on (B, N, C): one lattice per image, all in one block-diagonal lattice."""

    def __init__(self, kernel: _Kernel) -> None:
        self.kernel = kernel

    def apply(self, q: Tensor, transpose: bool, out: Tensor | None = None, work=None) -> Tensor:
        b, n, c = q.shape
        acc = None if out is None else out.view(b * n, c)
        return self.kernel.apply(q.view(b * n, c), transpose, acc, work).view(b, n, c)

    def workspace(self, q: Tensor) -> tuple[Tensor, Tensor]:
        return self.kernel.workspace(q.shape[-1])


class _LatticeSmoothness:
    """The smoothness kernel on (B, N, C) by a d = 2 lattice shared by the images (columns = (image, label))."""

    def __init__(self, kernel: _Kernel) -> None:
        self.kernel = kernel

    def apply(self, q: Tensor, transpose: bool, out: Tensor | None = None, work=None) -> Tensor:
        b, n, c = q.shape
        if b == 1:
            acc = None if out is None else out.view(n, c)
            return self.kernel.apply(q.view(n, c), transpose, acc, work).view(1, n, c)
        y = self.kernel.apply(q.transpose(0, 1).reshape(n, b * c), transpose).view(n, b, c).transpose(0, 1)
        return y.contiguous() if out is None else out.add_(y)

    def workspace(self, q: Tensor) -> tuple[Tensor, Tensor] | None:
        return self.kernel.workspace(q.shape[-1]) if q.shape[0] == 1 else None


class _ExactSmoothness:
    """The smoothness kernel as an exact separable Gaussian convolution over the pixel grid (zero outside
    the image, truncated at 4 theta_gamma), with the same symmetric normalisation; plain torch ops."""

    def __init__(self, height: int, width: int, theta_gamma: float, weight: float, device: torch.device) -> None:
        self.height, self.width = height, width
        # beyond the image the taps multiply zeros: a radius past its longer side changes nothing but the cost
        self.radius = max(1, min(math.ceil(4.0 * theta_gamma), max(height, width)))
        k = torch.arange(-self.radius, self.radius + 1, device=device, dtype=torch.float32)
        self.taps = torch.exp(-(k * k) / (2.0 * theta_gamma * theta_gamma))
        ones = torch.ones(1, height, width, 1, device=device)
        norm = self._blur(ones).reshape(height * width, 1).add_(1e-20).rsqrt_()
        self.scale_in = norm
        self.scale_out = norm * weight

    def _blur(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C): depthwise convolutions on a channels-last view (no copies)."""
        c = x.shape[-1]
        r = self.radius
        xc = x.permute(0, 3, 1, 2)
        y = F.conv2d(xc, self.taps.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), padding=(r, 0), groups=c)
        y = F.conv2d(y, self.taps.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), padding=(0, r), groups=c)
        return y.permute(0, 2, 3, 1)

    def message(self, q: Tensor, add: Tensor | None = None, out: Tensor | None = None) -> Tensor:
        """``weight * D^-1/2 K D^-1/2 q`` (+ ``add``) for (B, N, C) ``q``: a new tensor, or written into ``out``
        band by band of rows (with their halo), so that the intermediates stay small (no fresh pages to fault in
        each mean-field iteration) and in cache."""
        b, n, c = q.shape
        h, w, r = self.height, self.width, self.radius
        if out is None:
            y = self._blur((q * self.scale_in).view(b, h, w, c)).reshape(b, n, c)
            return y * self.scale_out if add is None else torch.addcmul(add, y, self.scale_out)
        x, res = q.view(b, h, w, c), out.view(b, h, w, c)
        plus = None if add is None else add.view(b, h, w, c)
        scale_in, scale_out = self.scale_in.view(1, h, w, 1), self.scale_out.view(1, h, w, 1)
        rows = max(2 * r, (1 << 20) // max(1, b * w * c))  # a band's tensors: about 4 MB
        for y0 in range(0, h, rows):
            y1 = min(h, y0 + rows)
            lo, hi = max(0, y0 - r), min(h, y1 + r)  # the rows the band's outputs reach (zero beyond the image)
            y = self._blur(x[:, lo:hi] * scale_in[:, lo:hi])[:, y0 - lo : y1 - lo]
            if plus is None:
                torch.mul(y, scale_out[:, y0:y1], out=res[:, y0:y1])
            else:
                res[:, y0:y1] = torch.addcmul(plus[:, y0:y1], y, scale_out[:, y0:y1])
        return out


_SMOOTHNESS_CACHE: OrderedDict = OrderedDict()
_SMOOTHNESS_CACHE_SIZE = 2


def _position_features(height: int, width: int, std: float, device: torch.device) -> Tensor:
    ys = torch.arange(height, device=device, dtype=torch.float32) / std
    xs = torch.arange(width, device=device, dtype=torch.float32) / std
    return torch.stack([xs.expand(height, width), ys.unsqueeze(1).expand(height, width)], -1).view(-1, 2)


def _smoothness_kernel(height: int, width: int, theta_gamma: float, w2: float, device: torch.device) -> _Kernel:
    """The position-only kernel depends on the image size alone: build it once and keep the last few."""
    key = (height, width, float(theta_gamma), float(w2), str(device))
    kernel = _SMOOTHNESS_CACHE.get(key)
    if kernel is None:
        kernel = _Kernel(PermutohedralLattice(_position_features(height, width, theta_gamma, device)), w2)
        _SMOOTHNESS_CACHE[key] = kernel
        while len(_SMOOTHNESS_CACHE) > _SMOOTHNESS_CACHE_SIZE:
            _SMOOTHNESS_CACHE.popitem(last=False)
    else:
        _SMOOTHNESS_CACHE.move_to_end(key)
    return kernel


def _appearance_features(images: Tensor, theta_alpha: float, theta_beta: float) -> Tensor:
    """(B, H, W, 3) -> (5, B*H*W) feature rows x/theta_alpha, y/theta_alpha, r/theta_beta, g/..., b/..."""
    b, h, w, _ = images.shape
    rows = torch.empty(5, b, h, w, device=images.device)
    rows[0] = torch.arange(w, device=images.device, dtype=torch.float32) / theta_alpha
    rows[1] = (torch.arange(h, device=images.device, dtype=torch.float32) / theta_alpha).unsqueeze(1)
    torch.div(images.permute(3, 0, 1, 2), theta_beta, out=rows[2:])
    return rows.view(5, b * h * w)


def dense_crf_batch(
    images: Tensor | np.ndarray,
    probs: Tensor,
    settings: CRFSettings | None = None,
    *,
    compat: Tensor | None = None,
    logits: bool = False,
    clip: float = DEFAULT_CLIP,
    smoothness_filter: str = "exact",
    threads: int | str | None = "auto",
    **params: float,
) -> Tensor:
    """Dense CRF mean-field inference on a batch: images (B, H, W, 3) uint8 RGB, probs (B, C, H, W).

    The B images are processed together, not in a Python loop: their appearance lattices are disjoint
    parts of one lattice and every filtering step is one sparse product for the whole batch. Returns
    (B, C, H, W) probabilities on the device of ``probs``; the parameters are those of :func:`dense_crf`.
    """
    on_cpu = torch.as_tensor(probs).device.type == "cpu"
    with idle_core_threads(threads if on_cpu else None):
        return _mean_field(
            images,
            probs,
            settings,
            compat=compat,
            logits=logits,
            clip=clip,
            smoothness_filter=smoothness_filter,
            **params,
        )


def _mean_field(
    images: Tensor | np.ndarray,
    probs: Tensor,
    settings: CRFSettings | None,
    *,
    compat: Tensor | None,
    logits: bool,
    clip: float,
    smoothness_filter: str,
    **params: float,
) -> Tensor:
    iterations, w1, theta_alpha, theta_beta, w2, theta_gamma = CRFSettings.resolve(settings, params).values()
    probs = torch.as_tensor(probs)
    if probs.dim() != 4:
        raise ValueError(f"probs must be (B, C, H, W), got {tuple(probs.shape)}")
    device = probs.device
    images = torch.as_tensor(images, device=device)
    if images.dtype != torch.uint8:
        # theta_beta is in 0-255 levels (as pydensecrf's, which takes only uint8): a float image in [0, 1] would make
        # the colour term 255 times too weak, a 16-bit one overflow the lattice keys
        raise ValueError(
            f"images must be uint8 RGB (0-255, as theta_beta's scale), got {images.dtype}: e.g. "
            "(image * 255).round().to(torch.uint8) for a float image in [0, 1]"
        )
    b, c, h, w = probs.shape
    if tuple(images.shape) != (b, h, w, 3):
        raise ValueError(f"images must be (B, H, W, 3) = {(b, h, w, 3)} to match probs, got {tuple(images.shape)}")
    if iterations < 0:
        raise ValueError("iterations must be >= 0")
    if not 0 <= clip < 1:  # 1 or more makes every unary equal (0: a probability of 0 rules its class out)
        raise ValueError(f"clip must be in [0, 1), got {clip}")
    if not torch.isfinite(probs).all():
        # one NaN spreads through the filters to every pixel of the image (all of them then class 0)
        what = "logits" if logits else "probabilities"
        raise ValueError(f"the {what} hold NaN or infinite values: the CRF would spread them over the whole image")
    if smoothness_filter not in ("exact", "lattice"):
        raise ValueError(f"smoothness_filter must be 'exact' or 'lattice', got {smoothness_filter!r}")
    n = h * w
    if iterations > 0 and w1 != 0:  # the appearance lattice, built only then, is what takes the memory
        _check_memory(b, c, h, w, device)
    # State (B, N, Cp): row-major, the classes padded to 16 (or a multiple of 4) with probability 0, which
    # keeps MKL's sparse products and the softmax over the last dimension on their fast paths.
    cp = 16 if c <= 16 else -(-c // 4) * 4
    x = probs.to(torch.float32).reshape(b, c, n).transpose(1, 2)
    neg_unary = F.log_softmax(x, -1) if logits else torch.log(x.clamp(clip, 1.0))
    if cp > c:
        neg_unary = F.pad(neg_unary, (0, cp - c), value=-math.inf)
    neg_unary = neg_unary.contiguous()
    q = torch.softmax(neg_unary, -1)
    if iterations > 0 and (w1 != 0 or w2 != 0):
        appearance = lattice_smoothness = exact_smoothness = None
        if w1 != 0:
            lattice = PermutohedralLattice._from_rows(_appearance_features(images, theta_alpha, theta_beta), b)
            appearance = _Appearance(_Kernel(lattice, w1))
        if w2 != 0 and smoothness_filter == "lattice":
            lattice_smoothness = _LatticeSmoothness(_smoothness_kernel(h, w, theta_gamma, w2, device))
        elif w2 != 0:
            exact_smoothness = _ExactSmoothness(h, w, theta_gamma, w2, device)
        mu = None
        if compat is not None:
            mu = torch.as_tensor(compat, device=device, dtype=torch.float32)
            if mu.shape != (c, c):
                raise ValueError(f"compat must be ({c}, {c}), got {tuple(mu.shape)}")
            mu = 0.5 * (mu + mu.t())  # the energy only sees the symmetric part (pydensecrf does the same)
            mu = F.pad(mu, (0, cp - c, 0, cp - c))
        track = torch.is_grad_enabled() and neg_unary.requires_grad
        lattice_ops = [op for op in (appearance, lattice_smoothness) if op is not None]
        if not track:  # buffers made once: page faults of fresh large tensors cost more than the products
            message_buf, q_buf = torch.empty_like(neg_unary), torch.empty_like(neg_unary)
            work = [op.workspace(q) for op in lattice_ops]
        for _ in range(iterations):
            # Potts: logit = -unary + message (-sum_{l' != l} message_l' = message_l - a per-pixel constant);
            # a compatibility matrix: logit = -unary - sum_l' mu(l, l') message_l'.
            add = neg_unary if mu is None else None
            if track:  # out of place; the lattice filters go through their autograd Function
                parts = [_LinearOpFn.apply(q, op) for op in lattice_ops]
                if exact_smoothness is not None:
                    parts.append(exact_smoothness.message(q))
                message = sum(parts[1:], parts[0]) + (0 if add is None else add)
            else:  # into the buffers, the sparse products accumulating into the message
                message = message_buf
                if exact_smoothness is not None:
                    exact_smoothness.message(q, add, out=message)
                elif add is None:
                    message.zero_()
                else:
                    message.copy_(add)
                for op, buffers in zip(lattice_ops, work, strict=True):
                    op.apply(q, False, out=message, work=buffers)
            if mu is None:
                logit = message
            else:
                logit = torch.addmm(neg_unary.view(-1, cp), message.view(-1, cp), mu, alpha=-1).view(b, n, cp)
            q = torch.softmax(logit, -1) if track else torch.softmax(logit, -1, out=q_buf)
    out = q[..., :c].transpose(1, 2).reshape(b, c, h, w).contiguous()
    return out.to(probs.dtype) if probs.is_floating_point() else out


def _check_memory(batch: int, classes: int, height: int, width: int, device: torch.device) -> None:
    free = available_memory(device)
    need = batch * height * width * max(MIN_BYTES_PER_PIXEL, MIN_BYTES_PER_PIXEL_AND_CLASS * classes)
    if free is not None and need > free:
        raise ResourceError(
            f"dense CRF on {batch} image(s) of {width}x{height} with {classes} classes: needs at least "
            f"{need / 2**20:.0f} MiB of memory, {free / 2**20:.0f} MiB are free; refine smaller (downscaled) "
            "images, fewer at a time, or leave the CRF off"
        )


def dense_crf(
    image: Tensor | np.ndarray,
    probs: Tensor,
    settings: CRFSettings | None = None,
    *,
    compat: Tensor | None = None,
    logits: bool = False,
    clip: float = DEFAULT_CLIP,
    smoothness_filter: str = "exact",
    threads: int | str | None = "auto",
    **params: float,
) -> Tensor:
    """Refine class probabilities with a fully connected CRF (Krähenbühl & Koltun 2011).

    Args:
        image: (H, W, 3) uint8 RGB, numpy array or tensor.
        probs: (C, H, W) class probabilities at image resolution (or logits with ``logits=True``).
        settings: the six CRF parameters (:class:`CRFSettings`; its defaults when None); any of them can also
            be given by name (``iterations``, ``w1``, ``theta_alpha``, ``theta_beta``, ``w2``, ``theta_gamma``),
            over ``settings``.
        compat: (C, C) label compatibility mu(l, l'); ``None`` is Potts, mu = [l != l'].
        logits: ``probs`` holds logits; the unary is ``-log_softmax(logits)``.
        clip: probabilities are clamped to [clip, 1] before ``-log`` (pydensecrf's ``unary_from_softmax``).
        smoothness_filter: ``"exact"``: the smoothness kernel as an exact separable Gaussian convolution
            (truncated at 4 theta_gamma, so its cost grows with theta_gamma); ``"lattice"``: a 2-D
            permutohedral lattice, densecrf's approximation (pydensecrf2's results to ~1e-6; the lattice
            is cached for the last two image sizes).
        threads: torch threads on a CPU: ``"auto"`` uses no more than the cores other processes leave idle
            (:mod:`pixelwise.cpu_threads`: a thread on a busy core stalls the others), an int exactly that
            many, None torch's setting.

    Returns:
        (C, H, W) refined probabilities (softmax of the final mean-field state), on ``probs``' device,
        differentiable with respect to ``probs``.
    """
    probs = torch.as_tensor(probs)
    if probs.dim() != 3:
        raise ValueError(f"probs must be (C, H, W), got {tuple(probs.shape)}")
    image = torch.as_tensor(image)
    if image.dim() != 3:
        raise ValueError(f"image must be (H, W, 3), got {tuple(image.shape)}")
    return dense_crf_batch(
        image.unsqueeze(0),
        probs.unsqueeze(0),
        settings,
        compat=compat,
        logits=logits,
        clip=clip,
        smoothness_filter=smoothness_filter,
        threads=threads,
        **params,
    )[0]
