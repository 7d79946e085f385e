#!/usr/bin/env python
"""Train a VAE (a diffusers AutoencoderKL) on the run's own images, for latent-space drifting.

    accelerate launch scripts/train_vae.py [--config recipes/vae/NAME.yaml] [--output_dir DIR]
        [--max_steps N] [section.key=value ...]

With no arguments it runs the built-in defaults (shapes at 32x32 -> 4x16x16 latents). The EMA model
lands in <output_dir>/vae with its measured scaling factor; train in its latent space with
``model.vae=<output_dir>/vae`` (scripts/train_t2i.py), or a latent MAE on it with
``model.vae=<output_dir>/vae model.stem_patch_size=1`` (scripts/train_mae.py).
"""

import sys

from t2i_drift.training.cli import run_training_cli
from t2i_drift.training.runs import train_vae
from t2i_drift.training.vae_config import VAEConfig, load_vae_config


def main(argv: list[str] | None = None) -> int:
    return run_training_cli(
        __doc__, load_vae_config, train_vae, argv, example="loss.kl_weight=1e-5", config_cls=VAEConfig
    )


if __name__ == "__main__":
    sys.exit(main())
