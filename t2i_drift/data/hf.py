"""Image-caption pairs from Hugging Face ``datasets``: a hub dataset, a local imagefolder with
metadata, or parquet / arrow files.

The rows are decoded once, converted to RGB at ``resolution`` (centre crop, Lanczos) and kept as a
uint8 tensor, like the built-in sets, so the trainer can encode every caption up front. Bad rows
never crash a run and never vanish silently: an undecodable or truncated image, a missing or empty
caption, or an image smaller than ``min_size`` is skipped and counted per reason, with examples,
in :attr:`HFImageTextDataset.skipped` (the trainer prints the report). Grayscale, palette, CMYK,
16-bit and RGBA images are converted (alpha composited on white).

Streaming sources and webdataset shards arrive with the rest of the data issue; they need the
trainer to encode captions per batch instead of up front.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from t2i_drift.data.rendered import RenderedImageCaptionDataset

_EXAMPLES_PER_REASON = 3


def _load(source: str, split: str):
    import datasets

    path = Path(source)
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
        return datasets.load_dataset(builder, split=split, **kwargs)
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as err:
        raise ValueError(f"data.path={source!r}: cannot load split {split!r} with datasets: {err}") from err


def to_rgb_square(image: Image.Image, resolution: int) -> np.ndarray:
    """Any PIL image -> [R, R, 3] uint8: RGB (alpha on white, 16-bit scaled), centre crop, resize."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float32)
        image = Image.fromarray((arr / max(float(arr.max()), 1.0) * 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "P", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("RGB")
    return np.asarray(ImageOps.fit(image, (resolution, resolution), Image.Resampling.LANCZOS))


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
        ``{"pixel_values": [3, R, R] float32 in [-1, 1], "caption": str, "index": int}``
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
        data = _load(source, split)
        missing = [c for c in [image_column, *columns] if c not in data.column_names]
        if missing:
            raise ValueError(
                f"data.path={source!r}: columns {missing} not found; the dataset has {data.column_names} "
                f"(set data.image_column / data.caption_columns)"
            )
        import datasets

        if isinstance(data.features[image_column], datasets.Image):
            data = data.cast_column(image_column, datasets.Image(decode=False))  # decode here, per row
        self.skipped: Counter[str] = Counter()
        self.skipped_examples: dict[str, list[str]] = {}
        images, captions = [], []
        rows = tqdm(range(len(data)), desc="read dataset", disable=not progress)
        for row in rows:
            if max_samples is not None and len(images) >= max_samples:
                break
            record = data[row]
            texts = [t.strip() for c in columns if isinstance(t := record[c], str) and t.strip()]
            if not texts:
                self._skip("missing or empty caption", f"row {row}")
                continue
            try:
                image = _open(record[image_column])
                if min(image.size) < min_size:
                    self._skip(f"smaller than {min_size}px", f"row {row} ({image.size[0]}x{image.size[1]})")
                    continue
                pixels = to_rgb_square(image, resolution)
            except (OSError, ValueError, SyntaxError) as err:  # PIL raises these for broken files
                self._skip("undecodable image", f"row {row}: {type(err).__name__}: {err}")
                continue
            images.append(pixels)
            captions.append(random.Random(seed * 1_000_003 + row).choice(texts))
        if not images:
            raise ValueError(f"data.path={source!r}: no usable rows ({self.report()})")
        self.images = torch.from_numpy(np.stack(images))  # [N, R, R, 3] uint8
        self.captions = captions
        self.resolution = resolution

    def _skip(self, reason: str, example: str) -> None:
        self.skipped[reason] += 1
        examples = self.skipped_examples.setdefault(reason, [])
        if len(examples) < _EXAMPLES_PER_REASON:
            examples.append(example)

    def report(self) -> str:
        """One line: how many rows were skipped, why, with examples."""
        if not self.skipped:
            return "no rows skipped"
        parts = [
            f"{n} {reason} (e.g. {'; '.join(self.skipped_examples[reason])})"
            for reason, n in self.skipped.items()
        ]
        return f"skipped {sum(self.skipped.values())} rows: " + ", ".join(parts)


def _open(value) -> Image.Image:
    """A row's image: a ``datasets.Image`` dict (bytes or path), raw bytes, a path, or a PIL image."""
    import io

    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, dict):
        if value.get("bytes") is not None:
            image = Image.open(io.BytesIO(value["bytes"]))
        elif value.get("path"):
            image = Image.open(os.fspath(value["path"]))
        else:
            raise ValueError("image field has neither bytes nor path")
    elif isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
    elif isinstance(value, str):
        image = Image.open(value)
    else:
        raise ValueError(f"unsupported image value of type {type(value).__name__}")
    image.load()  # decode fully now: truncated files fail here, not in the training loop
    return image
