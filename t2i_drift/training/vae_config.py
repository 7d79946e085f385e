"""Run configuration of VAE training (``scripts/train_vae.py``): a diffusers ``AutoencoderKL``
trained on the run's own images, so a latent-space drifting run needs nothing from the Hub.

The same strict loading as the other run types (training/config.py): unknown keys and wrong
types raise a ``ConfigError`` naming the file or override and the dotted key. The ``data``,
``optim`` and ``train`` sections are the text-to-image ones (same keys, same meaning; other
defaults).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from t2i_drift.training.config import DataConfig, OptimConfig, TrainConfig, train_checks
from t2i_drift.training.strict_config import check_ranges, load_tree


@dataclass
class VAEModelConfig:
    """``diffusers.AutoencoderKL`` architecture (one down/up block per entry of
    ``block_out_channels``; the spatial factor is 2^(len - 1))."""

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64])
    """Widths of the encoder's blocks (decoder mirrored). Two blocks: factor 2, 32 px -> 16x16
    latents (on shapes factor 2 reconstructs unseen colour-shape pairs far better than factor 4);
    SD's VAE: [128, 256, 512, 512], factor 8."""
    layers_per_block: int = 1
    """ResNet layers per block (SD's VAE: 2)."""
    latent_channels: int = 4
    """C of the latent [C, R/f, R/f] (SD: 4, FLUX: 16)."""
    norm_num_groups: int = 16
    """GroupNorm groups; must divide every entry of ``block_out_channels``."""
    mid_block_attention: bool = True
    """Self-attention in the mid block (diffusers' default, as in SD's VAE)."""

    @property
    def scale_factor(self) -> int:
        """Pixels per latent cell along one side: 2^(len(block_out_channels) - 1)."""
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass
class VAELossConfig:
    """reconstruction(decode(z), x) + kl_weight * KL(q(z|x) || N(0, I)) [+ perceptual_weight * MAE
    feature distance], with z sampled from the posterior (reparameterized)."""

    reconstruction: Literal["l1", "mse"] = "l1"
    """Pixel reconstruction loss, mean over pixels (SD's VAE: L1 plus LPIPS and a GAN)."""
    kl_weight: float = 1e-4
    """Weight of the KL term per latent element. Larger: a smoother, more Gaussian latent that
    is easier to generate in, with blurrier reconstructions; SD's VAE uses 1e-6 next to its
    perceptual and adversarial terms."""
    perceptual_mae: str | None = None
    """A trained ResNet MAE (``scripts/train_mae.py`` output folder or its ``mae/``) whose feature
    maps give a perceptual term (each map's squared error, normalized by the target map's energy,
    averaged over maps). Null: none."""
    perceptual_weight: float = 0.1
    """Weight of the perceptual term (with ``perceptual_mae``)."""


@dataclass
class VAEExportConfig:
    """What the export measures on the data before saving (the model's config carries it)."""

    scaling_images: int = 512
    """Images (the data's first, in the run's order) whose posterior modes set ``scaling_factor``
    = 1 / std, so the generator sees unit-variance latents (SD's convention), and on which the
    reconstruction PSNR of the run summary is measured."""
    shift: bool = False
    """Also set ``shift_factor`` = the latents' mean (FLUX's convention); off: no shift (SD's)."""


def _vae_optim() -> OptimConfig:
    return OptimConfig(learning_rate=1e-3, betas=[0.9, 0.99], weight_decay=0.0, warmup_steps=100)


@dataclass
class VAEConfig:
    data: DataConfig = field(default_factory=lambda: DataConfig(name="shapes"))
    model: VAEModelConfig = field(default_factory=VAEModelConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    export: VAEExportConfig = field(default_factory=VAEExportConfig)
    optim: OptimConfig = field(default_factory=_vae_optim)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            output_dir="outputs/vae", batch_size=64, max_steps=2000, checkpointing_steps=500, log_every=50
        )
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate_vae_config(cfg: VAEConfig, source: str = "config") -> None:
    """Range checks that types alone cannot express; errors name the dotted key."""
    m, loss = cfg.model, cfg.loss
    factor = m.scale_factor
    checks = [
        (
            "data.path",
            cfg.data.name not in ("hf", "webdataset") or bool(cfg.data.path),
            "must be set when data.name is hf or webdataset",
        ),
        (
            "model.block_out_channels",
            len(m.block_out_channels) > 0 and min(m.block_out_channels) >= 1,
            "must be a non-empty list of ints >= 1",
        ),
        ("model.layers_per_block", m.layers_per_block >= 1, "must be >= 1"),
        ("model.latent_channels", m.latent_channels >= 1, "must be >= 1"),
        ("model.norm_num_groups", m.norm_num_groups >= 1, "must be >= 1"),
        (
            "model.norm_num_groups",
            all(c % m.norm_num_groups == 0 for c in m.block_out_channels),
            f"must divide every entry of model.block_out_channels={m.block_out_channels}",
        ),
        (
            "data.resolution",
            cfg.data.resolution % factor == 0,
            f"must be divisible by the VAE factor 2^(len(model.block_out_channels) - 1) = {factor}",
        ),
        ("loss.kl_weight", loss.kl_weight >= 0, "must be >= 0"),
        ("loss.perceptual_weight", loss.perceptual_weight >= 0, "must be >= 0"),
        ("export.scaling_images", cfg.export.scaling_images >= 2, "must be >= 2 (a std needs two)"),
        *train_checks(cfg.train),
        ("optim.betas", len(cfg.optim.betas) == 2, "must have two values"),
    ]
    check_ranges(cfg, source, checks)


def load_vae_config(path: str | Path | None = None, overrides: list[str] | None = None) -> VAEConfig:
    """Load a VAE recipe (None: the built-in defaults) and apply ``section.key=value`` overrides."""
    return load_tree(VAEConfig, path, overrides, validate_vae_config)
