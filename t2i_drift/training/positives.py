"""More than one positive per prompt (docs/method.md section 7, ``drift.positives_per_prompt``).

A drifting group's positives are samples of its condition's distribution. With only the paired
image, a prompt's target is a single point. :class:`ExtraPositives` adds P - 1 more per prompt:

    extra = ExtraPositives(cfg.drift, source, resolution, conditioner)
    pixels = extra(batch, generator)      # [B, P - 1, 3, R, R] in [-1, 1], or None when P = 1

- ``caption``: other images with the same caption, from a :class:`CaptionBank` over the in-memory
  training set (streams cannot look images up by caption, so they are refused);
- ``text_neighbours``: images of the captions nearest in pooled text embedding, from a
  :class:`TextNeighbourBank` over the in-memory training set (embedded by the run's conditioner);
- ``augment``: random crops (and optionally flips) of the paired image, each view its own draw.

Both draw from the run's generator, so a resumed run draws the same positives.
"""

from __future__ import annotations

import torch

from t2i_drift.data.augment import BatchAugment
from t2i_drift.data.caption_bank import CaptionBank
from t2i_drift.data.source import DataSource, InMemorySource
from t2i_drift.data.text_neighbours import TextNeighbourBank
from t2i_drift.text.conditioner import TextConditioner
from t2i_drift.training.config import DriftConfig


class ExtraPositives:
    """The P - 1 extra positives of each prompt (module docstring).

    Args:
        drift: the ``drift`` config section (``positives_per_prompt``, ``positives_from``, crops).
        source: the training data source; ``caption`` needs an :class:`InMemorySource`.
        resolution: image side of the batches.
        conditioner: the run's text conditioner (``text_neighbours`` embeds the captions with it).
    Raises:
        ValueError: ``positives_from: caption`` or ``text_neighbours`` with a streamed source, or
            ``text_neighbours`` without a conditioner, named in the message.
    """

    def __init__(
        self,
        drift: DriftConfig,
        source: DataSource,
        resolution: int,
        conditioner: TextConditioner | None = None,
    ) -> None:
        self.count = drift.positives_per_prompt - 1
        self.mode = drift.positives_from
        self.bank: CaptionBank | TextNeighbourBank | None = None
        self.augment: BatchAugment | None = None
        if self.count == 0:
            return
        if self.mode in ("caption", "text_neighbours"):
            if not isinstance(source, InMemorySource):
                raise ValueError(
                    f"drift.positives_from={self.mode!r} needs an in-memory data set to look images up by "
                    f"caption, but {source.name} is streamed; use drift.positives_from=augment, or "
                    f"drift.positives_per_prompt=1"
                )
            if self.mode == "caption":
                self.bank = CaptionBank(source.dataset)
            else:
                if conditioner is None:
                    raise ValueError(
                        "drift.positives_from='text_neighbours' needs the run's text conditioner"
                    )
                captions = TextNeighbourBank.distinct_captions(source.dataset)
                pooled = conditioner.embed(captions).pooled.cpu()  # [C, Dp]
                self.bank = TextNeighbourBank(
                    source.dataset, pooled, drift.neighbours, drift.neighbour_temperature
                )
        else:
            self.augment = BatchAugment(resolution, tuple(drift.positive_crop_scale), drift.positive_hflip)

    def __call__(self, batch: dict, generator: torch.Generator) -> torch.Tensor | None:
        """[B, P - 1, 3, R, R] pixels in [-1, 1] on the batch's device, or None when P = 1."""
        if self.count == 0:
            return None
        if self.bank is not None:
            return self.bank.draw(batch["caption_id"], batch["index"], self.count, generator)
        assert self.augment is not None
        if "pixel_values" not in batch:
            raise ValueError(
                "drift.positives_from='augment' needs the batch's images, but it carries only cached "
                "latents; cache the shards with their images, or set drift.positives_per_prompt=1"
            )
        pixels = batch["pixel_values"]  # [B, 3, R, R]
        B = pixels.shape[0]
        views = self.augment(pixels.repeat_interleave(self.count, dim=0), generator)  # [B*(P-1), 3, R, R]
        return views.view(B, self.count, *pixels.shape[1:])
