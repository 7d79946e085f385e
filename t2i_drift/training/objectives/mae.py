"""The MAE feature encoder's objective (docs/method.md section 4): masked reconstruction, then
an optional classification fine-tune.

    images [B, 3, R, R] in [-1, 1] (-> crop + flip views, augment) (-> scaled VAE latents, model.vae)
    -> pretraining (steps 0 .. train.max_steps - 1): mask half the 2x2 patches (and add
       augment.noise_std noise to the input only), reconstruct the clean input, MSE on the masked cells
    -> fine-tune (the next finetune.steps, data with labels only): cross-entropy of the
       unmasked input's class + finetune.reconstruction_weight * the masked MSE

One step counter runs through both phases, so checkpoints and exact resume work across the
boundary. At the boundary the EMA restarts from the online weights (the fine-tuned average should
not be dominated by pretraining weights, nor the new head by its random init) and the learning
rate switches to ``finetune.learning_rate``.

Output folder additions (``train.output_dir``):
    mae_pretrained/   the EMA model at the end of pretraining (only with a fine-tune)
    mae/              the final EMA model: ResNetMAE.from_pretrained / MAEFeatures(path)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import DistributedDataParallelKwargs
from diffusers.training_utils import EMAModel

from t2i_drift.data.augment import BatchAugment
from t2i_drift.data.source import DataSource
from t2i_drift.models.mae_resnet import ResNetMAE
from t2i_drift.models.vae import encode_latents, load_vae, vae_scale_factor
from t2i_drift.training import zero
from t2i_drift.training.ema import ema_copy
from t2i_drift.training.mae_config import MAEConfig, MAEModelConfig
from t2i_drift.training.objectives.base import Objective, warmup_start_factor, warmup_then_constant
from t2i_drift.training.sharding import parameter_count

MAE_SUBDIR = "mae"
MAE_PRETRAINED_SUBDIR = "mae_pretrained"


def build_mae(model: MAEModelConfig, in_channels: int, sample_size: int, num_classes: int) -> ResNetMAE:
    """The configured ResNetMAE for inputs of ``in_channels`` x ``sample_size``^2."""
    return ResNetMAE(
        in_channels=in_channels,
        sample_size=sample_size,
        width=model.width,
        depths=tuple(model.depths),
        stem_patch_size=model.stem_patch_size,
        mask_patch_size=model.mask_patch_size,
        mask_ratio=model.mask_ratio,
        norm_num_groups=model.norm_num_groups,
        decoder_width=model.decoder_width,
        num_classes=num_classes,
    )


class MAEObjective(Objective):
    """Pretraining for ``train.max_steps``, then ``finetune.steps`` with labels (if any)."""

    name = "mae"
    model_subfolder = MAE_SUBDIR
    cfg: MAEConfig

    def prepare_run(self, source: DataSource) -> list[Any]:
        cfg = self.cfg
        self.num_classes = source.num_classes if cfg.finetune.steps > 0 else 0
        self.finetune_steps = cfg.finetune.steps if self.num_classes > 0 else 0
        # The classification head takes no part in pretraining: DDP must not wait for its gradients.
        return [DistributedDataParallelKwargs(find_unused_parameters=self.num_classes > 0)]

    def build(self, accelerator: Any, source: DataSource, rng: torch.Generator) -> ResNetMAE:
        cfg, m = self.cfg, self.cfg.model
        self.accelerator, self.rng = accelerator, rng
        if cfg.finetune.steps > 0 and self.finetune_steps == 0:
            accelerator.print(
                f"finetune.steps={cfg.finetune.steps} skipped: data.name={cfg.data.name!r} provides no labels"
            )
        self.vae = None if m.vae is None else load_vae(m.vae, m.vae_subfolder).to(accelerator.device)
        factor = vae_scale_factor(self.vae)
        cell = m.stem_patch_size * m.mask_patch_size
        if self.vae is not None and cfg.data.resolution % (factor * cell):
            raise ValueError(
                f"data.resolution={cfg.data.resolution} must be divisible by the VAE factor {factor} x "
                f"model.stem_patch_size * model.mask_patch_size = {cell}"
            )
        a = cfg.augment
        self.augment = None if a is None else BatchAugment(cfg.data.resolution, tuple(a.crop_scale), a.hflip)
        in_channels = 3 if self.vae is None else self.vae.config.latent_channels
        self.input_shape = (in_channels, cfg.data.resolution // factor)
        return build_mae(m, in_channels, cfg.data.resolution // factor, self.num_classes)

    @property
    def total_steps(self) -> int:
        return self.cfg.train.max_steps + self.finetune_steps

    @property
    def samples_per_step(self) -> int:
        return self.cfg.train.batch_size

    def describe(self, model: torch.nn.Module) -> str:
        n_params = parameter_count(model)
        channels, side = self.input_shape
        return (
            f"ResNetMAE {n_params / 1e6:.2f}M params | input {channels}x{side}x{side} | "
            f"{self.cfg.train.max_steps} pretraining + {self.finetune_steps} fine-tune steps | "
            f"{self.cfg.train.batch_size} images per step per process"
        )

    def lr_factor(self, step: int) -> float:
        if step >= self.cfg.train.max_steps:  # fine-tune: constant, no warm-up (the weights are trained)
            return self.cfg.finetune.learning_rate / self.cfg.optim.learning_rate
        optim = self.cfg.optim
        return warmup_then_constant(step, optim.warmup_steps, warmup_start_factor(optim))

    def phase(self, step: int) -> str:
        return "finetune" if step >= self.cfg.train.max_steps else "pretrain"

    def begin_step(self, step: int, model: ResNetMAE, ema: EMAModel) -> None:
        if self.finetune_steps and step == self.cfg.train.max_steps:
            # Keep the pretraining EMA model, then restart the EMA from the online weights.
            pretrained = ema_copy(model, ema)  # collective under FSDP
            if self.accelerator.is_main_process:
                pretrained.save_pretrained(Path(self.cfg.train.output_dir) / MAE_PRETRAINED_SUBDIR)
            with zero.whole_parameters(model):
                ema.shadow_params = [p.detach().clone().float() for p in model.parameters()]
            ema.optimization_step = 0  # the decay warm-up starts again

    def loss(
        self, model: torch.nn.Module, batch: dict, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        finetuning = step >= self.cfg.train.max_steps
        x = batch["pixel_values"]  # [B, 3, R, R] in [-1, 1]
        if self.augment is not None:
            x = self.augment(x, self.rng)  # per-image crop and flip, same shape
        if self.vae is not None:
            x = encode_latents(self.vae, x)  # [B, C_lat, R/f, R/f]
        noise = None
        noise_std = 0.0 if self.cfg.augment is None else self.cfg.augment.noise_std
        if noise_std > 0 and not finetuning:
            # From the run's generator, like the mask: a resumed run draws the same noise.
            noise = noise_std * torch.randn(x.shape, generator=self.rng, device=self.rng.device)
            noise = noise.to(x.device, x.dtype)
        with self.accelerator.autocast():
            out = model(x, generator=self.rng, classify=finetuning, input_noise=noise)
        stats = {"rec_loss": out.loss.detach()}
        if not finetuning:
            return out.loss, stats
        labels = batch["label"].to(x.device)  # [B]
        ce = F.cross_entropy(out.logits.float(), labels)
        stats["ce_loss"] = ce.detach()
        stats["accuracy"] = (out.logits.argmax(dim=-1) == labels).float().mean()
        return ce + self.cfg.finetune.reconstruction_weight * out.loss, stats

    def export(
        self, model: ResNetMAE, output_dir: Path, steps: int, run_info: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        mae_dir = output_dir / MAE_SUBDIR
        model.save_pretrained(mae_dir)
        return {
            "pretrain_steps": self.cfg.train.max_steps,
            "finetune_steps": self.finetune_steps,
            "mae": str(mae_dir),
        }
