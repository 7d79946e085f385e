"""Iterable (streaming) image-caption sources: webdataset shards and streaming HF datasets.

Unlike the in-memory sets, a stream cannot be indexed and its captions are not known up front, so
a stream yields whole batches that carry everything the trainer needs:

    {"pixel_values": [B, 3, R, R] float32 in [-1, 1]   (absent when the source has no images)
     "caption": list of B str, "caption_id": [B] int64 (caption_hash), "key": list of B str,
     "skipped": list of (reason, example) recorded since the previous batch,
     and, when the samples carry precomputed features (scripts/cache_features.py):
     "embeds" [B, T, Dt], "mask" [B, T] bool, "pooled" [B, Dp], "latents" [B, C, h, w],
     "cache_meta": dict of what produced them}

Batches are formed inside the source (in each DataLoader worker) so that the skips of every
worker reach the main process with the batches; use ``DataLoader(source, batch_size=None)``.
Incomplete batches at the end of a worker's epoch are dropped (every step of a distributed run
must see the same group shapes); their count is reported like any skip.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from webdataset import utils as wds_utils

from t2i_drift.data.images import SkipLog, decode_pixels
from t2i_drift.data.splits import caption_hash

# Reason used for samples left over at the end of an epoch (fewer than a batch).
PARTIAL_BATCH = "left over in an incomplete last batch"
# Precomputed tensors whose first dimension is the token axis (trimmed per sample).
_TOKEN_TENSORS = ("embeds", "mask")


@dataclass
class Record:
    """One raw sample of a stream, before decoding.

    ``image`` is whatever :func:`~t2i_drift.data.images.open_image` accepts (or None when the
    sample only has precomputed latents); ``texts`` are its candidate captions (one is picked at
    random, seeded by the key); ``tensors`` holds precomputed per-sample features.
    """

    key: str
    image: object | None
    texts: list[str]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)


def distributed_rank_world() -> tuple[int, int]:
    """This process's rank and the world size: ``RANK`` / ``WORLD_SIZE`` from the environment
    (set by ``accelerate launch`` and torchrun), else torch.distributed, else (0, 1). The same rule
    webdataset's ``split_by_node`` uses, so every source splits the data the same way."""
    rank, world, _, _ = wds_utils.pytorch_worker_info()
    return rank, world


class StreamingImageTextDataset(IterableDataset):
    """Base class of the streaming sources: decoding, caption choice, batching, skip accounting.

    Subclasses implement :meth:`records`, which yields :class:`Record`s of this process's and this
    worker's share of the data for the current epoch, and record their own skips in ``log``.

    Args:
        batch_size: prompts per batch (per process).
        resolution: output side in pixels.
        min_size: images whose shorter side is below this are skipped.
        seed: seed of shuffling and caption choice (combined with the epoch).
    """

    def __init__(self, batch_size: int, resolution: int, min_size: int = 8, seed: int = 0):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.resolution = resolution
        self.min_size = min_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (call before iterating; workers get a copy at iterator start)."""
        self.epoch = epoch

    def worker_seed(self) -> int:
        """A seed distinct per epoch, process and worker, identical across reruns."""
        rank, _ = distributed_rank_world()
        info = get_worker_info()
        worker = info.id if info is not None else 0
        return ((self.seed * 1_000_003 + self.epoch) * 65_537 + rank) * 257 + worker

    def records(self, log: SkipLog) -> Iterator[Record]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict]:
        log = SkipLog()
        pending: list[tuple[Record, np.ndarray | None, str]] = []
        for record in self.records(log):
            texts = [t.strip() for t in record.texts if isinstance(t, str) and t.strip()]
            if not texts:
                log.add("missing or empty caption", record.key)
                continue
            pixels = None
            if record.image is not None:
                pixels = decode_pixels(record.image, self.resolution, self.min_size)
                if not isinstance(pixels, np.ndarray):
                    log.add(pixels.reason, f"{record.key} ({pixels.detail})")
                    continue
            elif "latents" not in record.tensors:
                log.add("no image", record.key)
                continue
            # Seeded by the key: a sample keeps its caption choice across workers and reruns.
            caption = random.Random(f"{self.seed}:{record.key}").choice(texts)
            pending.append((record, pixels, caption))
            if len(pending) == self.batch_size:
                yield self.collate(pending, log.drain())
                pending = []
        for record, _, _ in pending:
            log.add(PARTIAL_BATCH, record.key)
        tail = log.drain()
        if tail:
            # Skips after the last full batch still have to reach the main process: an empty
            # batch carries them (consumers ignore batches without captions).
            yield {"caption": [], "skipped": tail}

    def collate(self, items: list[tuple[Record, np.ndarray | None, str]], skipped: list) -> dict:
        """Stack a batch (module docstring for the layout)."""
        records = [r for r, _, _ in items]
        captions = [c for _, _, c in items]
        batch: dict = {
            "caption": captions,
            "caption_id": torch.tensor([caption_hash(c) for c in captions], dtype=torch.int64),
            "key": [r.key for r in records],
            "skipped": skipped,
        }
        if all(p is not None for _, p, _ in items):
            pixels = torch.from_numpy(np.stack([p for _, p, _ in items]))  # [B, R, R, 3] uint8
            batch["pixel_values"] = pixels.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        names = set(records[0].tensors)
        for record in records[1:]:
            if set(record.tensors) != names:
                raise ValueError(
                    f"sample {record.key!r} has precomputed tensors {sorted(record.tensors)} but "
                    f"{records[0].key!r} has {sorted(names)}: mixed shard sets?"
                )
        for name in sorted(names):
            batch[name] = _stack_padded([r.tensors[name] for r in records], name)
        if names:
            batch["cache_meta"] = records[0].meta
        return batch


def _stack_padded(tensors: list[torch.Tensor], name: str) -> torch.Tensor:
    """Stack per-sample tensors; token embeddings [T, D] and masks [T] (trimmed per sample when
    cached) are zero-padded at the end to the longest T (padding is masked out)."""
    ragged = name in _TOKEN_TENSORS
    shapes = {tuple(t.shape[1:]) if ragged else tuple(t.shape) for t in tensors}
    if len(shapes) > 1 or any(t.dim() == 0 for t in tensors):
        raise ValueError(f"precomputed {name!r} tensors have incompatible shapes {sorted(shapes)}")
    if not ragged:
        return torch.stack(tensors)
    longest = max(t.shape[0] for t in tensors)
    out = tensors[0].new_zeros((len(tensors), longest, *tensors[0].shape[1:]))
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out
