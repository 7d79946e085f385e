"""Parameter-free normalizations of an encoder's feature map, applied before its feature sets are
taken (docs/method.md section 4, the official release's details).

Both are functions without learned weights on purpose: they add nothing to a trained checkpoint
(a ResNetMAE folder or a hub backbone loads and saves exactly as before), and an affine after a
normalization would only rescale channels, which the loss's per-key normalization largely undoes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ConvNeXt's LayerNorm epsilon (transformers' ConvNextV2LayerNorm, the official release's encoder).
LOCATION_NORM_EPS = 1e-6


def stage_group_norm(fmap: torch.Tensor, num_groups: int, eps: float) -> torch.Tensor:
    """GroupNorm without affine: [N, C, h, w] -> [N, C, h, w], every group of C / num_groups
    channels of each image shifted and scaled to mean 0 and variance 1 over (channels, h, w)."""
    return F.group_norm(fmap, num_groups, eps=eps)


def location_layer_norm(fmap: torch.Tensor, eps: float = LOCATION_NORM_EPS) -> torch.Tensor:
    """LayerNorm over channels at each location, without affine: [N, C, h, w] -> [N, C, h, w],
    each C-vector fmap[n, :, i, j] shifted and scaled to mean 0 and variance 1."""
    per_location = fmap.movedim(1, -1)  # [N, h, w, C]: layer_norm normalizes the last dimension
    return F.layer_norm(per_location, per_location.shape[-1:], eps=eps).movedim(-1, 1)
