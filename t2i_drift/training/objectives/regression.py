"""The trivial one-step baseline: one forward pass from noise, plain MSE to the paired image.

    batch -> positives [B, C, H, W] + text -> generator(noise, text, alpha = 1, style)
    -> mean((generated - positive)^2)

or, with ``objective.regression_space: features``, the squared error in the drifting feature
space (:func:`feature_regression_loss`): the same per-key sets the drift compares, without its
field. ``objective.regression_loss: log_mse`` takes the log of each key's error instead: with one
positive per prompt that is, up to a constant factor, the gradient the normalized drifting field
gives where every affinity sits at the floor (its smallest temperature; docs/method.md section 7),
without the kernel that up-weights nearly-right locations at the larger temperatures.

With one image per caption its optimum is the conditional mean of the images given the caption,
whatever the noise: the blurry average that a one-step generator has to beat. It uses the drifting
generator, data, text encoder and steps unchanged, and exports a ``DriftingPipeline`` (one step;
``guidance_scale`` fixed at 1, since no guidance was learned).
"""

from __future__ import annotations

from typing import Any

import torch

from t2i_drift.models.shifted_encoder import set_shift, shift_offset
from t2i_drift.training.builders import build_feature_encoder, feature_key_weights, speed_up_encoder
from t2i_drift.training.objectives.text_to_image import TextToImageObjective


def squared_error(generated: torch.Tensor, target: torch.Tensor, log: bool) -> torch.Tensor:
    """mean((generated - target)^2) in fp32, or its log (``objective.regression_loss: log_mse``).

    The log's gradient is the plain one divided by the current mean squared error, so a key's pull
    does not fade as its error shrinks; the clamp only guards an exact zero.
    """
    mse = (generated.float() - target.float()).pow(2).mean()
    return mse.clamp_min(1e-12).log() if log else mse


def feature_regression_loss(
    generated: dict[str, torch.Tensor],
    real: dict[str, torch.Tensor],
    weights: dict[str, float],
    log: bool = False,
) -> torch.Tensor:
    """Sum over feature keys of weight * mean((f(x) - f(y))^2) / var(f(y)), or of
    weight * log(mean((f(x) - f(y))^2)) with ``log``.

    Args:
        generated: key -> [B, L, D] features of the generated samples (with grad).
        real: key -> [B, L, D] features of their paired images.
        weights: key -> loss weight.
        log: take the log of each key's mean squared error (the variance is then a constant
            offset and is left out).
    Dividing by each key's variance over the real batch puts every key on one scale, as the
    drift's per-key normalization does, so no set dominates by its units alone.
    """
    total = torch.zeros((), device=next(iter(real.values())).device)
    for key, target in real.items():
        term = squared_error(generated[key], target, log)
        if not log:
            term = term / (target.float().var() + 1e-6)
        total = total + weights[key] * term
    return total


class RegressionObjective(TextToImageObjective):
    """B prompts per step, one generated sample each."""

    name = "regression"

    def build_extra(self, accelerator: Any) -> None:
        self.features: torch.nn.Module | None = None
        self.key_weights: dict[str, float] | None = None  # per feature key, from the first step
        if self.cfg.objective.regression_space == "features":
            cfg = self.cfg
            encoder = build_feature_encoder(cfg.features, cfg.data.resolution, self.vae)
            self.features = speed_up_encoder(encoder.to(accelerator.device), cfg.features)

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
        log = self.cfg.objective.regression_loss == "log_mse"
        if self.features is None:
            return squared_error(generated, real, log), {}
        if self.cfg.features.random_shift:  # off: no module walk on the training step
            set_shift(self.features, shift_offset(self.cfg.features.random_shift, self.cfg.train.seed, step))
        with self.accelerator.autocast():
            gen_features = self.features(generated)  # key -> [B, L, D], with grad
            with torch.no_grad():
                real_features = self.features(real)
        if self.key_weights is None:
            self.key_weights = feature_key_weights(self.cfg.features, list(gen_features))
        return feature_regression_loss(gen_features, real_features, self.key_weights, log), {}
