"""The EMA of a trained model (diffusers ``EMAModel``), as every objective configures it."""

from __future__ import annotations

import torch
from diffusers import ModelMixin
from diffusers.training_utils import EMAModel

from t2i_drift.training.config import OptimConfig


def make_ema(model: ModelMixin, optim: OptimConfig, device: torch.device) -> EMAModel:
    """EMA of ``model``'s parameters with ``optim.ema_decay`` (ramped up as 1 - (1 + step)^(-2/3)
    when ``optim.ema_warmup``); ``model`` must be a diffusers ModelMixin so that the EMA copy can
    be saved with its config."""
    ema = EMAModel(
        model.parameters(),
        decay=optim.ema_decay,
        use_ema_warmup=optim.ema_warmup,
        model_cls=type(model),
        model_config=model.config,
    )
    ema.to(device)
    return ema


def ema_copy(model: ModelMixin, ema: EMAModel) -> ModelMixin:
    """A new model of ``model``'s class and config carrying the EMA weights (``model`` untouched)."""
    averaged = type(model).from_config(model.config)
    ema.copy_to(averaged.parameters())
    return averaged
