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
D]]``, whose gradient to sample n is multiplied by ``gate[n]``, or, with a gate per cell [N, h, w],
to each pixel by its cell's value (an output can be sure of a flag's frame and not of its inside).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from t2i_drift.models.feature_encoders import FrozenEncoder


def sure_gate(errors: torch.Tensor, fraction: float) -> torch.Tensor:
    """Errors [N] (each sample's distance to its paired image) or [N, h, w] (each patch's) -> a
    gate of 0 / 1 of the same shape with a 1 for the ceil(fraction * numel) smallest errors over
    the whole tensor (ties broken by position); fraction 1 opens every one."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    flat = errors.flatten()
    gate = torch.zeros(flat.shape[0], device=errors.device)
    gate[torch.argsort(flat, stable=True)[: math.ceil(fraction * flat.shape[0])]] = 1.0
    return gate.view(errors.shape)


def patch_errors(generated: torch.Tensor, paired: torch.Tensor, patch: int) -> torch.Tensor:
    """Squared distance of generated [N, C, H, W] to paired [N, C, H, W]: per sample [N] when
    ``patch`` is 0, else per ``patch`` x ``patch`` cell [N, H/patch, W/patch] (channels pooled)."""
    sq = (generated.detach() - paired).float().pow(2).mean(1)  # [N, H, W]
    if patch == 0:
        return sq.flatten(1).mean(1)
    if sq.shape[-1] % patch or sq.shape[-2] % patch:
        raise ValueError(f"patch {patch} must divide the output side {tuple(sq.shape[-2:])}")
    return torch.nn.functional.avg_pool2d(sq[:, None], patch)[:, 0]


class GradientGate(FrozenEncoder):
    """``encoder(images)`` with the gradient to image n scaled by ``gate[n]``, or to each pixel by
    its cell's ``gate[n, i, j]`` (set per step by the trainer with :func:`set_gate`; None, the
    default, passes every gradient).

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
            g = self._expand(gate, images).to(images.dtype)
            # Same values, gradient g * d: the gated-off samples pass as constants.
            images = g * images + (1 - g) * images.detach()
        return self.encoder(images)

    @staticmethod
    def _expand(gate: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """A gate [N] (per sample) or [N, h, w] (per cell, h and w dividing H and W) as a
        [N, 1, H, W]-broadcastable tensor for images [N, C, H, W]."""
        N, H, W = images.shape[0], *images.shape[-2:]
        if gate.dim() == 1 and gate.shape[0] == N:
            return gate.view(N, 1, 1, 1)
        if gate.dim() == 3 and gate.shape[0] == N and H % gate.shape[1] == 0 and W % gate.shape[2] == 0:
            rows, cols = H // gate.shape[1], W // gate.shape[2]
            return gate.repeat_interleave(rows, 1).repeat_interleave(cols, 2)[:, None]
        raise ValueError(f"gate of shape {tuple(gate.shape)} for images of shape {tuple(images.shape)}")


def set_gate(module: nn.Module, gate: torch.Tensor | None) -> int:
    """Set ``gate`` ([N], [N, h, w] or None) on every GradientGate inside ``module`` (a compiled
    module's original included); returns how many there are."""
    module = getattr(module, "_orig_mod", module)
    gates = [m for m in module.modules() if isinstance(m, GradientGate)]
    for m in gates:
        m.gate = gate
    return len(gates)
