"""The VAE objective: a diffusers ``AutoencoderKL`` trained on the run's images, so the paper's
main recipe (drifting in a VAE latent, features from a latent MAE) runs from images alone.

    images x [B, 3, R, R] in [-1, 1]
    -> posterior q(z|x) = N(mean, exp(logvar)), mean/logvar [B, C, R/f, R/f]; z ~ q (reparameterized)
    -> x_hat = decode(z) [B, 3, R, R]
    loss = rec(x_hat, x) + loss.kl_weight * KL(q || N(0, I)) [+ loss.perceptual_weight * MAE term]

Reconstruction and KL are means per element, so their balance does not depend on the resolution
or the latent size. The export measures the data's latents (posterior modes of the first
``export.scaling_images`` images) and writes ``scaling_factor`` = 1 / std (and, with
``export.shift``, ``shift_factor`` = mean) into the model config: the generator then sees
unit-variance latents, by the same conventions as SD's and FLUX's VAEs (t2i_drift/models/vae.py).

Output folder additions (``train.output_dir``):
    vae/                 the EMA model as a plain ``AutoencoderKL`` (config.json + safetensors): use it
                         as ``model.vae`` of a text-to-image run or of an MAE run.
    reconstructions.png  8 of the measured images (top) and their reconstructions (bottom).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torchvision.utils import save_image

from t2i_drift.data.source import DataSource
from t2i_drift.eval.reconstruction import psnr, reconstruct
from t2i_drift.models.feature_encoders import mae_folder
from t2i_drift.models.mae_resnet import ResNetMAE
from t2i_drift.training.builders import build_source
from t2i_drift.training.objectives.base import Objective
from t2i_drift.training.sharding import parameter_count
from t2i_drift.training.vae_config import VAEConfig

VAE_SUBDIR = "vae"
RECONSTRUCTIONS = "reconstructions.png"


class AutoencoderKLForTraining(AutoencoderKL):
    """``AutoencoderKL`` whose forward also returns the posterior, so one call through the
    distributed wrapper (DDP, FSDP) gives everything the loss needs. Exported as a plain
    ``AutoencoderKL`` (:func:`plain_autoencoder`)."""

    def forward(  # type: ignore[override]
        self, sample: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """sample [B, 3, R, R] -> (reconstruction [B, 3, R, R], mean, logvar [B, C, R/f, R/f])."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator)  # mean + std * noise: differentiable in both
        return self.decode(z).sample, posterior.mean, posterior.logvar


def build_autoencoder(cfg: VAEConfig) -> AutoencoderKLForTraining:
    """The configured autoencoder for ``data.resolution``-pixel RGB images."""
    m = cfg.model
    blocks = len(m.block_out_channels)
    return AutoencoderKLForTraining(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=tuple(m.block_out_channels),
        layers_per_block=m.layers_per_block,
        latent_channels=m.latent_channels,
        norm_num_groups=m.norm_num_groups,
        sample_size=cfg.data.resolution,
        mid_block_add_attention=m.mid_block_attention,
    )


def plain_autoencoder(model: AutoencoderKL) -> AutoencoderKL:
    """The same weights and config in the stock diffusers class (what pipelines load)."""
    plain = AutoencoderKL.from_config(dict(model.config))
    plain.load_state_dict(model.state_dict())
    return plain.to(model.device).eval()


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) averaged over every element (a 0-d tensor)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def perceptual_distance(mae: ResNetMAE, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the MAE's feature maps of ||f(prediction) - f(target)||^2 / ||f(target)||^2.

    prediction, target [B, 3, R, R] (resized to the MAE's input size if they differ). Normalizing
    each map by its target energy keeps deep, large-valued maps from outweighing shallow ones.
    """
    size = mae.config.sample_size
    if prediction.shape[-1] != size:
        prediction = F.interpolate(prediction, size=(size, size), mode="bilinear", align_corners=False)
        target = F.interpolate(target, size=(size, size), mode="bilinear", align_corners=False)
    with torch.no_grad():
        wanted = mae.feature_maps(target)
    got = mae.feature_maps(prediction, list(wanted))
    terms = [
        (got[k].float() - w.float()).pow(2).mean() / w.float().pow(2).mean().clamp_min(1e-8)
        for k, w in wanted.items()
    ]
    return torch.stack(terms).mean()


def first_images(cfg: VAEConfig, count: int) -> torch.Tensor:
    """The data's first ``count`` images in reading order, [N, 3, R, R] in [-1, 1] (fewer when
    the data has fewer). Read by this process alone, without the Accelerator's collectives, so
    the main process can call it at export while the others wait."""
    source = build_source(cfg.data, min(count, 64), cfg.train.seed, shuffle=False)
    source.prepare(SimpleNamespace(process_index=0, num_processes=1))
    images, total = [], 0
    for batch in source.batches(0):
        images.append(batch["pixel_values"])
        total += len(batch["pixel_values"])
        if total >= count:
            break
    return torch.cat(images)[:count]


class VAEObjective(Objective):
    """Reconstruction + KL (+ perceptual) for ``train.max_steps``; exports ``vae/``."""

    name = "vae"
    model_subfolder = VAE_SUBDIR
    cfg: VAEConfig

    def build(self, accelerator: Any, source: DataSource, rng: torch.Generator) -> AutoencoderKLForTraining:
        self.accelerator, self.rng = accelerator, rng
        path = self.cfg.loss.perceptual_mae
        self.mae: ResNetMAE | None = None
        if path is not None:
            try:
                folder = mae_folder(path)
            except ValueError as err:
                raise ValueError(f"loss.perceptual_mae: {err}") from None
            self.mae = ResNetMAE.from_pretrained(folder).to(accelerator.device).eval().requires_grad_(False)
            if self.mae.config.in_channels != 3:
                raise ValueError(
                    f"loss.perceptual_mae={path!r} is a latent MAE (in_channels="
                    f"{self.mae.config.in_channels}); the perceptual term needs a pixel MAE"
                )
        return build_autoencoder(self.cfg)

    @property
    def samples_per_step(self) -> int:
        return self.cfg.train.batch_size

    def describe(self, model: torch.nn.Module) -> str:
        m, r = self.cfg.model, self.cfg.data.resolution
        f = m.scale_factor
        return (
            f"AutoencoderKL {parameter_count(model) / 1e6:.2f}M params | {r}x{r} -> "
            f"{m.latent_channels}x{r // f}x{r // f} latents | {self.cfg.train.batch_size} images per step "
            "per process"
        )

    def loss(
        self, model: torch.nn.Module, batch: dict, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = batch["pixel_values"]  # [B, 3, R, R] in [-1, 1]
        with self.accelerator.autocast():
            x_hat, mean, logvar = model(x, generator=self.rng)
        x_hat = x_hat.float()
        rec = (x_hat - x).abs().mean() if self.cfg.loss.reconstruction == "l1" else (x_hat - x).pow(2).mean()
        kl = gaussian_kl(mean.float(), logvar.float())
        loss = rec + self.cfg.loss.kl_weight * kl
        stats = {"rec_loss": rec.detach(), "kl": kl.detach()}
        if self.mae is not None:
            with self.accelerator.autocast():
                perceptual = perceptual_distance(self.mae, x_hat, x)
            loss = loss + self.cfg.loss.perceptual_weight * perceptual
            stats["perceptual"] = perceptual.detach()
        return loss, stats

    def progress_stats(self, line: dict[str, float]) -> dict[str, str]:
        return {"rec": f"{line['rec_loss']:.4f}", "kl": f"{line['kl']:.3f}"}

    @torch.no_grad()
    def export(
        self, model: AutoencoderKL, output_dir: Path, steps: int, run_info: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        vae = plain_autoencoder(model)
        images = first_images(self.cfg, self.cfg.export.scaling_images).to(vae.device)
        raw = torch.cat([vae.encode(chunk).latent_dist.mode() for chunk in images.split(64)])  # [N, C, h, w]
        shift = raw.mean().item() if self.cfg.export.shift else None
        std = (raw - (shift or 0.0)).std().item()
        vae.register_to_config(scaling_factor=1.0 / std, shift_factor=shift)
        recon = reconstruct(vae, images, batch_size=64)  # [N, 3, R, R] clamped, on the CPU
        images = images.cpu()
        vae_dir = output_dir / VAE_SUBDIR
        vae.save_pretrained(vae_dir)
        # 8 originals above their reconstructions, spread over the measured images
        shown = torch.linspace(0, len(images) - 1, min(8, len(images))).long()
        pairs = torch.cat([images[shown], recon[shown]])
        save_image(pairs * 0.5 + 0.5, output_dir / RECONSTRUCTIONS, nrow=len(shown), padding=1)
        return {
            "vae": str(vae_dir),
            "scaling_factor": vae.config.scaling_factor,
            "shift_factor": shift,
            "latent_shape": list(raw.shape[1:]),
            "reconstruction_psnr_db": psnr(recon, images),
            "measured_on_images": len(images),
            "reconstructions": str(output_dir / RECONSTRUCTIONS),
        }
