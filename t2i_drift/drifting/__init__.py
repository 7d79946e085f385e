"""The drifting objective (shared/METHOD.md): field, normalization, loss, guidance, feature sets."""

from t2i_drift.drifting.feature_sets import (
    flattened,
    global_mean_std,
    input_rms,
    map_feature_sets,
    patch_mean_std,
    per_location,
)
from t2i_drift.drifting.field import (
    DEFAULT_AFFINITY_FLOOR,
    DEFAULT_TEMPERATURES,
    DriftGroups,
    DriftResult,
    compute_drift,
    compute_drifts,
    drifting_field,
    drifting_loss,
    drifting_losses,
    pairwise_distances,
)
from t2i_drift.drifting.guidance import guidance_weight, sample_alpha
from t2i_drift.drifting.text_to_image import group_by_prompt, text_to_image_drift_loss, uncond_mask

__all__ = [
    "DEFAULT_AFFINITY_FLOOR",
    "DEFAULT_TEMPERATURES",
    "DriftGroups",
    "DriftResult",
    "compute_drift",
    "compute_drifts",
    "drifting_field",
    "drifting_loss",
    "drifting_losses",
    "pairwise_distances",
    "guidance_weight",
    "sample_alpha",
    "flattened",
    "global_mean_std",
    "input_rms",
    "map_feature_sets",
    "patch_mean_std",
    "per_location",
    "group_by_prompt",
    "text_to_image_drift_loss",
    "uncond_mask",
]
