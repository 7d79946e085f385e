"""Per-attribute accuracy on the built-in shapes set, read back by the analytic checker.

:func:`t2i_drift.data.shapes.check_image` reports for each image whether the objects it finds match
the scene: ``count``, ``colour``, ``shape``, ``position`` (the absolute position of one object, or
the relation of two) and ``size`` (one-object scenes only). Scenes of the ``heldout`` split use at
least one colour-shape pair that never appears in training, so accuracy there measures
composition. The checker scores 100% on clean renders (tests/test_shapes.py): the real renders'
accuracy is the ceiling a generator can reach.

With under-specified captions (``omit``, t2i_drift/data/shapes.py) a caption describes several
scenes; :func:`group_accuracy` scores each image against the scene of its caption it matches best
and reports ``coverage``, the share of a caption's scenes that its images draw correctly: a
generator that always draws the same layout for a caption scores 1 / (scenes per caption) there.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from t2i_drift.data.shapes import (
    Scene,
    all_scenes,
    caption_groups,
    check_objects,
    find_objects,
    render_scene,
)

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


def split_caption_groups(
    split: str, omit: Sequence[str], max_captions: int | None = None
) -> list[tuple[str, list[Scene]]]:
    """(caption, its scenes) for the captions of ``split`` with ``omit`` left out, or
    ``max_captions`` of them spread evenly over the split. With nothing omitted, each caption has
    one scene and the captions are those of :func:`split_scenes`."""
    groups = list(caption_groups(split_scenes(split), omit).items())
    return [groups[i] for i in spread_indices(len(groups), max_captions)]


def render_from_groups(
    groups: Sequence[Sequence[Scene]], resolution: int, per_caption: int, seed: int = 0
) -> torch.Tensor:
    """``per_caption`` real images of each caption: scenes drawn uniformly from its group, with
    replacement, and rendered with fresh jitter (seeded by ``seed``).

    Returns:
        [len(groups) * per_caption, 3, R, R] float32 in [-1, 1], caption-major.
    """
    rng = random.Random(seed)
    picks = [rng.choice(list(group)) for group in groups for _ in range(per_caption)]
    return render_scenes(picks, resolution, seed=seed)


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
    scored = group_accuracy(images, [[scene] for scene in scenes])  # one scene per caption
    return {k: scored[k] for k in (*ATTRIBUTES, "all_attributes")}


def group_accuracy(
    images: torch.Tensor | Sequence[torch.Tensor | np.ndarray], groups: Sequence[Sequence[Scene]]
) -> dict[str, float | None]:
    """Share of images right per attribute, each scored against the scene of its caption it matches
    best, and the coverage of each caption's scenes.

    Args:
        images: [N, 3, R, R] in [-1, 1] (or N images as :func:`attribute_accuracy` takes).
        groups: the N images' caption groups (the scenes each image's caption describes); images of
            one caption must share one group object, consecutive or not.
    Returns:
        :func:`attribute_accuracy`'s keys, where an image's scene is the first of its group with
        every attribute right, else the one with most attributes right; ``coverage``: the mean over
        captions of the share of their scenes drawn fully right by at least one of their images;
        ``scenes_per_caption``: the mean group size. With one scene per caption the accuracies
        equal :func:`attribute_accuracy`'s.
    """
    if len(images) != len(groups):
        raise ValueError(f"got {len(images)} images for {len(groups)} caption groups")
    right, total, all_right, drawn = Counter(), Counter(), 0, {}
    for image, group in zip(images, groups, strict=True):
        if not group:
            raise ValueError("a caption group has no scenes")
        found = find_objects(image)
        resolution = image.shape[0] if isinstance(image, np.ndarray) else image.shape[-1]
        scored = []
        for k, scene in enumerate(group):
            checked = {a: v for a, v in check_objects(found, resolution, scene).items() if v is not None}
            scored.append((all(checked.values()), sum(checked.values()), -k, checked))
        ok, _, neg_k, checked = max(scored, key=lambda t: t[:3])
        for attribute, value in checked.items():
            total[attribute] += 1
            right[attribute] += value
        all_right += ok
        hits = drawn.setdefault(id(group), (len(group), set()))[1]
        if ok:
            hits.add(-neg_k)
    out: dict[str, float | None] = {a: right[a] / total[a] if total[a] else None for a in ATTRIBUTES}
    out["all_attributes"] = all_right / len(images)
    out["coverage"] = sum(len(hits) / size for size, hits in drawn.values()) / len(drawn)
    out["scenes_per_caption"] = sum(size for size, _ in drawn.values()) / len(drawn)
    return out
