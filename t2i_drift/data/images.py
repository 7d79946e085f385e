"""Decoding of user images and the record of what was skipped, shared by every user data source.

Bad data never crashes a run and never vanishes silently: each source converts what can be
converted (grayscale, palette, CMYK, 16-bit, RGBA) and skips what cannot (undecodable or truncated
files, missing captions, tiny images, broken tar members), recording every skip in a
:class:`SkipLog` that the trainer reports at the end of the run.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

EXAMPLES_PER_REASON = 3
# Images whose header declares more pixels are skipped before decoding: a small compressed file
# can otherwise expand to gigabytes (training crops to a few hundred pixels anyway).
MAX_DECODE_PIXELS = 64 * 2**20


class ImageTooLarge(ValueError):
    """The header declares more than MAX_DECODE_PIXELS pixels."""


# What PIL raises for broken or truncated files (SyntaxError for some malformed headers).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def open_image(value) -> Image.Image:
    """A row's image, fully decoded: a ``datasets.Image`` dict (bytes or path), raw bytes, a path,
    or a PIL image. Truncated files fail here, not later in the training loop."""
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
    width, height = image.size  # from the header; nothing decoded yet
    if width * height > MAX_DECODE_PIXELS:
        raise ImageTooLarge(f"{width}x{height} exceeds {MAX_DECODE_PIXELS} pixels")
    image.load()
    return image


def to_rgb_square(image: Image.Image, resolution: int) -> np.ndarray:
    """Any PIL image -> [R, R, 3] uint8: RGB (alpha on white, 16-bit scaled by 65535), centre
    crop, resize."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit samples span 0..65535 whatever the image's own maximum (a dark image stays dark);
        # PIL opens 16-bit PNGs as mode I, whose values are the same 16-bit samples.
        arr = np.asarray(image, dtype=np.float32)
        image = Image.fromarray((np.clip(arr / 65535.0, 0.0, 1.0) * 255).round().astype(np.uint8))
    if image.mode in ("RGBA", "LA", "P", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("RGB")
    return np.asarray(ImageOps.fit(image, (resolution, resolution), Image.Resampling.LANCZOS))


class Skip(NamedTuple):
    """Why an item was not used: a short ``reason`` (the report's category) and a ``detail``."""

    reason: str
    detail: str


def decode_pixels(value, resolution: int, min_size: int) -> np.ndarray | Skip:
    """Decode and convert one image: [R, R, 3] uint8, or a :class:`Skip` when it cannot be used."""
    try:
        image = open_image(value)
        if min(image.size) < min_size:
            return Skip(f"smaller than {min_size}px", f"{image.size[0]}x{image.size[1]}")
        return to_rgb_square(image, resolution)
    except ImageTooLarge as err:
        return Skip("image too large to decode", str(err))
    except DECODE_ERRORS as err:
        return Skip("undecodable image", f"{type(err).__name__}: {err}")


class SkipLog:
    """Counts of skipped items per reason, with the first few examples of each.

    Sources running in DataLoader workers send their skips along with each batch (as a list of
    ``(reason, example)`` pairs, see :meth:`drain`) so that the main process sees them all.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self._pending: list[tuple[str, str]] = []

    def add(self, reason: str, example: str) -> None:
        self.counts[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(example)
        self._pending.append((reason, example))

    def drain(self) -> list[tuple[str, str]]:
        """The skips recorded since the last call (what a batch carries to the main process)."""
        pending, self._pending = self._pending, []
        return pending

    def extend(self, events: Iterable[tuple[str, str]]) -> None:
        for reason, example in events:
            self.add(reason, example)
        self._pending.clear()

    def merge(self, other: SkipLog) -> None:
        """Add another log's counts and examples (e.g. another process's)."""
        for reason, n in other.counts.items():
            self.counts[reason] += n
            examples = self.examples.setdefault(reason, [])
            examples.extend(other.examples.get(reason, [])[: EXAMPLES_PER_REASON - len(examples)])

    @classmethod
    def from_dict(cls, values: dict) -> SkipLog:
        """The inverse of :meth:`to_dict`."""
        log = cls()
        log.counts.update(values["counts"])
        log.examples = {k: list(v) for k, v in values["examples"].items()}
        return log

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def report(self) -> str:
        """One line: how many items were skipped, why, with examples."""
        if not self.counts:
            return "nothing skipped"
        parts = [f"{n} {why} (e.g. {'; '.join(self.examples[why])})" for why, n in self.counts.items()]
        return f"skipped {self.total}: " + ", ".join(parts)

    def to_dict(self) -> dict:
        return {"total": self.total, "counts": dict(self.counts), "examples": self.examples}
