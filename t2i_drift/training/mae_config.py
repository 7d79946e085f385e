"""Run configuration of MAE feature-encoder training (``scripts/train_mae.py``).

The same strict loading as the text-to-image config (training/config.py): unknown keys
and wrong types raise a ``ConfigError`` naming the file or override and the dotted key. The
``data``, ``optim`` and ``train`` sections are the text-to-image ones (same keys, same meaning;
other defaults).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2i_drift.training.config import DataConfig, OptimConfig, TrainConfig, train_checks
from t2i_drift.training.strict_config import check_ranges, load_tree


@dataclass
class MAEModelConfig:
    """``ResNetMAE`` architecture (t2i_drift/models/mae_resnet.py) and its input space."""

    width: int = 64
    """C: stage widths are C, 2C, 4C, 8C (paper: 256, and 640 for the best encoder)."""
    depths: list[int] = field(default_factory=lambda: [3, 4, 6, 3])
    """Basic blocks per stage."""
    stem_patch_size: int = 2
    """Patchify stem kernel = stride: 2 for 32 px pixels, 1 for VAE latents (the paper's)."""
    mask_patch_size: int = 2
    """Side of a masked square in stem cells (2: the paper's 2x2 patches)."""
    mask_ratio: float = 0.5
    """Share of the masked squares hidden from the encoder in pretraining."""
    norm_num_groups: int = 32
    """GroupNorm groups; must divide ``width`` and ``decoder_width``."""
    decoder_width: int | None = None
    """The light decoder's width (null: ``width``)."""
    vae: str | None = None
    """A diffusers ``AutoencoderKL`` (hub id or local folder): the MAE then learns its scaled
    latents (in_channels = latent channels) instead of pixels; use ``stem_patch_size: 1``."""
    vae_subfolder: str | None = None
    """The VAE's folder inside a pipeline repository, e.g. ``vae``."""


@dataclass
class FinetuneConfig:
    """Classification fine-tune after pretraining (paper: width 640 + fine-tune gave its best
    FID). Runs only when the dataset has labels (``shapes``: the first object's shape x colour);
    otherwise it is skipped with a message."""

    steps: int = 0
    """Fine-tune steps after ``train.max_steps`` (0: none)."""
    learning_rate: float = 2e-4
    """Constant learning rate of the fine-tune phase (no warmup: the weights are trained)."""
    reconstruction_weight: float = 1.0
    """Weight of the masked-reconstruction loss next to the cross-entropy, so the per-location
    detail the drifting loss uses is kept while class information is added; 0: cross-entropy only."""


@dataclass
class AugmentConfig:
    """Per-image views for MAE training (t2i_drift/data/augment.py); ``augment: null`` (the
    default) trains on the images as they are, setting any key switches it on."""

    crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])
    """RandomResizedCrop area range (official: 0.2-1), resized back to the input size."""
    hflip: bool = True
    """Flip half of the views left-right (official: yes)."""
    noise_std: float = 0.0
    """Std of Gaussian noise added to the encoder's input in pretraining (pixels in [-1, 1], or
    scaled latents); the reconstruction target stays the clean view: a denoising MAE, whose features
    change less under small input perturbations (docs/method.md section 4). 0: off (official).
    Noise alone: ``crop_scale: [1.0, 1.0]`` (every crop is then the whole view) and ``hflip: false``."""


def _mae_optim() -> OptimConfig:
    # MAE-style defaults: more weight decay than the generator's.
    return OptimConfig(learning_rate=1e-3, betas=[0.9, 0.95], weight_decay=0.05, warmup_steps=100)


@dataclass
class MAEConfig:
    data: DataConfig = field(default_factory=lambda: DataConfig(name="shapes"))
    model: MAEModelConfig = field(default_factory=MAEModelConfig)
    optim: OptimConfig = field(default_factory=_mae_optim)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            output_dir="outputs/mae", batch_size=64, max_steps=2000, checkpointing_steps=500, log_every=50
        )
    )
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    augment: AugmentConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate_mae_config(cfg: MAEConfig, source: str = "config") -> None:
    """Range checks that types alone cannot express; errors name the dotted key."""
    m, t = cfg.model, cfg.train
    cell = m.stem_patch_size * m.mask_patch_size
    checks = [
        (
            "data.path",
            cfg.data.name not in ("hf", "webdataset") or bool(cfg.data.path),
            "must be set when data.name is hf or webdataset",
        ),
        ("model.width", m.width >= 1, "must be >= 1"),
        ("model.depths", len(m.depths) > 0 and min(m.depths) >= 1, "must be a non-empty list of ints >= 1"),
        ("model.stem_patch_size", m.stem_patch_size >= 1, "must be >= 1"),
        ("model.mask_patch_size", m.mask_patch_size >= 1, "must be >= 1"),
        ("model.mask_ratio", 0.0 < m.mask_ratio < 1.0, "must be in (0, 1)"),
        ("model.norm_num_groups", m.norm_num_groups >= 1, "must be >= 1"),
        (
            "model.norm_num_groups",
            m.width % m.norm_num_groups == 0 and (m.decoder_width or m.width) % m.norm_num_groups == 0,
            f"must divide model.width={m.width} and model.decoder_width={m.decoder_width}",
        ),
        (
            "data.resolution",
            m.vae is not None or cfg.data.resolution % cell == 0,
            f"must be divisible by model.stem_patch_size * model.mask_patch_size = {cell}",
        ),
        *train_checks(t),
        ("finetune.steps", cfg.finetune.steps >= 0, "must be >= 0"),
        (
            "augment.crop_scale",
            cfg.augment is None
            or (
                len(cfg.augment.crop_scale) == 2
                and 0 < cfg.augment.crop_scale[0] <= cfg.augment.crop_scale[1] <= 1
            ),
            "must be [min, max] with 0 < min <= max <= 1",
        ),
        ("augment.noise_std", cfg.augment is None or cfg.augment.noise_std >= 0, "must be >= 0 (0: off)"),
        ("finetune.learning_rate", cfg.finetune.learning_rate > 0, "must be > 0"),
        ("finetune.reconstruction_weight", cfg.finetune.reconstruction_weight >= 0, "must be >= 0"),
        ("optim.betas", len(cfg.optim.betas) == 2, "must have two values"),
    ]
    check_ranges(cfg, source, checks)


def load_mae_config(path: str | Path | None = None, overrides: list[str] | None = None) -> MAEConfig:
    """Load an MAE recipe (None: the built-in defaults) and apply ``section.key=value`` overrides."""
    return load_tree(MAEConfig, path, overrides, validate_mae_config)
