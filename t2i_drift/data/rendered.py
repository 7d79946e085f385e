"""The in-memory form every map-style dataset here shares: uint8 images decoded once, one caption each."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class RenderedImageCaptionDataset(Dataset):
    """Base class: subclasses fill ``images`` [N, R, R, 3] uint8 and ``captions`` (N strings).

    Items:
        ``{"pixel_values": [3, R, R] float32 in [-1, 1], "caption": str, "index": int}``; ``index``
        lets the trainer look up the caption's precomputed embedding.
    """

    images: torch.Tensor
    captions: list[str]

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, idx: int) -> dict:
        pixels = self.images[idx].permute(2, 0, 1).float() / 127.5 - 1.0  # [3, R, R] in [-1, 1]
        return {"pixel_values": pixels, "caption": self.captions[idx], "index": idx}
