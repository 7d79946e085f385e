"""Linear probes of frozen encoders (t2i_drift/eval/linear_probe.py) and scripts/probe_encoder.py."""

import json

import pytest
import torch
from helpers import load_script, tiny_mae

from t2i_drift.eval.linear_probe import accuracy, fit_linear_probe, pooled_maps


def _blobs(n: int, seed: int, informative: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes in 5 dimensions: one coordinate set by the class (when informative), four of
    noise on a scale that dwarfs it, plus a constant feature that must not break the fit."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.cat([torch.randn(n, 4, generator=g) * 100, torch.randn(n, 1, generator=g) * 0.1], dim=1)
    if informative:
        x[:, 4] += y.double()  # separable along a low-variance axis: standardization matters
    return torch.cat([x, torch.full((n, 1), 7.0)], dim=1), y


def test_probe_reads_a_separable_class_and_not_an_absent_one():
    x, y = _blobs(600, seed=0, informative=True)
    xt, yt = _blobs(300, seed=1, informative=True)
    probe = fit_linear_probe(x, y, num_classes=3)
    assert accuracy(probe, xt, yt) > 0.95
    x, y = _blobs(600, seed=0, informative=False)
    xt, yt = _blobs(300, seed=1, informative=False)
    assert accuracy(fit_linear_probe(x, y, num_classes=3), xt, yt) < 0.5  # chance: 1/3


def test_probe_rejects_labels_outside_the_classes():
    x, y = _blobs(10, seed=0, informative=True)
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        fit_linear_probe(x, y + 1, num_classes=2)
    with pytest.raises(ValueError, match=r"need x \[N, D\]"):
        fit_linear_probe(x[:, 0], y, num_classes=3)


def test_pooled_maps_are_the_stage_means_and_their_concatenation():
    mae = tiny_mae()
    images = torch.randn(5, 3, 32, 32)
    feats = pooled_maps(mae, images, batch_size=2)  # three chunks: 2 + 2 + 1
    maps = mae.feature_maps(images, ["s1.out", "s4.out"])
    torch.testing.assert_close(feats["s1.out"], maps["s1.out"].mean((2, 3)))
    torch.testing.assert_close(feats["s4.out"], maps["s4.out"].mean((2, 3)))
    assert list(feats) == ["s1.out", "s2.out", "s3.out", "s4.out", "all"]
    assert feats["all"].shape == (5, 8 + 16 + 32 + 64)


def test_probe_script_reports_pixels_and_each_encoder(tmp_path, capsys):
    """A saved MAE (as an MAE run's folder) and an untrained one: five feature sets x two targets
    each, after the pixel baseline; colour is linearly readable from pixels of one-object scenes."""
    tiny_mae().save_pretrained(tmp_path / "run" / "mae")
    out = tmp_path / "probe.json"
    args = ["--mae", str(tmp_path / "run"), "--random-width", "8", "--renders", "1"]
    assert load_script("probe_encoder").main([*args, "--json", str(out), "--device", "cpu"]) == 0
    rows = json.loads(out.read_text())
    assert [r["encoder"] for r in rows] == ["pixels"] * 2 + [str(tmp_path / "run")] * 10 + [
        "untrained width 8"
    ] * 10
    colour = next(r for r in rows if r["encoder"] == "pixels" and r["target"] == "colour")
    assert colour["train_renders"] > 0.9 and colour["dim"] == 3 * 32 * 32
    assert "held-out" in capsys.readouterr().out


def test_probe_script_rejects_a_folder_without_an_mae(tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_script("probe_encoder").main(["--mae", str(tmp_path)])
    assert f"--mae {tmp_path}: no ResNetMAE" in capsys.readouterr().err
