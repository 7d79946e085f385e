"""Objectives of the training loop: each owns its models and its step (objectives/base.py)."""

from t2i_drift.training.objectives.base import Objective, warmup_then_constant
from t2i_drift.training.objectives.drifting import DriftingObjective
from t2i_drift.training.objectives.mae import MAEObjective
from t2i_drift.training.objectives.text_to_image import PIPELINE_SUBDIR, TextToImageObjective

__all__ = [
    "PIPELINE_SUBDIR",
    "DriftingObjective",
    "MAEObjective",
    "Objective",
    "TextToImageObjective",
    "warmup_then_constant",
]
