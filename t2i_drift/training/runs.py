"""The run types: which config tree and objective each training entry point uses."""

from __future__ import annotations

from pathlib import Path

from accelerate import PartialState
from huggingface_hub import get_token

from t2i_drift.hub import push_to_hub
from t2i_drift.training.config import Config, ConfigError
from t2i_drift.training.loop import train
from t2i_drift.training.mae_config import MAEConfig
from t2i_drift.training.objectives import (
    PIPELINE_SUBDIR,
    TEXT_TO_IMAGE_OBJECTIVES,
    MAEObjective,
    VAEObjective,
)
from t2i_drift.training.objectives.mae import MAE_SUBDIR
from t2i_drift.training.objectives.vae import VAE_SUBDIR
from t2i_drift.training.vae_config import VAEConfig


def train_t2i(cfg: Config) -> Path:
    """Train a text-to-image generator with ``objective.name`` (drifting, or the regression and
    flow-matching baselines; scripts/train_t2i.py); returns the exported pipeline folder
    (``t2i_drift.pipelines.load_pipeline`` loads any of them). With ``train.push_to_hub`` the
    main process then uploads it (hub layout) to ``train.hub_model_id``."""
    if cfg.train.push_to_hub and get_token() is None:  # fail before training, not after
        raise ConfigError(
            "train.push_to_hub: no Hugging Face token found (run `hf auth login` or set HF_TOKEN)"
        )
    objective = TEXT_TO_IMAGE_OBJECTIVES[cfg.objective.name](cfg)
    pipeline = train(cfg, objective) / PIPELINE_SUBDIR
    if cfg.train.push_to_hub and PartialState().is_main_process:
        staging = Path(cfg.train.output_dir) / "hub_upload"
        files = push_to_hub(
            pipeline, cfg.train.hub_model_id, staging_dir=staging, private=cfg.train.hub_private
        )
        print(f"pushed {len(files)} files to https://huggingface.co/{cfg.train.hub_model_id}")
    return pipeline


def train_mae(cfg: MAEConfig) -> Path:
    """Train the MAE feature encoder (scripts/train_mae.py); returns the folder of the EMA model
    (``MAEFeatures(path)`` loads it)."""
    return train(cfg, MAEObjective(cfg)) / MAE_SUBDIR


def train_vae(cfg: VAEConfig) -> Path:
    """Train an ``AutoencoderKL`` on the run's images (scripts/train_vae.py); returns the folder
    of the EMA model with its measured ``scaling_factor`` (``model.vae`` of a latent run)."""
    return train(cfg, VAEObjective(cfg)) / VAE_SUBDIR
