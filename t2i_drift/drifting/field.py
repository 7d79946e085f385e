"""The drifting field V and the drifting loss (shared/METHOD.md sections 1 to 3).

Everything here is batched over *groups*: a group is one condition at one feature location
(METHOD.md section 2). Tensors carry a leading group axis ``G`` and there is no Python loop over
groups. Notation, following METHOD.md:

    x  = gen  [G, n, D]   generated features; also the (self-masked) negatives
    u  = neg  [G, m, D]   extra negatives (unconditional real data), per-target weight w_cfg
    y  = pos  [G, p, D]   positives (real data of this condition)
    t  = concat[x, u, y]  [G, N, D] targets, N = n + m + p

One *feature key* (METHOD.md section 3) is a set of groups that share the normalization scalars.
:func:`compute_drifts` evaluates several keys at once: keys whose groups have the same shape are
concatenated along the group axis and go through the kernel together, each group carrying its
key's scalars. Groups are processed in chunks sized by a memory budget; per-group partial sums are
reduced in a fixed order, so the result does not depend on the chunking (tested bit for bit).

All drift math runs in float32, whatever the input dtype or an enclosing autocast region.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from t2i_drift.drifting.chunking import plan_chunks
from t2i_drift.drifting.distributed import all_reduce_sum
from t2i_drift.drifting.kernel import apply_coefficients, drift_coefficients, pairwise_distances

DEFAULT_TEMPERATURES: tuple[float, ...] = (0.02, 0.05, 0.2)
# Every affinity is at least sqrt(1e-6) = 1e-3 (official release detail, METHOD.md section 2).
DEFAULT_AFFINITY_FLOOR: float = 1e-6
# Self-masking adds this to the (normalized) distance of a sample to itself: logit <= -500 at
# tau = 0.2, i.e. exactly zero weight after the softmax in fp32.
SELF_MASK_DISTANCE: float = 100.0

__all__ = [
    "DEFAULT_AFFINITY_FLOOR",
    "DEFAULT_TEMPERATURES",
    "DriftGroups",
    "DriftResult",
    "compute_drift",
    "compute_drifts",
    "drifting_field",
    "drifting_loss",
    "drifting_losses",
    "pairwise_distances",
]


@dataclass
class DriftGroups:
    """The groups of one feature key (METHOD.md section 2).

    Attributes:
        gen: [G, n, D] generated features x (the loss's gradient flows into these).
        pos: [G, p, D] positives y.
        neg: extra negatives u: [G, m, D], or with ``neg_index`` a bank [M, m, D] shared by groups
            (group g uses ``neg[neg_index[g]]``; the per-group copy is only made chunk by chunk).
        neg_weights: per-target weights w of ``u`` (w_cfg), broadcastable to [G, m]; default 1.
        neg_mask: bool broadcastable to [G, m]; False removes that target from the group entirely
            (both softmaxes and the weights), e.g. real images whose caption equals this prompt.
        neg_index: [G] long, see ``neg``.
    """

    gen: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor | None = None
    neg_weights: torch.Tensor | float | None = None
    neg_mask: torch.Tensor | None = None
    neg_index: torch.Tensor | None = None


@dataclass
class DriftResult:
    """Everything one evaluation of the field produces for one feature key.

    Scalars are 0-d fp32 tensors on the input's device, so the hot path never waits for the device;
    convert them to floats only when logging.

    Attributes:
        field: [G, n, D] fp32 drift V (normalized feature units if ``normalized`` else raw units).
        scale: mean pairwise distance (section 3 ``scale``); NaN when not normalized.
        feature_scale: s_in, features were divided by it; 1.0 when not normalized.
        raw_v2: per temperature, mean(V_tau^2) before the per-temperature normalization (in
            normalized feature units when normalized).
        nearest_pos: mean over generated samples of the distance to the nearest positive
            (in units of ``scale`` when normalized, raw units otherwise).
        spread: mean pairwise distance between the generated samples of a group (same units).
        normalized: whether section-3 normalization was applied.
    """

    field: torch.Tensor
    scale: torch.Tensor
    feature_scale: torch.Tensor
    raw_v2: dict[float, torch.Tensor]
    nearest_pos: torch.Tensor
    spread: torch.Tensor
    normalized: bool


@dataclass(frozen=True)
class _Options:
    temperatures: tuple[float, ...]
    normalize: bool
    mask_self: bool
    gen_as_negatives: bool
    affinity_floor: float
    distributed: bool
    process_group: Any
    memory_budget: int | None
    chunk_groups: int | None
    compile: bool


@dataclass
class _Key:
    """One key's inputs, validated, detached and with weights/mask broadcast to [G, m] (views)."""

    name: str
    gen: torch.Tensor  # [G, n, D]
    pos: torch.Tensor  # [G, p, D]
    neg: torch.Tensor | None  # [G, m, D] or a bank [M, m, D]
    neg_index: torch.Tensor | None  # [G] long
    weights: torch.Tensor  # [G, m] fp32 (w_cfg, 0 where masked)
    valid: torch.Tensor | None  # [G, m] bool, None when nothing is masked

    @property
    def signature(self) -> tuple:
        G, n, D = self.gen.shape
        m = 0 if self.neg is None else self.neg.shape[1]
        return (n, m, self.pos.shape[1], D, self.gen.device, self.neg is not None)


def _prepare(name: str, groups: DriftGroups) -> _Key:
    """Validate one key's inputs; errors name the key and the argument at fault."""
    gen, pos, neg = groups.gen, groups.pos, groups.neg
    where = f"feature key {name!r}: " if name else ""
    if gen.dim() != 3:
        raise ValueError(f"{where}gen must be [G, n, D], got shape {tuple(gen.shape)}")
    G, n, D = gen.shape
    if pos.dim() != 3 or pos.shape[0] != G or pos.shape[2] != D:
        raise ValueError(
            f"{where}pos must be [G, p, D] with G={G} and D={D} as in gen, got shape {tuple(pos.shape)}"
        )
    if pos.shape[1] == 0:
        raise ValueError(f"{where}pos has no positives (shape {tuple(pos.shape)})")
    index = groups.neg_index
    if neg is None:
        for arg in ("neg_weights", "neg_mask", "neg_index"):
            if getattr(groups, arg) is not None:
                raise ValueError(f"{where}{arg} was given without neg")
        m = 0
    else:
        if index is not None:
            if index.shape != (G,) or index.dtype not in (torch.int32, torch.int64):
                raise ValueError(
                    f"{where}neg_index must be an integer tensor of shape [G] = [{G}], "
                    f"got {index.dtype} of shape {tuple(index.shape)}"
                )
            if neg.dim() != 3 or neg.shape[2] != D:
                raise ValueError(f"{where}neg must be a bank [M, m, D] with D={D}, got {tuple(neg.shape)}")
            # Range check on CPU only: on an accelerator it would sync the device every step, and
            # an out-of-range gather fails there with a device-side assert anyway.
            if (
                G
                and index.device.type == "cpu"
                and (int(index.min()) < 0 or int(index.max()) >= neg.shape[0])
            ):
                raise ValueError(f"{where}neg_index has entries outside [0, {neg.shape[0]})")
            index = index.to(device=neg.device, dtype=torch.long)
        elif neg.dim() != 3 or neg.shape[0] != G or neg.shape[2] != D:
            raise ValueError(
                f"{where}neg must be [G, m, D] with G={G} and D={D} as in gen, got shape {tuple(neg.shape)}"
            )
        m = neg.shape[1]
    weights = torch.ones((), device=gen.device).expand(G, m)
    if groups.neg_weights is not None:
        w = torch.as_tensor(groups.neg_weights, dtype=torch.float32, device=gen.device)
        try:
            weights = torch.broadcast_to(w, (G, m))
        except RuntimeError as err:
            raise ValueError(
                f"{where}neg_weights of shape {tuple(w.shape)} does not broadcast to [G, m] = [{G}, {m}]"
            ) from err
    valid = None
    if groups.neg_mask is not None:
        try:
            valid = torch.broadcast_to(groups.neg_mask.to(device=gen.device, dtype=torch.bool), (G, m))
        except RuntimeError as err:
            raise ValueError(
                f"{where}neg_mask of shape {tuple(groups.neg_mask.shape)} does not broadcast to "
                f"[G, m] = [{G}, {m}]"
            ) from err
    return _Key(
        name=name,
        gen=gen.detach(),
        pos=pos.detach(),
        neg=None if neg is None else neg.detach(),
        neg_index=index,
        weights=weights,
        valid=valid,
    )


@dataclass
class _Chunk:
    """Groups [start, stop) of a bucket, materialized in fp32."""

    start: int
    stop: int
    x: torch.Tensor  # [c, n, D]
    targets: list[torch.Tensor]  # blocks [x, u, y] of t, each [c, N_b, D] (t is never concatenated)
    weights: torch.Tensor  # [c, N]
    valid: torch.Tensor | None  # [c, N]
    seg: torch.Tensor  # [c] long, index of the group's key in the bucket


def _cat(parts: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


class _Bucket:
    """Keys of one group shape, evaluated together along a concatenated group axis."""

    def __init__(self, keys: list[_Key], opts: _Options) -> None:
        self.keys = keys
        self.opts = opts
        n, m, p, D, device, _ = keys[0].signature
        self.n, self.m, self.p, self.D, self.device = n, m, p, D, device
        self.sizes = [k.gen.shape[0] for k in keys]
        self.offsets = [0]
        for size in self.sizes:
            self.offsets.append(self.offsets[-1] + size)
        self.total = self.offsets[-1]
        self.n_self = n if opts.gen_as_negatives else 0
        self.masked = any(k.valid is not None for k in keys)
        # Key index of every group, built on the device (torch.full needs no host-to-device copy).
        self.seg = torch.cat(
            [torch.full((size,), k, device=device, dtype=torch.long) for k, size in enumerate(self.sizes)]
        )
        self.plan = plan_chunks(
            self.total, n, m, p, D, len(opts.temperatures), opts.memory_budget, opts.chunk_groups
        )

    def ranges(self) -> Iterator[tuple[int, int]]:
        step = self.plan.chunk_groups
        for start in range(0, self.total, step):
            yield start, min(start + step, self.total)

    def chunk(self, start: int, stop: int) -> _Chunk:
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
        return _Chunk(start, stop, x, targets, weights, valid, self.seg[start:stop])

    def coefficients(
        self, ch: _Chunk, dist: torch.Tensor, unit: torch.Tensor, s_in: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Section-2 coefficients [c, T, n, N] (and rowsum) for fields in normalized units x / s_in."""
        dist_logit = dist / unit[ch.seg].view(-1, 1, 1)
        if self.opts.mask_self and self.n_self:
            dist_logit[:, :, : self.n].diagonal(dim1=1, dim2=2).add_(SELF_MASK_DISTANCE)
        fn = _compiled_coefficients() if self.opts.compile else drift_coefficients
        coeff, rowsum = fn(
            dist_logit,
            ch.weights,
            ch.valid,
            self.p,
            self.opts.temperatures,
            self.opts.affinity_floor,
            self.n_self > 0,
        )
        # The field is linear in (x, t) for fixed logits: V(x/s, t/s) = V(x, t) / s. Scaling the
        # coefficients gives fields in normalized units without materializing x / s_in or t / s_in.
        inv = (1.0 / s_in[ch.seg]).view(-1, 1, 1, 1)
        coeff.mul_(inv)
        if rowsum is not None:
            rowsum.mul_(inv)
        return coeff, rowsum

    def evaluate(self) -> list[DriftResult]:
        opts, n, p, D = self.opts, self.n, self.p, self.D
        K, T = len(self.keys), len(opts.temperatures)
        dev = self.device
        reduce = dict(distributed=opts.distributed, process_group=opts.process_group)
        single = self.plan.num_chunks == 1
        cache = single or self.plan.cache
        dists: dict[int, torch.Tensor] = {}  # chunk start -> [c, n, N]
        coeffs: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        chunks: dict[int, _Chunk] = {}  # only with a single chunk: the materialized targets

        def get_chunk(start: int, stop: int) -> _Chunk:
            if start in chunks:
                return chunks[start]
            ch = self.chunk(start, stop)
            if single:
                chunks[start] = ch
            return ch

        def get_dist(ch: _Chunk) -> torch.Tensor:
            return dists[ch.start] if ch.start in dists else pairwise_distances(ch.x, ch.targets)

        # Pass 1: distances -> per-group partial sums for the section-3 scale and the diagnostics.
        per_group = torch.zeros(4, self.total, device=dev)  # weighted dist, weight, nearest, spread
        eye = torch.eye(n, dtype=torch.bool, device=dev)
        for start, stop in self.ranges():
            ch = get_chunk(start, stop)
            dist = get_dist(ch)  # [c, n, N]
            per_group[0, start:stop] = (dist * ch.weights.unsqueeze(1)).sum((1, 2))
            per_group[1, start:stop] = ch.weights.sum(1) * n
            per_group[2, start:stop] = dist[:, :, -p:].amin(-1).sum(-1)
            if n > 1:
                dx = dist[:, :, :n] if self.n_self else pairwise_distances(ch.x, ch.x)
                per_group[3, start:stop] = dx.masked_fill(eye, 0.0).sum((1, 2))
            if cache:
                dists[start] = dist
        sizes = torch.stack([torch.full((), float(size), device=dev) for size in self.sizes])  # [K]
        # Per-key sums of per-group sums: a fixed order, so chunking does not change the result.
        sums = torch.zeros(4, K, device=dev).index_add_(1, self.seg, per_group)
        counts = torch.stack([sizes * n, sizes * n * max(n - 1, 0)])  # nearest, spread
        pooled = all_reduce_sum(torch.cat([sums, counts]), **reduce)  # [6, K]
        if opts.normalize:
            scale = pooled[0] / pooled[1].clamp_min(1e-12)  # [K]
            s_in = (scale / D**0.5).clamp_min(1e-3)
            unit = scale.clamp_min(1e-3)
        else:
            scale = torch.full((K,), float("nan"), device=dev)
            s_in = unit = torch.ones(K, device=dev)
        nearest = pooled[2] / pooled[4].clamp_min(1) / unit
        spread = pooled[3] / pooled[5].clamp_min(1) / unit

        # Pass 2: coefficients -> V_tau -> per-group sums of V_tau^2 (for lambda and the logs).
        v2_group = torch.zeros(self.total, T, device=dev)
        for start, stop in self.ranges():
            ch = get_chunk(start, stop)
            coeff, rowsum = self.coefficients(ch, get_dist(ch), unit, s_in)
            dists.pop(start, None)
            v = apply_coefficients(coeff, ch.targets, rowsum, ch.x)  # [c, T, n, D]
            v2_group[start:stop] = v.square_().sum((2, 3))
            del v
            if cache:
                coeffs[start] = (coeff, rowsum)
        v2_sums = torch.zeros(K, T, device=dev).index_add_(0, self.seg, v2_group)
        pooled_v2 = all_reduce_sum(torch.cat([v2_sums, (sizes * n * D).unsqueeze(1)], dim=1), **reduce)
        raw_v2 = pooled_v2[:, :T] / pooled_v2[:, T:].clamp_min(1)  # [K, T]

        # Pass 3: V = sum_tau V_tau / lambda_tau = (sum_tau coeff_tau / lambda_tau) @ t, with one
        # lambda per key and temperature (section 3); the raw field uses lambda = 1.
        inv_lam = raw_v2.clamp_min(1e-8).rsqrt() if opts.normalize else torch.ones(K, T, device=dev)
        field = torch.empty(self.total, n, D, device=dev)
        for start, stop in self.ranges():
            ch = get_chunk(start, stop)
            if start in coeffs:
                coeff, rowsum = coeffs.pop(start)
            else:  # recompute: memory stays bounded by the chunk, at the cost of more passes
                coeff, rowsum = self.coefficients(ch, pairwise_distances(ch.x, ch.targets), unit, s_in)
            w = inv_lam[ch.seg].view(-1, T, 1, 1)
            combined = _sum_over_temperatures(coeff, w)  # [c, n, N]
            combined_rowsum = None if rowsum is None else _sum_over_temperatures(rowsum, w)
            apply_coefficients(combined, ch.targets, combined_rowsum, ch.x, out=field[start:stop])
        chunks.clear()

        results = []
        for k, (lo, hi) in enumerate(zip(self.offsets[:-1], self.offsets[1:], strict=True)):
            results.append(
                DriftResult(
                    field=field[lo:hi],
                    scale=scale[k],
                    feature_scale=s_in[k],
                    raw_v2={tau: raw_v2[k, i] for i, tau in enumerate(opts.temperatures)},
                    nearest_pos=nearest[k],
                    spread=spread[k] if n > 1 else torch.zeros((), device=dev),
                    normalized=opts.normalize,
                )
            )
        return results


def _sum_over_temperatures(coeff: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum_tau weight[:, tau] * coeff[:, tau]: [c, T, n, k] -> [c, n, k], in a fixed order."""
    out = coeff[:, 0] * weight[:, 0]
    for i in range(1, coeff.shape[1]):
        out.add_(coeff[:, i] * weight[:, i])
    return out


_COMPILED: Any = None


def _compiled_coefficients() -> Any:
    """``torch.compile`` of the coefficient kernel, built once (dynamic: chunk sizes vary)."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(drift_coefficients, dynamic=True)
    return _COMPILED


def compute_drifts(
    keys: Mapping[str, DriftGroups],
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    normalize: bool = True,
    *,
    mask_self: bool = True,
    gen_as_negatives: bool = True,
    affinity_floor: float = DEFAULT_AFFINITY_FLOOR,
    distributed: bool = False,
    process_group: torch.distributed.ProcessGroup | None = None,
    memory_budget: int | None = None,
    chunk_groups: int | None = None,
    compile: bool = False,
) -> dict[str, DriftResult]:
    """The field of several feature keys; each key has its own section-3 scalars.

    Keys with the same group shape (n, m, p, D) are batched into one kernel call per chunk. See
    :func:`drifting_field` for the arguments; ``keys`` maps a key name to its groups.

    Returns:
        key -> :class:`DriftResult`, in the order of ``keys``.
    """
    temps = tuple(float(tau) for tau in temperatures)
    if len(temps) == 0 or any(not tau > 0 for tau in temps):
        raise ValueError(
            f"temperatures must be a non-empty list of positive numbers, got {list(temperatures)}"
        )
    opts = _Options(
        temps,
        normalize,
        mask_self,
        gen_as_negatives,
        float(affinity_floor),
        distributed,
        process_group,
        memory_budget,
        chunk_groups,
        compile,
    )
    if not keys:
        raise ValueError("at least one feature key is needed")
    prepared = [_prepare(name, groups) for name, groups in keys.items()]
    buckets: dict[tuple, list[_Key]] = {}
    for key in prepared:  # insertion order: identical on every process, so collectives match
        buckets.setdefault(key.signature, []).append(key)
    out: dict[str, DriftResult] = {}
    with torch.no_grad(), torch.autocast(device_type=prepared[0].gen.device.type, enabled=False):
        for bucket_keys in buckets.values():
            for key, result in zip(bucket_keys, _Bucket(bucket_keys, opts).evaluate(), strict=True):
                out[key.name] = result
    return {name: out[name] for name in keys}


def compute_drift(
    gen: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor | None = None,
    neg_weights: torch.Tensor | float | None = None,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    normalize: bool = True,
    *,
    neg_mask: torch.Tensor | None = None,
    neg_index: torch.Tensor | None = None,
    **kwargs: Any,
) -> DriftResult:
    """Field plus diagnostics of one feature key; see :func:`drifting_field` for the arguments."""
    groups = DriftGroups(gen, pos, neg, neg_weights, neg_mask, neg_index)
    return compute_drifts({"": groups}, temperatures, normalize, **kwargs)[""]


def drifting_field(
    gen: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor | None = None,
    neg_weights: torch.Tensor | float | None = None,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    normalize: bool = True,
    *,
    neg_mask: torch.Tensor | None = None,
    neg_index: torch.Tensor | None = None,
    mask_self: bool = True,
    gen_as_negatives: bool = True,
    affinity_floor: float = DEFAULT_AFFINITY_FLOOR,
    distributed: bool = False,
    process_group: torch.distributed.ProcessGroup | None = None,
    memory_budget: int | None = None,
    chunk_groups: int | None = None,
    compile: bool = False,
) -> torch.Tensor:
    """The drifting field V of one feature key (METHOD.md sections 2 and 3), batched over groups.

    Args:
        gen: [G, n, D] generated features; also the negatives, each self-masked.
        pos: [G, p, D] positives y.
        neg: [G, m, D] extra negatives u (e.g. unconditional real data), or None; with
            ``neg_index`` a bank [M, m, D] shared between groups.
        neg_weights: per-target weights of ``neg`` (w_cfg), broadcastable to [G, m]; default 1.
        temperatures: the taus; the field is summed over them.
        normalize: False returns the raw field of section 2 (logits -d/tau on unnormalized
            distances), summed over temperatures, in feature units. True returns the field of
            section 3 in normalized feature units (x / s_in), each V_tau divided by its RMS.
        neg_mask: bool, broadcastable to [G, m]; False removes that target from the group entirely
            (both softmaxes and the weights), e.g. real images whose caption equals this prompt.
        neg_index: [G] long; group g uses ``neg[neg_index[g]]``.
        mask_self: exclude each generated sample from its own negatives (+100 on its distance).
        gen_as_negatives: use the generated set as negatives (the method). False leaves only
            ``neg`` as negatives (used by the anti-symmetry check of section 8).
        affinity_floor: floor under A_row * A_col (official release: 1e-6).
        distributed: pool the section-3 scalars over all processes with an all-reduce.
        process_group: the group for that all-reduce (None: the default group).
        memory_budget: bytes of working memory; groups are evaluated in chunks that fit (see
            :mod:`t2i_drift.drifting.chunking`). None: one chunk. The result does not depend on it.
        chunk_groups: explicit groups per chunk (overrides the budget's choice).
        compile: run the kernel through ``torch.compile``.
    Returns:
        [G, n, D] float32 field, detached (no gradient ever flows through V).
    """
    return compute_drift(
        gen,
        pos,
        neg,
        neg_weights,
        temperatures,
        normalize,
        neg_mask=neg_mask,
        neg_index=neg_index,
        mask_self=mask_self,
        gen_as_negatives=gen_as_negatives,
        affinity_floor=affinity_floor,
        distributed=distributed,
        process_group=process_group,
        memory_budget=memory_budget,
        chunk_groups=chunk_groups,
        compile=compile,
    ).field


def _key_loss(gen: torch.Tensor, result: DriftResult) -> torch.Tensor:
    """mean((x~ - stopgrad(x~ + V))^2) with x~ = gen / s_in (s_in a constant), in fp32."""
    with torch.autocast(device_type=gen.device.type, enabled=False):
        x = gen.float() / result.feature_scale
        target = (x.detach() + result.field).detach()
        return F.mse_loss(x, target)


def _key_stats(result: DriftResult) -> dict[str, torch.Tensor]:
    stats = {f"v2/tau={tau:g}": v for tau, v in result.raw_v2.items()}
    stats.update(scale=result.scale, nearest_pos=result.nearest_pos, spread=result.spread)
    return stats


def drifting_loss(
    gen: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor | None = None,
    neg_weights: torch.Tensor | float | None = None,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    normalize: bool = True,
    **kwargs: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Drifting loss of one feature key: mean((x~ - stopgrad(x~ + V))^2) (METHOD.md sections 1, 3).

    Same arguments as :func:`drifting_field`. The gradient reaches only ``gen``; with
    ``normalize=True`` x~ = gen / s_in (s_in is a constant), so the value is mean(V^2) = O(1) per key.

    Returns:
        loss: scalar fp32 tensor.
        stats: ``v2/tau=<tau>`` raw mean(V_tau^2) per temperature (before the per-temperature
            normalization; the convergence signal), ``scale``, ``nearest_pos``, ``spread``; each a
            detached 0-d tensor (convert with ``float`` when logging, not every step).
    """
    result = compute_drift(gen, pos, neg, neg_weights, temperatures, normalize, **kwargs)
    return _key_loss(gen, result), _key_stats(result)


def drifting_losses(
    keys: Mapping[str, DriftGroups],
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    normalize: bool = True,
    *,
    key_weights: Mapping[str, float] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum over feature keys of the drifting loss (METHOD.md section 3: loss = sum_key loss_key).

    Args:
        keys: key name -> its groups; keys of equal group shape share kernel calls.
        temperatures, normalize, **kwargs: as in :func:`drifting_field`.
        key_weights: optional weight per key (default 1, METHOD.md's plain sum). A key's
            normalization is unchanged; the weight only scales its loss term.
    Returns:
        loss (scalar fp32) and stats: ``loss/<key>`` and ``<key>/<stat>`` as in :func:`drifting_loss`.
    """
    results = compute_drifts(keys, temperatures, normalize, **kwargs)
    total: torch.Tensor | None = None
    stats: dict[str, torch.Tensor] = {}
    for name, result in results.items():
        loss = _key_loss(keys[name].gen, result)
        weight = 1.0 if key_weights is None else float(key_weights.get(name, 1.0))
        total = weight * loss if total is None else total + weight * loss
        stats[f"loss/{name}"] = loss.detach()
        stats.update({f"{name}/{stat}": value for stat, value in _key_stats(result).items()})
    if total is None:
        raise ValueError("drifting_losses needs at least one feature key")
    return total, stats
