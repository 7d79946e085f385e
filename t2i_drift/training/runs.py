"""The run types: which config tree and objective each training entry point uses."""

from __future__ import annotations

from pathlib import Path

from t2i_drift.training.config import Config
from t2i_drift.training.loop import train
from t2i_drift.training.mae_config import MAEConfig
from t2i_drift.training.objectives import PIPELINE_SUBDIR, TEXT_TO_IMAGE_OBJECTIVES, MAEObjective
from t2i_drift.training.objectives.mae import MAE_SUBDIR


def train_t2i(cfg: Config) -> Path:
    """Train a text-to-image generator with ``objective.name`` (drifting, or the regression and
    flow-matching baselines; scripts/train_t2i.py); returns the exported pipeline folder
    (``t2i_drift.pipelines.load_pipeline`` loads any of them)."""
    objective = TEXT_TO_IMAGE_OBJECTIVES[cfg.objective.name](cfg)
    return train(cfg, objective) / PIPELINE_SUBDIR


def train_mae(cfg: MAEConfig) -> Path:
    """Train the MAE feature encoder (scripts/train_mae.py); returns the folder of the EMA model
    (``MAEFeatures(path)`` loads it)."""
    return train(cfg, MAEObjective(cfg)) / MAE_SUBDIR
