"""diffusers models: the generator transformer and frozen feature encoders."""

from t2i_drift.models.feature_encoders import (
    DecodedLatentFeatures,
    EfficientNetLite0Features,
    FrozenEncoder,
    MAEFeatures,
    MultiFeatureEncoder,
    RawFeatures,
)
from t2i_drift.models.hub_features import HubVisionFeatures
from t2i_drift.models.mae_resnet import MAEOutput, ResNetMAE
from t2i_drift.models.transformer_drifting import DRIFTING_PRESETS, DriftingTransformer2DModel

__all__ = [
    "DRIFTING_PRESETS",
    "DecodedLatentFeatures",
    "DriftingTransformer2DModel",
    "EfficientNetLite0Features",
    "FrozenEncoder",
    "HubVisionFeatures",
    "MAEFeatures",
    "MAEOutput",
    "MultiFeatureEncoder",
    "RawFeatures",
    "ResNetMAE",
]
