"""The VAE conventions of latent-space runs, in one place.

A latent-space generator works on *scaled* latents, the space diffusers pipelines sample in:

    encode:  pixels [B, 3, R, R] in [-1, 1] -> (mode - shift_factor) * scaling_factor   [B, C, R/f, R/f]
    decode:  latents -> vae.decode(latents / scaling_factor + shift_factor)            [B, 3, R, R]

Both factors come from ``vae.config`` (never literals; ``shift_factor`` is absent or None for the
SD VAEs and set for FLUX's), and f = 2^(len(block_out_channels) - 1). The trainer (positives), the
feature cache, the decoded-latent feature encoder and ``DriftingPipeline`` all use these functions,
so a latent means the same thing everywhere.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL


def load_vae(name_or_path: str, subfolder: str | None = None, key: str = "model.vae") -> AutoencoderKL:
    """A frozen diffusers ``AutoencoderKL`` in eval mode (hub id or local folder).

    ``key`` names the config entry in the error raised when it cannot be loaded.
    """
    kwargs = {"subfolder": subfolder} if subfolder else {}
    try:
        vae = AutoencoderKL.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as err:
        raise ValueError(f"{key}={name_or_path!r}: cannot load a diffusers AutoencoderKL: {err}") from err
    vae.requires_grad_(False)
    return vae.eval()


def vae_scale_factor(vae: AutoencoderKL | None) -> int:
    """Pixels per latent cell along one side (1 without a VAE, i.e. in pixel space)."""
    if vae is None:
        return 1
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _shift(vae: AutoencoderKL) -> float:
    return getattr(vae.config, "shift_factor", None) or 0.0


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """[B, 3, R, R] in [-1, 1] -> scaled latents [B, C, R/f, R/f] in fp32.

    The distribution's mode, not a sample: positives stay deterministic, and a cached latent equals
    the one the trainer would compute.
    """
    return scale_latents(vae, vae.encode(pixels.to(vae.dtype)).latent_dist.mode()).float()


def scale_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Raw posterior latents [B, C, h, w] -> the scaled latents pipelines sample in:
    ``(latents - shift_factor) * scaling_factor``. Differentiable (the VAE-encoder keys use it)."""
    return (latents - _shift(vae)) * vae.config.scaling_factor


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents [B, C, h, w] -> images [B, 3, h*f, w*f] (about [-1, 1], not clamped), in the
    VAE's dtype. Differentiable: the decoded-latent feature encoder backpropagates through it."""
    z = latents.to(vae.dtype) / vae.config.scaling_factor + _shift(vae)
    return vae.decode(z, return_dict=False)[0]
