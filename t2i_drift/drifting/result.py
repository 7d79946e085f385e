"""What one evaluation of the drifting field produces for one feature key."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DriftResult"]


@dataclass(frozen=True)
class DriftResult:
    """The field of one feature key and its diagnostics.

    Scalars are 0-d fp32 tensors on the input's device, so the hot path never waits for the device;
    convert them to floats only when logging.

    Attributes:
        field: [groups, n, D] fp32 drift V, detached: in normalized feature units (x / s_in) with
            ``DriftOptions.normalize``, in raw feature units otherwise.
        scale: the mean pairwise distance of docs/method.md section 3; NaN when not normalized.
        feature_scale: s_in (features were divided by it); 1.0 when not normalized.
        raw_v2: per temperature, mean(V_tau^2) before the per-temperature normalization (in
            normalized feature units when normalized); the convergence signal to log.
        nearest_pos: mean over generated samples of the distance to the nearest positive (in units
            of ``scale`` when normalized, raw units otherwise).
        spread: mean pairwise distance between the generated samples of a group (same units).
    """

    field: torch.Tensor
    scale: torch.Tensor
    feature_scale: torch.Tensor
    raw_v2: dict[float, torch.Tensor]
    nearest_pos: torch.Tensor
    spread: torch.Tensor
