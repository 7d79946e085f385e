"""A frozen encoder whose gradient reaches only some of the generated samples.

Why: with one positive per caption, a generator that cannot yet tell a caption from its neighbours
outputs something that stands for several images. Under the raw key its best answer is their pixel
mean, a blur that is still an image; under a learned encoder's keys (the MAE) it is a point whose
features average several images' features, which in practice is a texture (docs/results.md "The MAE
on OpenMoji"). Where the generator already draws its caption's image, the same keys sharpen it.
The gate lets the encoder's field act on the samples the generator is sure of, judged by how close
each is to its paired image in the generator's own output space, and leaves the rest to the raw key.

The gate changes gradients only: the encoder sees every sample unchanged (the field, its kernel and
its normalization are computed as without the gate), and a gated-off sample's features still take
part as negatives. ``images`` [N, C, H, W] -> the wrapped encoder's keys ``dict[key, Tensor[N, L,
D]]``, whose gradient to sample n is multiplied by ``gate[n]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from t2i_drift.models.feature_encoders import FrozenEncoder


def sure_gate(errors: torch.Tensor, fraction: float) -> torch.Tensor:
    """[N] errors (each sample's distance to its paired image) -> [N] gate of 0 / 1 with a 1 for
    the ceil(fraction * N) smallest errors (ties broken by position); fraction 1 opens every one."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n = errors.shape[0]
    gate = torch.zeros(n, device=errors.device)
    gate[torch.argsort(errors, stable=True)[: math.ceil(fraction * n)]] = 1.0
    return gate


class GradientGate(FrozenEncoder):
    """``encoder(images)`` with the gradient to image n scaled by ``gate[n]`` (set per step by the
    trainer with :func:`set_gate`; None, the default, passes every gradient).

    Args:
        encoder: any frozen encoder ``images [N, C, H, W] -> dict[key, Tensor[N, L, D]]``.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.gate: torch.Tensor | None = None
        self.freeze()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        gate = self.gate
        if gate is not None:
            if gate.shape != images.shape[:1]:
                raise ValueError(f"gate of shape {tuple(gate.shape)} for {images.shape[0]} images")
            g = gate.to(images.dtype).view(-1, *([1] * (images.dim() - 1)))
            # Same values, gradient g * d: the gated-off samples pass as constants.
            images = g * images + (1 - g) * images.detach()
        return self.encoder(images)


def set_gate(module: nn.Module, gate: torch.Tensor | None) -> int:
    """Set ``gate`` [N] (or None) on every GradientGate inside ``module`` (a compiled module's
    original included); returns how many there are."""
    module = getattr(module, "_orig_mod", module)
    gates = [m for m in module.modules() if isinstance(m, GradientGate)]
    for m in gates:
        m.gate = gate
    return len(gates)
