"""Built-in OpenMoji data: real rendered emoji, deterministic caption-hash split."""

import torch

from t2i_drift.data import OpenMojiDataset, is_validation_caption, openmoji_items


def test_items_are_unique_captions_in_plain_words():
    items = openmoji_items()
    captions = [it.caption for it in items]
    assert len(items) > 3900
    assert len(set(captions)) == len(captions)
    assert "teapot" in captions
    assert all(":" not in c[:1] and "_" not in c for c in captions)


def test_validation_split_is_deterministic_disjoint_and_about_five_percent():
    train = OpenMojiDataset("train", resolution=16)
    val = OpenMojiDataset("validation", resolution=16)
    assert not set(train.captions) & set(val.captions)
    frac = len(val) / (len(train) + len(val))
    assert 0.04 < frac < 0.06
    assert all(is_validation_caption(c, 0.05) for c in val.captions)
    assert OpenMojiDataset("validation", resolution=16).captions == val.captions


def test_images_are_rendered_colour_emoji_in_minus_one_one():
    ds = OpenMojiDataset("train", resolution=32, max_samples=64)
    item = ds[ds.captions.index("1st place medal")] if "1st place medal" in ds.captions else ds[0]
    x = item["pixel_values"]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    # white background in the corners, colourful content in the middle
    assert torch.all(x[:, 0, 0] > 0.9)
    centre = x[:, 8:24, 8:24]
    assert centre.std() > 0.2
    assert (centre.max(0).values - centre.min(0).values).max() > 0.5  # saturated colour somewhere
