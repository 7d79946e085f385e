"""More than one positive per prompt (docs/method.md section 7, ``drift.positives_per_prompt``).

A drifting group's positives are samples of its condition's distribution. With only the paired
image, a prompt's target is a single point. :class:`ExtraPositives` adds P - 1 more per prompt:

    extra = ExtraPositives(cfg.drift, source, resolution)
    pixels = extra(batch, generator)      # [B, P - 1, 3, R, R] in [-1, 1], or None when P = 1

- ``caption``: other images with the same caption, from a :class:`CaptionBank` over the in-memory
  training set (streams cannot look images up by caption, so they are refused);
- ``augment``: random crops (and optionally flips) of the paired image, each view its own draw.

Both draw from the run's generator, so a resumed run draws the same positives.
"""

from __future__ import annotations

import torch

from t2i_drift.data.augment import BatchAugment
from t2i_drift.data.caption_bank import CaptionBank
from t2i_drift.data.source import DataSource, InMemorySource
from t2i_drift.training.config import DriftConfig


class ExtraPositives:
    """The P - 1 extra positives of each prompt (module docstring).

    Args:
        drift: the ``drift`` config section (``positives_per_prompt``, ``positives_from``, crops).
        source: the training data source; ``caption`` needs an :class:`InMemorySource`.
        resolution: image side of the batches.
    Raises:
        ValueError: ``positives_from: caption`` with a streamed source, named in the message.
    """

    def __init__(self, drift: DriftConfig, source: DataSource, resolution: int) -> None:
        self.count = drift.positives_per_prompt - 1
        self.mode = drift.positives_from
        self.bank: CaptionBank | None = None
        self.augment: BatchAugment | None = None
        if self.count == 0:
            return
        if self.mode == "caption":
            if not isinstance(source, InMemorySource):
                raise ValueError(
                    f"drift.positives_from='caption' needs an in-memory data set to look images up by "
                    f"caption, but {source.name} is streamed; use drift.positives_from=augment, or "
                    f"drift.positives_per_prompt=1"
                )
            self.bank = CaptionBank(source.dataset)
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
