"""The built-in compositional set "shapes": coloured shapes on grey, with an analytic checker.

Scenes (every combination is enumerated, then rendered with seeded jitter):
    one object    "a {size} {colour} {shape} {at position}"      3 shapes x 6 colours x 5 positions x 2 sizes
    two objects   "a {colour} {shape} {relation} a {colour} {shape}"   different colours, small,
                  relations "to the left of", "to the right of", "above", "below"

Under-specified captions (``omit``): leaving ``position`` out of the caption ("a large red circle"
for a circle at any of the five positions; "a red circle and a blue square" for any of the four
relations) or ``size`` out ("a red circle at the top", small or large) gives each caption several
scenes, so the conditional distribution of an image given its caption has several modes, as real
captions do. A caption's scenes are :func:`caption_groups`; a generated image is right when it
matches any of them.

Split by attribute combination: the (colour, shape) pairs in ``HELD_OUT_PAIRS`` never appear in a
training caption; the ``heldout`` split holds every scene that uses at least one of them, so a
model evaluated there must compose attributes it has only seen apart.

:func:`check_image` reads an image back and reports, per attribute, whether it matches the scene:
``count`` (objects found), ``colour``, ``shape``, ``position`` (absolute for one object, the
relation for two) and ``size`` (one object only). It classifies pixels by their nearest palette
colour, finds 4-connected components, and classifies each component by the fill ratio of its
bounding box (square ~1, circle ~pi/4, triangle ~1/2), its centroid and its area.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from t2i_drift.data.rendered import RenderedImageCaptionDataset

SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 190),
    "orange": (240, 140, 30),
}
BACKGROUND = (128, 128, 128)
POSITIONS: dict[str, tuple[float, float]] = {  # centre (x, y) as fractions of the image side
    "center": (0.5, 0.5),
    "left": (0.24, 0.5),
    "right": (0.76, 0.5),
    "top": (0.5, 0.24),
    "bottom": (0.5, 0.76),
}
POSITION_PHRASES = {
    "center": "in the center",
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
SIZES = {"small": 0.13, "large": 0.22}  # half-extent as a fraction of the image side
# relation -> (position of the first object, position of the second)
RELATIONS: dict[str, tuple[str, str]] = {
    "to the left of": ("left", "right"),
    "to the right of": ("right", "left"),
    "above": ("top", "bottom"),
    "below": ("bottom", "top"),
}
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("red", "triangle"), ("green", "circle"), ("blue", "square"), ("orange", "triangle")}
)
_JITTER = 0.03  # centre jitter, fraction of the side
_SUPERSAMPLE = 4


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    position: str
    size: str


CAPTION_OMITS = ("position", "size")
"""Attributes a caption may leave out (module docstring)."""


def check_omit(omit: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``omit`` as a sorted tuple of distinct :data:`CAPTION_OMITS` entries; ValueError otherwise."""
    unknown = [a for a in omit if a not in CAPTION_OMITS]
    if unknown:
        raise ValueError(f"caption omits must be among {list(CAPTION_OMITS)}, got {unknown}")
    return tuple(sorted(set(omit)))


@dataclass(frozen=True)
class Scene:
    """One or two objects; ``relation`` is set for two."""

    objects: tuple[ShapeObject, ...]
    relation: str | None = None

    @property
    def caption(self) -> str:
        """The full caption: every attribute the checker tests."""
        return self.caption_without(())

    def caption_without(self, omit: tuple[str, ...] | list[str]) -> str:
        """The caption with the attributes in ``omit`` (:data:`CAPTION_OMITS`) left out."""
        if self.relation is None:
            o = self.objects[0]
            words = ["a"] if "size" in omit else ["a", o.size]
            words += [o.colour, o.shape]
            if "position" not in omit:
                words.append(POSITION_PHRASES[o.position])
            return " ".join(words)
        a, b = self.objects
        first = f"{_article(a.colour)} {a.colour} {a.shape}"
        relation = "and" if "position" in omit else self.relation
        return f"{first} {relation} {_article(b.colour)} {b.colour} {b.shape}"

    @property
    def held_out(self) -> bool:
        return any((o.colour, o.shape) in HELD_OUT_PAIRS for o in self.objects)


NUM_LABELS = len(SHAPES) * len(COLOURS)
"""Classes of :func:`scene_label` (shape x colour)."""


def scene_label(scene: Scene) -> int:
    """A class for classification fine-tuning (e.g. of the MAE feature encoder): the first object's
    shape x colour, ``shape_index * 6 + colour_index`` in 0..17. Training scenes never use the four
    held-out pairs, so those classes do not occur in the ``train`` split."""
    first = scene.objects[0]
    return SHAPES.index(first.shape) * len(COLOURS) + list(COLOURS).index(first.colour)


def all_scenes() -> list[Scene]:
    """Every scene, in a fixed order: all one-object scenes, then all two-object scenes."""
    scenes = [
        Scene((ShapeObject(shape, colour, position, size),))
        for shape, colour, position, size in itertools.product(SHAPES, COLOURS, POSITIONS, SIZES)
    ]
    for (s1, c1), (s2, c2), relation in itertools.product(
        itertools.product(SHAPES, COLOURS), itertools.product(SHAPES, COLOURS), RELATIONS
    ):
        if c1 == c2:
            continue  # distinct colours keep "the red one" unambiguous
        p1, p2 = RELATIONS[relation]
        scenes.append(Scene((ShapeObject(s1, c1, p1, "small"), ShapeObject(s2, c2, p2, "small")), relation))
    return scenes


def caption_groups(scenes: list[Scene], omit: tuple[str, ...] | list[str]) -> dict[str, list[Scene]]:
    """The scenes each caption with ``omit`` left out describes, captions in first-seen order.

    With nothing omitted every caption has one scene. Omitting ``position``, a one-object caption
    has five scenes and a two-object caption four (one per relation); omitting ``size`` doubles the
    one-object scenes.
    """
    omit = check_omit(omit)
    groups: dict[str, list[Scene]] = {}
    for scene in scenes:
        groups.setdefault(scene.caption_without(omit), []).append(scene)
    return groups


def render_scene(scene: Scene, resolution: int, seed: int = 0) -> np.ndarray:
    """[R, R, 3] uint8 image of ``scene`` (anti-aliased; centres jittered by ``seed``)."""
    rng = random.Random(seed)
    big = resolution * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        cx, cy = POSITIONS[obj.position]
        cx = (cx + rng.uniform(-_JITTER, _JITTER)) * big
        cy = (cy + rng.uniform(-_JITTER, _JITTER)) * big
        h = SIZES[obj.size] * big
        colour = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=colour)
        elif obj.shape == "square":
            s = 0.9 * h  # about the circle's area
            draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=colour)
        else:
            draw.polygon([(cx, cy - h), (cx - h, cy + h), (cx + h, cy + h)], fill=colour)
    return np.asarray(image.resize((resolution, resolution), Image.Resampling.BOX))


# ----------------------------------------------------------------------------------------------
#                                         Checker
# ----------------------------------------------------------------------------------------------
_PALETTE = np.array([BACKGROUND, *COLOURS.values()], dtype=np.float32)  # index 0 = background
_COLOUR_NAMES = ("background", *COLOURS)
_MAX_COLOUR_DISTANCE = 60.0


@dataclass
class Component:
    colour: str
    area: int  # pixels
    centroid: tuple[float, float]  # (x, y) as fractions of the side
    fill_ratio: float  # area / bounding-box area
    top_bottom: float  # pixels in the top half of the bounding box / pixels in the bottom half

    @property
    def shape(self) -> str:
        # An upward triangle is much thinner at the top; circles and squares are symmetric and
        # differ in how much of their bounding box they fill (pi/4 vs 1).
        if self.top_bottom < 0.6:
            return "triangle"
        return "square" if self.fill_ratio > 0.88 else "circle"


def _components(labels: np.ndarray, min_area: int) -> list[Component]:
    """4-connected components of same-colour pixels (labels > 0)."""
    R = labels.shape[0]
    seen = np.zeros_like(labels, dtype=bool)
    out = []
    for y0, x0 in zip(*np.nonzero(labels), strict=True):
        if seen[y0, x0]:
            continue
        colour = labels[y0, x0]
        queue, pixels = deque([(y0, x0)]), []
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < R and 0 <= nx < R and not seen[ny, nx] and labels[ny, nx] == colour:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(pixels) < min_area:
            continue
        ys, xs = np.array(pixels).T
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        mid = (ys.min() + ys.max()) / 2
        top, bottom = (ys < mid).sum(), (ys > mid).sum()
        out.append(
            Component(
                colour=_COLOUR_NAMES[colour],
                area=len(pixels),
                centroid=((xs.mean() + 0.5) / R, (ys.mean() + 0.5) / R),
                fill_ratio=len(pixels) / box,
                top_bottom=float(top) / max(float(bottom), 1.0),
            )
        )
    return out


def find_objects(image: np.ndarray | torch.Tensor) -> list[Component]:
    """Objects in an [R, R, 3] uint8 image (or a [3, R, R] tensor in [-1, 1]), largest first."""
    if isinstance(image, torch.Tensor):
        image = (
            ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        )
    pixels = image.astype(np.float32)
    dist = np.linalg.norm(pixels[:, :, None, :] - _PALETTE[None, None], axis=-1)  # [R, R, 7]
    labels = dist.argmin(-1)
    labels[dist.min(-1) > _MAX_COLOUR_DISTANCE] = 0  # anti-aliased edges and noise: not an object
    R = image.shape[0]
    min_area = max(4, int(0.25 * math.pi * (SIZES["small"] * R) ** 2 * 0.5))
    return sorted(_components(labels, min_area), key=lambda c: -c.area)


def _position(c: Component) -> str:
    dx, dy = c.centroid[0] - 0.5, c.centroid[1] - 0.5
    if abs(dx) < 0.12 and abs(dy) < 0.12:
        return "center"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def _size(c: Component, resolution: int) -> str:
    """The size whose expected area (for the component's shape) is nearer in log scale."""
    factor = {"circle": math.pi, "square": 4 * 0.81, "triangle": 2.0}[c.shape]
    best = min(SIZES, key=lambda s: abs(math.log(c.area / (factor * (SIZES[s] * resolution) ** 2))))
    return best


def _relation_holds(relation: str, a: Component, b: Component) -> bool:
    (ax, ay), (bx, by) = a.centroid, b.centroid
    return {
        "to the left of": ax < bx and abs(ax - bx) > abs(ay - by),
        "to the right of": ax > bx and abs(ax - bx) > abs(ay - by),
        "above": ay < by and abs(ay - by) > abs(ax - bx),
        "below": ay > by and abs(ay - by) > abs(ax - bx),
    }[relation]


def check_image(image: np.ndarray | torch.Tensor, scene: Scene) -> dict[str, bool | None]:
    """Per-attribute correctness of ``image`` for ``scene`` (None: not applicable).

    An attribute of an object that was not found (no component of its colour) counts as wrong.
    """
    resolution = image.shape[0] if isinstance(image, np.ndarray) else image.shape[-1]
    return check_objects(find_objects(image), resolution, scene)


def check_objects(found: list[Component], resolution: int, scene: Scene) -> dict[str, bool | None]:
    """:func:`check_image` on the objects :func:`find_objects` found in an image of side
    ``resolution`` (to check one image against several scenes without finding them again)."""
    by_colour: dict[str, Component] = {}
    for c in found:  # largest component of each colour
        by_colour.setdefault(c.colour, c)
    matched = [by_colour.get(o.colour) for o in scene.objects]
    result: dict[str, bool | None] = {
        "count": len(found) == len(scene.objects),
        "colour": all(m is not None for m in matched),
        "shape": all(
            m is not None and m.shape == o.shape for m, o in zip(matched, scene.objects, strict=True)
        ),
    }
    if scene.relation is None:
        m, o = matched[0], scene.objects[0]
        result["position"] = m is not None and _position(m) == o.position
        result["size"] = m is not None and _size(m, resolution) == o.size
    else:
        a, b = matched
        result["position"] = a is not None and b is not None and _relation_holds(scene.relation, a, b)
        result["size"] = None
    return {k: None if v is None else bool(v) for k, v in result.items()}


# ----------------------------------------------------------------------------------------------
#                                         Dataset
# ----------------------------------------------------------------------------------------------
class ShapesDataset(RenderedImageCaptionDataset):
    """Rendered shapes scenes.

    Args:
        split: ``train`` (no held-out colour-shape pair) or ``heldout`` (at least one).
        resolution: image side in pixels.
        renders_per_scene: jittered renders of each scene (seeded by scene and render index).
        max_samples: keep the first N items.
        seed: base seed of the jitter.
        omit: attributes the captions leave out (:data:`CAPTION_OMITS`): each caption then pairs
            with the renders of several scenes.
    Items:
        ``{"pixel_values": [3, R, R] float32 in [-1, 1], "caption": str, "caption_id": int,
        "label": int}``; ``label`` is :func:`scene_label` (``num_classes`` classes).
    """

    num_classes = NUM_LABELS

    def __init__(
        self,
        split: str = "train",
        resolution: int = 32,
        renders_per_scene: int = 1,
        max_samples: int | None = None,
        seed: int = 0,
        omit: tuple[str, ...] | list[str] = (),
    ):
        if split not in ("train", "heldout"):
            raise ValueError(f"shapes split must be 'train' or 'heldout', got {split!r}")
        self.omit = check_omit(omit)
        scenes = [s for s in all_scenes() if s.held_out == (split == "heldout")]
        self.scenes = [s for s in scenes for _ in range(renders_per_scene)]
        seeds = [seed * 1_000_003 + i for i in range(len(self.scenes))]
        if max_samples is not None:
            self.scenes, seeds = self.scenes[:max_samples], seeds[:max_samples]
        self.resolution = resolution
        self.images = torch.from_numpy(
            np.stack([render_scene(s, resolution, k) for s, k in zip(self.scenes, seeds, strict=True)])
        )
        self.captions = [s.caption_without(self.omit) for s in self.scenes]
        self.labels = [scene_label(s) for s in self.scenes]

    def __getitem__(self, idx: int) -> dict:
        return {**super().__getitem__(idx), "label": self.labels[idx]}
