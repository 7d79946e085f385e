"""The drifting field V and the drifting loss (shared/METHOD.md sections 1 to 3).

Everything here is batched over *groups*: a group is one condition at one feature location
(METHOD.md section 2). Tensors carry a leading group axis ``G`` and there is no Python loop over
groups. Notation, following METHOD.md:

    x  = gen  [G, n, D]   generated features; also the (self-masked) negatives
    u  = neg  [G, m, D]   extra negatives (unconditional real data), per-target weight w_cfg
    y  = pos  [G, p, D]   positives (real data of this condition)
    t  = concat[x, u, y]  [G, N, D] targets, N = n + m + p

All drift math runs in float32, whatever the input dtype or an enclosing autocast region.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from t2i_drift.drifting.distributed import global_mean

DEFAULT_TEMPERATURES: tuple[float, ...] = (0.02, 0.05, 0.2)
# Every affinity is at least sqrt(1e-6) = 1e-3 (official release detail, METHOD.md section 2).
DEFAULT_AFFINITY_FLOOR: float = 1e-6
# Self-masking adds this to the (normalized) distance of a sample to itself: logit <= -500 at
# tau = 0.2, i.e. exactly zero weight after the softmax in fp32.
SELF_MASK_DISTANCE: float = 100.0
# Logit of targets excluded through ``neg_mask``: finite (no NaN in an all-masked column) but far
# below anything exp() can resolve in fp32.
_MASKED_LOGIT: float = -1e9


@dataclass
class _Targets:
    """Targets of all groups, laid out as concat[x, u, y] along axis 1."""

    t: torch.Tensor  # [G, N, D] fp32
    weights: torch.Tensor  # [G, N] fp32, w_j (0 for masked-out targets)
    valid: torch.Tensor  # [G, N] bool, False for targets excluded by neg_mask
    is_pos: torch.Tensor  # [N] bool, True for the y block
    n_self: int  # how many leading targets are the generated set itself (0 or n)


def _check_inputs(
    gen: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None, temperatures: Sequence[float]
) -> None:
    if gen.dim() != 3:
        raise ValueError(f"gen must be [G, n, D], got shape {tuple(gen.shape)}")
    if pos.dim() != 3 or pos.shape[0] != gen.shape[0] or pos.shape[2] != gen.shape[2]:
        raise ValueError(
            f"pos must be [G, p, D] with G={gen.shape[0]} and D={gen.shape[2]} as in gen, "
            f"got shape {tuple(pos.shape)}"
        )
    if neg is not None and (neg.dim() != 3 or neg.shape[0] != gen.shape[0] or neg.shape[2] != gen.shape[2]):
        raise ValueError(
            f"neg must be [G, m, D] with G={gen.shape[0]} and D={gen.shape[2]} as in gen, "
            f"got shape {tuple(neg.shape)}"
        )
    if len(temperatures) == 0 or any(float(tau) <= 0 for tau in temperatures):
        raise ValueError(f"temperatures must be a non-empty list of positive numbers, got {temperatures}")


def _build_targets(
    gen: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor | None,
    neg_weights: torch.Tensor | float | None,
    neg_mask: torch.Tensor | None,
    gen_as_negatives: bool,
) -> _Targets:
    """Concatenate targets and their weights. Inputs are already fp32 and detached."""
    G, n, _ = gen.shape
    p = pos.shape[1]
    m = 0 if neg is None else neg.shape[1]
    blocks = ([gen] if gen_as_negatives else []) + ([neg] if neg is not None else []) + [pos]
    t = torch.cat(blocks, dim=1)
    n_self = n if gen_as_negatives else 0

    w_neg = torch.ones(G, m, device=gen.device, dtype=torch.float32)
    if neg_weights is not None:
        if neg is None:
            raise ValueError("neg_weights was given without neg")
        w = torch.as_tensor(neg_weights, dtype=torch.float32, device=gen.device)
        try:
            w_neg = torch.broadcast_to(w, (G, m)).clone()
        except RuntimeError as err:
            raise ValueError(
                f"neg_weights of shape {tuple(w.shape)} does not broadcast to [G, m] = [{G}, {m}]"
            ) from err
    valid_neg = torch.ones(G, m, device=gen.device, dtype=torch.bool)
    if neg_mask is not None:
        if neg is None:
            raise ValueError("neg_mask was given without neg")
        try:
            valid_neg = torch.broadcast_to(neg_mask.to(device=gen.device, dtype=torch.bool), (G, m))
        except RuntimeError as err:
            raise ValueError(
                f"neg_mask of shape {tuple(neg_mask.shape)} does not broadcast to [G, m] = [{G}, {m}]"
            ) from err
        w_neg = w_neg * valid_neg

    ones_self = torch.ones(G, n_self, device=gen.device, dtype=torch.float32)
    ones_pos = torch.ones(G, p, device=gen.device, dtype=torch.float32)
    weights = torch.cat([ones_self, w_neg, ones_pos], dim=1)
    valid = torch.cat([ones_self.bool(), valid_neg, ones_pos.bool()], dim=1)
    is_pos = torch.zeros(t.shape[1], dtype=torch.bool, device=gen.device)
    is_pos[n_self + m :] = True
    return _Targets(t=t, weights=weights, valid=valid, is_pos=is_pos, n_self=n_self)


def pairwise_distances(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Plain (not squared) L2 distances in fp32, d_ij = sqrt(max(||x_i - t_j||^2, 1e-8)).

    Args:
        x: [G, n, D]
        t: [G, N, D]
    Returns:
        [G, n, N] fp32.
    """
    x = x.float()
    t = t.float()
    # ||x||^2 + ||t||^2 - 2 x.t with one batched matmul: O(G n N) memory instead of O(G n N D).
    sq = (x * x).sum(-1, keepdim=True) + (t * t).sum(-1).unsqueeze(1) - 2.0 * torch.bmm(x, t.transpose(1, 2))
    return sq.clamp_min(1e-8).sqrt()


def _kernel_field(
    x: torch.Tensor,
    tg: _Targets,
    t: torch.Tensor,
    dist: torch.Tensor,
    temperatures: Sequence[float],
    affinity_floor: float,
) -> torch.Tensor:
    """The field of METHOD.md section 2 for every temperature at once.

    Args:
        x: [G, n, D] generated features (fp32, detached), in the units of ``t``.
        tg: target layout (weights, masks).
        t: [G, N, D] targets in the same units as ``x``.
        dist: [G, n, N] distances that enter the logits (self-masking already added).
        temperatures: T temperatures.
        affinity_floor: floor under A_row * A_col (official: 1e-6).
    Returns:
        [T, G, n, D] fp32: V_tau for each temperature (paper Algorithm 2).
    """
    taus = torch.tensor([float(tau) for tau in temperatures], device=x.device, dtype=torch.float32)
    logits = -dist.unsqueeze(0) / taus.view(-1, 1, 1, 1)  # [T, G, n, N]
    logits = logits.masked_fill(~tg.valid[None, :, None, :], _MASKED_LOGIT)
    a_row = logits.softmax(dim=-1)  # normalize over targets j
    a_col = logits.softmax(dim=-2)  # normalize over generated rows i
    # Geometric mean of the two normalizations, floored, then per-target weights (official order).
    affinity = (a_row * a_col).clamp_min(affinity_floor).sqrt() * tg.weights[None, :, None, :]
    is_pos = tg.is_pos.view(1, 1, 1, -1)
    s_pos = (affinity * is_pos).sum(-1, keepdim=True)  # [T, G, n, 1]
    s_neg = (affinity * ~is_pos).sum(-1, keepdim=True)
    coeff = torch.where(is_pos, affinity * s_neg, -affinity * s_pos)  # [T, G, n, N]
    T, G, n, N = coeff.shape
    # One bmm per group over all temperatures: [G, T*n, N] @ [G, N, D] (no copy of the targets).
    coeff_g = coeff.permute(1, 0, 2, 3).reshape(G, T * n, N)
    attract_repel = torch.bmm(coeff_g, t).view(G, T, n, -1).permute(1, 0, 2, 3)
    # sum_j coeff_ij is zero analytically; subtracting it times x_i cancels rounding.
    return attract_repel - coeff.sum(-1, keepdim=True) * x.unsqueeze(0)


@dataclass
class DriftResult:
    """Everything one evaluation of the field produces.

    Scalars are 0-d fp32 tensors on the input's device, so the hot path never waits for the device;
    convert them to floats only when logging.

    Attributes:
        field: [G, n, D] fp32 drift V (normalized feature units if ``normalized`` else raw units).
        scale: mean pairwise distance (section 3 ``scale``); NaN when not normalized.
        feature_scale: s_in, features were divided by it; 1.0 when not normalized.
        raw_v2: per temperature, mean(V_tau^2) before the per-temperature normalization.
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


def compute_drift(
    gen: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor | None = None,
    neg_weights: torch.Tensor | float | None = None,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    normalize: bool = True,
    *,
    neg_mask: torch.Tensor | None = None,
    mask_self: bool = True,
    gen_as_negatives: bool = True,
    affinity_floor: float = DEFAULT_AFFINITY_FLOOR,
    distributed: bool = False,
    process_group: torch.distributed.ProcessGroup | None = None,
) -> DriftResult:
    """Field plus diagnostics; see :func:`drifting_field` for the arguments."""
    _check_inputs(gen, pos, neg, temperatures)
    with torch.no_grad(), torch.autocast(device_type=gen.device.type, enabled=False):
        x = gen.detach().float()
        tg = _build_targets(
            x,
            pos.detach().float(),
            None if neg is None else neg.detach().float(),
            neg_weights,
            neg_mask,
            gen_as_negatives,
        )
        G, n, D = x.shape
        dist = pairwise_distances(x, tg.t)  # [G, n, N]
        reduce = dict(distributed=distributed, process_group=process_group)

        if normalize:
            # Section 3: one scale per feature key, pooled over all groups (and processes); the
            # weights w_j (w_cfg for u, 0 for masked targets) weigh the pairs, self pairs included.
            pair_w = tg.weights.unsqueeze(1).expand_as(dist)
            scale = global_mean((dist * pair_w).sum(), pair_w.sum(), **reduce)
            feature_scale = torch.clamp(scale / D**0.5, min=1e-3)
            dist_unit = torch.clamp(scale, min=1e-3)
            x_in, t_in = x / feature_scale, tg.t / feature_scale
            dist_logit = dist / dist_unit
        else:
            scale = torch.tensor(float("nan"), device=x.device)
            feature_scale = torch.tensor(1.0, device=x.device)
            dist_unit = torch.tensor(1.0, device=x.device)
            x_in, t_in = x, tg.t
            dist_logit = dist
        if mask_self and tg.n_self > 0:
            eye = torch.eye(n, device=x.device, dtype=torch.float32)
            dist_logit = dist_logit.clone()
            dist_logit[:, :, :n] += SELF_MASK_DISTANCE * eye

        v_per_tau = _kernel_field(x_in, tg, t_in, dist_logit, temperatures, affinity_floor)  # [T,G,n,D]
        raw_v2: dict[float, torch.Tensor] = {}
        field = torch.zeros_like(x_in)
        for k, tau in enumerate(temperatures):
            v2 = global_mean(v_per_tau[k].square().sum(), v_per_tau[k].numel(), **reduce)
            raw_v2[float(tau)] = v2
            if normalize:
                # lambda_tau: one scalar per key and temperature so each V_tau has unit RMS.
                field = field + v_per_tau[k] / torch.sqrt(torch.clamp(v2, min=1e-8))
            else:
                field = field + v_per_tau[k]

        # Diagnostics (same distance units as the logits, self pairs excluded).
        pos_d = dist[:, :, tg.is_pos]  # [G, n, p]
        nearest_pos = global_mean(pos_d.min(-1).values.sum(), G * n, **reduce) / dist_unit
        if n > 1:
            # The first n targets are the generated set itself: reuse those distances.
            dx = dist[:, :, :n] if tg.n_self == n else pairwise_distances(x, x)
            off = ~torch.eye(n, dtype=torch.bool, device=x.device)
            spread = global_mean(dx[:, off].sum(), G * n * (n - 1), **reduce) / dist_unit
        else:
            spread = torch.zeros((), device=x.device)
    return DriftResult(
        field=field,
        scale=scale,
        feature_scale=feature_scale,
        raw_v2=raw_v2,
        nearest_pos=nearest_pos,
        spread=spread,
        normalized=normalize,
    )


def drifting_field(
    gen: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor | None = None,
    neg_weights: torch.Tensor | float | None = None,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    normalize: bool = True,
    *,
    neg_mask: torch.Tensor | None = None,
    mask_self: bool = True,
    gen_as_negatives: bool = True,
    affinity_floor: float = DEFAULT_AFFINITY_FLOOR,
    distributed: bool = False,
    process_group: torch.distributed.ProcessGroup | None = None,
) -> torch.Tensor:
    """The drifting field V (METHOD.md sections 2 and 3), batched over groups.

    Args:
        gen: [G, n, D] generated features; also the negatives, each self-masked.
        pos: [G, p, D] positives y.
        neg: [G, m, D] extra negatives u (e.g. unconditional real data), or None.
        neg_weights: per-target weights of ``neg`` (w_cfg), broadcastable to [G, m]; default 1.
        temperatures: the taus; the field is summed over them.
        normalize: False returns the raw field of section 2 (logits -d/tau on unnormalized
            distances), summed over temperatures, in feature units. True returns the field of
            section 3 in normalized feature units (x / s_in), each V_tau divided by its RMS.
        neg_mask: bool, broadcastable to [G, m]; False removes that target from the group entirely
            (both softmaxes and the weights), e.g. real images whose caption equals this prompt.
        mask_self: exclude each generated sample from its own negatives (+100 on its distance).
        gen_as_negatives: use the generated set as negatives (the method). False leaves only
            ``neg`` as negatives (used by the anti-symmetry check of section 8).
        affinity_floor: floor under A_row * A_col (official release: 1e-6).
        distributed: pool the section-3 scalars over all processes with an all-reduce.
        process_group: the group for that all-reduce (None: the default group).
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
        mask_self=mask_self,
        gen_as_negatives=gen_as_negatives,
        affinity_floor=affinity_floor,
        distributed=distributed,
        process_group=process_group,
    ).field


def drifting_loss(
    gen: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor | None = None,
    neg_weights: torch.Tensor | float | None = None,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    normalize: bool = True,
    **kwargs,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Drifting loss of one feature key: mean((x~ - stopgrad(x~ + V))^2) (METHOD.md eq. in sec. 1, 3).

    Same arguments as :func:`drifting_field`. The gradient reaches only ``gen``; with
    ``normalize=True`` x~ = gen / s_in (s_in is a constant), so the value is mean(V^2) = O(1) per key.

    Returns:
        loss: scalar fp32 tensor.
        stats: ``v2/tau=<tau>`` raw mean(V_tau^2) per temperature (before the per-temperature
            normalization; the convergence signal), ``scale``, ``nearest_pos``, ``spread``; each a
            detached 0-d tensor (convert with ``float`` when logging, not every step).
    """
    result = compute_drift(gen, pos, neg, neg_weights, temperatures, normalize, **kwargs)
    with torch.autocast(device_type=gen.device.type, enabled=False):
        x = gen.float() / result.feature_scale
        target = (x.detach() + result.field).detach()
        loss = F.mse_loss(x, target)
    stats: dict[str, torch.Tensor] = {f"v2/tau={tau:g}": v for tau, v in result.raw_v2.items()}
    stats.update(scale=result.scale, nearest_pos=result.nearest_pos, spread=result.spread)
    return loss, stats
