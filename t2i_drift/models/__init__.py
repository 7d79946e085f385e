"""diffusers models: the generator transformer and frozen feature encoders."""

from t2i_drift.models.feature_encoders import (
    EfficientNetLite0Features,
    FrozenEncoder,
    MultiFeatureEncoder,
    RawFeatures,
)
from t2i_drift.models.transformer_drifting import DRIFTING_PRESETS, DriftingTransformer2DModel

__all__ = [
    "DRIFTING_PRESETS",
    "DriftingTransformer2DModel",
    "EfficientNetLite0Features",
    "FrozenEncoder",
    "MultiFeatureEncoder",
    "RawFeatures",
]
