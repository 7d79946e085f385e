"""The trainer's feature config: MAE, hub backbone, EfficientNet on decoded latents and the raw
output combined in one loss, each key with its own weight and normalization; config errors name
the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_convnext_dir, tiny_mae, tiny_vae

from t2i_drift.drifting.feature_sets import lambda_groups
from t2i_drift.models.feature_encoders import DecodedLatentFeatures
from t2i_drift.models.vae import load_vae
from t2i_drift.training.builders import build_feature_encoder, feature_key_weights
from t2i_drift.training.config import ConfigError, load_config
from t2i_drift.training.runs import train_t2i

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
        f"features.mae.path={parts['mae_pixels']}",
        "features.mae.maps=[s2.out, s4.out]",
        "features.mae.weight=0.5",
        f"features.hub.name={parts['hub']}",
        "features.hub.out_features=[stage2]",
        "features.hub.input_size=32",
        "features.hub.weight=2.0",
        "features.raw.weight=0.25",
    ]
    cfg = load_config(RECIPE, overrides)
    encoder = build_feature_encoder(cfg.features, cfg.data.resolution)
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    feats = encoder(images)
    prefixes = {k.split("/")[0] for k in feats}
    assert {"effnet.b0", "effnet.b2", "mae.s2.out", "mae.s4.out", "hub.stage2", "raw"} <= prefixes
    assert {"effnet/input_rms", "mae/input_rms", "hub/input_rms", "raw/flat"} <= set(feats)
    weights = feature_key_weights(cfg.features, list(feats))
    assert weights["mae.s2.out/loc"] == 0.5 and weights["hub.stage2/mean"] == 2.0
    assert weights["effnet.b0/loc"] == 1.0 and weights["raw/flat"] == 0.25
    # One training step with all of them, through the real trainer.
    run = tmp_path / "run"
    train_t2i(load_config(RECIPE, [*overrides, "train.max_steps=1", f"train.output_dir={run}"]))
    logged = json.loads((run / "logs" / "metrics.jsonl").read_text().splitlines()[-1])
    assert any(k.startswith("mae.s4.out/") for k in logged) and any(
        k.startswith("hub.stage2/") for k in logged
    )


def test_official_feature_options_reach_the_encoders(parts):
    """features.mae.{stem, stage_norm, keep_single_cell_patches, input_rms_on_encoder_input} and
    features.hub.location_norm, from the config to the keys."""
    options = [
        f"features.mae.path={parts['mae_pixels']}",  # 16 px, stem 2: s4.out is a 1x1 map
        f"features.hub.name={parts['hub']}",
        "features.hub.input_size=32",
        "features.patch_sizes=[2]",
    ]
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    plain = build_feature_encoder(load_config(RECIPE, options).features, 16)(images)
    cfg = load_config(RECIPE, [
        *options, "features.mae.stem=true", "features.mae.stage_norm=true",
        "features.mae.keep_single_cell_patches=true", "features.mae.input_rms_on_encoder_input=true",
        "features.hub.location_norm=true",
    ])  # fmt: skip
    feats = build_feature_encoder(cfg.features, 16)(images)
    assert feats["mae.stem/loc"].shape == (2, 8 * 8, 8)
    assert feats["mae/input_rms"].shape == (2, 1, 12)  # 3 channels x 2 x 2 space-to-depth
    assert torch.equal(feats["mae.s2.b4/loc"], plain["mae.s2.out/loc"])  # raw copy; out is normed
    assert not torch.equal(feats["mae.s2.out/loc"], plain["mae.s2.out/loc"])
    assert "mae.s3.out/mean2x2" in feats and "mae.s3.out/mean2x2" not in plain  # 2x2 map, one cell
    hub = feats["hub.stage2/loc"]
    torch.testing.assert_close(hub, torch.nn.functional.layer_norm(plain["hub.stage2/loc"], (16,), eps=1e-6))


def test_latent_run_with_decoded_pixel_features_and_a_latent_mae(parts, tmp_path):
    overrides = [
        f"model.vae={parts['vae']}",
        "model.patch_size=2",
        f"features.mae.path={parts['mae_latents']}",
    ]
    cfg = load_config(RECIPE, overrides)
    vae = load_vae(cfg.model.vae)
    encoder = build_feature_encoder(cfg.features, cfg.data.resolution, vae)
    assert isinstance(encoder.encoders["decoded"], DecodedLatentFeatures)
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    feats = encoder(latents)
    assert any(k.startswith("effnet.") for k in feats) and any(k.startswith("mae.") for k in feats)
    assert feats["raw/flat"].shape == (2, 1, 4 * 8 * 8)
    sum(v.sum() for v in feats.values()).backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in encoder.parameters())
    run = tmp_path / "run"
    train_t2i(load_config(RECIPE, [*overrides, "train.max_steps=1", f"train.output_dir={run}"]))
    assert (run / "pipeline" / "model_index.json").is_file()


def test_mismatched_encoders_are_errors_that_name_the_key(parts):
    with pytest.raises(ValueError, match="features.mae.path=.*3-channel inputs.*latents of model.vae"):
        cfg = load_config(RECIPE, [f"model.vae={parts['vae']}", "features.effnet=null",
                                   f"features.mae.path={parts['mae_pixels']}"])  # fmt: skip
        build_feature_encoder(cfg.features, cfg.data.resolution, load_vae(cfg.model.vae))
    with pytest.raises(ValueError, match="features.mae.path='/nonexistent'"):
        cfg = load_config(RECIPE, ["features.mae.path=/nonexistent"])
        build_feature_encoder(cfg.features, cfg.data.resolution)
    with pytest.raises(ValueError, match="features.hub"):
        cfg = load_config(RECIPE, ["features.hub.name=/nonexistent"])
        build_feature_encoder(cfg.features, cfg.data.resolution)


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["features.mae={}"], "features.mae.path"),  # switched on without its folder
        (["features.hub={maps: [x]}"], "features.hub.maps"),  # unknown key of an encoder
        (["features.effnet.weight=-1"], "features.effnet.weight"),
        (["features.raw=null", "features.effnet=null"], "features"),  # no encoder left
        (["features.effnet=true"], "features.effnet"),  # the old flag form: a clear error
        (["model.text_attention=both"], "model.text_attention"),
        (["features.mae.path=m", "features.mae.stem=2"], "features.mae.stem"),
        (
            ["features.mae.path=m", "features.mae.stage_norm=true", "features.mae.maps=[s1.b2]"],
            "features.mae.stage_norm",
        ),  # no stage output to normalize
        (
            ["features.mae.path=m", "features.mae.keep_single_cell_patches=true", "features.patch_sizes=[]"],
            "features.mae.keep_single_cell_patches",
        ),  # no patch sets to keep
        (
            ["features.mae.path=m", "features.mae.input_rms_on_encoder_input=2"],
            "features.mae.input_rms_on_encoder_input",
        ),
        (["features.hub.name=h", "features.hub.location_norm=2"], "features.hub.location_norm"),
        (["features.patch_sizes=[1, 2]"], "features.patch_sizes"),  # 1: a constant std key
    ],
)
def test_feature_config_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_config(RECIPE, overrides)


def test_optional_sections_switch_on_with_defaults_and_off_with_null():
    cfg = load_config(None, ["features.effnet.weight=0.01", "features.raw=null"])
    assert cfg.features.effnet is not None and cfg.features.effnet.weight == 0.01
    assert cfg.features.effnet.blocks == [0, 2, 4, 10] and cfg.features.raw is None
    assert load_config(RECIPE, ["features.effnet=null"]).features.effnet is None
    assert load_config(None, ["model.text_attention=joint"]).model.text_attention == "joint"


def test_drop_keys_removes_matching_maps_and_sets_before_the_loss(parts, tmp_path):
    """features.drop_keys ablates feature maps or sets by pattern, in pixel and latent runs, and the
    trainer's logged keys follow."""
    options = [f"features.mae.path={parts['mae_pixels']}", "features.effnet=null"]
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    full = build_feature_encoder(load_config(RECIPE, options).features, 16)(images)
    cfg = load_config(RECIPE, [*options, 'features.drop_keys=[mae.s4.*, "*/loc"]'])
    kept = build_feature_encoder(cfg.features, 16)(images)
    assert set(kept) == {k for k in full if not k.startswith("mae.s4.") and not k.endswith("/loc")}
    assert "raw/flat" in kept and "mae.s2.out/mean2x2" in kept and "mae.s1.b2/loc" in full
    for key in kept:
        assert torch.equal(kept[key], full[key])
    latent = load_config(RECIPE, [f"model.vae={parts['vae']}", "model.patch_size=2",
                                  "features.drop_keys=[effnet.b0/*]"])  # fmt: skip
    feats = build_feature_encoder(latent.features, 16, load_vae(latent.model.vae))(torch.randn(2, 4, 8, 8))
    assert not any(k.startswith("effnet.b0/") for k in feats) and "effnet.b2/loc" in feats
    run = tmp_path / "run"
    train_t2i(load_config(RECIPE, [*options, "features.drop_keys=[mae*]", "train.max_steps=1",
                                   f"train.output_dir={run}"]))  # fmt: skip
    logged = json.loads((run / "logs" / "metrics.jsonl").read_text().splitlines()[-1])
    assert any(k.startswith("raw/flat") for k in logged)
    assert not any(k.startswith("mae") for k in logged)


def test_drop_keys_errors_name_the_key_before_training(parts):
    options = [f"features.mae.path={parts['mae_pixels']}", "features.effnet=null"]
    unmatched = r"features.drop_keys: 'mae.s9.\*' matches no feature key.*mae.s1.b2/loc"
    with pytest.raises(ValueError, match=unmatched):
        cfg = load_config(RECIPE, [*options, "features.drop_keys=[mae.s9.*]"])
        build_feature_encoder(cfg.features, 16)
    with pytest.raises(ValueError, match="features.drop_keys: .* drop every feature key"):
        cfg = load_config(RECIPE, [*options, "features.drop_keys=[mae*, raw/*]"])
        build_feature_encoder(cfg.features, 16)


def test_feature_errors_reach_the_command_line_as_usage_errors(tmp_path, capsys):
    """A feature key at fault is the CLI's exit 2 naming it, not a traceback from deep in training."""
    from t2i_drift.training.cli import run_training_cli

    argv = ["--config", str(RECIPE), "features.drop_keys=[nope]", f"train.output_dir={tmp_path / 'run'}"]
    with pytest.raises(SystemExit) as err:
        run_training_cli("doc", load_config, train_t2i, argv)
    message = capsys.readouterr().err.splitlines()[-1]
    assert err.value.code == 2 and "features.drop_keys: 'nope' matches no feature key" in message
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_field_norm_shares_lambda_over_a_map_or_an_encoder(parts, tmp_path):
    """drift.field_norm groups the trainer's keys by feature map or encoder; with one temperature a
    shared lambda leaves the group's loss terms summing to their number but no longer each 1."""
    options = [f"features.mae.path={parts['mae_pixels']}", "features.effnet=null"]
    feats = build_feature_encoder(load_config(RECIPE, options).features, 16)(torch.rand(2, 3, 16, 16))
    assert lambda_groups(feats, "key") is None
    by_map, by_encoder = lambda_groups(feats, "map"), lambda_groups(feats, "encoder")
    assert by_map["mae.s2.out/loc"] == by_map["mae.s2.out/std2x2"] == "mae.s2.out"
    assert by_map["mae/input_rms"] == "mae" and by_map["raw/flat"] == "raw"
    assert {by_encoder[k] for k in feats} == {"mae", "raw"}
    with pytest.raises(ValueError, match="one of key, map, encoder"):
        lambda_groups(feats, "layer")
    losses = {}
    for scope in ("key", "encoder"):
        run = tmp_path / scope
        train_t2i(load_config(RECIPE, [*options, f"drift.field_norm={scope}", "drift.temperatures=[0.05]",
                                       "train.max_steps=1", f"train.output_dir={run}"]))  # fmt: skip
        logged = json.loads((run / "logs" / "metrics.jsonl").read_text().splitlines()[-1])
        losses[scope] = [v for k, v in logged.items() if k.startswith("loss/mae")]
        assert logged["loss/raw/flat"] == pytest.approx(1.0, rel=1e-4)  # an encoder of its own
    # Each key its own lambda: every term is 1, or 0 where a key's field vanishes (below the clamp).
    assert len(losses["key"]) > 5 and all(
        v == pytest.approx(1.0, rel=1e-4) or v < 1e-6 for v in losses["key"]
    )
    shared = losses["encoder"]
    assert sum(shared) == pytest.approx(len(shared), rel=1e-4)
    assert max(shared) > 2 * min(shared)
