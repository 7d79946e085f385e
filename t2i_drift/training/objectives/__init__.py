"""Objectives of the training loop: each owns its models and its step (objectives/base.py)."""

from t2i_drift.training.objectives.base import Objective, warmup_then_constant
from t2i_drift.training.objectives.drifting import DriftingObjective
from t2i_drift.training.objectives.flow_matching import FlowMatchingObjective
from t2i_drift.training.objectives.mae import MAEObjective
from t2i_drift.training.objectives.regression import RegressionObjective
from t2i_drift.training.objectives.text_to_image import PIPELINE_SUBDIR, TextToImageObjective
from t2i_drift.training.objectives.vae import VAEObjective

# ``objective.name`` of a text-to-image run -> its objective.
TEXT_TO_IMAGE_OBJECTIVES: dict[str, type[TextToImageObjective]] = {
    "drifting": DriftingObjective,
    "regression": RegressionObjective,
    "flow_matching": FlowMatchingObjective,
}

__all__ = [
    "PIPELINE_SUBDIR",
    "TEXT_TO_IMAGE_OBJECTIVES",
    "DriftingObjective",
    "FlowMatchingObjective",
    "MAEObjective",
    "Objective",
    "RegressionObjective",
    "TextToImageObjective",
    "VAEObjective",
    "warmup_then_constant",
]
