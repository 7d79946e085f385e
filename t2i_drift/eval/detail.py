"""Fine detail of images: is a sample a texture like the real images, a blur, or noise?

With one positive (or a raw-pixel field on textured images) a generator's answer for something
it cannot pin down is the mean of several images: the right colours and layout, no fine detail.
A learned feature space can instead answer with texture. Pixel distances barely tell the two
apart; the energy of neighbouring-pixel differences does.
"""

from __future__ import annotations

import torch


def detail(images: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between horizontally and vertically neighbouring pixels:
    images [..., C, H, W] -> [...]. High for textures and noise, low for blurs and flat areas."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).pow(2).flatten(-3).mean(-1)
    dy = (images[..., 1:, :] - images[..., :-1, :]).pow(2).flatten(-3).mean(-1)
    return (dx + dy) / 2


def detail_ratio(generated: torch.Tensor, real: torch.Tensor) -> float:
    """Mean over prompts of (the generated images' mean detail / the real images' mean detail):
    generated [P, S, C, H, W] and real [P, R, C, H, W], prompt-major. About 1: as much fine detail
    as the real images; near 0: blurs; above 1: more than real (noise, checkers)."""
    if generated.ndim != 5 or real.ndim != 5 or generated.shape[0] != real.shape[0]:
        raise ValueError(
            f"generated {tuple(generated.shape)} and real {tuple(real.shape)} must be [P, S, C, H, W] "
            "with the same number of prompts"
        )
    return (detail(generated).mean(1) / detail(real).mean(1).clamp_min(1e-12)).mean().item()
