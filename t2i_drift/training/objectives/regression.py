"""The trivial one-step baseline: one forward pass from noise, plain MSE to the paired image.

    batch -> positives [B, C, H, W] + text -> generator(noise, text, alpha = 1, style)
    -> mean((generated - positive)^2)

With one image per caption its optimum is the conditional mean of the images given the caption,
whatever the noise: the blurry average that a one-step generator has to beat. It uses the drifting
generator, data, text encoder and steps unchanged, and exports a ``DriftingPipeline`` (one step;
``guidance_scale`` fixed at 1, since no guidance was learned).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from t2i_drift.training.objectives.text_to_image import TextToImageObjective


class RegressionObjective(TextToImageObjective):
    """B prompts per step, one generated sample each."""

    name = "regression"

    def loss(
        self, model: torch.nn.Module, batch: dict, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs = self.inputs(batch)
        real, emb = inputs.real, inputs.text  # [B, C, H, W]; embeds [B, T, Dt]
        B, device = real.shape[0], real.device
        noise = torch.randn(real.shape, device=device, generator=self.rng)  # [B, C, H, W]
        generator_model = self.accelerator.unwrap_model(model)
        style = generator_model.sample_style_indices(B, generator=self.rng, device=device)
        with self.accelerator.autocast():
            generated = model(
                hidden_states=noise,
                encoder_hidden_states=emb.embeds,
                encoder_attention_mask=emb.mask,
                pooled_projections=emb.pooled,
                guidance=torch.ones(B, device=device),
                style_indices=style,
            ).sample  # [B, C, H, W]
        return F.mse_loss(generated.float(), real.float()), {}
