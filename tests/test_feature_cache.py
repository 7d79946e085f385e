"""scripts/cache_features.py: shards of precomputed text embeddings, VAE latents and positive
features that the trainer reads transparently, and refuses (falls back) when stale."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from helpers import run_python, tiny_vae

from t2i_drift.data.webdataset import WebDatasetImageText
from t2i_drift.models.vae import encode_latents, load_vae
from t2i_drift.training.batch_inputs import BatchInputs, producers
from t2i_drift.training.builders import build_feature_encoder, build_text_conditioner
from t2i_drift.training.cache_features import META_FILE, cache_features
from t2i_drift.training.config import load_config
from t2i_drift.training.runs import train_t2i

RECIPE = Path(__file__).parent.parent / "recipes" / "tiny_test.yaml"
BASE = ["data.max_samples=10", "features.effnet=null", "train.batch_size=4"]


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae")
    tiny_vae(scaling_factor=0.7, shift_factor=0.05).save_pretrained(path)
    return path


def _inputs(cfg, shards: str) -> tuple[BatchInputs, dict, object]:
    conditioner = build_text_conditioner(cfg.text)
    vae = load_vae(cfg.model.vae) if cfg.model.vae else None
    features = build_feature_encoder(cfg.features, cfg.data.resolution, vae)
    inputs = BatchInputs(
        conditioner,
        vae,
        torch.device("cpu"),
        expected_meta=lambda: producers(conditioner, vae, cfg.data.resolution, (cfg.features, features)),
    )
    source = WebDatasetImageText(shards, batch_size=4, resolution=cfg.data.resolution, shuffle_buffer=0)
    return inputs, next(iter(source)), (conditioner, vae, features)


def test_cached_latent_shards_match_fresh_encoding_and_train(vae_dir, tmp_path):
    overrides = [*BASE, f"model.vae={vae_dir}", "model.patch_size=2"]
    cfg = load_config(RECIPE, overrides)
    out = tmp_path / "cache"
    summary = cache_features(cfg, out, shard_size=4, batch_size=3, include_features=True, progress=False)
    shards = sorted(p.name for p in out.glob("shard-*.tar"))
    assert summary["samples"] == 10 and shards == [f"shard-000-{i:06d}.tar" for i in range(3)]
    meta = json.loads((out / META_FILE).read_text())
    assert meta["samples"] == 10 and meta["vae_key"] and meta["features_key"]

    inputs, batch, (conditioner, vae, features) = _inputs(cfg, f"{out}/shard-000-{{000000..000002}}.tar")
    assert {"embeds", "mask", "pooled", "latents", "feat/raw/flat"} <= set(batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # cached tensors must be accepted, not re-encoded
        step = inputs(batch)
    fresh = conditioner.encode(batch["caption"])
    T = fresh.mask.shape[1]
    torch.testing.assert_close(step.text.embeds[:, :T], fresh.embeds)
    assert not step.text.mask[:, T:].any() and torch.equal(step.text.mask[:, :T].bool(), fresh.mask.bool())
    torch.testing.assert_close(step.text.pooled, fresh.pooled)
    torch.testing.assert_close(step.real, encode_latents(vae, batch["pixel_values"]))
    torch.testing.assert_close(step.real_features["raw/flat"], features(step.real)["raw/flat"])

    run = tmp_path / "run"
    train_t2i(
        load_config(
            RECIPE,
            [
                *overrides,
                "data.name=webdataset",
                f"data.path={out}/shard-000-{{000000..000002}}.tar",
                "train.max_steps=2",
                f"train.output_dir={run}",
            ],
        )
    )
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["steps"] == 2 and summary["data_skipped"]["counts"] == {}


def test_stale_cache_falls_back_to_encoding_with_a_warning(tmp_path):
    cfg = load_config(RECIPE, BASE)
    out = tmp_path / "cache"
    cache_features(cfg, out, shard_size=100, progress=False)
    other = load_config(RECIPE, [*BASE, "text.max_length=8"])  # a different text encoder setting
    inputs, batch, (conditioner, _, _) = _inputs(other, f"{out}/shard-000-000000.tar")
    with pytest.warns(UserWarning, match="cached \\['text'\\] were produced by a different"):
        step = inputs(batch)
    fresh = conditioner.encode(batch["caption"])
    assert step.text.embeds.shape == fresh.embeds.shape  # re-encoded at max_length 8
    torch.testing.assert_close(step.text.embeds, fresh.embeds)

    # A second cache into the same folder is refused; --overwrite replaces only the cache's own
    # files (stale shards would otherwise be mixed in by a brace pattern).
    with pytest.raises(ValueError, match="already holds a feature cache.*--overwrite"):
        cache_features(cfg, out, shard_size=100, progress=False)
    (out / "notes.txt").write_text("mine")
    (out / "shard-000-000099.tar").write_bytes(b"stale")
    cache_features(other, out, shard_size=100, progress=False, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and not (out / "shard-000-000099.tar").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.csv").write_text("x")
    with pytest.raises(ValueError, match="is not empty and holds no cache_meta.json"):
        cache_features(cfg, foreign, overwrite=True, progress=False)


def test_pixel_run_needs_images_and_cli_errors(tmp_path):
    cfg = load_config(RECIPE, BASE)
    with pytest.raises(ValueError, match="--no_images needs model.vae"):
        cache_features(cfg, tmp_path / "x", include_images=False, progress=False)
    out = run_python(
        f"""
        import sys
        sys.argv = ["cache_features.py", "--config", "{RECIPE}", "--out_dir", "{tmp_path / "cli"}",
                    "--shard_size", "0"]
        sys.path.insert(0, "{Path(__file__).parent.parent / "scripts"}")
        import cache_features
        try:
            cache_features.main()
        except SystemExit as e:
            print("exit", e.code)
        """
    )
    assert "exit 2" in out
