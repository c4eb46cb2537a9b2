"""The permutohedral lattice (Adams, Baek & Davis, "Fast High-Dimensional Filtering Using the Permutohedral
Lattice", Eurographics 2010): Gaussian filtering in O(N) in a d-dimensional feature space, as the dense CRF's
mean field needs it (:mod:`pixelwise.crf.mean_field`).

Densecrf's arithmetic step by step: elevation onto the d-plane of
R^(d+1) scaled for a unit-std Gaussian, nearest remainder-0 point and simplex (rank) by its comparison
loop, barycentric weights, then the integer keys of the d + 1 vertices, made unique with a sort (no hash
table: per (image, remainder) block, so that int32 codes usually suffice) and numbered so that splat and
slice are CSR matrices with sorted rows; blur neighbours by a binary search in the sorted keys.  Splat,
[1, 2, 1]/2 blur along each of the d + 1 lattice directions (missing neighbours count as 0) and slice
(with densecrf's constant 1 / (1 + 2^-d)) are sparse-dense products on all C labels at once, built once
per image and reused by every iteration.  Run on the same features, its normalised filter output agrees
with pydensecrf2's to ~1e-5 (relative).  The appearance features are (x, y) / theta_alpha and
(r, g, b) / theta_beta (d = 5); a batch gets one block-diagonal lattice.  Gradients: the filter is
linear in Q, and with the symmetric normalisation its transpose is the same splat and slice around the
blur in reverse direction order, which the custom backward uses; the lattice (the image) is not
differentiated.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError

_INT64_LIMIT = 2**62


def _csr(crow: Tensor, col: Tensor, val: Tensor, size: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, col, val, size, check_invariants=False)


def _spmm_to(a: Tensor, x: Tensor, dst: Tensor) -> Tensor:
    """Sparse CSR (R, K) @ dense (K, C) written into ``dst`` (R, C), which must not alias ``x``."""
    x = x.contiguous()
    if x.device.type != "cpu":
        return dst.copy_(torch.sparse.mm(a, x))
    # On CPU, addmm into a row-major result goes straight to MKL (sparse.mm adds a zero fill and a
    # transposing copy of the result).
    return torch.addmm(dst, a, x, beta=0, out=dst)


def _spmm(a: Tensor, x: Tensor, out: Tensor | None = None) -> Tensor:
    """Sparse CSR (R, K) @ dense (K, C) -> row-major (R, C); adds into ``out`` when given."""
    x = x.contiguous()
    if x.device.type != "cpu":
        y = torch.sparse.mm(a, x)
        return y if out is None else out.add_(y)
    if out is None:
        return _spmm_to(a, x, torch.empty(a.shape[0], x.shape[1], dtype=x.dtype, device=x.device))
    return torch.addmm(out, a, x, out=out)


class PermutohedralLattice:
    """A permutohedral lattice (Adams, Baek & Davis 2010) built for a set of feature vectors.

    ``features`` is (P, d) or (B, P, d) float; a batch gets B disjoint lattices (one per set) that are
    filtered together. The lattice is the one of Krähenbühl's ``densecrf`` (``permutohedral.cpp``):
    same elevation, rounding, barycentric weights, [1, 2, 1]/2 blur along the d + 1 lattice directions
    and the same ``alpha = 1 / (1 + 2**-d)`` slice constant, so :meth:`filter` approximates
    ``out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j`` (the j = i term included) as ``densecrf`` does.

    Everything here is vectorised tensor code (sort-based hashing of the lattice keys, sparse CSR
    matrices for splat, blur and slice) and runs on the device of ``features``.
    """

    def __init__(self, features: Tensor) -> None:
        if features.dim() == 2:
            features = features.unsqueeze(0)
        if features.dim() != 3:
            raise ValueError(f"features must be (P, d) or (B, P, d), got {tuple(features.shape)}")
        batch, points, d = features.shape
        if not 1 <= d <= 32:
            raise ValueError(f"features must be (P, d) with 1 <= d <= 32 (points in rows), got d = {d}")
        self._init(features.reshape(batch * points, d).t(), batch, points)

    @classmethod
    def _from_rows(cls, rows: Tensor, batch: int) -> PermutohedralLattice:
        """The lattice of (d, B * P) features, one row per feature dimension (no transposing copy)."""
        lattice = cls.__new__(cls)
        lattice._init(rows, batch, rows.shape[1] // batch)
        return lattice

    def _init(self, rows: Tensor, batch: int, points: int) -> None:
        self.dim = rows.shape[0]
        self.batch = batch
        self.num_points = batch * points
        self.alpha = 1.0 / (1.0 + 2.0 ** (-self.dim))
        self.device = rows.device
        with torch.no_grad():
            self._build(rows.to(torch.float32), batch, points)

    def _simplices(self, f: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For (d, n) features: the remainder-0 vertex ``q0`` ((d, n) int64, in units of d + 1), the rank
        of each coordinate ((d + 1, n) int64) and the barycentric weights ((d + 1, n))."""
        d = self.dim
        d1 = d + 1
        dev = f.device
        n = f.shape[1]
        # Elevate onto the hyperplane sum(x) = 0 of R^(d+1), scaled so that the blur matches a unit-std
        # Gaussian (Adams et al., sec. 3.1); float32 arithmetic in densecrf's order.
        inv_std = float(np.float32(math.sqrt(2.0 / 3.0) * d1))
        scale = [float(np.float32(1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std)) for i in range(d)]
        cf = f * torch.tensor(scale, device=dev).unsqueeze(1)
        suffix = cf.flip(0).cumsum(0).flip(0)  # suffix[j] = sum_{k >= j} cf[k]
        elev = torch.empty(d1, n, device=dev)
        elev[0] = suffix[0]
        if d > 1:
            elev[1:d] = suffix[1:] - torch.arange(1, d, device=dev, dtype=f.dtype).unsqueeze(1) * cf[: d - 1]
        elev[d] = cf[d - 1] * -d
        # Nearest remainder-0 lattice point, and the simplex: rank = position in a stable descending
        # sort of the differential (densecrf's pairwise comparison loop).
        rnd = torch.round(elev * np.float32(1.0 / d1))
        diff = elev - rnd * d1
        rank = torch.zeros(d1, n, dtype=torch.int32, device=dev)
        for i in range(d1):
            for j in range(i + 1, d1):
                c = diff[i] < diff[j]
                rank[i] += c
                rank[j] += ~c
        rank += rnd.sum(0).to(torch.int32)
        shift = (rank < 0).to(torch.int32) - (rank >= d1).to(torch.int32)
        rank += d1 * shift
        rnd += shift
        # Barycentric coordinates (Adams et al., sec. 3.1).
        v = (elev - rnd * d1) * np.float32(1.0 / d1)
        rank = rank.long()
        bary = torch.zeros(d1 + 1, n, device=dev)
        bary.scatter_add_(0, d - rank, v)
        bary.scatter_add_(0, d + 1 - rank, -v)
        bary[0] += 1 + bary[d1]
        return rnd[:d].long(), rank, bary[:d1]

    def _build(self, f: Tensor, batch: int, points: int) -> None:
        d = self.dim
        d1 = d + 1
        dev = f.device
        n = f.shape[1]
        long = torch.long
        # float32 features beyond 2^24 / (d + 1) lose whole lattice steps (a std of 1e-6 made indices run out of
        # bounds before the key range below was checked)
        if not torch.isfinite(f).all() or float(f.abs().amax()) * d1 >= 2**24:
            raise ConfigError(
                "dense CRF: feature range too large for the float32 lattice; use larger standard deviations "
                "(crf.theta_alpha, theta_beta, theta_gamma)"
            )
        # Per-point work in chunks that stay in cache (a 2-megapixel image runs ~2x faster).
        chunk = 1 << 18
        parts = [self._simplices(f[:, s : s + chunk]) for s in range(0, n, chunk)]
        q0, rank, bary = (torch.cat(t, 1) if len(parts) > 1 else t[0] for t in zip(*parts, strict=True))
        # Integer keys: vertex r of the simplex has coordinates (d+1) q + r, q_i = q0_i - [rank_i > d - r]
        # (i < d; the last coordinate follows from sum = 0).  A key is the pair (block, code): block =
        # (image, r), code = q packed in mixed radix.  Lattice points are numbered block by block, in
        # code order inside a block, so that a point's d + 1 vertices get increasing indices.
        qmin = q0.amin(1) - 2  # vertices reach q0 - 1, blur neighbours one step further
        ranges = (q0.amax(1) + 2 - qmin).tolist()  # ... and q0 + 1 above
        strides = [math.prod(ranges[i + 1 :]) for i in range(d)]
        prod = math.prod(ranges)
        if prod >= _INT64_LIMIT:
            raise ConfigError(
                "dense CRF: feature range too large for 64-bit lattice keys; use larger standard deviations "
                "(crf.theta_alpha, theta_beta, theta_gamma)"
            )
        code_dtype = torch.int32 if 2 * prod < 2**31 else long
        stride_t = torch.tensor(strides, device=dev, dtype=long).unsqueeze(1)
        codes = torch.empty(d1, n, dtype=code_dtype, device=dev)
        for s in range(0, n, chunk):
            part = slice(s, s + chunk)
            base = ((q0[:, part] - qmin.unsqueeze(1)) * stride_t).sum(0)
            # delta[r] = sum of stride_i over the coordinates with rank_i > d - r, i.e. d - rank_i < r.
            spread = torch.zeros(d1, base.shape[0], device=dev, dtype=long)
            spread.scatter_(0, d - rank[:d, part], stride_t.expand(d, base.shape[0]))
            codes[:, part] = base - (spread.cumsum(0) - spread)
        # Unique lattice points: a stable sort per block, which also groups the splat entries by point.
        # (Large temporaries are few and written in place: fresh 100 MB tensors cost their page faults.)
        k = n * d1
        blocks = batch * d1
        sorted_codes = torch.empty(blocks, points, dtype=codes.dtype, device=dev)
        local = torch.empty(blocks, points, dtype=long, device=dev)
        for b in range(batch):
            for r in range(d1):
                blk = b * d1 + r
                torch.sort(codes[r, b * points : (b + 1) * points], stable=True, out=(sorted_codes[blk], local[blk]))
        sorted_codes = sorted_codes.view(-1)
        block_start = torch.arange(0, k, points, device=dev)
        new = torch.empty(k, dtype=torch.bool, device=dev)
        new[0] = True
        torch.ne(sorted_codes[1:], sorted_codes[:-1], out=new[1:])
        new[block_start] = True
        starts = new.nonzero().squeeze(1)
        m = int(starts.numel())
        index = new.cumsum(0).sub_(1)  # lattice point of each sorted entry
        block_b = torch.arange(blocks, device=dev) // d1
        block_r = torch.arange(blocks, device=dev) % d1
        pix = local.add_((block_b * points).unsqueeze(1)).view(-1)  # point of each sorted entry
        idx = torch.int32 if max(k, m) < 2**31 else long
        offsets = torch.empty(n, d1, dtype=idx, device=dev)  # lattice point of each (point, vertex)
        offsets.view(-1)[(pix * d1).view(blocks, points).add_(block_r.unsqueeze(1)).view(-1)] = index.to(idx)
        src = (pix.view(blocks, points) + (block_r * n).unsqueeze(1)).view(-1)  # its position in the (d+1, n) arrays
        kstart = torch.cat([index[block_start], torch.tensor([m], device=dev)]).tolist()
        keys = sorted_codes[starts]
        self.size = m
        self._splat_crow = torch.cat([starts, torch.tensor([k], device=dev)]).to(idx)
        self._splat_col = pix.to(idx)
        self._splat_val = bary.reshape(-1)[src]
        self._slice_crow = torch.arange(0, k + 1, d1, device=dev, dtype=idx)
        self._slice_col = offsets.view(-1)
        self._slice_val = bary.t().contiguous()  # (n, d+1)
        # Blur neighbours along lattice direction j: key - 1 on every coordinate but j, which gets + d
        # (n1), and the opposite (n2).  For r >= 1, n1 is in block (image, r - 1) at code + stride_j;
        # for r = 0 in block (image, d) at code + stride_j - sum(strides).  n2 is n1's inverse map.
        n1 = torch.full((d1, m), -1, dtype=long, device=dev)  # lattice index, -1: not in the lattice
        steps = torch.tensor([strides[j] if j < d else 0 for j in range(d1)], device=dev, dtype=code_dtype)
        steps = steps.unsqueeze(1)
        wrap = sum(strides)
        for blk in range(blocks):
            lo, hi = kstart[blk], kstart[blk + 1]
            tgt = blk - 1 if blk % d1 >= 1 else blk + d
            tlo, thi = kstart[tgt], kstart[tgt + 1]
            if hi > lo and thi > tlo:
                target = keys[tlo:thi]
                query = keys[lo:hi] + (steps if blk % d1 >= 1 else steps - wrap)  # (d+1, points in block)
                at = torch.searchsorted(target, query).clamp_(max=thi - tlo - 1)
                n1[:, lo:hi] = torch.where(target[at] == query, at + tlo, -1)
        # n2 = the inverse map of n1 (scatters go through a dump slot instead of boolean masks).
        total = d1 * m
        rows = torch.arange(m, device=dev, dtype=idx).expand(d1, m)
        found1 = n1 >= 0
        firsts = torch.arange(0, total, m, device=dev).unsqueeze(1)
        n2 = torch.full((total + 1,), -1, dtype=idx, device=dev)
        n2[torch.where(found1, n1 + firsts, total)] = rows
        n2 = n2[:total].view(d1, m)
        found2 = n2 >= 0
        # CSR rows (point and its neighbours) with columns in increasing order: n1 < point < n2 (blocks
        # r - 1, r, r + 1), except in the wrap-around blocks r = 0 (point < n2 < n1, n1 in block d) and
        # r = d (n2 < n1 < point, n2 in block 0).
        key_r = block_r.repeat_interleave(torch.tensor(kstart, device=dev).diff())
        first, last = key_r == 0, key_r == d
        e1, e2 = found1.long(), found2.long()
        crow = torch.zeros(d1, m + 1, dtype=long, device=dev)
        torch.cumsum(1 + e1 + e2, 1, out=crow[:, 1:])
        nnz = crow[:, -1]
        begin = crow[:, :-1] + (nnz.cumsum(0) - nnz).unsqueeze(1)  # row starts in the concatenation
        dump = int(nnz.sum())
        cols = torch.empty(dump + 1, dtype=idx, device=dev)
        vals = torch.full((dump + 1,), 0.5, device=dev)
        at_self = begin + torch.where(first, 0, torch.where(last, e1 + e2, e1))
        cols[at_self] = rows
        vals[at_self] = 1.0
        cols[torch.where(found1, begin + torch.where(first, 1 + e2, torch.where(last, e2, 0)), dump)] = n1.to(idx)
        cols[torch.where(found2, begin + torch.where(first, 1, torch.where(last, 0, 1 + e1)), dump)] = n2
        if d == 1:  # both neighbours lie in the one other block, in either order: sort the pair (both 0.5)
            both = (found1 & found2).view(-1)
            at = (begin + first.long()).view(-1)[both]
            pair = torch.stack([cols[at], cols[at + 1]]).sort(0).values
            cols[at], cols[at + 1] = pair[0], pair[1]
        nnz = nnz.tolist()
        cols, vals, crow = cols[:dump].split(nnz), vals[:dump].split(nnz), crow.to(idx)
        self._blur = [_csr(crow[j], cols[j], vals[j], (m, m)) for j in range(d1)]

    def splat_matrix(self, weights: Tensor | None = None) -> Tensor:
        """(M, P) CSR splat matrix; ``weights`` (P,) scales each point's contribution."""
        val = self._splat_val if weights is None else self._splat_val * weights[self._splat_col.long()]
        return _csr(self._splat_crow, self._splat_col, val, (self.size, self.num_points))

    def slice_matrix(self, weights: Tensor | None = None) -> Tensor:
        """(P, M) CSR slice matrix, alpha constant included; ``weights`` (P,) scales each output."""
        val = self._slice_val * self.alpha
        if weights is not None:
            val = val * weights.unsqueeze(1)
        return _csr(self._slice_crow, self._slice_col, val.view(-1), (self.num_points, self.size))

    def blur(self, values: Tensor, reverse: bool = False, work: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """[1, 2, 1] / 2 blur along the d + 1 lattice directions ((M, C) values; reverse = transpose). ``work``: two
        (M, C) buffers the steps alternate between (``values`` may be one of them), instead of new tensors."""
        for b in reversed(self._blur) if reverse else self._blur:
            if work is None:
                values = _spmm(b, values)
            else:
                values = _spmm_to(b, values, work[1] if values is work[0] else work[0])
        return values

    def filter(self, values: Tensor) -> Tensor:
        """Gaussian-filter (P, C) values (not differentiable; see :func:`permutohedral_filter`)."""
        return _spmm(self.slice_matrix(), self.blur(_spmm(self.splat_matrix(), values)))


class _Kernel:
    """One Gaussian kernel as a linear operator on (P, K) values: ``weight * D K D`` with densecrf's
    symmetric normalisation ``D = diag(1 / sqrt(K 1))`` (or ``weight * K`` when not normalising), the
    diagonal factors folded into the splat and slice matrices.  Its transpose is the same splat and
    slice around the blur in reverse direction order (each direction's blur is symmetric)."""

    def __init__(self, lattice: PermutohedralLattice, weight: float, normalize: bool = True) -> None:
        self.lattice = lattice
        ones = torch.ones(lattice.num_points, 1, device=lattice.device)
        norm = lattice.filter(ones).squeeze(1).add_(1e-20).rsqrt_() if normalize else ones.squeeze(1)
        self.norm = norm
        self.splat = lattice.splat_matrix(norm if normalize else None)
        self.slice = lattice.slice_matrix(norm * weight)

    def apply(
        self, x: Tensor, transpose: bool, out: Tensor | None = None, work: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """(P, K) -> (P, K); ``out`` (P, K) is added to; ``work``: two (M, K) buffers for the lattice values.

        A large image's intermediates are hundreds of MB: allocating them afresh every mean-field iteration costs
        more in page faults than the sparse products themselves, hence the reusable buffers."""
        splat = _spmm(self.splat, x) if work is None else _spmm_to(self.splat, x, work[0])
        return _spmm(self.slice, self.lattice.blur(splat, reverse=transpose, work=work), out)

    def workspace(self, columns: int) -> tuple[Tensor, Tensor]:
        """The two buffers :meth:`apply` takes for ``columns`` value columns."""
        m = self.lattice.size
        dev = self.lattice.device
        return torch.empty(m, columns, device=dev), torch.empty(m, columns, device=dev)


class _LinearOpFn(torch.autograd.Function):
    """y = op(x) for a fixed linear operator; the gradient is the operator's transpose."""

    @staticmethod
    def forward(ctx, x: Tensor, op) -> Tensor:  # type: ignore[override]
        ctx.op = op
        return op.apply(x, False)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return ctx.op.apply(grad.contiguous(), True), None


def permutohedral_filter(features: Tensor, values: Tensor) -> Tensor:
    """Approximate ``out_i = sum_j exp(-|f_i - f_j|^2 / 2) values_j`` with a permutohedral lattice.

    ``features`` (P, d) (not differentiated), ``values`` (P, C) or (P,), differentiable. The j = i term is
    included, as in densecrf, and so is densecrf's scale: the result is about 0.9 (d = 1), 0.88 (d = 2) to
    0.65 (d = 5) times the exact sum (see the module docstring).
    """
    lattice = PermutohedralLattice(features.detach())
    v = values.reshape(values.shape[0], -1).to(torch.float32)
    out = _LinearOpFn.apply(v.contiguous(), _Kernel(lattice, weight=1.0, normalize=False))
    return out.reshape(values.shape)
