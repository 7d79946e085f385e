"""ResNetMAE (the paper's feature encoder), its trainer, and MAEFeatures (docs/method.md section 4)."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_mae, tiny_vae
from safetensors.torch import load_file

from t2i_drift.drifting import input_rms, map_feature_sets
from t2i_drift.models import MAEFeatures, ResNetMAE
from t2i_drift.models.mae_resnet import masked_mse
from t2i_drift.training.checkpoint import list_checkpoints
from t2i_drift.training.config import ConfigError
from t2i_drift.training.mae_config import load_mae_config
from t2i_drift.training.objectives.mae import MAE_PRETRAINED_SUBDIR, MAE_SUBDIR
from t2i_drift.training.runs import train_mae

ROOT = Path(__file__).parent.parent
WEIGHTS = "diffusion_pytorch_model.safetensors"
PAPER_MAPS = ["s1.b2", "s1.out", "s2.b2", "s2.out", "s3.b2", "s3.b4", "s3.out", "s4.b2", "s4.out"]


# ----------------------------------------------------------------------------------------------
#                                          model
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, size, side",
    [
        (dict(in_channels=3, sample_size=32, stem_patch_size=2), 32, 16),  # pixels, patchify stem
        (dict(in_channels=4, sample_size=8, stem_patch_size=1), 8, 8),  # VAE latents
    ],
)
def test_feature_maps_are_every_second_block_and_each_stage_output(kwargs, size, side):
    model = tiny_mae(**kwargs)
    assert model.feature_map_names == PAPER_MAPS
    maps = model.feature_maps(torch.randn(2, kwargs["in_channels"], size, size))
    assert list(maps) == PAPER_MAPS
    for name, fmap in maps.items():
        stage = int(name[1])
        s = side // 2 ** (stage - 1)
        assert fmap.shape == (2, 8 * 2 ** (stage - 1), s, s), name
    # b2 of stage 1 is an intermediate map, not the stage output
    assert not torch.equal(maps["s1.b2"], maps["s1.out"])
    deep = model.feature_maps(torch.randn(1, kwargs["in_channels"], size, size), ["s2.out"])
    assert list(deep) == ["s2.out"]
    with pytest.raises(ValueError, match="s9.out"):
        model.feature_maps(torch.randn(1, kwargs["in_channels"], size, size), ["s9.out"])


@pytest.mark.parametrize("in_channels, stem, size", [(3, 2, 32), (4, 1, 8)])
def test_mask_is_exactly_half_of_aligned_patches(in_channels, stem, size):
    model = tiny_mae(in_channels=in_channels, stem_patch_size=stem, sample_size=size)
    cell = 2 * stem  # mask_patch_size=2 stem cells
    g = size // cell
    mask = model.random_mask(6, size, size, generator=torch.Generator().manual_seed(1))
    assert mask.shape == (6, 1, size, size)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    blocks = mask.view(6, g, cell, g, cell)
    assert torch.equal(blocks.amax(dim=(2, 4)), blocks.amin(dim=(2, 4)))  # constant per aligned patch
    assert (blocks[:, :, 0, :, 0].sum(dim=(1, 2)) == g * g // 2).all()  # exactly 50% of patches
    assert not torch.equal(mask[0], mask[1])  # a fresh draw per image
    again = model.random_mask(6, size, size, generator=torch.Generator().manual_seed(1))
    assert torch.equal(mask, again)


def test_loss_counts_only_masked_cells():
    model = tiny_mae()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mask = model.random_mask(2, 32, 32, generator=torch.Generator().manual_seed(0))
    out = model(x, mask=mask)
    torch.testing.assert_close(out.loss, masked_mse(out.reconstruction, x, mask))
    # The encoder never sees masked content: changing it leaves the prediction unchanged ...
    out2 = model(x + 0.5 * torch.randn_like(x) * mask, mask=mask)
    torch.testing.assert_close(out2.reconstruction, out.reconstruction, rtol=0, atol=0)
    # ... and predictions on visible cells do not enter the loss (zero gradient there).
    pred = out.reconstruction.detach().requires_grad_(True)
    masked_mse(pred, x, mask).backward()
    assert pred.grad[(mask == 0).expand_as(pred)].abs().max() == 0
    assert pred.grad[(mask == 1).expand_as(pred)].abs().min() > 0
    shifted = pred.detach() + 3.0 * (1 - mask)  # change visible predictions only
    torch.testing.assert_close(masked_mse(shifted, x, mask), out.loss)


def test_input_noise_corrupts_the_encoder_input_and_not_the_target():
    """augment.noise_std: the encoder sees sample + noise, the loss compares with the clean sample."""
    model = tiny_mae()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    noise = 0.3 * torch.randn_like(x)
    mask = model.random_mask(2, 32, 32, generator=torch.Generator().manual_seed(0))
    out = model(x, mask=mask, input_noise=noise)
    on_noisy = model(x + noise, mask=mask)
    torch.testing.assert_close(out.reconstruction, on_noisy.reconstruction)
    torch.testing.assert_close(out.loss, masked_mse(out.reconstruction, x, mask))
    assert not torch.allclose(out.loss, on_noisy.loss)  # that one's target is the noisy input


def test_classification_head_and_config_errors():
    model = tiny_mae(num_classes=5)
    x = torch.randn(3, 3, 32, 32)
    assert model.classify(x).shape == (3, 5)
    out = model(x, generator=torch.Generator().manual_seed(0), classify=True)
    torch.testing.assert_close(out.logits, model.classify(x))
    with pytest.raises(ValueError, match="num_classes=0"):
        tiny_mae().classify(x)
    with pytest.raises(ValueError, match="norm_num_groups=3"):
        ResNetMAE(width=8, norm_num_groups=3)
    with pytest.raises(ValueError, match="mask_ratio"):
        ResNetMAE(width=8, norm_num_groups=4, mask_ratio=1.0)


def test_save_pretrained_round_trip(tmp_path):
    import t2i_drift  # registers ResNetMAE eagerly (DESIGN.md: loaders resolve via sys.modules)

    assert t2i_drift.ResNetMAE is ResNetMAE
    model = tiny_mae(num_classes=3, depths=(1, 2, 2, 1))
    model.save_pretrained(tmp_path / "mae")
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".bin", ".pt", ".pkl", ".pth")]
    loaded = ResNetMAE.from_pretrained(tmp_path / "mae").eval()
    assert list(loaded.config.depths) == [1, 2, 2, 1] and loaded.config.num_classes == 3
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    x = torch.randn(2, 3, 32, 32)
    for name, fmap in model.feature_maps(x).items():
        torch.testing.assert_close(loaded.feature_maps(x)[name], fmap, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
#                                   frozen feature encoder
# ----------------------------------------------------------------------------------------------


def test_mae_features_are_frozen_but_pass_gradients_to_the_input():
    enc = MAEFeatures(tiny_mae(), maps=["s1.b2", "s2.out", "s4.out"], patch_sizes=(2, 4))
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    assert not any(p.requires_grad for p in enc.parameters())
    x = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_(True)  # resized to the MAE's 32 px
    feats = enc(x)
    assert feats["mae/input_rms"].shape == (2, 1, 3)
    assert feats["mae.s1.b2/loc"].shape == (2, 16 * 16, 8)
    assert feats["mae.s1.b2/mean4x4"].shape == (2, 16, 8)
    assert feats["mae.s2.out/std2x2"].shape == (2, 16, 16)
    assert feats["mae.s4.out/mean"].shape == (2, 1, 64)
    assert not any(k.startswith("mae.s3") for k in feats)
    sum(f.sum() for f in feats.values()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.parameters())
    with pytest.raises(ValueError, match="4 channels"):
        enc(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="s5.out"):
        MAEFeatures(tiny_mae(), maps=["s5.out"])


def test_mae_features_on_latents_keep_their_size():
    model = tiny_mae(in_channels=4, stem_patch_size=1, sample_size=8)
    feats = MAEFeatures(model, per_location=False, prefix="lat")(torch.randn(2, 4, 8, 8))
    assert "lat.s1.out/loc" not in feats
    assert feats["lat.s1.out/mean2x2"].shape == (2, 16, 8)  # 8x8 map: no resize happened
    assert feats["lat/input_rms"].shape == (2, 1, 4)


def test_stem_map_and_the_encoder_input_as_space_to_depth():
    model = tiny_mae()  # pixels, stem_patch_size 2
    x = torch.randn(2, 3, 32, 32)
    assert model.feature_map_names == PAPER_MAPS  # the stem is asked for, never a default map
    maps = model.feature_maps(x, ["s1.out", "stem"])
    assert list(maps) == ["stem", "s1.out"]  # shallow to deep
    torch.testing.assert_close(maps["stem"], model.stem(x), rtol=0, atol=0)
    assert list(model.feature_maps(x, ["stem"])) == ["stem"]  # runs no stage
    s2d = model.encoder_input(x)
    assert s2d.shape == (2, 12, 16, 16)
    torch.testing.assert_close(s2d[:, 1 * 4 + 1 * 2 + 0], x[:, 1, 1::2, 0::2], rtol=0, atol=0)
    # The patchify stem conv is a 1x1 conv of the space-to-depth input.
    conv = model.stem[0]
    as_1x1 = F.conv2d(s2d, conv.weight.reshape(conv.out_channels, 12, 1, 1))
    torch.testing.assert_close(as_1x1, conv(x), rtol=1e-5, atol=1e-5)
    z = torch.randn(2, 4, 8, 8)
    assert tiny_mae(in_channels=4, stem_patch_size=1, sample_size=8).encoder_input(z) is z


def test_mae_features_by_default_are_the_paper_sets_bit_for_bit():
    """Every official-release option off: exactly the keys and values of the paper's maps."""
    model = tiny_mae()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    feats = MAEFeatures(model)(x)
    expected = {"mae/input_rms": input_rms(x)}
    for name, fmap in model.feature_maps(x).items():
        expected.update(map_feature_sets(fmap, f"mae.{name}", (2, 4)))
    assert list(feats) == list(expected)
    assert all(torch.equal(feats[k], expected[k]) for k in expected)


OFFICIAL_MAPS = ["stem", "s1.b2", "s1.out", "s2.b2", "s2.b4", "s2.out", "s3.b2", "s3.b4", "s3.b6",
                 "s3.out", "s4.b2", "s4.out"]  # fmt: skip


def test_official_options_give_the_releases_12_maps_and_85_keys():
    """The paper's setting (32x32 latents, stride-1 stem, depths [3, 4, 6, 3]) with stem,
    stage_norm and the single-cell patch sets: 12 maps x 7 sets + the input RMS = 85 keys."""
    model = tiny_mae(in_channels=4, sample_size=32, stem_patch_size=1)
    z = torch.randn(2, 4, 32, 32)
    plain = MAEFeatures(model)(z)
    feats = MAEFeatures(model, stem=True, stage_norm=True, keep_single_cell_patches=True)(z)
    assert [k.split("/")[0] for k in feats if k.endswith("/loc")] == [f"mae.{m}" for m in OFFICIAL_MAPS]
    assert len(feats) == 85
    assert feats["mae.s4.out/mean4x4"].shape == (2, 1, 64)  # the deepest maps' 1x1 sets
    torch.testing.assert_close(feats["mae.stem/loc"], model.stem(z).flatten(2).transpose(1, 2))
    # Stage outputs are GroupNorm'd (4 groups of 2 channels: mean 0, variance 1 over each group);
    # the raw last block of an even-depth stage keeps today's stage-output values.
    loc = feats["mae.s2.out/loc"]  # [N, L, 16]
    groups = loc.reshape(2, loc.shape[1], 4, 4).transpose(1, 2).flatten(2)  # [N, 4 groups, L*4]
    torch.testing.assert_close(groups.mean(-1), torch.zeros(2, 4), rtol=0, atol=1e-4)
    torch.testing.assert_close(groups.var(-1, unbiased=False), torch.ones(2, 4), rtol=0, atol=1e-3)
    assert torch.equal(feats["mae.s2.b4/loc"], plain["mae.s2.out/loc"])
    assert "mae.s1.b3/loc" not in feats and "mae.s4.b3/loc" not in feats  # odd depth: no copy
    # The normalization is parameter-free: the checkpoint is unchanged.
    assert set(MAEFeatures(model, stage_norm=True).state_dict()) == set(MAEFeatures(model).state_dict())


def test_input_rms_on_the_encoder_input_is_per_space_to_depth_channel():
    model = tiny_mae()  # pixels, stem_patch_size 2: 3 * 2 * 2 = 12 channels reach the stem
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    rms = MAEFeatures(model, input_rms_on_encoder_input=True)(x)["mae/input_rms"]
    assert rms.shape == (2, 1, 12)
    torch.testing.assert_close(rms, input_rms(F.pixel_unshuffle(x, 2)))
    assert MAEFeatures(model)(x)["mae/input_rms"].shape == (2, 1, 3)


# ----------------------------------------------------------------------------------------------
#                                     config and training
# ----------------------------------------------------------------------------------------------


def tiny_overrides(out: Path, *extra: str) -> list[str]:
    return [
        f"train.output_dir={out}",
        "data.name=shapes",
        "data.resolution=16",
        "data.max_samples=16",
        "model.width=8",
        "model.norm_num_groups=4",
        "model.depths=[1, 2, 1, 1]",
        "train.batch_size=4",
        "train.log_every=1",
        "train.checkpointing_steps=1",
        "train.checkpoints_total_limit=null",
        "optim.warmup_steps=2",
        *extra,
    ]


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.widht=8", "model.widht"),
        ("finetune.steps=1.5", "finetune.steps"),
        ("model.mask_ratio=1.5", "model.mask_ratio"),
        ("model.norm_num_groups=5", "model.norm_num_groups"),
        ("data.resolution=30", "data.resolution"),
        ("data.name=webdataset", "data.path"),  # any source works; shards need a path
        ("augment.crop_scale=[0.5, 0.2]", "augment.crop_scale"),
        ("augment.noise_std=-0.1", "augment.noise_std"),
    ],
)
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_mae_config(None, [override])


def test_shipped_mae_recipes_load(tmp_path):
    recipes = sorted((ROOT / "recipes" / "mae").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        assert load_mae_config(recipe).train.max_steps > 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  mask_ratoi: 0.5\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*model\.mask_ratoi"):
        load_mae_config(bad)


def test_cli_bad_override_is_a_clear_error(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_mae", ROOT / "scripts" / "train_mae.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["model.mask_ratio=2"])
    assert exit_info.value.code == 2 and "model.mask_ratio" in capsys.readouterr().err


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """2 pretraining + 2 fine-tune steps (shapes has labels) in one go."""
    out = tmp_path_factory.mktemp("mae_straight")
    train_mae(load_mae_config(None, tiny_overrides(out, "train.max_steps=2", "finetune.steps=2")))
    return out


def test_train_mae_writes_checkpoints_logs_and_a_loadable_model(straight_run):
    lines = [json.loads(line) for line in (straight_run / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    assert [x["phase"] for x in lines] == ["pretrain", "pretrain", "finetune", "finetune"]
    assert "ce_loss" in lines[-1] and "ce_loss" not in lines[0]
    assert lines[2]["lr"] == pytest.approx(2e-4)  # finetune.learning_rate from the boundary on
    assert [p.name for p in list_checkpoints(straight_run / "checkpoints")] == [
        f"checkpoint-{i}" for i in (1, 2, 3, 4)
    ]
    assert (straight_run / "checkpoints" / "checkpoint-4" / "mae" / WEIGHTS).is_file()
    assert (straight_run / MAE_PRETRAINED_SUBDIR / WEIGHTS).is_file()
    assert not [p for p in straight_run.rglob("*") if p.suffix in (".bin", ".pt", ".pkl", ".pth")]
    enc = MAEFeatures(straight_run)  # the run folder resolves to its mae/ subfolder
    assert enc.model.config.num_classes == 18 and enc.model.config.sample_size == 16
    feats = enc(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert enc.maps == ["s1.out", "s2.out", "s3.out", "s4.out"]  # depths [1, 2, 1, 1]: outputs only
    assert feats["mae.s2.out/loc"].shape == (2, 4 * 4, 16)
    assert all(torch.isfinite(v).all() for v in feats.values())


def test_resume_continues_exactly_across_the_finetune_boundary(straight_run, tmp_path):
    """4 steps straight == 3 steps (the phase switch included), stop, resume, 1 more step."""
    out = tmp_path / "resumed"
    train_mae(load_mae_config(None, tiny_overrides(out, "train.max_steps=2", "finetune.steps=1")))
    train_mae(
        load_mae_config(
            None,
            tiny_overrides(
                out, "train.max_steps=2", "finetune.steps=2", "train.resume_from_checkpoint=latest"
            ),
        )
    )
    for name in (f"mae/{WEIGHTS}", "ema.safetensors", "optimizer.safetensors"):
        straight = load_file(str(straight_run / "checkpoints" / "checkpoint-4" / name))
        resumed = load_file(str(out / "checkpoints" / "checkpoint-4" / name))
        assert straight.keys() == resumed.keys()
        for key in straight:
            torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=f"{name}:{key}")
    final_a = load_file(str(straight_run / MAE_SUBDIR / WEIGHTS))
    final_b = load_file(str(out / MAE_SUBDIR / WEIGHTS))
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    online = load_file(str(straight_run / "checkpoints" / "checkpoint-4" / "mae" / WEIGHTS))
    assert any(not torch.equal(online[k], final_a[k]) for k in online)  # EMA != online: can fail


@pytest.fixture
def fresh_accelerator_state():
    """Accelerate keeps one process-wide state whose precision cannot change once set (earlier
    tests set "no"): start this test from a clean one and leave a clean one behind."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_mixed_precision_trains_through_the_finetune(tmp_path, fresh_accelerator_state):
    """Accelerate's autocast wrapper rebuilds the model's output from a dict of its fields."""
    cfg = load_mae_config(
        None,
        tiny_overrides(tmp_path, "train.max_steps=1", "finetune.steps=1", "train.mixed_precision=bf16"),
    )
    enc = MAEFeatures(train_mae(cfg))
    assert enc.model.config.num_classes == 18
    lines = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [x["phase"] for x in lines] == ["pretrain", "finetune"]
    assert all(math.isfinite(x["loss"]) for x in lines)


def test_latent_space_mae_trains_on_vae_latents(tmp_path):
    vae_dir = tmp_path / "vae"
    tiny_vae(scaling_factor=0.7, shift_factor=0.05).save_pretrained(vae_dir)
    cfg = load_mae_config(
        None,
        tiny_overrides(
            tmp_path / "run", f"model.vae={vae_dir}", "model.stem_patch_size=1", "train.max_steps=1"
        ),
    )
    enc = MAEFeatures(train_mae(cfg))
    assert enc.model.config.in_channels == 4 and enc.model.config.sample_size == 8
    assert enc.model.config.num_classes == 0  # finetune.steps=0: no head
    feats = enc(torch.randn(2, 4, 8, 8))
    assert feats["mae.s1.out/loc"].shape == (2, 64, 8)


def test_batch_augment_is_per_image_seeded_and_leaves_the_global_generator_alone():
    from t2i_drift.data.augment import BatchAugment

    images = torch.rand(16, 3, 8, 8)
    flip_only = BatchAugment(8, crop_scale=(1.0, 1.0), hflip=True)
    state = torch.random.get_rng_state()
    out = flip_only(images, torch.Generator().manual_seed(0))
    assert torch.equal(torch.random.get_rng_state(), state)
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and 0 < sum(flipped) < 16  # per image
    assert torch.equal(out, flip_only(images, torch.Generator().manual_seed(0)))
    crops = BatchAugment(8, crop_scale=(0.2, 0.5), hflip=False)(images, torch.Generator().manual_seed(1))
    assert crops.shape == images.shape and not torch.allclose(crops, images)
    with pytest.raises(ValueError, match="crop scale"):
        BatchAugment(8, crop_scale=(0.0, 1.0))


def test_batch_augment_views_equal_torchvision_crops_of_their_boxes():
    """One batched resample gives, per image, torchvision's resized_crop of the drawn box (then the
    flip); boxes follow RandomResizedCrop's ranges: area fraction in crop_scale, aspect in 3/4..4/3."""
    from torchvision.transforms.v2 import functional as TF

    from t2i_drift.data.augment import BatchAugment

    images = torch.rand(32, 3, 16, 16)
    augment = BatchAugment(16, crop_scale=(0.2, 0.6), hflip=True)
    out = augment(images, torch.Generator().manual_seed(5))
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(5)))
    g = torch.Generator().manual_seed(seed)
    boxes = augment.boxes(32, 16, 16, g)
    flips = torch.rand(32, generator=g) < 0.5
    assert 0 < int(flips.sum()) < 32
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert ((w * h / 256 > 0.12) & (w * h / 256 < 0.7)).all()  # 0.2-0.6 up to rounding of the sides
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 16).all()
    for k in range(32):
        x1, y1, x2, y2 = boxes[k].tolist()
        ref = TF.resized_crop(images[k], y1, x1, y2 - y1, x2 - x1, [16, 16], antialias=True)
        torch.testing.assert_close(out[k], ref.flip(-1) if flips[k] else ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "augment",
    [
        ("augment.crop_scale=[0.3, 1.0]",),
        ("augment.crop_scale=[1.0, 1.0]", "augment.hflip=false", "augment.noise_std=0.3"),  # noise alone
    ],
    ids=["crop", "noise"],
)
def test_augmented_mae_training_changes_the_loss_and_resumes_exactly(straight_run, tmp_path, augment):
    """augment.* on: other reconstruction losses than the plain run, and 2 steps straight equal a
    1-step run resumed with train.max_steps=2 (the views and the input noise follow the run's
    checkpointed generator; the resumed run's schedule, not the saved optimizer's rate, sets step 2's
    learning rate)."""
    augment = (*augment, "finetune.steps=0")
    straight = tmp_path / "straight"
    train_mae(load_mae_config(None, tiny_overrides(straight, "train.max_steps=2", *augment)))
    resumed = tmp_path / "resumed"
    train_mae(load_mae_config(None, tiny_overrides(resumed, "train.max_steps=1", *augment)))
    train_mae(
        load_mae_config(
            None,
            tiny_overrides(resumed, "train.max_steps=2", "train.resume_from_checkpoint=latest", *augment),
        )
    )
    a = load_file(str(straight / "checkpoints" / "checkpoint-2" / "mae" / WEIGHTS))
    b = load_file(str(resumed / "checkpoints" / "checkpoint-2" / "mae" / WEIGHTS))
    assert all(torch.equal(a[k], b[k]) for k in a)

    def losses(run):
        lines = (run / "logs" / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["rec_loss"] for line in lines]

    assert losses(straight)[0] != losses(straight_run)[0]  # same seed and batch, other views
    if "augment.noise_std=0.3" in augment:  # the noise itself, not the view settings, changes it
        quiet = tmp_path / "quiet"
        without = tuple(a for a in augment if not a.startswith("augment.noise_std"))
        train_mae(load_mae_config(None, tiny_overrides(quiet, "train.max_steps=1", *without)))
        assert losses(straight)[0] != losses(quiet)[0]
