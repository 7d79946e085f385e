"""Linear probes of a frozen image encoder: which attributes its features carry, linearly.

The identity probe (eval/identity_probe.py) asks whether drift in a feature space pulls samples
toward their image. This probe asks the complementary question: does the space hold the attribute
the generator fails to learn? On the built-in shapes set the raw-pixel generator gets count,
colour and position right and shape wrong, so the useful probe target is the first object's
shape, read on scenes whose colour-shape pairs training never saw (``heldout``): a space that
separates shapes only through colour-shape conjunctions it has seen fails there.

    feats = pooled_maps(mae, images [N, C, H, W])          # name -> [N, C_i] global means
    probe = fit_linear_probe(feats["all"][train], labels[train], num_classes=3)
    accuracy(probe, feats["all"][test], labels[test])

The probe is multinomial logistic regression on standardized features (train statistics), fitted
full-batch with L-BFGS and a small L2 penalty: deterministic and cheap enough for a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from t2i_drift.models.mae_resnet import ResNetMAE


@dataclass
class LinearProbe:
    """Standardization + linear classifier: logits = ((x - mean) / std) @ weight.T + bias."""

    mean: torch.Tensor  # [D]
    std: torch.Tensor  # [D]
    weight: torch.Tensor  # [K, D]
    bias: torch.Tensor  # [K]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] -> [N, K]."""
        return ((x - self.mean) / self.std) @ self.weight.T + self.bias


def fit_linear_probe(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = 1e-3, max_iter: int = 200
) -> LinearProbe:
    """Fit a multinomial logistic regression on frozen features.

    Args:
        x: [N, D] features (any float dtype; fitted in float64 on CPU for determinism).
        y: [N] integer labels in 0..num_classes-1.
        num_classes: K.
        l2: penalty on the weights (mean squared weight), so separable data has a finite optimum.
        max_iter: L-BFGS iterations.
    """
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"need x [N, D] and y [N], got {tuple(x.shape)} and {tuple(y.shape)}")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {int(y.min())}..{int(y.max())}")
    x = x.detach().to("cpu", torch.float64)
    y = y.detach().to("cpu", torch.long)
    mean = x.mean(0)
    # Constant features (e.g. a dead channel) get std 1, not 0: they then contribute nothing.
    std = x.std(0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    z = (x - mean) / std
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, y) + l2 * weight.pow(2).mean()
        loss.backward()
        return loss

    opt.step(closure)
    return LinearProbe(mean, std, weight.detach(), bias.detach())


def accuracy(probe: LinearProbe, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of x [N, D] whose arg-max class is y [N]."""
    pred = probe.logits(x.detach().to("cpu", torch.float64)).argmax(-1)
    return float((pred == y.to("cpu")).double().mean())


@torch.no_grad()
def pooled_maps(mae: ResNetMAE, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Global means of every stage output of a frozen MAE, and their concatenation.

    Args:
        mae: the encoder (on its device; eval mode is the caller's business).
        images: [N, C_in, H, W] in the MAE's input space (pixels in [-1, 1], or scaled latents).
    Returns:
        ``s<i>.out`` -> [N, C * 2**(i-1)] and ``all`` -> [N, sum of those], float32 on the CPU.
    """
    names = [f"s{i}.out" for i in range(1, len(mae.config.depths) + 1)]
    device = next(mae.parameters()).device
    chunks: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for start in range(0, images.shape[0], batch_size):
        maps = mae.feature_maps(images[start : start + batch_size].to(device), names)
        for n in names:
            chunks[n].append(maps[n].float().mean(dim=(2, 3)).cpu())  # [B, C_i]
    out = {n: torch.cat(chunks[n]) for n in names}
    out["all"] = torch.cat([out[n] for n in names], dim=1)
    return out
