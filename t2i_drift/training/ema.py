"""The EMA of a trained model (diffusers ``EMAModel``), as every objective configures it."""

from __future__ import annotations

import torch
from diffusers import ModelMixin
from diffusers.training_utils import EMAModel

from t2i_drift.training.config import OptimConfig
from t2i_drift.training.sharding import full_tensors, unsharded_class


def make_ema(model: ModelMixin, optim: OptimConfig, device: torch.device) -> EMAModel:
    """EMA of ``model``'s parameters with ``optim.ema_decay`` (ramped up as 1 - (1 + step)^(-2/3)
    when ``optim.ema_warmup``); ``model`` must be a diffusers ModelMixin so that the EMA copy can
    be saved with its config."""
    ema = EMAModel(
        model.parameters(),
        decay=optim.ema_decay,
        use_ema_warmup=optim.ema_warmup,
        model_cls=unsharded_class(model),
        model_config=model.config,
    )
    ema.to(device)
    # fp32 shadows whatever the weights' dtype (DeepSpeed keeps bf16 module weights): an update of
    # (1 - decay) * (p - shadow) with decay 0.9999 vanishes below bf16's resolution.
    ema.shadow_params = [s.float() for s in ema.shadow_params]
    return ema


def ema_copy(model: ModelMixin, ema: EMAModel) -> ModelMixin:
    """A new, unsharded model of ``model``'s class and config on the CPU carrying the EMA weights
    (``model`` untouched). Collective under FSDP: every process must call it. It leaves the global
    random state as it was (the new model's initialization draws nothing a resumed run would miss)."""
    shadow = full_tensors(ema.shadow_params)
    with torch.random.fork_rng(devices=[]):
        averaged = unsharded_class(model).from_config(model.config)
    with torch.no_grad():
        for param, value in zip(averaged.parameters(), shadow, strict=True):
            param.copy_(value)
    return averaged
