"""VAE training (scripts/train_vae.py): an AutoencoderKL trained on the run's images exports as a
plain diffusers VAE whose scaling factor makes the data's latents unit-variance, and a latent
text-to-image run uses it."""

import json
import math
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from helpers import load_script, tiny_mae
from PIL import Image
from safetensors.torch import load_file

from t2i_drift import DriftingPipeline
from t2i_drift.eval import reconstruction
from t2i_drift.eval.reconstruction import psnr, reconstruction_report
from t2i_drift.models.vae import encode_latents, load_vae
from t2i_drift.training.config import ConfigError, load_config
from t2i_drift.training.objectives.vae import first_images, gaussian_kl, perceptual_distance
from t2i_drift.training.runs import train_t2i, train_vae
from t2i_drift.training.vae_config import load_vae_config

ROOT = Path(__file__).parent.parent
WEIGHTS = "diffusion_pytorch_model.safetensors"


def tiny_overrides(out: Path, *extra: str) -> list[str]:
    return [
        f"train.output_dir={out}",
        "data.name=shapes",
        "data.resolution=16",
        "data.max_samples=24",
        "model.block_out_channels=[8, 16]",
        "model.norm_num_groups=4",
        "train.batch_size=4",
        "train.max_steps=3",
        "train.log_every=1",
        "train.checkpointing_steps=1",
        "train.checkpoints_total_limit=null",
        "optim.warmup_steps=1",
        "export.scaling_images=16",
        *extra,
    ]


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.latent_chanels=4", "model.latent_chanels"),
        ("model.norm_num_groups=5", "model.norm_num_groups"),
        ("data.resolution=31", "data.resolution"),  # factor 2 (two blocks)
        ("loss.kl_weight=-1", "loss.kl_weight"),
        ("loss.reconstruction=l3", "loss.reconstruction"),
        ("export.scaling_images=1", "export.scaling_images"),
    ],
)
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_vae_config(None, [override])


def test_shipped_vae_recipes_load():
    recipes = sorted((ROOT / "recipes" / "vae").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        assert load_vae_config(recipe).train.max_steps > 0


def test_cli_bad_override_is_a_clear_error(capsys):
    module = load_script("train_vae")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["model.layers_per_block=0"])
    assert exit_info.value.code == 2 and "model.layers_per_block" in capsys.readouterr().err


def test_kl_is_diffusers_posterior_kl_per_element():
    moments = torch.randn(3, 8, 4, 4)
    posterior = DiagonalGaussianDistribution(moments)
    expected = posterior.kl() / (4 * 4 * 4)  # diffusers sums over C, H, W per sample
    torch.testing.assert_close(gaussian_kl(posterior.mean, posterior.logvar), expected.mean())


def test_perceptual_distance_is_zero_only_at_the_target():
    mae = tiny_mae()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert perceptual_distance(mae, x, x).item() == pytest.approx(0.0, abs=1e-6)
    far = perceptual_distance(mae, -x, x).item()
    near = perceptual_distance(mae, x + 0.01 * torch.randn_like(x), x).item()
    assert far > near > 0
    # a 16 px input is resized to the MAE's 32 px
    assert perceptual_distance(mae, x[..., ::2, ::2], x[..., ::2, ::2]).item() == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae_run")
    folder = train_vae(load_vae_config(None, tiny_overrides(out)))
    return out, folder


def test_export_is_a_plain_autoencoder_with_unit_variance_latents(vae_run):
    out, folder = vae_run
    assert folder == out / "vae" and (folder / WEIGHTS).is_file()
    assert json.loads((folder / "config.json").read_text())["_class_name"] == "AutoencoderKL"
    vae = load_vae(str(folder))
    assert type(vae) is AutoencoderKL and vae.config.shift_factor is None
    assert list(vae.config.block_out_channels) == [8, 16]
    cfg = load_vae_config(None, tiny_overrides(out))
    images = first_images(cfg, 16)
    assert images.shape == (16, 3, 16, 16)
    latents = encode_latents(vae, images)  # scaled by the exported factor
    assert latents.shape == (16, 4, 8, 8)
    assert latents.std().item() == pytest.approx(1.0, abs=1e-4)
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["scaling_factor"] == pytest.approx(vae.config.scaling_factor)
    assert summary["latent_shape"] == [4, 8, 8] and summary["measured_on_images"] == 16
    assert summary["reconstruction_psnr_db"] > 0
    assert Image.open(out / "reconstructions.png").size == (8 * 17 + 1, 2 * 17 + 1)  # 8 pairs, 1 px padding
    lines = [json.loads(x) for x in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3] and {"rec_loss", "kl"} <= lines[0].keys()
    assert not [p for p in out.rglob("*") if p.suffix in (".bin", ".pt", ".pkl", ".pth")]


def test_shift_centres_the_latents_and_resume_is_exact(vae_run, tmp_path):
    straight, _ = vae_run
    out = tmp_path / "resumed"
    train_vae(load_vae_config(None, tiny_overrides(out, "train.max_steps=2")))
    folder = train_vae(
        load_vae_config(None, tiny_overrides(out, "train.resume_from_checkpoint=latest", "export.shift=true"))
    )
    for name in (f"vae/{WEIGHTS}", "ema.safetensors", "optimizer.safetensors"):
        a = load_file(str(straight / "checkpoints" / "checkpoint-3" / name))
        b = load_file(str(out / "checkpoints" / "checkpoint-3" / name))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=f"{name}:{key}")
    vae = load_vae(str(folder))
    assert vae.config.shift_factor is not None
    latents = encode_latents(vae, first_images(load_vae_config(None, tiny_overrides(out)), 16))
    assert latents.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert latents.std().item() == pytest.approx(1.0, abs=1e-4)


def test_perceptual_mae_trains_and_a_bad_path_names_the_key(tmp_path):
    mae_dir = tmp_path / "mae"
    tiny_mae(sample_size=16).save_pretrained(mae_dir)
    out = tmp_path / "run"
    train_vae(
        load_vae_config(None, tiny_overrides(out, "train.max_steps=1", f"loss.perceptual_mae={mae_dir}"))
    )
    line = json.loads((out / "logs" / "metrics.jsonl").read_text().splitlines()[0])
    assert line["perceptual"] > 0
    with pytest.raises(ValueError, match="loss.perceptual_mae"):
        train_vae(
            load_vae_config(
                None,
                tiny_overrides(
                    tmp_path / "bad", "train.max_steps=1", f"loss.perceptual_mae={tmp_path / 'run'}"
                ),
            )
        )


def test_a_latent_drifting_run_trains_in_the_trained_vae(vae_run, tmp_path):
    _, folder = vae_run
    cfg = load_config(
        ROOT / "recipes" / "tiny_test.yaml",
        [
            f"model.vae={folder}",
            "model.patch_size=2",
            "features.effnet=null",
            "train.max_steps=1",
            f"train.output_dir={tmp_path / 'run'}",
        ],
    )
    pipe = DriftingPipeline.from_pretrained(train_t2i(cfg))
    assert pipe.vae.config.scaling_factor == pytest.approx(load_vae(str(folder)).config.scaling_factor)
    images = pipe("a red circle", output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 16, 16, 3)


def test_psnr_and_the_shapes_ceiling_score_the_reconstructions(monkeypatch):
    x = torch.zeros(2, 3, 4, 4)
    assert psnr(x + 0.02, x) == pytest.approx(10 * math.log10(4 / 0.0004))

    monkeypatch.setattr(reconstruction, "reconstruct", lambda vae, images: images)  # a perfect VAE
    perfect = reconstruction_report(None, "shapes", 32, max_images=12)
    assert perfect["train"]["all_attributes"] == 1.0 and perfect["heldout"]["all_attributes"] == 1.0
    assert perfect["train"]["images"] == 12 and perfect["train"]["psnr_db"] > 100
    # a decoder that mirrors left and right gets the positions of the reconstructions wrong
    monkeypatch.setattr(reconstruction, "reconstruct", lambda vae, images: images.flip(-1))
    mirrored = reconstruction_report(None, "shapes", 32, max_images=12)
    assert mirrored["train"]["position"] < 1.0 and mirrored["train"]["colour"] == 1.0


def test_openmoji_ceiling_reports_the_fd_of_the_reconstructions(monkeypatch):
    from t2i_drift.eval.frechet import EffNetLite0Embedder

    embedder = EffNetLite0Embedder()
    monkeypatch.setattr(reconstruction, "reconstruct", lambda vae, images: images)  # a perfect VAE
    perfect = reconstruction_report(None, "openmoji", 32, max_images=6, embedder=embedder)
    assert set(perfect) == {"train", "validation"} and perfect["validation"]["images"] == 6
    assert abs(perfect["train"]["fd_effnet"]) < 1e-3 and abs(perfect["validation"]["fd_effnet"]) < 1e-3
    # a decoder that outputs flat grey is far from the real emoji
    monkeypatch.setattr(reconstruction, "reconstruct", lambda vae, images: torch.zeros_like(images))
    grey = reconstruction_report(None, "openmoji", 32, max_images=6, embedder=embedder)
    assert grey["validation"]["fd_effnet"] > 10 and grey["train"]["psnr_db"] < perfect["train"]["psnr_db"]
    assert "fd_effnet" not in reconstruction_report(None, "openmoji", 32, max_images=6)["train"]


def test_evaluate_vae_script(vae_run, tmp_path, capsys):
    _, folder = vae_run
    module = load_script("evaluate_vae")
    out = tmp_path / "report.json"
    assert (
        module.main(["--vae", str(folder), "--resolution", "16", "--max-images", "4", "--out", str(out)]) == 0
    )
    report = json.loads(out.read_text())
    assert set(report["splits"]) == {"train", "heldout"} and report["splits"]["heldout"]["images"] == 4
    assert 0 <= report["splits"]["train"]["all_attributes"] <= 1
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--vae", str(folder), "--resolution", "15"])
    assert exit_info.value.code == 2 and "--resolution" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--vae", str(folder), "--data", "shapes", "--fd"])
    assert exit_info.value.code == 2 and "--fd" in capsys.readouterr().err
