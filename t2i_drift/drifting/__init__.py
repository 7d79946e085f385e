"""The drifting objective (docs/method.md): field, normalization, loss, guidance, feature sets.

Public API:
    DriftOptions                 how the field is evaluated (temperatures, normalization, budget, ...)
    DriftGroups                  the groups of one feature key: gen [groups, n, D], pos, neg, ...
    DriftResult                  the field [groups, n, D] of one key and its diagnostics
    evaluate_drift(keys, options)                  key -> DriftResult, several keys at once
    drifting_loss(keys, options, key_weights)      (loss, stats) summed over keys
    drifting_field(gen, pos, neg, ...)             the field of one key, as a tensor
    text_to_image_drift_loss(...)                  group = prompt x location (section 7)

:mod:`t2i_drift.drifting.reference` is a slow per-group implementation to check these against.
"""

from t2i_drift.drifting.feature_sets import (
    flattened,
    global_mean_std,
    input_rms,
    map_feature_sets,
    patch_mean_std,
    per_location,
)
from t2i_drift.drifting.field import drifting_field, evaluate_drift
from t2i_drift.drifting.groups import DriftGroups
from t2i_drift.drifting.guidance import guidance_weight, sample_alpha
from t2i_drift.drifting.kernel import pairwise_distances
from t2i_drift.drifting.loss import drifting_loss
from t2i_drift.drifting.options import DEFAULT_AFFINITY_FLOOR, DEFAULT_TEMPERATURES, DriftOptions
from t2i_drift.drifting.result import DriftResult
from t2i_drift.drifting.text_to_image import group_by_prompt, text_to_image_drift_loss, uncond_mask

__all__ = [
    "DEFAULT_AFFINITY_FLOOR",
    "DEFAULT_TEMPERATURES",
    "DriftGroups",
    "DriftOptions",
    "DriftResult",
    "drifting_field",
    "drifting_loss",
    "evaluate_drift",
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
