"""The chunked evaluator of the field for the keys of one group shape (a *bucket*).

Keys whose groups have the same shape (n, m, p, D) are concatenated along the group axis and go
through the kernel together, each group carrying its key's docs/method.md section-3 scalars.
Notation (docs/method.md section 2), for the c groups of one chunk:

    x  [c, n, D]     generated features; also the (self-masked) negatives
    t  [x, u, y]     targets, N = n + m + p, kept as blocks [c, N_b, D] (never concatenated)

The evaluation walks the groups three times, in chunks sized by the memory budget
(:mod:`t2i_drift.drifting.chunking`):

    1. distances -> the section-3 scale (and the diagnostics), pooled over keys' groups and processes
    2. coefficients -> V_tau -> mean(V_tau^2), pooled the same way: the per-temperature lambda
       (the caller may pool it further, over keys that share a lambda: field.py)
    3. V = sum_tau V_tau / lambda_tau, from the coefficients combined over temperatures

Per-group partial sums are reduced in a fixed order, so the result does not depend on the chunking
(tested bit for bit). Everything runs in fp32 under ``torch.no_grad`` (the caller's job).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from t2i_drift.drifting.chunking import plan_chunks
from t2i_drift.drifting.distributed import all_reduce_sum
from t2i_drift.drifting.groups import PreparedKey
from t2i_drift.drifting.kernel import apply_coefficients, drift_coefficients, pairwise_distances
from t2i_drift.drifting.options import DriftOptions
from t2i_drift.drifting.result import DriftResult

# Self-masking adds this to the (normalized) distance of a sample to itself: logit <= -500 at
# tau = 0.2, i.e. exactly zero weight after the softmax in fp32.
SELF_MASK_DISTANCE: float = 100.0

__all__ = ["SELF_MASK_DISTANCE", "Bucket"]

# Coefficients [c, T, n, N] and, unless folded into them, their row sums [c, T, n, 1].
Coefficients = tuple[torch.Tensor, torch.Tensor | None]


@dataclass
class _Chunk:
    """Groups [start, stop) of a bucket, materialized in fp32."""

    start: int
    stop: int
    x: torch.Tensor  # [c, n, D]
    targets: list[torch.Tensor]  # blocks [x, u, y] of t, each [c, N_b, D]
    weights: torch.Tensor  # [c, N] w_j, 0 where masked
    valid: torch.Tensor | None  # [c, N] bool, None when nothing is masked
    seg: torch.Tensor  # [c] long, index of the group's key in the bucket


@dataclass
class _KeyScalars:
    """Section-3 scalars and diagnostics of every key of the bucket, each [num_keys]."""

    scale: torch.Tensor  # mean pairwise distance (NaN when not normalized)
    s_in: torch.Tensor  # feature scale: x~ = x / s_in
    unit: torch.Tensor  # distance unit: d~ = d / unit
    nearest: torch.Tensor
    spread: torch.Tensor


def _cat(parts: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def _sum_over_temperatures(coeff: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum_tau weight[:, tau] * coeff[:, tau]: [c, T, n, k] -> [c, n, k], in a fixed order."""
    out = coeff[:, 0] * weight[:, 0]
    for i in range(1, coeff.shape[1]):
        out.add_(coeff[:, i] * weight[:, i])
    return out


_COMPILED: Any = None


def _compiled_coefficients() -> Callable[..., Coefficients]:
    """``torch.compile`` of the coefficient kernel, built once (dynamic: chunk sizes vary)."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(drift_coefficients, dynamic=True)
    return _COMPILED


class Bucket:
    """Keys of one group shape, evaluated together along a concatenated group axis."""

    def __init__(self, keys: list[PreparedKey], options: DriftOptions) -> None:
        self.keys = keys
        self.options = options
        n, m, p, D, device, _ = keys[0].signature
        self.n, self.m, self.p, self.D, self.device = n, m, p, D, device
        self.sizes = [key.gen.shape[0] for key in keys]  # groups per key
        self.offsets = [0]
        for size in self.sizes:
            self.offsets.append(self.offsets[-1] + size)
        self.num_groups = self.offsets[-1]
        self.num_keys = len(keys)
        self.T = len(options.temperatures)
        self.n_self = n if options.gen_as_negatives else 0  # width of the x block of t
        self.masked = any(key.valid is not None for key in keys)
        # Key index of every group, built on the device (torch.full needs no host-to-device copy).
        self.seg = torch.cat(
            [torch.full((size,), k, device=device, dtype=torch.long) for k, size in enumerate(self.sizes)]
        )
        self.plan = plan_chunks(
            self.num_groups, n, m, p, D, self.T, options.memory_budget, options.chunk_groups
        )
        self.single = self.plan.num_chunks == 1
        # Between passes: distances [c, n, N] and coefficients by chunk start, when they fit; the
        # materialized chunks only with a single chunk (then everything stays alive anyway).
        self.cache = self.single or self.plan.cache
        self._dists: dict[int, torch.Tensor] = {}
        self._coeffs: dict[int, Coefficients] = {}
        self._chunks: dict[int, _Chunk] = {}
        self._scalars: _KeyScalars | None = None  # set by norms()

    def norms(self) -> torch.Tensor:
        """Passes 1 and 2: the section-3 scalars, then mean(V_tau^2) per key and temperature.

        Returns:
            [num_keys, T] fp32 raw_v2 (pooled over processes). :meth:`results` turns them into
            the lambdas of each key, or the caller pools them over several keys first.
        """
        sizes = torch.stack([torch.full((), float(size), device=self.device) for size in self.sizes])
        self._scalars = self._scales(sizes)
        return self._temperature_norms(sizes, self._scalars)

    def release(self) -> None:
        """Drop what passes 1-2 cached for pass 3 (it then recomputes): used when other buckets'
        passes must run before this one's pass 3, so that only one bucket's cache is alive."""
        self._coeffs.clear()
        self._chunks.clear()

    def results(self, raw_v2: torch.Tensor, lambda_v2: torch.Tensor | None = None) -> list[DriftResult]:
        """Pass 3 and the results of every key of the bucket, in the order of ``keys``.

        Args:
            raw_v2: [num_keys, T] from :meth:`norms`.
            lambda_v2: [num_keys, T] the mean squares the lambdas are taken from; None: each key's
                own ``raw_v2`` (docs/method.md section 3).
        """
        scalars = self._scalars
        if scalars is None:
            raise RuntimeError("Bucket.results needs Bucket.norms first")
        field = self._field(raw_v2 if lambda_v2 is None else lambda_v2, scalars)  # [num_groups, n, D]
        self._chunks.clear()
        results = []
        zero = torch.zeros((), device=self.device)
        for k, (lo, hi) in enumerate(zip(self.offsets[:-1], self.offsets[1:], strict=True)):
            results.append(
                DriftResult(
                    field=field[lo:hi],
                    scale=scalars.scale[k],
                    feature_scale=scalars.s_in[k],
                    raw_v2={tau: raw_v2[k, i] for i, tau in enumerate(self.options.temperatures)},
                    nearest_pos=scalars.nearest[k],
                    spread=scalars.spread[k] if self.n > 1 else zero,
                )
            )
        return results

    def evaluate(self) -> list[DriftResult]:
        """The field and diagnostics of every key of the bucket, each key with its own lambdas."""
        return self.results(self.norms())

    # -- chunks ----------------------------------------------------------------------------------

    def _ranges(self) -> Iterator[tuple[int, int]]:
        step = self.plan.chunk_groups
        for start in range(0, self.num_groups, step):
            yield start, min(start + step, self.num_groups)

    def _chunk(self, start: int, stop: int) -> _Chunk:
        """Groups [start, stop) in fp32, gathered across the keys they belong to."""
        if start in self._chunks:
            return self._chunks[start]
        xs, us, ys, ws, vs = [], [], [], [], []
        for key, lo, hi in zip(self.keys, self.offsets[:-1], self.offsets[1:], strict=True):
            s, e = max(start, lo) - lo, min(stop, hi) - lo
            if s >= e:
                continue
            xs.append(key.gen[s:e].float())
            ys.append(key.pos[s:e].float())
            if key.neg is not None:
                u = key.neg[key.neg_index[s:e]] if key.neg_index is not None else key.neg[s:e]
                us.append(u.float())
            ws.append(key.weights[s:e] if key.valid is None else key.weights[s:e] * key.valid[s:e])
            if self.masked:
                vs.append(
                    key.valid[s:e]
                    if key.valid is not None
                    else torch.ones(e - s, self.m, dtype=torch.bool, device=self.device)
                )
        x, y = _cat(xs), _cat(ys)
        c = x.shape[0]
        targets = ([x] if self.n_self else []) + ([_cat(us)] if us else []) + [y]
        ones_self = torch.ones(c, self.n_self, device=self.device)
        ones_pos = torch.ones(c, self.p, device=self.device)
        weights = torch.cat([ones_self, _cat(ws).float(), ones_pos], dim=1)
        valid = None
        if self.masked:
            valid = torch.cat([ones_self.bool(), _cat(vs), ones_pos.bool()], dim=1)
        chunk = _Chunk(start, stop, x, targets, weights, valid, self.seg[start:stop])
        if self.single:
            self._chunks[start] = chunk
        return chunk

    def _distances(self, chunk: _Chunk) -> torch.Tensor:
        """[c, n, N] distances of the chunk, from the pass-1 cache when there."""
        if chunk.start in self._dists:
            return self._dists[chunk.start]
        return pairwise_distances(chunk.x, chunk.targets)

    def _coefficients(
        self, chunk: _Chunk, dist: torch.Tensor, unit: torch.Tensor, s_in: torch.Tensor
    ) -> Coefficients:
        """Section-2 coefficients [c, T, n, N] (and rowsum) for fields in normalized units x / s_in."""
        dist_logit = dist / unit[chunk.seg].view(-1, 1, 1)
        if self.options.mask_self and self.n_self:
            dist_logit[:, :, : self.n].diagonal(dim1=1, dim2=2).add_(SELF_MASK_DISTANCE)
        fn = _compiled_coefficients() if self.options.compile else drift_coefficients
        coeff, rowsum = fn(
            dist_logit,
            chunk.weights,
            chunk.valid,
            self.p,
            self.options.temperatures,
            self.options.affinity_floor,
            self.n_self > 0,
        )
        # The field is linear in (x, t) for fixed logits: V(x/s, t/s) = V(x, t) / s. Scaling the
        # coefficients gives fields in normalized units without materializing x / s_in or t / s_in.
        inv = (1.0 / s_in[chunk.seg]).view(-1, 1, 1, 1)
        coeff.mul_(inv)
        if rowsum is not None:
            rowsum.mul_(inv)
        return coeff, rowsum

    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(
            tensor, distributed=self.options.distributed, process_group=self.options.process_group
        )

    # -- the three passes ------------------------------------------------------------------------

    def _scales(self, sizes: torch.Tensor) -> _KeyScalars:
        """Pass 1: distances -> per-key section-3 scale and diagnostics, pooled over processes.

        Args:
            sizes: [num_keys] fp32 groups per key (on this process).
        """
        n, p, dev = self.n, self.p, self.device
        per_group = torch.zeros(4, self.num_groups, device=dev)  # weighted dist, weight, nearest, spread
        eye = torch.eye(n, dtype=torch.bool, device=dev)
        for start, stop in self._ranges():
            chunk = self._chunk(start, stop)
            dist = self._distances(chunk)  # [c, n, N]
            per_group[0, start:stop] = (dist * chunk.weights.unsqueeze(1)).sum((1, 2))
            per_group[1, start:stop] = chunk.weights.sum(1) * n
            per_group[2, start:stop] = dist[:, :, -p:].amin(-1).sum(-1)
            if n > 1:
                dx = dist[:, :, :n] if self.n_self else pairwise_distances(chunk.x, chunk.x)
                per_group[3, start:stop] = dx.masked_fill(eye, 0.0).sum((1, 2))
            if self.cache:
                self._dists[start] = dist
        # Per-key sums of per-group sums: a fixed order, so chunking does not change the result.
        sums = torch.zeros(4, self.num_keys, device=dev).index_add_(1, self.seg, per_group)
        counts = torch.stack([sizes * n, sizes * n * max(n - 1, 0)])  # nearest, spread
        pooled = self._all_reduce(torch.cat([sums, counts]))  # [6, num_keys]
        if self.options.normalize:
            scale = pooled[0] / pooled[1].clamp_min(1e-12)
            s_in = (scale / self.D**0.5).clamp_min(1e-3)
            unit = scale.clamp_min(1e-3)
        else:
            scale = torch.full((self.num_keys,), float("nan"), device=dev)
            s_in = unit = torch.ones(self.num_keys, device=dev)
        nearest = pooled[2] / pooled[4].clamp_min(1) / unit
        spread = pooled[3] / pooled[5].clamp_min(1) / unit
        return _KeyScalars(scale, s_in, unit, nearest, spread)

    def _temperature_norms(self, sizes: torch.Tensor, scalars: _KeyScalars) -> torch.Tensor:
        """Pass 2: coefficients -> V_tau -> mean(V_tau^2) per key and temperature, [num_keys, T]."""
        n, D, T, dev = self.n, self.D, self.T, self.device
        v2_group = torch.zeros(self.num_groups, T, device=dev)
        for start, stop in self._ranges():
            chunk = self._chunk(start, stop)
            coeff, rowsum = self._coefficients(chunk, self._distances(chunk), scalars.unit, scalars.s_in)
            self._dists.pop(start, None)  # free the distances before V_tau is allocated
            v = apply_coefficients(coeff, chunk.targets, rowsum, chunk.x)  # [c, T, n, D]
            v2_group[start:stop] = v.square_().sum((2, 3))
            del v
            if self.cache:
                self._coeffs[start] = (coeff, rowsum)
        v2_sums = torch.zeros(self.num_keys, T, device=dev).index_add_(0, self.seg, v2_group)
        pooled_v2 = self._all_reduce(torch.cat([v2_sums, (sizes * n * D).unsqueeze(1)], dim=1))
        return pooled_v2[:, :T] / pooled_v2[:, T:].clamp_min(1)

    def _field(self, raw_v2: torch.Tensor, scalars: _KeyScalars) -> torch.Tensor:
        """Pass 3: V = sum_tau V_tau / lambda_tau = (sum_tau coeff_tau / lambda_tau) @ t.

        lambda = sqrt(max(raw_v2, 1e-8)) per key and temperature (docs/method.md section 3: each
        key's own mean(V_tau^2), unless the caller pooled it over keys); the raw field uses
        lambda = 1. Returns [num_groups, n, D].
        """
        T, dev = self.T, self.device
        if self.options.normalize:
            inv_lam = raw_v2.clamp_min(1e-8).rsqrt()
        else:
            inv_lam = torch.ones(self.num_keys, T, device=dev)
        field = torch.empty(self.num_groups, self.n, self.D, device=dev)
        for start, stop in self._ranges():
            chunk = self._chunk(start, stop)
            if start in self._coeffs:
                coeff, rowsum = self._coeffs.pop(start)
            else:  # recompute: memory stays bounded by the chunk, at the cost of more passes
                dist = pairwise_distances(chunk.x, chunk.targets)
                coeff, rowsum = self._coefficients(chunk, dist, scalars.unit, scalars.s_in)
            w = inv_lam[chunk.seg].view(-1, T, 1, 1)
            combined = _sum_over_temperatures(coeff, w)  # [c, n, N]
            combined_rowsum = None if rowsum is None else _sum_over_temperatures(rowsum, w)
            apply_coefficients(combined, chunk.targets, combined_rowsum, chunk.x, out=field[start:stop])
        return field
