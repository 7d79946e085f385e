"""Positives from captions that mean nearly the same: a text-neighbour bank over an in-memory set.

Web-style data pairs most captions with a single image, so a caption-keyed bank
(:mod:`t2i_drift.data.caption_bank`) has nothing to add. The images of *similar* captions are the
next best samples of a caption's conditional distribution ("grinning face" and "grinning face
with big eyes"). :class:`TextNeighbourBank` finds, for every caption, its ``k`` nearest captions
by cosine similarity of their pooled text embeddings (the run's own text encoder) and draws extra
positives from their images, a neighbour caption ``j`` of caption ``i`` with probability
``softmax_j(sim(i, j) / temperature)``:

    bank = TextNeighbourBank(dataset, pooled [C, D], k=8, temperature=0.05)
    extra = bank.draw(caption_ids [B], indices [B], count, generator)   # [B, count, 3, R, R]

The caption itself is one of the candidates (similarity 1) when it has other images; its paired
image is not drawn (unless the set has nothing else). Sampling in proportion to the similarity
weights the positives by caption similarity without changing the field: a near-synonym is drawn
often, a loose neighbour rarely.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from t2i_drift.data.rendered import RenderedImageCaptionDataset
from t2i_drift.data.splits import caption_hash

_CHUNK = 1024  # captions per similarity block: memory stays O(chunk x captions)


class TextNeighbourBank:
    """Images of an in-memory set, grouped by caption, with each caption's nearest captions.

    Args:
        dataset: the training set; its ``images`` [N, R, R, 3] uint8 stay where they are.
        pooled: [C, D] pooled text embeddings of the set's distinct captions, in the order of
            :meth:`distinct_captions` (first appearance in ``dataset.captions``).
        k: neighbour captions per caption (the caption itself included when it has other images).
        temperature: softmax temperature over cosine similarities (smaller: nearer neighbours only).
    Raises:
        ValueError: a shape that does not match the set, ``k < 1`` or ``temperature <= 0``.
    """

    def __init__(
        self, dataset: RenderedImageCaptionDataset, pooled: torch.Tensor, k: int, temperature: float
    ) -> None:
        captions = self.distinct_captions(dataset)
        if pooled.ndim != 2 or pooled.shape[0] != len(captions):
            raise ValueError(
                f"pooled embeddings must be [{len(captions)}, D] (one per distinct caption), "
                f"got {list(pooled.shape)}"
            )
        if k < 1 or temperature <= 0:
            raise ValueError(f"need k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
        self.images = dataset.images
        members: dict[int, list[int]] = {}
        for i, caption in enumerate(dataset.captions):
            members.setdefault(caption_hash(caption), []).append(i)
        self.ids = [caption_hash(c) for c in captions]
        self.row = {cid: r for r, cid in enumerate(self.ids)}
        self.members = [torch.tensor(members[cid]) for cid in self.ids]
        lone = torch.tensor([len(m) == 1 for m in self.members])  # the caption has no other image

        unit = F.normalize(pooled.float(), dim=-1)
        k_eff = min(k, len(captions))
        neighbours, weights = [], []
        for start in range(0, len(captions), _CHUNK):
            sim = unit[start : start + _CHUNK] @ unit.T  # [c, C]
            rows = torch.arange(start, min(start + _CHUNK, len(captions)))
            # a caption's own row is a candidate only if it has images other than the paired one;
            # otherwise it ranks below every real neighbour (cosine >= -1), so that a set with a
            # single caption still draws (its paired image, as the caption bank does)
            sim[torch.arange(len(rows)), rows] = torch.where(lone[rows], -2.0, 1.0)
            top, idx = sim.topk(k_eff, dim=-1)  # [c, k]
            neighbours.append(idx)
            weights.append(torch.softmax(top / temperature, dim=-1))
        self.neighbours = torch.cat(neighbours)  # [C, k] rows of self.ids
        self.weights = torch.cat(weights)  # [C, k], rows sum to 1

    @staticmethod
    def distinct_captions(dataset: RenderedImageCaptionDataset) -> list[str]:
        """The set's distinct captions in order of first appearance (the rows of ``pooled``)."""
        return list(dict.fromkeys(dataset.captions))

    def draw(
        self, caption_ids: torch.Tensor, indices: torch.Tensor, count: int, generator: torch.Generator
    ) -> torch.Tensor:
        """``count`` images of each prompt's neighbour captions.

        Args:
            caption_ids: [B] caption hashes of the batch (``caption_id``).
            indices: [B] dataset positions of the paired images (``index``); never drawn.
            count: images to draw per prompt (with replacement).
            generator: the run's generator (CPU or on ``caption_ids``' device).
        Returns:
            [B, count, 3, R, R] float32 in [-1, 1], on ``caption_ids``' device.
        """
        device = generator.device
        picks = []
        for cid, own in zip(caption_ids.tolist(), indices.tolist(), strict=True):
            if cid not in self.row:
                raise KeyError(
                    f"caption id {cid} is not in the text-neighbour bank (a batch of another data set?)"
                )
            r = self.row[cid]
            chosen = torch.multinomial(
                self.weights[r].to(device), count, replacement=True, generator=generator
            )
            row_picks = []
            for n in self.neighbours[r][chosen.cpu()].tolist():
                pool = self.members[n]
                if n == r and len(pool) > 1:
                    pool = pool[pool != own]
                j = torch.randint(len(pool), (1,), generator=generator, device=device).item()
                row_picks.append(pool[j])
            picks.append(torch.stack(row_picks))
        chosen_images = self.images[torch.stack(picks)]  # [B, count, R, R, 3] uint8
        return chosen_images.permute(0, 1, 4, 2, 3).float().div(127.5).sub(1.0).to(caption_ids.device)
