"""A plain, slow reference implementation of the drifting field: one group, one temperature at a time.

This is docs/method.md sections 2 and 3 (the paper's Algorithm 2 plus the official release's
details) written out as directly as possible, for the tests to check the batched evaluator against
and as the baseline of ``scripts/bench_drift.py``. It shares no numerical code with the fast path
(``bucket.py``, ``kernel.py``): the targets of each group are concatenated explicitly, masked
targets are removed by indexing, distances are plain differences, there is no chunking, no
coefficient folding and no scaling trick. It computes in float64 by default.

Per group, with x [n, D] generated, u [m, D] extra negatives with weights w_u, y [p, D] positives:

    t = concat[x, u, y]                          targets, N = n + m + p
    d_ij = sqrt(max(||x_i - t_j||^2, 1e-8))      plain L2
    section 3 (per key, pooled over groups):
        scale = sum w_j d_ij / sum w_j           over all groups and pairs (self pairs included)
        s_in = max(scale / sqrt(D), 1e-3),  unit = max(scale, 1e-3)
    per temperature tau:
        logits = -(d / unit + 100 [j is i itself]) / tau
        A = sqrt(max(softmax_j(logits) * softmax_i(logits), floor)) * w_j    (floor: 1e-6)
        coeff_ij = +A_ij S_neg_i for positives, -A_ij S_pos_i for negatives
        V_tau,i = sum_j coeff_ij t~_j - (sum_j coeff_ij) x~_i        (x~ = x / s_in, t~ = t / s_in)
    V = sum_tau V_tau / sqrt(max(mean(V_tau^2), 1e-8))              (mean over all groups of the key;
                                                                     lambda_groups: mean of it over keys)

Without normalization: scale is NaN, s_in = unit = 1 and V = sum_tau V_tau.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from t2i_drift.drifting.groups import DriftGroups
from t2i_drift.drifting.options import DEFAULT_OPTIONS, DriftOptions
from t2i_drift.drifting.result import DriftResult

__all__ = ["reference_drift", "reference_loss"]


@dataclass
class _Group:
    """One group's targets, in the reference's dtype.

    Attributes:
        x: [n, D] generated features.
        t: [N, D] targets concat[x (if used as negatives), u (unmasked only), y].
        w: [N] per-target weights: 1 for x and y, w_cfg for u.
        is_pos: [N] bool, True for the positives y.
        is_self: [n, N] bool, True where target j is generated sample i itself (self-masking on).
    """

    x: torch.Tensor
    t: torch.Tensor
    w: torch.Tensor
    is_pos: torch.Tensor
    is_self: torch.Tensor


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """d_ij = sqrt(max(||a_i - b_j||^2, 1e-8)): [n, D], [N, D] -> [n, N]."""
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1).clamp_min(1e-8).sqrt()


def _group(groups: DriftGroups, g: int, options: DriftOptions, dtype: torch.dtype) -> _Group:
    """The targets of group ``g`` (docs/method.md section 2)."""
    x = groups.gen[g].detach().to(dtype)
    y = groups.pos[g].detach().to(dtype)
    n, D = x.shape
    num_groups, device = groups.gen.shape[0], x.device
    if groups.neg is None:
        u, w_u = x.new_zeros(0, D), x.new_zeros(0)
    else:
        row = groups.neg_index[g] if groups.neg_index is not None else g
        u = groups.neg[row].detach().to(dtype)
        m = u.shape[0]
        w_u = x.new_ones(m)
        if groups.neg_weights is not None:
            w = torch.as_tensor(groups.neg_weights, dtype=dtype, device=device)
            w_u = torch.broadcast_to(w, (num_groups, m))[g]
        if groups.neg_mask is not None:  # a masked target leaves the group entirely
            keep = torch.broadcast_to(groups.neg_mask.to(device=device, dtype=torch.bool), (num_groups, m))[g]
            u, w_u = u[keep], w_u[keep]
    num_self = n if options.gen_as_negatives else 0
    t = torch.cat([x[:num_self], u, y])
    w = torch.cat([x.new_ones(num_self), w_u, x.new_ones(y.shape[0])])
    is_pos = torch.arange(t.shape[0], device=device) >= num_self + u.shape[0]
    is_self = torch.zeros(n, t.shape[0], dtype=torch.bool, device=device)
    if num_self and options.mask_self:
        is_self[:, :n] = torch.eye(n, dtype=torch.bool, device=device)
    return _Group(x, t, w, is_pos, is_self)


def _group_field(
    x: torch.Tensor,
    t: torch.Tensor,
    dist: torch.Tensor,
    group: _Group,
    tau: float,
    floor: float,
) -> torch.Tensor:
    """V_tau of one group (docs/method.md section 2, the paper's Algorithm 2).

    Args:
        x: [n, D] generated features (normalized units).
        t: [N, D] targets (same units).
        dist: [n, N] the distances that enter the logits (normalized, self-masking added).
        group: the group's weights and target kinds.
    Returns:
        [n, D].
    """
    logits = -dist / tau
    a_row = logits.softmax(dim=1)  # over targets j
    a_col = logits.softmax(dim=0)  # over generated samples i
    # Geometric mean of the two, floored; the per-target weights come after both softmaxes.
    A = (a_row * a_col).clamp_min(floor).sqrt() * group.w[None, :]
    s_pos = A[:, group.is_pos].sum(1, keepdim=True)  # [n, 1]
    s_neg = A[:, ~group.is_pos].sum(1, keepdim=True)
    coeff = torch.where(group.is_pos[None, :], A * s_neg, -A * s_pos)  # [n, N]
    # The last term is zero analytically; it cancels rounding.
    return coeff @ t - coeff.sum(1, keepdim=True) * x


def _reference_key(
    groups: DriftGroups, options: DriftOptions, dtype: torch.dtype
) -> tuple[DriftResult, dict[float, torch.Tensor]]:
    """Section 3 over the groups of one key, each group's field by :func:`_group_field`.

    Returns the key's result with a zero field, and its V_tau [groups, n, D] per temperature (the
    lambdas may pool over several keys: :func:`reference_drift` sums them).
    """
    num_groups, n, D = groups.gen.shape
    device = groups.gen.device
    parts = [_group(groups, g, options, dtype) for g in range(num_groups)]
    dists = [_distances(part.x, part.t) for part in parts]
    zero = torch.zeros((), dtype=dtype, device=device)

    # Section 3: the scale pools every pair of every group of the key, weighted by w_j.
    weighted = sum(((d * part.w[None, :]).sum() for d, part in zip(dists, parts, strict=True)), zero)
    weight = sum((n * part.w.sum() for part in parts), zero)
    if options.normalize:
        scale = weighted / weight.clamp_min(1e-12)
        s_in, unit = (scale / math.sqrt(D)).clamp_min(1e-3), scale.clamp_min(1e-3)
    else:
        scale, s_in, unit = torch.full_like(zero, math.nan), zero + 1.0, zero + 1.0

    # Diagnostics: distance to the nearest positive; spread of the generated samples.
    nearest = sum((d[:, part.is_pos].amin(1).sum() for d, part in zip(dists, parts, strict=True)), zero)
    nearest = nearest / max(num_groups * n, 1) / unit
    spread = zero
    if n > 1:
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=device)
        spread = sum((_distances(part.x, part.x)[off_diagonal].sum() for part in parts), zero)
        spread = spread / max(num_groups * n * (n - 1), 1) / unit

    v_taus: dict[float, torch.Tensor] = {}  # V_tau of every group, [groups, n, D]
    for tau in options.temperatures:
        v_tau = torch.zeros(num_groups, n, D, dtype=dtype, device=device)
        for g, (d, part) in enumerate(zip(dists, parts, strict=True)):
            logit_dist = d / unit + 100.0 * part.is_self  # self-masking on the normalized distance
            x, t = part.x / s_in, part.t / s_in
            v_tau[g] = _group_field(x, t, logit_dist, part, tau, options.affinity_floor)
        v_taus[tau] = v_tau
    raw_v2 = {tau: v.square().mean() if v.numel() else zero for tau, v in v_taus.items()}
    result = DriftResult(
        field=torch.zeros(num_groups, n, D, dtype=dtype, device=device),  # replaced by _normalized
        scale=scale,
        feature_scale=s_in,
        raw_v2=raw_v2,
        nearest_pos=nearest,
        spread=spread,
    )
    return result, v_taus


def _normalized(
    result: DriftResult, v_taus: dict[float, torch.Tensor], lambda_v2: dict[float, torch.Tensor] | None
) -> DriftResult:
    """V = sum_tau V_tau / lambda_tau, lambda_tau = sqrt(max(lambda_v2[tau], 1e-8)); None: lambda 1."""
    field = torch.zeros_like(result.field)
    for tau, v_tau in v_taus.items():
        lam = 1.0 if lambda_v2 is None else lambda_v2[tau].clamp_min(1e-8).sqrt()
        field += v_tau / lam
    return replace(result, field=field)


def reference_drift(
    keys: Mapping[str, DriftGroups],
    options: DriftOptions = DEFAULT_OPTIONS,
    dtype: torch.dtype = torch.float64,
    lambda_groups: Mapping[str, str] | None = None,
) -> dict[str, DriftResult]:
    """What :func:`~t2i_drift.drifting.field.evaluate_drift` computes, one group at a time.

    Inputs must be valid (this function does not check shapes; the fast path does); results are on
    the inputs' device. ``memory_budget``, ``chunk_groups`` and ``compile``
    only change how the fast path evaluates, never what, and are ignored here.

    Args:
        keys: key name -> its groups, as for ``evaluate_drift``.
        options: as for ``evaluate_drift``; ``distributed`` is not supported.
        dtype: the precision of every computation (float64 by default; float32 to time it fairly).
        lambda_groups: as for ``evaluate_drift``: keys with one label share lambda_tau.
    Returns:
        key -> DriftResult with all tensors in ``dtype``.
    """
    if options.distributed:
        raise ValueError("the reference runs in one process: distributed=True is not supported")
    keyed = {name: _reference_key(groups, options, dtype) for name, groups in keys.items()}
    lambda_groups = lambda_groups or {}
    out = {}
    for name, (result, v_taus) in keyed.items():
        lambda_v2 = None
        if options.normalize:
            # One lambda per temperature for every key with this key's label: the mean over those
            # keys of their mean(V_tau^2); an unlabelled key is its own label.
            label = lambda_groups.get(name)
            peers = [
                other
                for other in keyed
                if other == name or (label is not None and lambda_groups.get(other) == label)
            ]
            lambda_v2 = {
                tau: torch.stack([keyed[other][0].raw_v2[tau] for other in peers]).mean()
                for tau in options.temperatures
            }
        out[name] = _normalized(result, v_taus, lambda_v2)
    return out


def reference_loss(
    keys: Mapping[str, DriftGroups],
    options: DriftOptions = DEFAULT_OPTIONS,
    key_weights: Mapping[str, float] | None = None,
    dtype: torch.dtype = torch.float64,
    lambda_groups: Mapping[str, str] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The value of :func:`~t2i_drift.drifting.loss.drifting_loss` and its stats (no gradient).

    loss_key = mean((x~ - (x~ + V))^2) = mean(V^2); loss = sum_key weight_key * loss_key.
    """
    total = torch.zeros((), dtype=dtype)
    stats: dict[str, torch.Tensor] = {}
    for name, result in reference_drift(keys, options, dtype, lambda_groups).items():
        loss = result.field.square().mean()
        total = total + (1.0 if key_weights is None else key_weights.get(name, 1.0)) * loss
        stats[f"loss/{name}"] = loss
        stats.update({f"{name}/v2/tau={tau:g}": v for tau, v in result.raw_v2.items()})
        stats.update(
            {
                f"{name}/scale": result.scale,
                f"{name}/nearest_pos": result.nearest_pos,
                f"{name}/spread": result.spread,
            }
        )
    return total, stats
