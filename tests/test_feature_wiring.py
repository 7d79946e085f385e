"""The trainer's feature config: MAE, hub backbone, EfficientNet on decoded latents and the raw
output combined in one loss, each key with its own weight and normalization; config errors name
the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_convnext_dir, tiny_mae, tiny_vae

from t2i_drift.models.feature_encoders import DecodedLatentFeatures
from t2i_drift.training.builders import build_feature_encoder, feature_key_weights, load_vae
from t2i_drift.training.config import ConfigError, load_config
from t2i_drift.training.trainer import train

RECIPE = Path(__file__).parent.parent / "recipes" / "tiny_test.yaml"


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    tiny_mae(sample_size=16).save_pretrained(root / "mae_pixels")
    tiny_mae(in_channels=4, sample_size=8, stem_patch_size=1).save_pretrained(root / "mae_latents")
    tiny_vae(scaling_factor=0.7, shift_factor=0.05).save_pretrained(root / "vae")
    return {
        "mae_pixels": str(root / "mae_pixels"),
        "mae_latents": str(root / "mae_latents"),
        "vae": str(root / "vae"),
        "hub": tiny_convnext_dir(root / "convnext"),
    }


def test_all_encoders_in_one_pixel_loss_with_per_encoder_weights(parts, tmp_path):
    overrides = [
        f"features.mae={parts['mae_pixels']}",
        "features.mae_maps=[s2.out, s4.out]",
        "features.mae_weight=0.5",
        f"features.hub={parts['hub']}",
        "features.hub_out_features=[stage2]",
        "features.hub_input_size=32",
        "features.hub_weight=2.0",
    ]
    cfg = load_config(RECIPE, overrides)
    encoder = build_feature_encoder(cfg)
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    feats = encoder(images)
    prefixes = {k.split("/")[0] for k in feats}
    assert {"effnet.b0", "effnet.b2", "mae.s2.out", "mae.s4.out", "hub.stage2", "raw"} <= prefixes
    assert {"effnet/input_rms", "mae/input_rms", "hub/input_rms", "raw/flat"} <= set(feats)
    weights = feature_key_weights(cfg, list(feats))
    assert weights["mae.s2.out/loc"] == 0.5 and weights["hub.stage2/mean"] == 2.0
    assert weights["effnet.b0/loc"] == 1.0 and weights["raw/flat"] == 1.0
    # One training step with all of them, through the real trainer.
    run = tmp_path / "run"
    train(load_config(RECIPE, [*overrides, "train.max_steps=1", f"train.output_dir={run}"]))
    logged = json.loads((run / "logs" / "metrics.jsonl").read_text().splitlines()[-1])
    assert any(k.startswith("mae.s4.out/") for k in logged) and any(
        k.startswith("hub.stage2/") for k in logged
    )


def test_latent_run_with_decoded_pixel_features_and_a_latent_mae(parts, tmp_path):
    overrides = [
        f"model.vae={parts['vae']}",
        "model.patch_size=2",
        "features.decode_latents=true",
        f"features.mae={parts['mae_latents']}",
    ]
    cfg = load_config(RECIPE, overrides)
    vae = load_vae(cfg)
    encoder = build_feature_encoder(cfg, vae)
    assert isinstance(encoder.encoders["decoded"], DecodedLatentFeatures)
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    feats = encoder(latents)
    assert any(k.startswith("effnet.") for k in feats) and any(k.startswith("mae.") for k in feats)
    assert feats["raw/flat"].shape == (2, 1, 4 * 8 * 8)
    sum(v.sum() for v in feats.values()).backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in encoder.parameters())
    run = tmp_path / "run"
    train(load_config(RECIPE, [*overrides, "train.max_steps=1", f"train.output_dir={run}"]))
    assert (run / "pipeline" / "model_index.json").is_file()


def test_mismatched_encoders_are_errors_that_name_the_key(parts):
    with pytest.raises(ValueError, match="features.mae=.*3-channel inputs.*latents of model.vae"):
        cfg = load_config(RECIPE, [f"model.vae={parts['vae']}", "features.effnet=false",
                                   f"features.mae={parts['mae_pixels']}"])  # fmt: skip
        build_feature_encoder(cfg, load_vae(cfg))
    with pytest.raises(ValueError, match="features.mae='/nonexistent'"):
        build_feature_encoder(load_config(RECIPE, ["features.mae=/nonexistent"]))
    with pytest.raises(ValueError, match="features.hub"):
        build_feature_encoder(load_config(RECIPE, ["features.hub=/nonexistent"]))
    with pytest.raises(ConfigError, match="features.hub .*decode_latents"):
        load_config(
            RECIPE, [f"model.vae={parts['vae']}", "features.effnet=false", f"features.hub={parts['hub']}"]
        )
    with pytest.raises(ConfigError, match="features.decode_latents .*needs model.vae"):
        load_config(RECIPE, ["features.decode_latents=true"])
