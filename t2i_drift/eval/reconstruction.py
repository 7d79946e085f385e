"""What a VAE's latent space can express at best: how well it reconstructs the built-in sets.

A latent-space generator draws only what the decoder can draw, so the reconstructions of the
real images are the ceiling of any generator trained in that latent. For ``shapes`` the ceiling
is measured with the generator's own yardstick: the analytic checker on the reconstructions of
the ``train`` and ``heldout`` scenes (held-out colour-shape pairs are absent from the VAE's
training data too, so their ceiling shows whether the latent itself can express them). For
``openmoji``: PSNR on the training and validation images and, given an embedder, the
FD-EffNetLite0 of the reconstructions against the real images of the same split: the validation
figure is the floor of ``fd_gen_val`` (scripts/evaluate.py) for a generator in that latent.
"""

from __future__ import annotations

import math

import torch
from diffusers import AutoencoderKL

from t2i_drift.data.openmoji import OpenMojiDataset
from t2i_drift.eval.frechet import EffNetLite0Embedder, frechet_distance
from t2i_drift.eval.shapes import SPLITS, attribute_accuracy, render_scenes, split_scenes
from t2i_drift.models.vae import decode_latents, encode_latents

RECONSTRUCTION_DATA = ("shapes", "openmoji")


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """images [N, 3, R, R] in [-1, 1] -> decode(encode(images)) [N, 3, R, R] clamped to [-1, 1], fp32
    (the posterior mode, through the same scaling as training and the pipeline)."""
    device = vae.device
    parts = [
        decode_latents(vae, encode_latents(vae, chunk.to(device))).float().clamp(-1, 1).cpu()
        for chunk in images.split(batch_size)
    ]
    return torch.cat(parts)


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of [-1, 1] images (peak-to-peak 2)."""
    mse = (prediction.float() - target.float()).pow(2).mean().item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def reconstruction_report(
    vae: AutoencoderKL,
    data: str,
    resolution: int,
    max_images: int | None = None,
    embedder: EffNetLite0Embedder | None = None,
) -> dict[str, dict[str, float | int | None]]:
    """Per split: ``images`` and ``psnr_db`` and, for ``shapes``, the checker's accuracy on the
    reconstructions (``count`` ... ``all_attributes``; the real renders score 100%); for
    ``openmoji`` with an ``embedder``, ``fd_effnet``: FD-EffNetLite0 of the reconstructions
    against the split's real images (0 for a perfect VAE).

    ``max_images`` caps each split (scenes spread evenly over a shapes split, the first images
    of an OpenMoji split).
    """
    if data not in RECONSTRUCTION_DATA:
        raise ValueError(f"data must be one of {RECONSTRUCTION_DATA}, got {data!r}")
    report: dict[str, dict[str, float | int | None]] = {}
    if data == "shapes":
        for split in SPLITS:
            scenes = split_scenes(split, max_images)
            real = render_scenes(scenes, resolution)
            recon = reconstruct(vae, real)
            report[split] = {
                "images": len(real),
                "psnr_db": psnr(recon, real),
                **attribute_accuracy(recon, scenes),
            }
        return report
    for split in ("train", "validation"):
        dataset = OpenMojiDataset(split=split, resolution=resolution, max_samples=max_images)
        real = torch.stack([dataset[i]["pixel_values"] for i in range(len(dataset))])  # [N, 3, R, R]
        recon = reconstruct(vae, real)
        report[split] = {"images": len(real), "psnr_db": psnr(recon, real)}
        if embedder is not None:
            real_features = embedder.embed(real, desc=f"real {split}")
            recon_features = embedder.embed(recon, desc=f"reconstructed {split}")
            report[split]["fd_effnet"] = frechet_distance(recon_features, real_features)
    return report
