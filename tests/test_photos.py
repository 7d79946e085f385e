"""The photos set (t2i_drift/data/photos.py), its evaluation suite and the detail measure
(t2i_drift/eval/detail.py), and the mode-seeking probe on it (scripts/bench_mode_seeking.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import load_script, tiny_pipeline

from t2i_drift.data.photos import PHOTOS, PhotoCropsDataset, photo_crops
from t2i_drift.eval.detail import detail, detail_ratio
from t2i_drift.eval.suites import EvalSettings, PhotosSuite, evaluate_pipeline, headline
from t2i_drift.training.builders import build_in_memory_dataset
from t2i_drift.training.config import load_config


def test_crops_are_deterministic_in_range_and_differ_between_seeds():
    a = photo_crops(["grass", "cat"], 3, resolution=16, seed=0)
    assert a.shape == (2, 3, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    torch.testing.assert_close(a, photo_crops(["grass", "cat"], 3, resolution=16, seed=0))
    assert not torch.equal(a, photo_crops(["grass", "cat"], 3, resolution=16, seed=1))
    assert torch.equal(a[0, :, 0], a[0, :, 1]) and torch.equal(a[0, :, 0], a[0, :, 2])  # grey photo
    assert not torch.equal(a[1, :, 0], a[1, :, 1])  # the cat is in colour
    with pytest.raises(ValueError, match=r"unknown photo captions \['dog'\]"):
        photo_crops(["dog"], 1)
    with pytest.raises(ValueError, match="crop_fraction"):
        photo_crops(["cat"], 1, crop_fraction=0)


def test_dataset_splits_captions_and_the_config_name():
    train = PhotoCropsDataset("train", resolution=16, crops=4)
    val = PhotoCropsDataset("val", resolution=16, crops=2)
    assert len(train) == 4 * len(PHOTOS) and len(val) == 2 * len(PHOTOS)
    assert train.captions[:5] == ["brick wall"] * 4 + ["grass"]
    item = train[0]
    assert item["pixel_values"].shape == (3, 16, 16) and item["caption"] == "brick wall"
    assert not torch.equal(train[0]["pixel_values"], val[0]["pixel_values"])  # other crops
    with pytest.raises(ValueError, match="split"):
        PhotoCropsDataset("test")
    cfg = load_config("recipes/photos_32px.yaml", ["data.max_samples=20"])
    built = build_in_memory_dataset(cfg.data, seed=0)
    assert isinstance(built, PhotoCropsDataset) and len(built) == 20


def test_detail_is_high_for_texture_low_for_its_blur():
    crops = photo_crops(["gravel", "grass"], 4, resolution=32)  # [2, 4, 3, 32, 32]
    blurred = F.avg_pool2d(crops.flatten(0, 1), 5, stride=1, padding=2).unflatten(0, (2, 4))
    assert detail(crops).shape == (2, 4)
    assert detail_ratio(crops, crops) == pytest.approx(1.0)
    assert detail_ratio(blurred, crops) < 0.3
    assert detail_ratio(crops + 0.3 * torch.randn_like(crops), crops) > 1.5
    with pytest.raises(ValueError, match="same number of prompts"):
        detail_ratio(crops, crops[:1])


class StubEmbedder:
    """Pooled colour statistics in place of EfficientNet-Lite0: fast, deterministic."""

    def embed(self, images: torch.Tensor, desc: str = "") -> np.ndarray:
        pooled = F.adaptive_avg_pool2d(images, 2).flatten(1)
        return torch.cat([pooled, images.std((2, 3))], 1).double().numpy()


def test_photos_suite_scores_fd_subject_accuracy_detail_and_diversity():
    suite = PhotosSuite(16, EvalSettings(num=3, batch_size=64), StubEmbedder())
    ref = suite.reference
    assert ref["subjects"] == len(PHOTOS) and ref["images_per_subject"] == 3
    assert ref["fd_real_train_val"] > 0 and ref["subject_accuracy_real_val"] > ref["subject_chance"]
    assert ref["diversity"]["within_prompt"]["pixel_rms"] > 0
    (run,) = evaluate_pipeline(tiny_pipeline(16), suite, [1], progress=False)["runs"]
    assert run["images"] == 3 * len(PHOTOS) and run["fd_gen_val"] > 0
    assert 0 <= run["subject_accuracy"] <= 1 and run["detail"] > 0
    assert "subject" in headline("photos", run) and "detail" in headline("photos", run)


def test_mode_seeking_probe_on_photos_reports_landing_and_detail(capsys):
    module = load_script("bench_mode_seeking")
    argv = [
        "--data",
        "photos",
        "--captions",
        "2",
        "--samples",
        "2",
        "--steps",
        "4",
        "--variant",
        "a:positives=2",
    ]
    assert module.main([*argv, "--space", "effnet+raw"]) == 0
    out = capsys.readouterr().out
    assert "2 photo subjects x 20 crops" in out and "| variant | step | landed | distinct | detail |" in out
    first = next(line for line in out.splitlines() if line.startswith("| a | 0 |"))
    assert len(first.split("|")) == 9  # variant, step, landed, distinct, detail, to mean, to nearest
    assert "a, step 4, per subject" in out and "| subject | mean / nn | landed |" in out
    assert "| grass |" in out and "| gravel |" not in out
    # textures: the mean crop is nearer to every crop than the crops are to each other
    ratio = module.mean_over_neighbour(photo_crops(["gravel", "astronaut"], 20))
    assert ratio[0] < 1 < ratio[1] * 2 and ratio[0] < ratio[1]
    for bad, word in ((["--captions", "15"], "--captions"), (["--vae", "x"], "--vae")):
        with pytest.raises(SystemExit) as err:
            module.main(["--data", "photos", *bad])
        assert err.value.code == 2 and f"argument {word}" in capsys.readouterr().err


def test_model_card_names_the_photographs_source():
    from t2i_drift.model_card import _dataset

    description, attribution, hub_ids = _dataset({"name": "photos"})
    assert "scikit-image" in description and "skimage.data" in attribution and hub_ids is None
