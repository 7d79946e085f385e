"""Training-time guidance (docs/method.md section 5): the alpha sampler and the unconditional weight.

Negatives are mixed with unconditional real data, q~ = (1 - g) q(.|c) + g p(.|empty). At
equilibrium q(.|c) = alpha p(.|c) - (alpha - 1) p(.|empty) with alpha = 1 / (1 - g): classifier-free
guidance learned into the generator, which receives alpha as an input. At inference the user's
``guidance_scale`` is alpha; sampling stays one forward pass.
"""

from __future__ import annotations

import torch


def guidance_weight(
    alpha: torch.Tensor | float, num_generated: int, num_uncond: torch.Tensor | int
) -> torch.Tensor:
    """w_cfg = (alpha - 1) * (n - 1) / m (docs/method.md section 5).

    Args:
        alpha: guidance scale per condition, any shape (e.g. [B]); alpha >= 1.
        num_generated: n, generated samples per group (n - 1 remain as negatives after self-masking).
        num_uncond: m, unconditional negatives per group; a tensor broadcastable to ``alpha`` when
            it varies per condition (e.g. after excluding same-caption images).
    Returns:
        fp32 tensor of ``alpha``'s shape; 0 where alpha == 1 (no guidance) or m == 0.
    """
    alpha = torch.as_tensor(alpha, dtype=torch.float32)
    if torch.any(alpha < 1):
        raise ValueError(f"alpha must be >= 1, got min {alpha.min().item():.4g}")
    m = torch.as_tensor(num_uncond, dtype=torch.float32, device=alpha.device)
    w = (alpha - 1.0) * (num_generated - 1) / m.clamp_min(1.0)
    return torch.where(m > 0, w, torch.zeros_like(w))


def sample_alpha(
    batch_size: int,
    alpha_max: float = 4.0,
    power: float = 3.0,
    fraction_at_one: float = 0.0,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Draw one alpha per condition from p(alpha) ~ alpha^-power on [1, alpha_max] (section 5).

    Inverse-CDF sampling: with u ~ U(0, 1) and k = power != 1,
    alpha = (1 + u (alpha_max^(1-k) - 1))^(1 / (1-k)); for k = 1, alpha = alpha_max^u.
    A ``fraction_at_one`` of the draws is set to exactly 1 (plain conditional training).

    Returns:
        [batch_size] fp32 tensor in [1, alpha_max].
    """
    if alpha_max < 1:
        raise ValueError(f"alpha_max must be >= 1, got {alpha_max}")
    if not 0.0 <= fraction_at_one <= 1.0:
        raise ValueError(f"fraction_at_one must be in [0, 1], got {fraction_at_one}")
    u = torch.rand(batch_size, generator=generator, device=device, dtype=torch.float64)
    if alpha_max == 1:
        alpha = torch.ones_like(u)
    elif abs(power - 1.0) < 1e-12:
        alpha = alpha_max**u
    else:
        one_minus_k = 1.0 - power
        alpha = (1.0 + u * (alpha_max**one_minus_k - 1.0)) ** (1.0 / one_minus_k)
    if fraction_at_one > 0:
        at_one = (
            torch.rand(batch_size, generator=generator, device=device, dtype=torch.float64) < fraction_at_one
        )
        alpha = torch.where(at_one, torch.ones_like(alpha), alpha)
    return alpha.clamp(1.0, alpha_max).float()
