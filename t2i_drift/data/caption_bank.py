"""A caption-keyed bank of real images: every image of an in-memory set, indexed by its caption.

The paper draws a class's positives from a bank of that class's real images. For text-to-image the
analogue of a class is a caption: when a data set pairs one caption with several images (the
shapes set renders each scene several times; web data repeats common captions), all of them are
samples of that caption's conditional distribution. :class:`CaptionBank` finds them:

    bank = CaptionBank(dataset)
    extra = bank.draw(caption_ids [B], indices [B], count, generator)   # [B, count, 3, R, R] in [-1, 1]

Each prompt gets ``count`` images of its caption other than its paired one (``indices``), drawn
without replacement; a caption with fewer images than that repeats them in a random order, and a
caption with only its paired image repeats the paired image.
"""

from __future__ import annotations

import torch

from t2i_drift.data.rendered import RenderedImageCaptionDataset
from t2i_drift.data.splits import caption_hash


class CaptionBank:
    """Images of an in-memory set grouped by caption (module docstring).

    Args:
        dataset: the training set; its ``images`` [N, R, R, 3] uint8 stay where they are (no copy).
    """

    def __init__(self, dataset: RenderedImageCaptionDataset) -> None:
        self.images = dataset.images
        members: dict[int, list[int]] = {}
        for i, caption in enumerate(dataset.captions):
            members.setdefault(caption_hash(caption), []).append(i)
        self.members = {key: torch.tensor(idx) for key, idx in members.items()}

    def images_per_caption(self) -> torch.Tensor:
        """[captions] how many images each caption has."""
        return torch.tensor([len(v) for v in self.members.values()])

    def draw(
        self, caption_ids: torch.Tensor, indices: torch.Tensor, count: int, generator: torch.Generator
    ) -> torch.Tensor:
        """``count`` more images of each prompt's caption.

        Args:
            caption_ids: [B] caption hashes of the batch (``caption_id``).
            indices: [B] dataset positions of the paired images (``index``).
            count: images to draw per prompt.
            generator: the run's generator (CPU or on ``caption_ids``' device).
        Returns:
            [B, count, 3, R, R] float32 in [-1, 1], on ``caption_ids``' device.
        """
        picks = []
        for cid, own in zip(caption_ids.tolist(), indices.tolist(), strict=True):
            if cid not in self.members:
                raise KeyError(f"caption id {cid} is not in the caption bank (a batch of another data set?)")
            pool = self.members[cid]
            others = pool[pool != own]
            if len(others) == 0:
                others = pool
            rounds = -(-count // len(others))  # ceil: repeat a short pool, each round reshuffled
            n, device = len(others), generator.device
            order = torch.cat([torch.randperm(n, generator=generator, device=device) for _ in range(rounds)])
            picks.append(others[order[:count].cpu()])
        chosen = self.images[torch.stack(picks)]  # [B, count, R, R, 3] uint8
        return chosen.permute(0, 1, 4, 2, 3).float().div(127.5).sub(1.0).to(caption_ids.device)
