"""Latent-space training: a diffusers AutoencoderKL (tiny, random) turns the positives into scaled
latents, the generator outputs latents, and the exported pipeline decodes them."""

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from helpers import tiny_vae

from t2i_drift import DriftingPipeline
from t2i_drift.training.builders import encode_latents
from t2i_drift.training.config import ConfigError, load_config
from t2i_drift.training.trainer import train

RECIPE = Path(__file__).parent.parent / "recipes" / "tiny_test.yaml"


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    vae = tiny_vae(scaling_factor=0.7, shift_factor=0.05)
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return path


def test_encode_latents_inverts_the_pipeline_decode_scaling(vae_dir):
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    latents = encode_latents(vae, pixels)
    raw = vae.encode(pixels).latent_dist.mode()
    torch.testing.assert_close(latents / 0.7 + 0.05, raw)  # what DriftingPipeline feeds the decoder


def test_training_in_latent_space_exports_a_decoding_pipeline(vae_dir, tmp_path):
    cfg = load_config(
        RECIPE,
        [
            f"model.vae={vae_dir}",
            "model.patch_size=2",
            "features.effnet=false",
            "train.max_steps=1",
            f"train.output_dir={tmp_path / 'run'}",
        ],
    )
    pipe = DriftingPipeline.from_pretrained(train(cfg))
    assert pipe.vae is not None and pipe.vae_scale_factor == 2
    assert pipe.transformer.config.in_channels == 4 and pipe.transformer.config.sample_size == 8
    latents = pipe("teapot", output_type="latent", generator=torch.Generator().manual_seed(0)).images
    images = pipe("teapot", output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert latents.shape == (1, 4, 8, 8) and images.shape == (1, 16, 16, 3)


def test_effnet_features_need_pixels(vae_dir):
    with pytest.raises(ConfigError, match="features.effnet"):
        load_config(RECIPE, [f"model.vae={vae_dir}"])  # tiny_test.yaml turns effnet on
