"""One interface for every training data source: in-memory sets and streams.

Whatever the source (built-in sets and in-memory HF datasets, streamed HF datasets, webdataset
shards, shards of cached features), a training loop does the same four things with it:

    source.prepare(accelerator)            # build this process's loader
    for batch in source.batches(epoch, skip):   # one epoch, after the first ``skip`` batches (resume)
        ...                                # batch: "pixel_values" [B, 3, R, R], "caption" (B str),
                                           # "caption_id" [B] int64, optional cached tensors
    source.skips                           # bad data seen by this process (SkipLog)

so no caller asks which kind it has. :class:`InMemorySource` shuffles with a sampler seeded by
(seed, epoch) and shards across processes through ``accelerator.prepare``; :class:`StreamSource` splits
itself between processes and DataLoader workers (data/streaming.py) and forms its batches there,
so its skip reports travel with the batches and are collected here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import torch
from accelerate.data_loader import SeedableRandomSampler
from torch.utils.data import DataLoader, Subset

from t2i_drift.data.images import SkipLog
from t2i_drift.data.rendered import RenderedImageCaptionDataset
from t2i_drift.data.streaming import StreamingImageTextDataset


class DataSource(ABC):
    """A training data source (module docstring). ``name`` says where the data comes from in
    error messages (e.g. ``data.path='shards/{0..9}.tar'``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.skips = SkipLog()

    @property
    def captions(self) -> list[str] | None:
        """Every caption, when known before training (lets text embeddings be computed once)."""
        return None

    @property
    def num_classes(self) -> int:
        """Classes of the batches' ``label`` (0: no labels)."""
        return 0

    @abstractmethod
    def describe(self) -> str:
        """A short description for the start-of-run line, e.g. ``3755 training pairs``."""

    @abstractmethod
    def prepare(self, accelerator: Any) -> None:
        """Build the loader of this process (call once, before :meth:`batches`)."""

    @abstractmethod
    def batches(self, epoch: int, skip: int = 0) -> Iterator[dict]:
        """Epoch ``epoch``'s batches of this process after its first ``skip`` (a resumed run
        continues where the interrupted one stopped; the order is the same for a given seed)."""


class InMemorySource(DataSource):
    """A map-style dataset held in memory (built-in sets, ``hf`` without streaming).

    Args:
        dataset: items as :class:`RenderedImageCaptionDataset` yields them.
        batch_size: prompts per batch and process.
        seed: seed of the shuffle (Accelerate's seedable sampler reseeds it every epoch).
        num_workers: DataLoader workers.
        shuffle: False reads every item once in order, each process a strided share
            (``rank::world``), with a last incomplete batch (caching features); True shuffles and
            drops incomplete batches (training).
    """

    def __init__(
        self,
        dataset: RenderedImageCaptionDataset,
        batch_size: int,
        seed: int = 0,
        num_workers: int = 0,
        shuffle: bool = True,
        name: str = "data",
    ) -> None:
        super().__init__(name)
        if shuffle and len(dataset) < batch_size:
            raise ValueError(
                f"train.batch_size={batch_size} exceeds the {len(dataset)} training pairs ({name})"
            )
        self.dataset = dataset
        self.batch_size, self.seed, self.num_workers, self.shuffle = batch_size, seed, num_workers, shuffle
        if dataset.skipped is not None:
            self.skips.merge(dataset.skipped)
        self._accelerator: Any = None
        self._loader: Any = None

    @property
    def captions(self) -> list[str]:
        return self.dataset.captions

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def describe(self) -> str:
        skipped = f" ({self.skips.report()})" if self.skips.total else ""
        return f"{len(self.dataset)} training pairs{skipped}"

    def prepare(self, accelerator: Any) -> None:
        self._accelerator = accelerator
        if not self.shuffle:
            rank, world = accelerator.process_index, accelerator.num_processes
            mine = Subset(self.dataset, range(rank, len(self.dataset), world))
            self._loader = DataLoader(mine, batch_size=self.batch_size, num_workers=self.num_workers)
            return
        # An order that depends only on (seed, epoch), whatever the Accelerator's own dataloader
        # settings: epoch e of a resumed run is epoch e of the interrupted one.
        generator = torch.Generator().manual_seed(self.seed)
        sampler = SeedableRandomSampler(self.dataset, generator=generator, data_seed=self.seed)
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            generator=generator,
        )
        self._loader = accelerator.prepare(loader)

    def batches(self, epoch: int, skip: int = 0) -> Iterator[dict]:
        if self._loader is None:
            raise RuntimeError("call prepare(accelerator) before batches()")
        if not self.shuffle:
            yield from self._loader
            return
        self._loader.set_epoch(epoch)
        yield from self._accelerator.skip_first_batches(self._loader, skip) if skip else self._loader


class StreamSource(DataSource):
    """A stream that forms its own batches (webdataset shards, ``hf`` with ``data.streaming``).

    Args:
        dataset: a :class:`StreamingImageTextDataset` (splits itself by process and worker).
        num_workers: DataLoader workers.
    """

    def __init__(self, dataset: StreamingImageTextDataset, num_workers: int = 0, name: str = "data") -> None:
        super().__init__(name)
        self.dataset = dataset
        self.num_workers = num_workers
        self._loader: DataLoader | None = None

    def describe(self) -> str:
        return f"streamed training pairs ({self.dataset.batch_size} per batch and process)"

    def prepare(self, accelerator: Any) -> None:
        # Not passed to accelerator.prepare: Accelerate would dispatch or re-shard a stream that
        # already reads only this process's share.
        self._loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers)

    def batches(self, epoch: int, skip: int = 0) -> Iterator[dict]:
        if self._loader is None:
            raise RuntimeError("call prepare(accelerator) before batches()")
        self.dataset.set_epoch(epoch)
        for batch in self._loader:
            self.skips.extend(batch.pop("skipped", ()))
            if not batch["caption"]:  # a worker's trailing skip report, no samples
                continue
            if skip > 0:  # resume: the stream is deterministic for a seed, epoch and worker count
                skip -= 1
                continue
            yield batch
