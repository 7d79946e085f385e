"""The free-pixel identity probe: does drift in a feature space pull samples toward their image?

A feature space is only useful to the drifting loss if matching it means matching the image. The
probe checks that without a generator: for N real images it optimizes free tensors (G per image,
in the generator's output space: pixels, or VAE latents) with Adam (or, with
``optimizer="normalized-gd"``, plain gradient steps of fixed length) under one loss built from the
feature space, and tracks the mean squared distance of the free samples to their own image
("own") and to another image of the set ("other": where a loss that ignores the image stays).

    result = identity_probe(encoder, real [N, C, H, W], loss="drift", steps=200, samples=4)
    result.rows       # [(step, own, other), ...] at 5 evenly spaced steps
    result.grad0      # RMS of d loss / d samples at the start: how hard the space pushes
    result.passed     # at the last step own <= PASS_RATIO * other and own <= PASS_RATIO * own at step 0

Losses:
    drift     the text-to-image drifting loss (docs/method.md sections 3 and 7): group = image,
              one positive, alpha = 1 (no unconditional negatives)
    feat-mse  plain feature matching: sum over keys of mean((f(x) - f(y))^2) / var(f(y))
    feat-log-mse  sum over keys of log(mean((f(x) - f(y))^2)): every key's gradient divided by its
              own error, what the drift with one positive amounts to where its affinities sit at
              the floor (docs/method.md section 7); a drift row that tracks this row is that
              regression, not a use of the kernel

An encoder that fails (EfficientNet-Lite0's ImageNet features: the samples match the features
and move away from the image) teaches a generator textures, not the caption's image.

    contrast_blindness(encoder, real, scale=0.5)   # key -> how far scale * image is, in that key,
                                                   # relative to another image (0: blind to contrast)

An encoder with a normalization right after a linear stem (the ResNet MAE's GroupNorm) cannot see
the images' contrast: only a key outside the encoder (raw, the input RMS) can then pull a sample's
contrast toward its image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from t2i_drift.drifting import DriftOptions, text_to_image_drift_loss
from t2i_drift.drifting.feature_sets import FieldNormScope, lambda_groups
from t2i_drift.models.shifted_encoder import set_shift, shift_offset

PASS_RATIO = 0.5
"""A space passes when, at the last step, the samples are at most half as far (squared) from their
own image as from another image, and at most half as far as they started: they moved toward their
image and stayed there (a space whose drift first converges and then pushes the samples apart
again fails)."""

ProbeLoss = Literal["drift", "feat-mse", "feat-log-mse"]
PROBE_LOSSES: tuple[str, ...] = get_args(ProbeLoss)

ProbeOptimizer = Literal["adam", "normalized-gd"]
PROBE_OPTIMIZERS: tuple[str, ...] = get_args(ProbeOptimizer)


class NormalizedGradientDescent(torch.optim.Optimizer):
    """x -= lr * grad / RMS(grad): one step length for the whole tensor, the gradient's direction
    kept. Adam rescales every pixel by its own gradient history, so a direction the loss barely asks
    for moves as fast as the main one; a generator trained through the same loss gets no such
    per-pixel help, and this optimizer shows what the loss's direction alone does."""

    def __init__(self, params, lr: float):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(group["lr"] * p.grad / p.grad.pow(2).mean().sqrt().clamp_min(1e-30))


@dataclass
class ProbeResult:
    """One probe run. ``rows``: (step, own, other) mean squared distances at logged steps."""

    loss: str
    rows: list[tuple[int, float, float]]
    grad0: float
    samples: torch.Tensor | None = None
    """The free samples after the last step, [N, G, C, H, W] (on the CPU)."""

    @property
    def passed(self) -> bool:
        _, own, other = self.rows[-1]
        return own <= PASS_RATIO * other and own <= PASS_RATIO * self.rows[0][1]


def _loss(
    kind: ProbeLoss,
    feats: dict[str, torch.Tensor],
    real_feats: dict[str, torch.Tensor],
    samples: int,
    extra_feats: dict[str, torch.Tensor] | None,
    options: DriftOptions,
    field_norm: FieldNormScope = "key",
) -> torch.Tensor:
    first = next(iter(real_feats.values()))
    N = first.shape[0]
    if kind == "drift":
        ids = torch.arange(N, device=first.device)  # every image its own caption
        weights = torch.ones(N, device=first.device)
        loss, _ = text_to_image_drift_loss(
            feats,
            real_feats,
            samples,
            weights,
            ids,
            options,
            extra_positives=extra_feats,
            lambda_groups=lambda_groups(feats, field_norm),
        )
        return loss
    errors = {
        k: ((feats[k].view(N, samples, *feats[k].shape[1:]) - real_feats[k][:, None]) ** 2).mean()
        for k in feats
    }
    if kind == "feat-log-mse":
        # The 1e-12 keeps a key the samples match exactly finite; the log makes each key's units moot.
        return sum(torch.log(errors[k] + 1e-12) for k in feats)
    return sum(errors[k] / (real_feats[k].var() + 1e-6) for k in feats)


def identity_probe(
    encoder: torch.nn.Module,
    real: torch.Tensor,
    loss: ProbeLoss = "drift",
    steps: int = 200,
    samples: int = 4,
    lr: float = 0.01,
    seed: int = 0,
    extra_positives: torch.Tensor | None = None,
    options: DriftOptions | None = None,
    field_norm: FieldNormScope = "key",
    shift: int = 0,
    optimizer: ProbeOptimizer = "adam",
) -> ProbeResult:
    """Optimize ``samples`` free tensors per image of ``real`` [N, C, H, W] under ``loss`` in the
    feature space of ``encoder`` (key -> [N, L, D]); the samples start near 0 (N(0, 0.01^2)).
    Runs on ``real``'s device (the encoder must be there too); the start does not depend on it.

    ``extra_positives`` [N, P-1, C, H, W]: more positives per image for the drift (other images of
    its caption); "own" stays the distance to ``real``. ``options``: the drift's field options
    (default: the library's). ``field_norm``: which keys share the field normalization
    (``drift.field_norm`` of the recipes). ``shift``: the ShiftedEncoders inside ``encoder`` see
    every step's samples and images translated by one random offset in [-shift, shift], as
    training does with ``features.random_shift`` (the images' features are then recomputed at
    each step's offset). ``optimizer``: ``adam`` (per-pixel step sizes) or ``normalized-gd``
    (the gradient's direction at a fixed step length, :class:`NormalizedGradientDescent`)."""
    if loss not in PROBE_LOSSES:
        raise ValueError(f"loss must be one of {', '.join(PROBE_LOSSES)}, got {loss!r}")
    if optimizer not in PROBE_OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(PROBE_OPTIMIZERS)}, got {optimizer!r}")
    if steps < 1 or samples < 2:
        raise ValueError(f"need steps >= 1 and samples >= 2, got steps={steps}, samples={samples}")
    N = real.shape[0]
    g = torch.Generator().manual_seed(seed)
    x = (0.01 * torch.randn(N * samples, *real.shape[1:], generator=g)).to(real.device).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr) if optimizer == "adam" else NormalizedGradientDescent([x], lr=lr)
    options = options or DriftOptions()
    if shift and set_shift(encoder, (0, 0)) == 0:
        raise ValueError(f"shift={shift} needs a ShiftedEncoder inside the encoder, found none")

    @torch.no_grad()
    def image_features(step: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """The images' (and extra positives') features at ``step``'s shift."""
        if shift:
            set_shift(encoder, shift_offset(shift, seed, step))
        extra = None
        if extra_positives is not None:
            flat = encoder(extra_positives.flatten(0, 1))  # key -> [N*(P-1), L, D]
            extra = {k: v.view(N, -1, *v.shape[1:]) for k, v in flat.items()}
        return encoder(real), extra

    real_feats, extra_feats = image_features(0)
    other_image = real.roll(1, 0)[:, None]  # [N, 1, C, H, W]: image n - 1 for image n
    log_at = {round(i * steps / 4) for i in range(5)}
    rows, grad0 = [], float("nan")
    for step in range(steps + 1):
        if step in log_at:
            xs = x.detach().view(N, samples, *real.shape[1:])
            own = (xs - real[:, None]).pow(2).mean().item()
            rows.append((step, own, (xs - other_image).pow(2).mean().item()))
        if step == steps:
            break
        if shift and step > 0:
            real_feats, extra_feats = image_features(step)
        value = _loss(loss, encoder(x), real_feats, samples, extra_feats, options, field_norm)
        opt.zero_grad()
        value.backward()
        if step == 0:
            grad0 = x.grad.pow(2).mean().sqrt().item()
        opt.step()
    samples_out = x.detach().view(N, samples, *real.shape[1:]).cpu()
    return ProbeResult(loss=loss, rows=rows, grad0=grad0, samples=samples_out)


@torch.no_grad()
def contrast_blindness(encoder: torch.nn.Module, real: torch.Tensor, scale: float = 0.5) -> dict[str, float]:
    """Per key of ``encoder``: the mean squared feature distance between each image of ``real``
    [N, C, H, W] (values in [-1, 1]) and the same image at ``scale`` times its contrast (around 0,
    the grey of the [-1, 1] range), divided by the distance between each image and another image
    of the set (image n - 1). 0: the key cannot tell an image from its faded copy; 1: the faded
    copy is as far as a different image."""
    if real.shape[0] < 2:
        raise ValueError(f"need at least 2 images, got {real.shape[0]}")
    own, faded, other = encoder(real), encoder(scale * real), encoder(real.roll(1, 0))
    return {
        k: ((faded[k] - own[k]).pow(2).mean() / (other[k] - own[k]).pow(2).mean().clamp_min(1e-12)).item()
        for k in own
    }
