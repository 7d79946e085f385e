"""Latent-space training: a diffusers AutoencoderKL (tiny, random) turns the positives into scaled
latents, the generator outputs latents, and the exported pipeline decodes them."""

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from helpers import tiny_vae

from t2i_drift import DriftingPipeline
from t2i_drift.models.vae import decode_latents, encode_latents, vae_scale_factor
from t2i_drift.training.config import load_config
from t2i_drift.training.runs import train_t2i

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
            "features.effnet=null",
            "train.max_steps=1",
            f"train.output_dir={tmp_path / 'run'}",
        ],
    )
    pipe = DriftingPipeline.from_pretrained(train_t2i(cfg))
    assert pipe.vae is not None and pipe.vae_scale_factor == 2
    assert pipe.transformer.config.in_channels == 4 and pipe.transformer.config.sample_size == 8
    latents = pipe("teapot", output_type="latent", generator=torch.Generator().manual_seed(0)).images
    images = pipe("teapot", output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert latents.shape == (1, 4, 8, 8) and images.shape == (1, 16, 16, 3)


def test_one_set_of_vae_conventions_for_trainer_and_pipeline(vae_dir):
    """decode_latents inverts encode_latents' scaling, and the pipeline decodes exactly so."""
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    assert vae_scale_factor(vae) == 2 and vae_scale_factor(None) == 1
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = vae.decode(vae.encode(pixels).latent_dist.mode()).sample
        torch.testing.assert_close(decode_latents(vae, encode_latents(vae, pixels)), expected)
