"""Per-attribute accuracy on the built-in shapes set, read back by the analytic checker.

:func:`t2i_drift.data.shapes.check_image` reports for each image whether the objects it finds match
the scene: ``count``, ``colour``, ``shape``, ``position`` (the absolute position of one object, or
the relation of two) and ``size`` (one-object scenes only). Scenes of the ``heldout`` split use at
least one colour-shape pair that never appears in training, so accuracy there measures
composition. The checker scores 100% on clean renders (tests/test_shapes.py): the real renders'
accuracy is the ceiling a generator can reach.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from t2i_drift.data.shapes import Scene, all_scenes, check_image, render_scene

ATTRIBUTES = ("count", "colour", "shape", "position", "size")
SPLITS = ("train", "heldout")


def spread_indices(n: int, k: int | None) -> list[int]:
    """``min(k, n)`` indices spread evenly over ``range(n)``, first and last included (all for None)."""
    if k is None or k >= n:
        return list(range(n))
    if k < 1:
        raise ValueError(f"need at least one index, got k={k}")
    if k == 1:
        return [0]
    return [i * (n - 1) // (k - 1) for i in range(k)]


def split_scenes(split: str, max_scenes: int | None = None) -> list[Scene]:
    """The scenes of ``split`` (``train``: no held-out colour-shape pair; ``heldout``: at least one),
    or ``max_scenes`` of them spread evenly over the split (one- and two-object scenes alike)."""
    if split not in SPLITS:
        raise ValueError(f"shapes split must be one of {SPLITS}, got {split!r}")
    scenes = [s for s in all_scenes() if s.held_out == (split == "heldout")]
    return [scenes[i] for i in spread_indices(len(scenes), max_scenes)]


def render_scenes(scenes: Sequence[Scene], resolution: int, renders: int = 1, seed: int = 0) -> torch.Tensor:
    """Real images of ``scenes``: ``renders`` jittered renders of each, scene-major.

    Returns:
        [len(scenes) * renders, 3, R, R] float32 in [-1, 1]; row ``i * renders + r`` is render r of
        scene i (jitter seeded by ``seed``, i and r).
    """
    images = [
        render_scene(scene, resolution, seed=seed * 1_000_003 + i * renders + r)
        for i, scene in enumerate(scenes)
        for r in range(renders)
    ]
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()  # [N, 3, R, R] in [0, 255]
    return pixels / 127.5 - 1.0


def attribute_accuracy(
    images: torch.Tensor | Sequence[torch.Tensor | np.ndarray], scenes: Sequence[Scene]
) -> dict[str, float | None]:
    """Share of images whose checked attributes match their scene.

    Args:
        images: [N, 3, R, R] in [-1, 1] (or N such [3, R, R] tensors, or [R, R, 3] uint8 arrays).
        scenes: the N scenes the images were generated for.
    Returns:
        Each of :data:`ATTRIBUTES` -> accuracy over the images it applies to (None if it applies to
        none: ``size`` on two-object scenes), and ``all_attributes``: the share of images with every
        applicable attribute right.
    """
    if len(images) != len(scenes):
        raise ValueError(f"got {len(images)} images for {len(scenes)} scenes")
    if not scenes:
        raise ValueError("no images to score")
    right, total, all_right = Counter(), Counter(), 0
    for image, scene in zip(images, scenes, strict=True):
        checked = {k: v for k, v in check_image(image, scene).items() if v is not None}
        for attribute, ok in checked.items():
            total[attribute] += 1
            right[attribute] += ok
        all_right += all(checked.values())
    out: dict[str, float | None] = {a: right[a] / total[a] if total[a] else None for a in ATTRIBUTES}
    out["all_attributes"] = all_right / len(scenes)
    return out
