"""The built-in compositional "shapes" set: scenes, the split by attribute combination, and the
analytic checker (exact on clean renders, robust to mild noise, and it catches wrong images)."""

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from t2i_drift.data.shapes import (
    COLOURS,
    HELD_OUT_PAIRS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    ShapesDataset,
    all_scenes,
    caption_groups,
    check_image,
    check_omit,
    render_scene,
)
from t2i_drift.data.splits import caption_hash

SCENES = all_scenes()


def _accuracy(pairs):
    """pairs: (image, scene) -> attribute -> fraction correct (None entries skipped)."""
    right, total = Counter(), Counter()
    for image, scene in pairs:
        for attr, ok in check_image(image, scene).items():
            if ok is not None:
                total[attr] += 1
                right[attr] += bool(ok)
    return {attr: right[attr] / total[attr] for attr in total}


def test_scenes_captions_and_split():
    assert len(SCENES) == 3 * 6 * 5 * 2 + (3 * 6) * (3 * 5) * 4
    captions = [s.caption for s in SCENES]
    assert len(set(captions)) == len(captions)
    assert "a large red circle at the top" in captions
    assert "a red circle to the left of a blue square" in captions
    assert "an orange square above a green circle" in captions
    train = [s for s in SCENES if not s.held_out]
    held = [s for s in SCENES if s.held_out]
    seen_pairs = {(o.colour, o.shape) for s in train for o in s.objects}
    assert not seen_pairs & HELD_OUT_PAIRS  # held-out combinations never appear in training
    assert {(o.colour, o.shape) for s in held for o in s.objects} >= HELD_OUT_PAIRS
    # ...but each of their attributes does: the held-out split tests composition
    assert {o.colour for s in train for o in s.objects} == set(COLOURS)
    assert {o.shape for s in train for o in s.objects} == set(SHAPES)


@pytest.mark.parametrize("resolution", [32, 64])
def test_checker_on_ground_truth(resolution):
    acc = _accuracy((render_scene(s, resolution, seed=i), s) for i, s in enumerate(SCENES))
    assert set(acc) == {"count", "colour", "shape", "position", "size"}
    assert min(acc.values()) >= 0.99, acc


def test_checker_under_noise():
    rng = np.random.default_rng(0)

    def noisy(image, sigma):
        return np.clip(image + rng.normal(0, sigma, image.shape), 0, 255).astype(np.uint8)

    at64 = _accuracy((noisy(render_scene(s, 64, seed=i), 8), s) for i, s in enumerate(SCENES))
    assert min(at64.values()) >= 0.99, at64
    at32 = _accuracy((noisy(render_scene(s, 32, seed=i), 8), s) for i, s in enumerate(SCENES))
    assert at32["shape"] >= 0.9 and min(v for k, v in at32.items() if k != "shape") >= 0.99, at32


def _alter(scene: Scene, attr: str) -> Scene:
    """The same scene with one attribute of its first object changed (kept valid)."""
    first = scene.objects[0]
    others = scene.objects[1:]
    if attr == "shape":
        first = dataclasses.replace(first, shape=SHAPES[(SHAPES.index(first.shape) + 1) % 3])
    elif attr == "colour":
        used = {o.colour for o in scene.objects}
        first = dataclasses.replace(first, colour=next(c for c in COLOURS if c not in used))
    elif attr == "position":
        if scene.relation is not None:  # swap the two objects' places
            a, b = scene.objects
            return Scene(
                (dataclasses.replace(a, position=b.position), dataclasses.replace(b, position=a.position)),
                scene.relation,
            )
        names = list(POSITIONS)
        first = dataclasses.replace(first, position=names[(names.index(first.position) + 1) % len(names)])
    elif attr == "size":
        first = dataclasses.replace(first, size="large" if first.size == "small" else "small")
    elif attr == "count":
        return Scene(scene.objects[:1]) if scene.relation is not None else scene
    return Scene((first, *others), scene.relation)


@pytest.mark.parametrize("attr", ["shape", "colour", "position", "size", "count"])
def test_checker_catches_wrong_images(attr):
    """Render a scene with one attribute changed, check it against the original caption."""
    caught = total = 0
    for i, scene in enumerate(SCENES):
        if (attr == "size" and scene.relation is not None) or (attr == "count" and scene.relation is None):
            continue
        image = render_scene(_alter(scene, attr), 32, seed=i)
        total += 1
        caught += check_image(image, scene)[attr] is False
    assert total > 100 and caught / total >= 0.99


def test_dataset_items_are_deterministic_and_checkable():
    a = ShapesDataset("train", resolution=32, renders_per_scene=2, max_samples=20, seed=3)
    b = ShapesDataset("train", resolution=32, renders_per_scene=2, max_samples=20, seed=3)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    item = a[5]
    assert item["pixel_values"].shape == (3, 32, 32) and -1 <= item["pixel_values"].min() <= 1
    assert item["caption"] == a.scenes[5].caption and item["caption_id"] == caption_hash(item["caption"])
    assert not torch.equal(a.images[0], a.images[1])  # two jittered renders of one scene
    # the checker accepts the training tensor format too
    assert check_image(item["pixel_values"], a.scenes[5]) == check_image(a.images[5].numpy(), a.scenes[5])
    assert all(ShapesDataset("heldout", max_samples=30).scenes[i].held_out for i in range(30))
    with pytest.raises(ValueError, match="split"):
        ShapesDataset("validation")
    assert set(SIZES) == {"small", "large"}


def test_training_runs_on_shapes(tmp_path):
    from t2i_drift import DriftingPipeline
    from t2i_drift.training.config import load_config
    from t2i_drift.training.runs import train_t2i

    recipe = Path(__file__).parent.parent / "recipes" / "tiny_test.yaml"
    cfg = load_config(
        recipe,
        [
            "data.name=shapes",
            f"train.output_dir={tmp_path / 'run'}",
            "train.max_steps=1",
            "eval.sample_prompts=[a large red circle at the top]",
        ],
    )
    pipe = DriftingPipeline.from_pretrained(train_t2i(cfg))
    images = pipe("a blue square to the left of a red circle", output_type="np").images
    assert images.shape == (1, 16, 16, 3)


def test_evaluate_shapes_script(tmp_path):
    """On an untrained tiny pipeline: the script runs, generated accuracy is low, real renders ~1."""
    import json
    import subprocess
    import sys

    from helpers import tiny_pipeline

    pipe = tiny_pipeline(sample_size=32)
    pipe.save_pretrained(tmp_path / "pipe")
    script = Path(__file__).parent.parent / "scripts" / "evaluate_shapes.py"
    out = tmp_path / "m.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            "--model",
            str(tmp_path / "pipe"),
            "--max-scenes",
            "40",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["scenes"] == 40 and result["real_renders"]["all_attributes"] >= 0.97
    assert result["generated"]["all_attributes"] < 0.5


# ----------------------------------------------------------------------------------------------
#                          Under-specified captions (several scenes each)
# ----------------------------------------------------------------------------------------------
def test_captions_without_an_attribute_group_its_scenes():
    one = Scene((ShapeObject("circle", "red", "top", "large"),))
    objects = (ShapeObject("circle", "red", "left", "small"), ShapeObject("square", "blue", "right", "small"))
    two = Scene(objects, "to the left of")
    assert one.caption_without(["position"]) == "a large red circle"
    assert one.caption_without(["size"]) == "a red circle at the top"
    assert one.caption_without(["position", "size"]) == "a red circle"
    assert two.caption_without(["position"]) == "a red circle and a blue square"
    assert two.caption_without(["size"]) == two.caption  # two-object captions name no size
    with pytest.raises(ValueError, match="colour"):
        check_omit(["colour"])

    groups = caption_groups(SCENES, ["position"])
    sizes = Counter(len(g) for g in groups.values())
    assert sizes == {5: len(SHAPES) * len(COLOURS) * len(SIZES), 4: 18 * 15}  # positions; relations
    assert all(len({s.caption for s in g}) == len(g) for g in groups.values())  # distinct scenes
    assert len(caption_groups(SCENES, [])) == len(SCENES)
    both = caption_groups(SCENES, ["size", "position"])
    assert len(both["a red circle"]) == len(POSITIONS) * len(SIZES)

    data = ShapesDataset("train", resolution=16, renders_per_scene=2, omit=["position"])
    per_caption = Counter(data.captions)
    assert set(per_caption.values()) == {2 * 4, 2 * 5} and "a large red circle" in per_caption
    assert data.captions[0] == data.scenes[0].caption_without(["position"])
