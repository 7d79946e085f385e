"""Image-caption pairs from Hugging Face ``datasets``: a hub dataset, a local imagefolder with
metadata, or parquet / arrow files; in memory (:class:`HFImageTextDataset`) or streamed
(:class:`HFStreamingImageTextDataset`, ``data.streaming: true``).

In memory, the rows are decoded once, converted to RGB at ``resolution`` (centre crop, Lanczos) and
kept as a uint8 tensor, like the built-in sets, so the trainer can encode every caption up front.
Streamed, rows are decoded as they arrive and captions are encoded per batch (data/streaming.py).
Either way bad rows never crash a run and never vanish silently: an undecodable or truncated image,
a missing or empty caption, or an image smaller than ``min_size`` is skipped and counted per
reason, with examples (data/images.py ``SkipLog``; the trainer prints the report). Grayscale,
palette, CMYK, 16-bit and RGBA images are converted (alpha composited on white).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from t2i_drift.data.images import SkipLog, decode_pixels
from t2i_drift.data.rendered import RenderedImageCaptionDataset
from t2i_drift.data.streaming import Record, StreamingImageTextDataset, distributed_rank_world

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def read_imagefolder_jsonl(root: Path, image_column: str) -> tuple[list[dict], list[tuple[str, str]]]:
    """Rows of a local imagefolder whose captions are in ``metadata.jsonl``, read line by line so
    that one bad line is skipped and reported instead of failing the whole folder.

    Returns:
        rows (``image_column`` -> the image path, plus the line's other fields) and skips as
        ``(reason, example)`` pairs: undecodable (non-UTF-8) or malformed lines, lines without
        ``file_name`` or whose file is missing, and images that no line describes.
    """
    metadata = root / "metadata.jsonl"
    rows, skips, described = [], [], set()
    for number, raw in enumerate(metadata.read_bytes().splitlines(), start=1):
        where = f"{metadata.name} line {number}"
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            skips.append(("metadata line not UTF-8", f"{where} ({err.reason} at byte {err.start})"))
            continue
        except ValueError as err:
            skips.append(("malformed metadata line", f"{where} ({err})"))
            continue
        name = entry.pop("file_name", None) if isinstance(entry, dict) else None
        if not isinstance(name, str):
            skips.append(("malformed metadata line", f"{where} (no file_name)"))
            continue
        image = root / name
        described.add(image.resolve())
        if not image.is_file():
            skips.append(("metadata row without its image", f"{where} ({name})"))
            continue
        rows.append({**entry, image_column: str(image)})
    for image in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS):
        if image.resolve() not in described:
            skips.append(("image without a metadata row", str(image.relative_to(root))))
    return rows, skips


def _load(source: str, split: str, image_column: str = "image", streaming: bool = False):
    """The ``datasets`` object of ``source`` and the skips found while reading its index (a local
    imagefolder with metadata.jsonl is read here, line by line; everything else by datasets)."""
    import datasets

    path = Path(source)
    if path.is_dir() and (path / "metadata.jsonl").is_file():
        rows, skips = read_imagefolder_jsonl(path, image_column)
        if not rows:
            raise ValueError(
                f"data.path={source!r}: metadata.jsonl describes no usable image ({len(skips)} skipped)"
            )
        data = datasets.Dataset.from_list(rows)
        return (data.to_iterable_dataset() if streaming else data), skips
    if path.is_dir():
        builder, kwargs = "imagefolder", {"data_dir": str(path)}
    elif path.suffix in (".parquet", ".arrow") or "*" in source:
        builder, kwargs = (
            ("arrow" if source.endswith(".arrow") else "parquet"),
            {"data_files": {split: source}},
        )
    else:
        builder, kwargs = source, {}  # a hub dataset name
    try:
        return datasets.load_dataset(builder, split=split, streaming=streaming, **kwargs), []
    except (
        FileNotFoundError,
        ValueError,
        UnicodeDecodeError,
        datasets.exceptions.DatasetNotFoundError,
    ) as err:
        raise ValueError(f"data.path={source!r}: cannot load split {split!r} with datasets: {err}") from err


def _prepare_columns(data, source: str, image_column: str, columns: list[str]):
    """Check the columns exist and switch image decoding off (rows are decoded here, per row, so
    that one broken file is skipped instead of failing the whole read)."""
    import datasets

    names = data.column_names
    if names is not None:  # a stream may not know its columns before the first row
        missing = [c for c in [image_column, *columns] if c not in names]
        if missing:
            raise ValueError(
                f"data.path={source!r}: columns {missing} not found; the dataset has {names} "
                f"(set data.image_column / data.caption_columns)"
            )
    features = data.features
    if features is not None and isinstance(features.get(image_column), datasets.Image):
        data = data.cast_column(image_column, datasets.Image(decode=False))
    return data


def _row_texts(record: dict, columns: list[str]) -> list[str]:
    return [t.strip() for c in columns if isinstance(t := record.get(c), str) and t.strip()]


class HFImageTextDataset(RenderedImageCaptionDataset):
    """Image-caption pairs from a ``datasets`` source (see the module docstring).

    Args:
        source: hub dataset name, local imagefolder (images + metadata.jsonl/csv), or a parquet /
            arrow file or glob.
        split: the split to read.
        image_column: column holding the images (``datasets.Image`` or bytes/paths).
        caption_columns: one or several caption columns; with several, each row uses one picked
            at random (seeded, fixed per row) among its non-empty ones.
        resolution: output side in pixels.
        max_samples: keep the first N usable rows.
        min_size: images whose shorter side is below this are skipped.
        seed: seed of the caption pick.
    Items:
        ``{"pixel_values": [3, R, R] float32 in [-1, 1], "caption": str, "caption_id": int}``
    """

    def __init__(
        self,
        source: str,
        split: str = "train",
        image_column: str = "image",
        caption_columns: str | list[str] = "text",
        resolution: int = 32,
        max_samples: int | None = None,
        min_size: int = 8,
        seed: int = 0,
        progress: bool = True,
    ):
        columns = [caption_columns] if isinstance(caption_columns, str) else list(caption_columns)
        data, index_skips = _load(source, split, image_column)
        data = _prepare_columns(data, source, image_column, columns)
        self.skipped = SkipLog()  # instance attribute (the base class default is None)
        self.skipped.extend(index_skips)
        images, captions = [], []
        for row in tqdm(range(len(data)), desc="read dataset", disable=not progress):
            if max_samples is not None and len(images) >= max_samples:
                break
            record = data[row]
            texts = _row_texts(record, columns)
            if not texts:
                self.skipped.add("missing or empty caption", f"row {row}")
                continue
            pixels = decode_pixels(record[image_column], resolution, min_size)
            if not isinstance(pixels, np.ndarray):
                self.skipped.add(pixels.reason, f"row {row} ({pixels.detail})")
                continue
            images.append(pixels)
            captions.append(random.Random(seed * 1_000_003 + row).choice(texts))
        if not images:
            raise ValueError(f"data.path={source!r}: no usable rows ({self.report()})")
        self.images = torch.from_numpy(np.stack(images))  # [N, R, R, 3] uint8
        self.captions = captions
        self.resolution = resolution

    def report(self) -> str:
        """One line: how many rows were skipped, why, with examples."""
        return self.skipped.report()


class HFStreamingImageTextDataset(StreamingImageTextDataset):
    """A ``datasets`` source read as a stream (``load_dataset(..., streaming=True)``): nothing is
    downloaded or decoded up front, so it scales to datasets that do not fit on disk or in memory.

    Each process reads its own share (``datasets.distributed.split_dataset_by_node``) and each
    DataLoader worker its share of that (``datasets`` assigns shards to workers); rows are
    shuffled in a buffer of ``shuffle_buffer`` rows, reseeded every epoch. Batches as described in
    data/streaming.py.

    Args:
        source, split, image_column, caption_columns: as for :class:`HFImageTextDataset`.
        batch_size, resolution, min_size, seed: see :class:`StreamingImageTextDataset`.
        shuffle_buffer: rows in the shuffle buffer (0: stream order).
        max_samples: stop after this many rows per process and epoch.
    """

    def __init__(
        self,
        source: str,
        batch_size: int,
        split: str = "train",
        image_column: str = "image",
        caption_columns: str | list[str] = "text",
        resolution: int = 32,
        min_size: int = 8,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        max_samples: int | None = None,
    ):
        super().__init__(batch_size, resolution, min_size, seed)
        self.source = source
        self.image_column = image_column
        self.columns = [caption_columns] if isinstance(caption_columns, str) else list(caption_columns)
        self.shuffle_buffer = shuffle_buffer
        self.max_samples = max_samples
        # Opened here so that a wrong path or column fails at startup, naming the key.
        data, self.index_skips = _load(source, split, image_column, streaming=True)
        self.data = _prepare_columns(data, source, image_column, self.columns)

    def records(self, log: SkipLog) -> Iterator[Record]:
        from datasets.distributed import split_dataset_by_node

        worker = torch.utils.data.get_worker_info()
        if self.epoch == 0 and distributed_rank_world()[0] == 0 and (worker is None or worker.id == 0):
            for reason, example in self.index_skips:  # once: by one process, one worker
                log.add(reason, example)
        data = self.data
        rank, world = distributed_rank_world()
        if world > 1:
            data = split_dataset_by_node(data, rank=rank, world_size=world)
        if self.shuffle_buffer > 0:
            data = data.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
        data.set_epoch(self.epoch)
        for n, row in enumerate(data):
            if self.max_samples is not None and n >= self.max_samples:
                break
            if self.image_column not in row:
                raise ValueError(
                    f"data.path={self.source!r}: column {self.image_column!r} not found; rows have "
                    f"{sorted(row)} (set data.image_column)"
                )
            yield Record(
                key=f"{self.source}[{rank}:{n}]",
                image=row[self.image_column],
                texts=_row_texts(row, self.columns),
            )
