"""Per-prompt diversity: how different the images of one caption are from each other.

For P prompts with S images each (different noise), the per-prompt diversity is the mean over
prompts of the mean distance over the S (S - 1) / 2 pairs of that prompt's images. Two spaces:

``pixel_rms``
    the root-mean-square difference of two images in [-1, 1] pixel units:
    sqrt(mean over the 3 x H x W values of (x_i - x_j)^2). 0 for identical images, 2 for black
    against white.
``effnet_l2``
    the Euclidean distance between the pooled 1280-d EfficientNet-Lite0 features (224 px input) of
    the two images, the space of FD-EffNetLite0 (t2i_drift/eval/frechet.py).

The same figure for real images of one caption is the reference: the shapes set renders each
scene several times with jittered positions (t2i_drift/eval/shapes.py ``render_scenes``). Between-
prompt distance (the first image of each prompt against the first image of every other) gives the
scale: a generator whose per-prompt diversity is far below it draws nearly one image per caption.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


def mean_pairwise_distance(groups: torch.Tensor) -> float:
    """Mean over groups of the mean Euclidean distance between the group's rows.

    Args:
        groups: [P, S, ...] with S >= 2; each of the P groups holds S items, flattened to vectors.
    Returns:
        mean over p of mean_{i < j} ||x_pi - x_pj||_2 (float64 arithmetic).
    """
    if groups.ndim < 2 or groups.shape[0] < 1 or groups.shape[1] < 2:
        raise ValueError(f"need [P >= 1, S >= 2, ...] groups, got shape {tuple(groups.shape)}")
    flat = groups.reshape(groups.shape[0], groups.shape[1], -1).double()  # [P, S, D]
    return float(torch.stack([F.pdist(group).mean() for group in flat]).mean())


def pixel_rms_diversity(images: torch.Tensor) -> float:
    """Per-prompt diversity in pixel RMS units.

    Args:
        images: [P, S, 3, H, W] in [-1, 1], S >= 2 images per prompt.
    Returns:
        mean over prompts and pairs of sqrt(mean((x_i - x_j)^2)), in [0, 2].
    """
    if images.ndim != 5:
        raise ValueError(f"images must be [P, S, 3, H, W], got shape {tuple(images.shape)}")
    values_per_image = images[0, 0].numel()
    return mean_pairwise_distance(images) / values_per_image**0.5


def feature_diversity(features: torch.Tensor) -> float:
    """Per-prompt diversity as the mean Euclidean distance of features [P, S, D] (S >= 2)."""
    if features.ndim != 3:
        raise ValueError(f"features must be [P, S, D], got shape {tuple(features.shape)}")
    return mean_pairwise_distance(features)


@dataclass(frozen=True)
class Diversity:
    """Mean pairwise distances of one image set, in both spaces (``effnet_l2``: None if not computed)."""

    pixel_rms: float
    effnet_l2: float | None

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


def across_prompts(images: torch.Tensor) -> torch.Tensor:
    """[P, S, ...] -> [1, P, ...]: the first image of every prompt as one group (between-prompt distance)."""
    return images[:, 0].unsqueeze(0)


def diversity(
    images: torch.Tensor, features: torch.Tensor | None = None
) -> dict[str, dict[str, float | None] | None]:
    """Within-prompt and between-prompt distances of a grouped image set.

    Args:
        images: [P, S, 3, H, W] in [-1, 1]: S images for each of P prompts. S = 1 gives no
            within-prompt figure; P = 1 no between-prompt figure.
        features: [P, S, D] features of those images (EfficientNet-Lite0 pooled features for
            ``effnet_l2``); None leaves the feature figures out.
    Returns:
        ``{"within_prompt": Diversity dict or None, "between_prompts": Diversity dict or None}``.
    """
    if images.ndim != 5:
        raise ValueError(f"images must be [P, S, 3, H, W], got shape {tuple(images.shape)}")
    P, S = images.shape[:2]
    if features is not None and tuple(features.shape[:2]) != (P, S):
        raise ValueError(f"features {tuple(features.shape)} do not match images {tuple(images.shape)}")

    def figures(groups: torch.Tensor, feats: torch.Tensor | None) -> dict[str, float | None]:
        return Diversity(
            pixel_rms=pixel_rms_diversity(groups),
            effnet_l2=None if feats is None else feature_diversity(feats),
        ).to_dict()

    return {
        "within_prompt": figures(images, features) if S >= 2 else None,
        "between_prompts": (
            figures(across_prompts(images), None if features is None else across_prompts(features))
            if P >= 2
            else None
        ),
    }
