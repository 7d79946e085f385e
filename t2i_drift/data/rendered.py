"""The in-memory form every map-style dataset here shares: uint8 images decoded once, one caption each."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from t2i_drift.data.images import SkipLog
from t2i_drift.data.splits import caption_hash


class RenderedImageCaptionDataset(Dataset):
    """Base class: subclasses fill ``images`` [N, R, R, 3] uint8 and ``captions`` (N strings).

    Items, the same keys a streamed batch has (data/streaming.py):
        ``{"pixel_values": [3, R, R] float32 in [-1, 1], "caption": str, "caption_id": int,
        "index": int}``; ``caption_id`` is :func:`caption_hash` (equal captions, equal ids) and
        ``index`` the item's position (a caption-keyed bank skips the paired image by it).
    """

    images: torch.Tensor
    captions: list[str]
    num_classes: int = 0
    """Classes of the items' ``label`` (0: the set has no labels)."""
    skipped: SkipLog | None = None
    """Rows skipped while reading (sources that read external data set it)."""

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, idx: int) -> dict:
        pixels = self.images[idx].permute(2, 0, 1).float() / 127.5 - 1.0  # [3, R, R] in [-1, 1]
        caption = self.captions[idx]
        return {"pixel_values": pixels, "caption": caption, "caption_id": caption_hash(caption), "index": idx}
