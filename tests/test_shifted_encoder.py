"""features.random_shift (t2i_drift/models/shifted_encoder.py): the encoders but raw see each step's
images translated by one offset drawn from (seed, step); through the builder, the trainer, the
identity probe and its script; refused where it cannot apply."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_mae, tiny_vae
from test_identity_probe import _real

from t2i_drift.eval.identity_probe import identity_probe
from t2i_drift.models import MultiFeatureEncoder, RawFeatures
from t2i_drift.models.shifted_encoder import ShiftedEncoder, set_shift, shift_images, shift_offset
from t2i_drift.models.vae import load_vae
from t2i_drift.training.builders import build_feature_encoder
from t2i_drift.training.config import ConfigError, load_config

ROOT = Path(__file__).parent.parent
RECIPE = ROOT / "recipes" / "tiny_test.yaml"


class _CellMeans(torch.nn.Module):
    """Per-location means of 4x4 cells on a fixed grid: blind to everything inside a cell."""

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"cells/mean": F.avg_pool2d(images, 4).flatten(2).transpose(1, 2)}  # [N, HW/16, C]


def test_shift_moves_the_content_and_replicates_the_edge():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = shift_images(x, (1, -1))  # down one row, left one column
    assert torch.equal(y[0, 0, 1:, :3], x[0, 0, :3, 1:])
    assert torch.equal(y[0, 0, 0, :3], x[0, 0, 0, 1:])  # the top row repeats
    assert torch.equal(y[0, 0, :, 3], y[0, 0, :, 2])  # the right column repeats
    assert shift_images(x, (0, 0)) is x
    with pytest.raises(ValueError, match="smaller than the input 4x4"):
        shift_images(x, (4, 0))


def test_offsets_depend_on_seed_and_step_only_and_cover_the_range():
    draws = [shift_offset(2, seed=0, step=s) for s in range(400)]
    assert draws == [shift_offset(2, seed=0, step=s) for s in range(400)]
    assert set(draws) == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    assert draws != [shift_offset(2, seed=1, step=s) for s in range(400)]
    assert shift_offset(0, seed=0, step=3) == (0, 0)
    with pytest.raises(ValueError, match="max_shift"):
        shift_offset(-1, seed=0, step=0)


def test_set_shift_reaches_nested_and_compiled_encoders():
    inner = ShiftedEncoder(_CellMeans())
    encoder = MultiFeatureEncoder({"cells": inner, "raw": RawFeatures()})
    assert set_shift(encoder, (1, 2)) == 1 and inner.offset == (1, 2)
    images = torch.randn(2, 3, 8, 8)
    feats = encoder(images)
    assert torch.equal(feats["cells/mean"], _CellMeans()(shift_images(images, (1, 2)))["cells/mean"])
    assert torch.equal(feats["raw/flat"], images.flatten(1)[:, None])  # the raw key is never shifted

    class _Compiled(torch.nn.Module):  # what torch.compile returns keeps the module as _orig_mod
        def __init__(self, module):
            super().__init__()
            self._orig_mod = module

    assert set_shift(_Compiled(encoder), (0, -1)) == 1 and inner.offset == (0, -1)


def test_a_shift_shows_a_grid_blind_space_what_lies_inside_its_cells():
    """Matching 4x4 cell means on one grid leaves each cell's inside at its mean (the free pixels
    stop at a blocky copy); at a new offset every step the means of overlapping cells pin it down."""
    real = _real()  # [8, 3, 16, 16]
    fixed = identity_probe(_CellMeans(), real, "feat-mse", steps=120, samples=2, lr=0.05)
    shifted = identity_probe(
        ShiftedEncoder(_CellMeans()), real, "feat-mse", steps=120, samples=2, lr=0.05, shift=2
    )
    blocky = F.interpolate(F.avg_pool2d(real, 4), scale_factor=4)  # the best a fixed grid can do
    floor = (blocky - real).pow(2).mean().item()
    assert fixed.rows[-1][1] == pytest.approx(floor, rel=0.05)
    assert shifted.rows[-1][1] < 0.6 * floor
    with pytest.raises(ValueError, match="needs a ShiftedEncoder"):
        identity_probe(_CellMeans(), real, "feat-mse", steps=1, samples=2, shift=2)


def test_builder_wraps_every_encoder_but_raw_and_config_errors_name_the_key(tmp_path):
    tiny_mae(sample_size=16).save_pretrained(tmp_path / "mae")
    cfg = load_config(RECIPE, [f"features.mae.path={tmp_path / 'mae'}", "features.random_shift=2"])
    encoder = build_feature_encoder(cfg.features, cfg.data.resolution)
    assert set_shift(encoder, (0, 0)) == 2  # effnet and mae; raw stays bare
    assert isinstance(encoder.encoders["raw"], RawFeatures)
    with pytest.raises(ConfigError, match="features.random_shift"):
        load_config(RECIPE, ["features.random_shift=-1"])
    with pytest.raises(ConfigError, match="features.random_shift.*none is configured"):
        load_config(RECIPE, ["features.random_shift=1", "features.effnet=null"])
    # A latent run: the pixel encoders are shifted in decoded pixels, behind the VAE decoder.
    tiny_vae(scaling_factor=0.7, shift_factor=0.05).save_pretrained(tmp_path / "vae")
    latent = load_config(
        RECIPE, [f"model.vae={tmp_path / 'vae'}", "model.patch_size=2", "features.random_shift=2"]
    )
    encoder = build_feature_encoder(latent.features, 16, load_vae(latent.model.vae))
    decoded = encoder.encoders["decoded"]
    assert set_shift(decoded.pixel_encoder, (0, 0)) == 1 and set_shift(encoder, (1, 1)) == 1
    with pytest.raises(ConfigError, match="features.random_shift=16 must be smaller"):
        build_feature_encoder(load_config(RECIPE, ["features.random_shift=16"]).features, 16)


def test_positives_features_are_not_cached_with_a_shift(tmp_path):
    from t2i_drift.training.cache_features import cache_features

    cfg = load_config(RECIPE, ["features.random_shift=1"])
    with pytest.raises(ValueError, match="features.random_shift=1: .* cannot be cached"):
        cache_features(cfg, tmp_path / "cache", include_features=True)
    assert not (tmp_path / "cache").exists()


def test_probe_script_refuses_shift_with_a_config():
    spec = importlib.util.spec_from_file_location("probe", ROOT / "scripts" / "bench_feature_identity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit):
        module.main(["--config", str(RECIPE), "--shift", "2"])


@pytest.mark.parametrize("objective", ["drifting", "regression"])
def test_trainer_shifts_the_encoders_by_each_steps_offset(objective, tmp_path, monkeypatch):
    """Every step sets its (seed, step) offset on the run's shifted encoders before encoding, in
    drifting and in feature-space regression."""
    import importlib

    module = importlib.import_module(f"t2i_drift.training.objectives.{objective}")
    calls = []

    def recording_set_shift(encoder, offset):
        calls.append((offset, set_shift(encoder, offset)))
        return calls[-1][1]

    monkeypatch.setattr(module, "set_shift", recording_set_shift)
    from t2i_drift.training.runs import train_t2i

    options = ["features.random_shift=2", "train.max_steps=3", "train.seed=5", f"train.output_dir={tmp_path}"]
    if objective == "regression":
        options += ["objective.name=regression", "objective.regression_space=features"]
    train_t2i(load_config(RECIPE, options))
    assert calls == [(shift_offset(2, seed=5, step=s), 1) for s in range(3)]
