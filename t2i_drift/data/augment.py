"""Random resized crops and flips of training batches, one draw per image, in one batched op.

The official MAE recipe trains its encoder on RandomResizedCrop (scale 0.2-1) + horizontal flip
views (docs/method.md section 4); :class:`BatchAugment` applies that to a batch, with its own
random crop and flip per image:

    images [B, C, H, W] (any value range, e.g. [-1, 1]) -> [B, C, H, W]

The crop boxes follow torchvision's ``RandomResizedCrop.get_params`` (area fraction uniform in
``crop_scale``, log aspect ratio uniform in log(3/4)..log(4/3), up to 10 tries, then the whole
image), drawn for the whole batch at once; the crops are resampled to the input size by one
bilinear ``grid_sample`` at the coordinates torchvision's bilinear resize of the crop reads
(clamped to the crop), so a view equals ``torchvision.transforms.v2.functional.resized_crop`` of
the same box to float rounding (a crop is never larger than the input, so antialiasing never
applies). One kernel per batch instead of a transform per image: on a GPU a per-image loop is
launch-bound and starves the encoder it feeds.

Every draw comes from a generator seeded from the caller's ``torch.Generator`` (one draw from it
per batch), so a run's augmentations follow its own seeded generator, resume exactly when that
generator is checkpointed, and leave torch's global generator alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_TRIES = 10


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
        self.size, self.crop_scale, self.hflip = size, tuple(crop_scale), hflip

    def boxes(self, batch: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """Crop boxes [batch, 4] as (x1, y1, x2, y2) in pixels (integers, x2 - x1 = crop width),
        drawn with ``generator`` (CPU)."""
        area = height * width
        lo, hi = self.crop_scale
        target = area * (lo + (hi - lo) * torch.rand(batch, _TRIES, generator=generator, dtype=torch.float64))
        log_lo, log_hi = math.log(_RATIO[0]), math.log(_RATIO[1])
        aspect = torch.exp(
            log_lo + (log_hi - log_lo) * torch.rand(batch, _TRIES, generator=generator, dtype=torch.float64)
        )
        w = torch.sqrt(target * aspect).round().long()  # [B, tries]
        h = torch.sqrt(target / aspect).round().long()
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = ok.long().argmax(dim=1)  # the first try that fits (0 when none does)
        any_ok = ok.any(dim=1)
        rows = torch.arange(batch)
        # No try fits: the whole image (torchvision's fallback for a square-ish input).
        w = torch.where(any_ok, w[rows, first], torch.full_like(first, width))
        h = torch.where(any_ok, h[rows, first], torch.full_like(first, height))
        u = torch.rand(batch, 2, generator=generator, dtype=torch.float64)
        top = (u[:, 0] * (height - h + 1)).floor().long()
        left = (u[:, 1] * (width - w + 1)).floor().long()
        return torch.stack([left, top, left + w, top + h], dim=1)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        g = torch.Generator().manual_seed(seed)
        B, _, H, W = images.shape
        boxes = self.boxes(B, H, W, g).double()  # [B, 4]
        flip = torch.rand(B, generator=g) < 0.5 if self.hflip else torch.zeros(B, dtype=torch.bool)
        out_pos = torch.arange(self.size, dtype=torch.float64) + 0.5  # output pixel centres
        x1, y1, x2, y2 = boxes.unbind(1)

        def source(start: torch.Tensor, stop: torch.Tensor, side: int) -> torch.Tensor:
            # A bilinear resize of the crop reads crop pixel (i + 0.5) * extent / size - 0.5,
            # clamped to the crop; grid_sample (align_corners=False) wants it in [-1, 1] units.
            extent = stop - start
            p = (out_pos[None] * (extent / self.size)[:, None] - 0.5).clamp_min(0)
            p = torch.minimum(p, (extent - 1)[:, None]) + start[:, None]  # [B, size]
            return (p + 0.5) / side * 2 - 1

        gx, gy = source(x1, x2, W), source(y1, y2, H)
        gx = torch.where(flip[:, None], gx.flip(1), gx)  # a flip reads the columns right to left
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # [B, S, S, 2]
        out = F.grid_sample(
            images.float(), grid.to(images.device, torch.float32), mode="bilinear", align_corners=False
        )
        return out.to(images.dtype)
