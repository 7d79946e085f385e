"""Image augmentation of training batches with ``torchvision.transforms.v2``.

The official MAE recipe trains its encoder on RandomResizedCrop (scale 0.2-1) + horizontal flip
views (docs/method.md section 4); :class:`BatchAugment` applies that to a batch, with its own
random crop and flip per image:

    images [B, C, H, W] (any value range, e.g. [-1, 1]) -> [B, C, H, W]

torchvision's random transforms draw from torch's global generator and, given a batch tensor, share
one draw across the batch. Here each image is transformed on its own, under a global generator
seeded from the caller's ``torch.Generator`` and restored afterwards, so a run's augmentations
follow its own seeded generator (and resume exactly when that generator is checkpointed).
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2


class BatchAugment:
    """Per-image RandomResizedCrop to the input size, then an optional horizontal flip.

    Args:
        size: output side (the input's, so batches keep their shape).
        crop_scale: (min, max) area fraction of the crop, e.g. (0.2, 1.0).
        hflip: flip half of the images left-right.
    """

    def __init__(self, size: int, crop_scale: tuple[float, float] = (0.2, 1.0), hflip: bool = True) -> None:
        if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
            raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1, got {tuple(crop_scale)}")
        steps: list[v2.Transform] = [v2.RandomResizedCrop(size, scale=tuple(crop_scale), antialias=True)]
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
        self.transform = v2.Compose(steps)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.stack([self.transform(image) for image in images])
