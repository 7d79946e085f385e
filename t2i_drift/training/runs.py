"""The run types: which config tree and objective each training entry point uses."""

from __future__ import annotations

from pathlib import Path

from t2i_drift.training.config import Config
from t2i_drift.training.loop import train
from t2i_drift.training.mae_config import MAEConfig
from t2i_drift.training.objectives import PIPELINE_SUBDIR, DriftingObjective, MAEObjective
from t2i_drift.training.objectives.mae import MAE_SUBDIR


def train_t2i(cfg: Config) -> Path:
    """Train a one-step text-to-image generator (scripts/train_t2i.py); returns the exported
    pipeline folder (``DriftingPipeline.from_pretrained`` loads it)."""
    return train(cfg, DriftingObjective(cfg)) / PIPELINE_SUBDIR


def train_mae(cfg: MAEConfig) -> Path:
    """Train the MAE feature encoder (scripts/train_mae.py); returns the folder of the EMA model
    (``MAEFeatures(path)`` loads it)."""
    return train(cfg, MAEObjective(cfg)) / MAE_SUBDIR
