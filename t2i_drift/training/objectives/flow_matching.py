"""The multi-step baseline: rectified flow (flow matching) with the drifting generator's architecture.

    batch -> x_0 = positives [B, C, H, W] + text (a ``caption_dropout`` share replaced by the
    empty caption) -> s in (0, 1) per sample (logit-normal or uniform), eps ~ N(0, I)
    -> x_s = (1 - s) x_0 + s eps -> v = transformer(x_s, text, guidance input = s, fixed style)
    -> mean((v - (eps - x_0))^2)

The noise level enters through the generator's guidance input, embedded with a scale of 1000 (the
0..1000 timestep range diffusion models use). The export is a ``FlowMatchingPipeline``, which
integrates dx/ds = v from s = 1 to 0 with ``FlowMatchEulerDiscreteScheduler`` in any number of
steps (classifier-free guidance when captions were dropped).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from t2i_drift.text.encoders import TextEmbeddings
from t2i_drift.training.objectives.text_to_image import TextToImageObjective

# The noise level s in [0, 1] is multiplied by this before the sinusoidal embedding.
TIME_EMBED_SCALE = 1000.0


def sample_noise_levels(
    batch_size: int,
    time_sampling: str,
    logit_mean: float,
    logit_std: float,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """[B] noise levels s in (0, 1): sigmoid of a normal (logit-normal, SD3's choice: more samples
    at intermediate levels) or uniform."""
    if time_sampling == "uniform":
        return torch.rand(batch_size, generator=generator, device=device)
    n = torch.randn(batch_size, generator=generator, device=device)
    return torch.sigmoid(logit_mean + logit_std * n)


class FlowMatchingObjective(TextToImageObjective):
    """B prompts per step, one noisy sample each."""

    name = "flow_matching"

    def transformer_overrides(self) -> dict[str, Any]:
        return {"guidance_embed_scale": TIME_EMBED_SCALE}

    def build_extra(self, accelerator: Any) -> None:
        # The empty caption's conditioning, for dropped captions (one row, reused every step).
        self.null_text = self.conditioner.encode([""]) if self.cfg.objective.caption_dropout > 0 else None

    def drop_captions(self, text: TextEmbeddings) -> TextEmbeddings:
        """Replace a ``caption_dropout`` share of the rows by the empty caption's conditioning."""
        if self.null_text is None:
            return text
        B = text.embeds.shape[0]
        u = torch.rand(B, generator=self.rng, device=text.embeds.device)
        drop = u < self.cfg.objective.caption_dropout
        null = self.null_text.to(text.embeds.device).padded(text.embeds.shape[1])
        keep = ~drop
        return TextEmbeddings(
            torch.where(keep[:, None, None], text.embeds, null.embeds.expand_as(text.embeds)),
            torch.where(keep[:, None], text.mask, null.mask.expand_as(text.mask)),
            torch.where(keep[:, None], text.pooled, null.pooled.expand_as(text.pooled)),
        )

    def loss(
        self, model: torch.nn.Module, batch: dict, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        objective = self.cfg.objective
        inputs = self.inputs(batch)
        x0, emb = inputs.real, self.drop_captions(inputs.text)  # [B, C, H, W]
        B, device = x0.shape[0], x0.device
        s = sample_noise_levels(
            B, objective.time_sampling, objective.logit_mean, objective.logit_std, self.rng, device
        )  # [B]
        eps = torch.randn(x0.shape, device=device, generator=self.rng)
        x_s = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * eps  # [B, C, H, W]
        codebooks = self.accelerator.unwrap_model(model).config.num_style_codebooks
        # Fixed style: the flow's randomness is its noise.
        style = torch.zeros(B, codebooks, dtype=torch.long, device=device)
        with self.accelerator.autocast():
            v = model(
                hidden_states=x_s,
                encoder_hidden_states=emb.embeds,
                encoder_attention_mask=emb.mask,
                pooled_projections=emb.pooled,
                guidance=s,
                style_indices=style,
            ).sample  # [B, C, H, W]
        loss = F.mse_loss(v.float(), (eps - x0).float())
        return loss, {"s_mean": s.mean()}
