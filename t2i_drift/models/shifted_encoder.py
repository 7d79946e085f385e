"""A frozen encoder that sees its input translated by a random offset, the same for every image.

Why: a convolutional encoder reads its input on a fixed grid (the space-to-depth stem, the
strided stages). The gradient of its features with respect to the input carries that grid: the
backward of a strided convolution is a transposed one, whose output repeats a pattern on the
stride's period. A generator trained through such an encoder can match the features with a texture
tied to the grid (on the shapes set: objects drawn as 4x4 checkered tiles), one the free-pixel
identity probe exposes (t2i_drift/eval/identity_probe.py). Shifting the encoder's input by a
random (dy, dx) at every step moves the grid relative to the image, so a grid-tied texture matches
the features at one offset and not at the next, while the image's content matches at all of them.
Feature visualization uses the same transformation robustness ("jitter") against the same
adversarial textures.

The offset is one per training step for the whole step: generated samples, their paired images and
any extra positives pass the encoder at the same offset, so per-location features still compare
like with like. It is drawn from (seed, step) alone, hence identical on every process and after a
resume. Edge elements are replicated into the border the shift opens.

Shapes: images [N, C, H, W] -> shifted [N, C, H, W] -> the wrapped encoder's keys
``dict[key, Tensor[N, L, D]]`` unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from t2i_drift.models.feature_encoders import FrozenEncoder

Offset = tuple[int, int]


def shift_offset(max_shift: int, seed: int, step: int) -> Offset:
    """The (dy, dx) of ``step``, each in [-max_shift, max_shift], a function of (seed, step) only."""
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if max_shift == 0:
        return (0, 0)
    # A generator of its own, keyed by seed and step: no global RNG is touched, so switching the
    # shift on does not change the run's other draws.
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2,), generator=g).tolist()
    return (dy, dx)


@torch.compiler.disable
def shift_images(images: torch.Tensor, offset: Offset) -> torch.Tensor:
    """[N, C, H, W] translated by ``offset`` = (dy, dx) elements (content moves down / right for
    positive values), edges replicated; (0, 0) returns ``images`` itself.

    Runs eagerly under ``torch.compile`` (the offset changes each step; a compiled graph would be
    specialised to each of its (2s+1)^2 values)."""
    dy, dx = offset
    if dy == 0 and dx == 0:
        return images
    H, W = images.shape[-2:]
    if abs(dy) >= H or abs(dx) >= W:
        raise ValueError(f"shift {offset} must be smaller than the input {H}x{W}")
    s = max(abs(dy), abs(dx))
    padded = F.pad(images, (s, s, s, s), mode="replicate")
    return padded[..., s - dy : s - dy + H, s - dx : s - dx + W]


class ShiftedEncoder(FrozenEncoder):
    """``encoder(shift_images(images, self.offset))``; ``offset`` is set once per step by the
    trainer (:func:`set_shift`). Not shifting is (0, 0), the default.

    Args:
        encoder: any frozen encoder ``images [N, C, H, W] -> dict[key, Tensor[N, L, D]]``.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.offset: Offset = (0, 0)
        self.freeze()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.encoder(shift_images(images, self.offset))


def set_shift(module: nn.Module, offset: Offset) -> int:
    """Set ``offset`` on every ShiftedEncoder inside ``module`` (a compiled module's original
    included); returns how many there are."""
    module = getattr(module, "_orig_mod", module)
    shifted = [m for m in module.modules() if isinstance(m, ShiftedEncoder)]
    for m in shifted:
        m.offset = offset
    return len(shifted)
