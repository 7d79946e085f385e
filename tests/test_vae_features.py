"""The VAE encoder as drifting keys (t2i_drift/models/vae_features.py): its latent key is the
latent the pipeline would encode, its maps follow the diffusers encoder, gradients reach the
input, and the trainer wires it from ``features.vae`` with errors that name the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_vae

from t2i_drift.models.vae import encode_latents
from t2i_drift.models.vae_features import AutoencoderFeatures, autoencoder_map_names
from t2i_drift.training.builders import build_feature_encoder, feature_key_weights
from t2i_drift.training.config import ConfigError, load_config
from t2i_drift.training.runs import train_t2i

RECIPE = Path(__file__).parent.parent / "recipes" / "tiny_test.yaml"


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("vae") / "vae"
    tiny_vae(scaling_factor=0.7, shift_factor=0.05).save_pretrained(folder)
    return str(folder)


def test_latent_keys_are_the_scaled_latents_the_pipeline_encodes():
    vae = tiny_vae(scaling_factor=0.7, shift_factor=0.05)
    enc = AutoencoderFeatures(vae, maps=["latent"], flat=True)
    torch.manual_seed(0)
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    feats = enc(images)
    latents = encode_latents(vae, images)  # [3, 4, 8, 8]: (mode - shift) * scaling
    torch.testing.assert_close(feats["vae.latent/flat"], latents.flatten(1)[:, None])
    torch.testing.assert_close(feats["vae.latent/loc"], latents.flatten(2).transpose(1, 2))
    assert feats["vae.latent/mean2x2"].shape == (3, 16, 4)
    # The scaling and shift come from the config: another factor moves the key exactly as it says.
    other = AutoencoderFeatures(tiny_vae(scaling_factor=1.0, shift_factor=0.0), flat=True)(images)
    torch.testing.assert_close(feats["vae.latent/flat"], (other["vae.latent/flat"] - 0.05) * 0.7)


def test_maps_follow_the_encoder_and_stop_at_the_deepest_requested():
    vae = tiny_vae(scaling_factor=1.0, shift_factor=0.0)
    assert autoencoder_map_names(vae) == ["down0", "down1", "mid", "latent"]
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    maps = AutoencoderFeatures(vae, maps=["mid", "down0", "down1"]).feature_maps(images)
    assert list(maps) == ["down0", "down1", "mid"]  # shallow to deep
    with torch.no_grad():
        x = vae.encoder.conv_in(images)
        down0 = vae.encoder.down_blocks[0](x)
        mid = vae.encoder.mid_block(vae.encoder.down_blocks[1](down0))
    assert maps["down0"].shape == (2, 8, 8, 8)
    torch.testing.assert_close(maps["down0"], down0)
    torch.testing.assert_close(maps["mid"], mid)
    # Only the first block runs for down0 alone: the mid block is never called.
    calls = []
    handle = vae.encoder.mid_block.register_forward_hook(lambda *a: calls.append(1))
    AutoencoderFeatures(vae, maps=["down0"])(images)
    handle.remove()
    assert calls == []


def test_frozen_and_gradient_reaches_the_images():
    vae = tiny_vae(scaling_factor=0.7, shift_factor=0.0)
    vae.requires_grad_(True).train()  # the wrapper must freeze it
    enc = AutoencoderFeatures(vae, maps=["down1", "latent"], flat=True)
    assert not any(p.requires_grad for p in enc.parameters()) and not vae.training
    images = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_(True)
    sum(v.sum() for v in enc(images).values()).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in vae.parameters())


def test_bad_maps_and_inputs_are_value_errors_that_name_them():
    vae = tiny_vae(scaling_factor=1.0, shift_factor=0.0)
    with pytest.raises(ValueError, match=r"\['down7'\] unknown; this VAE has \['down0'"):
        AutoencoderFeatures(vae, maps=["down7"])
    with pytest.raises(ValueError, match="flat=True needs the 'latent' map"):
        AutoencoderFeatures(vae, maps=["mid"], flat=True)
    with pytest.raises(ValueError, match=r"images must be \[N, 3, H, W\], got \[2, 4, 8, 8\]"):
        AutoencoderFeatures(vae)(torch.zeros(2, 4, 8, 8))


def test_trainer_builds_it_from_the_config_with_its_weight_and_trains(vae_dir, tmp_path):
    overrides = [f"features.vae.path={vae_dir}", "features.vae.weight=0.5", "features.effnet=null"]
    cfg = load_config(RECIPE, overrides)
    feats = build_feature_encoder(cfg.features, cfg.data.resolution)(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert {"vae.latent/flat", "vae.latent/loc", "raw/flat"} <= set(feats)
    weights = feature_key_weights(cfg.features, list(feats))
    assert weights["vae.latent/flat"] == 0.5 and weights["raw/flat"] == 1.0
    run = tmp_path / "run"
    train_t2i(load_config(RECIPE, [*overrides, "train.max_steps=1", f"train.output_dir={run}"]))
    logged = json.loads((run / "logs" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "loss/vae.latent/flat" in logged


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["features.vae={}"], "features.vae.path"),
        (["features.vae.path=/nonexistent"], "features.vae.path='/nonexistent'"),
        (
            ["features.vae.path=VAE", "features.vae.maps=[up0, latent]"],
            r"features.vae.maps: .*\['up0'\] unknown",
        ),
        (["features.vae.path=VAE", "features.vae.maps=[mid]"], "features.vae.flat = True needs 'latent'"),
    ],
)
def test_config_errors_name_the_key(vae_dir, overrides, match):
    overrides = [o.replace("VAE", vae_dir) for o in overrides]
    with pytest.raises(ConfigError, match=match):
        cfg = load_config(RECIPE, overrides)
        build_feature_encoder(cfg.features, cfg.data.resolution)
