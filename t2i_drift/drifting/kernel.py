"""The per-group kernel of the drifting field (docs/method.md section 2), batched over groups.

These are the pure tensor functions that the chunked evaluator in ``bucket.py`` calls once per chunk
of groups. They know nothing about feature keys, normalization pooling or processes, which keeps
them small enough for ``torch.compile``. Notation (docs/method.md):

    x = gen  [c, n, D]    generated features of c groups; also the self-masked negatives
    t        [c, N, D]    targets concat[x, u, y]: negatives first, the p positives last
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Logit of targets excluded through a mask: finite (an all-masked column gives a uniform softmax
# instead of NaN) but far below anything exp() resolves in fp32, so the weight is exactly 0.
MASKED_LOGIT: float = -1e9


def _squared_norms(v: torch.Tensor) -> torch.Tensor:
    """||v||^2 over the last axis without a temporary of v's size."""
    return torch.linalg.vector_norm(v, dim=-1).square_()


def pairwise_distances(x: torch.Tensor, t: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Plain (not squared) L2 distances in fp32, d_ij = sqrt(max(||x_i - t_j||^2, 1e-8)).

    Args:
        x: [groups, n, D]
        t: [groups, N, D], or a sequence of blocks [groups, N_b, D] forming the targets in order (the
            concatenated [groups, N, D] copy is never made).
    Returns:
        [groups, n, N] fp32.
    """
    blocks = [t] if isinstance(t, torch.Tensor) else list(t)
    x = x.float()
    x_sq = _squared_norms(x).unsqueeze(-1)  # [groups, n, 1]
    out = []
    for b in blocks:
        b = b.float()
        # ||x||^2 + ||t||^2 - 2 x.t with one batched matmul: O(groups n N) memory, not O(groups n N D).
        sq = torch.baddbmm(x_sq + _squared_norms(b).unsqueeze(1), x, b.transpose(1, 2), alpha=-2.0)
        out.append(sq)
    sq = out[0] if len(out) == 1 else torch.cat(out, dim=-1)
    return sq.clamp_min_(1e-8).sqrt_()


def drift_coefficients(
    dist: torch.Tensor,
    weights: torch.Tensor,
    valid: torch.Tensor | None,
    num_pos: int,
    temperatures: Sequence[float],
    affinity_floor: float,
    self_block: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The coefficients of docs/method.md section 2 (paper Algorithm 2) for every temperature.

    V_tau,i = sum_j coeff_ij t_j - (sum_j coeff_ij) x_i: the field is linear in the targets for
    fixed coefficients, so callers combine temperatures and scales on these [.., n, N] tensors and
    multiply by the [N, D] targets once, instead of carrying T fields of size [n, D].

    Args:
        dist: [c, n, N] the distances that enter the logits (normalized, self-masking added).
        weights: [c, N] per-target weights w_j (1 for x and y, w_cfg for u, 0 where masked).
        valid: [c, N] bool, False removes a target from both softmaxes; None keeps all.
        num_pos: p, the number of positives (the trailing targets).
        temperatures: the T taus.
        affinity_floor: floor under A_row * A_col (official release: 1e-6, i.e. A >= 1e-3).
        self_block: the first n targets are the generated samples themselves (t_i = x_i). Then the
            correction term -(sum_j coeff_ij) x_i is folded into coeff_ii, so coeff @ t is the whole
            field and every row of coeff sums to zero (up to one rounding).
    Returns:
        coeff [c, T, n, N] fp32, and rowsum [c, T, n, 1] (sum_j coeff_ij, for the caller to
        subtract times x_i) when not ``self_block``, else None.
    """
    c, n, N = dist.shape
    T = len(temperatures)
    # One slice per temperature, divided by a Python float: no host-to-device copy of the taus
    # (which would synchronize an accelerator on every call).
    logits = dist.unsqueeze(1).expand(c, T, n, N).clone()  # [c, T, n, N]
    for i, tau in enumerate(temperatures):
        logits[:, i].div_(-float(tau))
    if valid is not None:
        logits.masked_fill_(~valid[:, None, None, :], MASKED_LOGIT)
    # Softmax over targets j times softmax over generated rows i; geometric mean, floored, then the
    # per-target weights (the official order). In place: this [c, T, n, N] tensor is the peak.
    coeff = logits.softmax(dim=-1)
    coeff.mul_(logits.softmax(dim=-2))
    del logits
    coeff.clamp_(min=affinity_floor).sqrt_().mul_(weights[:, None, None, :])
    split = N - num_pos
    s_pos = coeff[..., split:].sum(-1, keepdim=True)  # [c, T, n, 1]
    s_neg = coeff[..., :split].sum(-1, keepdim=True)
    # coeff_ij = +A_ij S_neg_i for positives, -A_ij S_pos_i for negatives (x and u).
    coeff[..., split:].mul_(s_neg)
    coeff[..., :split].mul_(-s_pos)
    # sum_j coeff_ij is zero analytically; keeping the -rowsum * x_i term cancels rounding.
    rowsum = coeff.sum(-1, keepdim=True)
    if not self_block:
        return coeff, rowsum
    coeff[..., :n].diagonal(dim1=-2, dim2=-1).sub_(rowsum.squeeze(-1))
    return coeff, None


def apply_coefficients(
    coeff: torch.Tensor,
    targets: Sequence[torch.Tensor],
    rowsum: torch.Tensor | None,
    x: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """V = coeff @ t - rowsum * x, batched over groups, with t given as blocks.

    Args:
        coeff: [c, R, n, N] (R temperatures) or [c, n, N] (one combination of them).
        targets: blocks [c, N_b, D] whose concatenation along axis 1 is t ([x, u, y]).
        rowsum: ``coeff`` summed over N (keepdim), or None when folded into ``coeff``.
        x: [c, n, D] generated features.
        out: optional contiguous output of the result's shape.
    Returns:
        V of shape coeff.shape[:-1] + (D,).
    """
    c, N = coeff.shape[0], coeff.shape[-1]
    D = x.shape[-1]
    lead = coeff.shape[1:-1]
    flat = coeff.reshape(c, -1, N)  # [c, R*n, N]
    result = out.view(c, -1, D) if out is not None else None
    col = 0
    for block in targets:
        width = block.shape[1]
        # Column slices of ``flat`` are strided views: the GEMM reads them in place (lda = N).
        part = flat[:, :, col : col + width]
        if result is None:
            result = torch.bmm(part, block)
        elif col == 0:
            torch.bmm(part, block, out=result)
        else:
            result.baddbmm_(part, block)
        col += width
    field = result.view(c, *lead, D)
    if rowsum is not None:
        field.sub_(rowsum * (x if coeff.dim() == 3 else x.unsqueeze(1)))
    return field
