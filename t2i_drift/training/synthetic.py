"""A drifting training step at real scale without data or text encoders (benchmarks).

Speed and memory of a step depend on the shapes, not on the values: random positives stand in
for VAE latents and random embeddings for CLIP / T5 outputs, the generator and the latent MAE are
randomly initialized, and everything else is the trainer's own code: the drifting objective's
loss (generator forward, feature encoders, drift field), the loop's optimizer step (backward,
clipping, AdamW, EMA) and Accelerate's mixed precision. scripts/bench_train.py and
scripts/gpu_check.sh run it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from t2i_drift.models.feature_encoders import MAEFeatures, MultiFeatureEncoder, RawFeatures
from t2i_drift.models.mae_resnet import ResNetMAE
from t2i_drift.text.encoders import TextEmbeddings
from t2i_drift.training.batch_inputs import StepInputs
from t2i_drift.training.builders import build_optimizer, build_transformer
from t2i_drift.training.checkpoint import TrainerState
from t2i_drift.training.config import Config, config_from_dict
from t2i_drift.training.ema import make_ema
from t2i_drift.training.loop import Run
from t2i_drift.training.objectives.drifting import DriftingObjective

TEXT_ENCODERS: dict[str, tuple[int, int, int]] = {
    # name: (tokens, embedding width, pooled width)
    "clip-l": (77, 768, 768),  # SD-like: CLIP ViT-L/14 hidden states and pooled output
    "t5-xxl+clip-l": (256, 4096, 768),  # FLUX-like: T5-XXL tokens, CLIP-L pooled
}


@dataclass
class SyntheticSetting:
    """The shapes of one synthetic step (defaults: the B/2 latent recipe at 256 px)."""

    preset: str = "B"
    """Generator size (DRIFTING_PRESETS)."""
    patch_size: int = 2
    channels: int = 4
    """Channels of the generator's space (4: SD-VAE latents; 3: pixels)."""
    size: int = 32
    """Side of the generator's output (32: SD-VAE latents of 256 px images)."""
    text: str = "clip-l"
    """Key of TEXT_ENCODERS: the conditioning's shapes."""
    prompts: int = 32
    """B, prompts per step (per process)."""
    samples_per_prompt: int = 8
    """G, generated samples per prompt."""
    mae_width: int | None = 256
    """Width of the random latent MAE (the paper's 256); None: the raw key alone."""
    mae_depths: tuple[int, ...] = (3, 4, 6, 3)
    per_location: bool = True
    mixed_precision: str = "no"
    """Accelerate's mixed precision ("bf16" on GPUs)."""
    gradient_checkpointing: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    """Further run-config values, as nested dicts (e.g. {"drift": {"memory_budget_mb": 4096}})."""

    def config(self) -> Config:
        values: dict[str, Any] = {
            "data": {"resolution": self.size},
            "model": {
                "preset": self.preset,
                "patch_size": self.patch_size,
                "gradient_checkpointing": self.gradient_checkpointing,
            },
            "drift": {"samples_per_prompt": self.samples_per_prompt},
            "features": {"per_location": self.per_location},
            "train": {"batch_size": self.prompts, "max_steps": 10**9, "output_dir": "unused"},
            "optim": {"warmup_steps": 1},
        }
        if self.mae_width is not None:
            values["features"]["mae"] = {"path": "random-init"}
        for section, entries in self.overrides.items():
            values.setdefault(section, {}).update(entries)
        return config_from_dict(values, source="synthetic setting")


def _feature_encoder(setting: SyntheticSetting, cfg: Config) -> MultiFeatureEncoder:
    encoders: dict[str, torch.nn.Module] = {}
    if setting.mae_width is not None:
        mae = ResNetMAE(
            in_channels=setting.channels,
            sample_size=setting.size,
            width=setting.mae_width,
            depths=setting.mae_depths,
            stem_patch_size=1 if setting.channels != 3 else 2,
        )
        encoders["mae"] = MAEFeatures(
            mae, patch_sizes=cfg.features.patch_sizes, per_location=setting.per_location
        )
    encoders["raw"] = RawFeatures()
    return MultiFeatureEncoder(encoders)


def synthetic_run(setting: SyntheticSetting, seed: int = 0) -> tuple[Run, dict]:
    """A :class:`~t2i_drift.training.loop.Run` of the drifting objective over random inputs, and the
    batch to pass to ``optimizer_step`` (its tensors are what every step trains on)."""
    cfg = setting.config()
    accelerator = Accelerator(mixed_precision=setting.mixed_precision)
    device = accelerator.device
    torch.manual_seed(seed)
    rng = torch.Generator(device=device).manual_seed(seed)
    tokens, width, pooled = TEXT_ENCODERS[setting.text]
    B = setting.prompts
    inputs = StepInputs(
        real=torch.randn(B, setting.channels, setting.size, setting.size, device=device),
        text=TextEmbeddings(
            torch.randn(B, tokens, width, device=device),
            torch.ones(B, tokens, dtype=torch.bool, device=device),
            torch.randn(B, pooled, device=device),
        ),
        caption_ids=torch.arange(B, device=device),
    )
    objective = DriftingObjective(cfg)
    objective.accelerator, objective.rng = accelerator, rng
    objective.inputs = lambda batch: inputs
    objective.extra_positives = lambda batch, generator: None
    objective.features = _feature_encoder(setting, cfg).to(device)
    objective.init_drift(accelerator)
    model = build_transformer(
        cfg.model, setting.size, width, pooled, objective_overrides={"in_channels": setting.channels}
    )
    if setting.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, objective.lr_factor)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    run = Run(
        cfg=cfg,
        objective=objective,
        accelerator=accelerator,
        source=None,
        model=model,
        unwrapped=unwrapped,
        optimizer=optimizer,
        scheduler=scheduler,
        ema=make_ema(unwrapped, cfg.optim, device),
        rng=rng,
        state=TrainerState(step=0, epoch=0, batches_in_epoch=0),
        out_dir=Path(tempfile.gettempdir()),
    )
    return run, {"caption_id": inputs.caption_ids}
