"""The free-pixel identity probe (t2i_drift/eval/identity_probe.py) and its script."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from t2i_drift.data import ShapesDataset
from t2i_drift.eval.identity_probe import contrast_blindness, identity_probe
from t2i_drift.models import RawFeatures

ROOT = Path(__file__).parent.parent


class _MeanColour(torch.nn.Module):
    """A feature space that sees only each image's mean colour: it cannot tell images apart."""

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"colour/mean": images.mean((2, 3))[:, None]}  # [N, 1, C]


def _real() -> torch.Tensor:
    data = ShapesDataset("train", resolution=16, renders_per_scene=1, max_samples=40)
    return torch.stack([data[i]["pixel_values"] for i in range(0, 40, 5)])  # [8, 3, 16, 16]


def test_probe_passes_a_space_that_sees_the_image_and_fails_one_that_does_not():
    real = _real()
    sees = identity_probe(RawFeatures(), real, "feat-mse", steps=60, samples=2)
    blind = identity_probe(_MeanColour(), real, "feat-mse", steps=60, samples=2)
    assert [row[0] for row in sees.rows] == [0, 15, 30, 45, 60]
    assert sees.passed and sees.rows[-1][1] < 0.1 * sees.rows[0][1]
    assert not blind.passed
    assert sees.grad0 > 0 and blind.grad0 > 0


def test_probe_takes_extra_positives_for_the_drift():
    real = _real()
    result = identity_probe(RawFeatures(), real, "drift", steps=4, samples=2, extra_positives=real[:, None])
    assert len(result.rows) == 5 and all(torch.isfinite(torch.tensor(r)).all() for r in result.rows)


def _script():
    spec = importlib.util.spec_from_file_location("probe", ROOT / "scripts" / "bench_feature_identity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_probe_script_runs_a_recipes_feature_space(tmp_path, capsys):
    """--config builds the recipe's encoder and data; --require-pass turns a failed drift row into
    exit 1; the JSON has one entry per row."""
    out = tmp_path / "probe.json"
    args = ["--config", str(ROOT / "recipes" / "shapes_32px.yaml"), "data.max_samples=40", "--steps", "2"]
    args += ["--images", "4", "--samples", "2", "--losses", "drift", "--json", str(out), "--require-pass"]
    assert _script().main(args) == 1  # two steps move nothing: the drift row fails
    rows = json.loads(out.read_text())
    assert [(r["space"], r["loss"], r["passed"]) for r in rows] == [("shapes_32px", "drift", False)]
    assert "FAIL" in capsys.readouterr().out


def test_self_masked_drift_pushes_the_samples_of_one_positive_apart():
    """docs/method.md section 7: with one positive per image and its samples left out of their own
    negatives, the raw drift pushes the free samples away from the image without bound; keeping
    each sample among its own negatives brings them onto it."""
    from t2i_drift.drifting import DriftOptions

    real = _real()
    masked = identity_probe(RawFeatures(), real, "drift", steps=100, samples=4)
    kept = identity_probe(
        RawFeatures(), real, "drift", steps=100, samples=4, options=DriftOptions(mask_self=False)
    )
    assert masked.rows[-1][1] > 2 * masked.rows[0][1] and not masked.passed
    assert kept.rows[-1][1] < 0.1 * kept.rows[0][1] and kept.passed


def test_log_mse_probe_loss_divides_each_keys_gradient_by_its_error():
    """feat-log-mse is sum_k log(MSE_k): its gradient is sum_k grad(MSE_k) / MSE_k, whatever a
    key's units (the regression the single-positive drift reduces to at the floor)."""
    from t2i_drift.eval.identity_probe import _loss

    torch.manual_seed(0)
    real = {"a": torch.randn(3, 4, 5), "b": 1000.0 * torch.randn(3, 1, 2)}
    x = torch.randn(6, 4, 5, requires_grad=True)  # two samples per image

    def feats(scale_b: float) -> dict[str, torch.Tensor]:
        return {"a": x, "b": scale_b * x[:, :1, :2]}

    (grad,) = torch.autograd.grad(_loss("feat-log-mse", feats(1000.0), real, 2, None, None), x)
    expected = torch.zeros_like(x)
    for k, f in feats(1000.0).items():
        mse = ((f.view(3, 2, *f.shape[1:]) - real[k][:, None]) ** 2).mean()
        expected += torch.autograd.grad(mse, x)[0] / mse.detach()
    torch.testing.assert_close(grad, expected)
    scaled = {"a": real["a"], "b": real["b"] / 1000.0}
    (unit,) = torch.autograd.grad(_loss("feat-log-mse", feats(1.0), scaled, 2, None, None), x)
    torch.testing.assert_close(grad, unit)


class _TwoKeys(torch.nn.Module):
    """One encoder with two keys of very different residuals: the image and its mean colour."""

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"enc.a/flat": images.flatten(1)[:, None], "enc.b/mean": images.mean((2, 3))[:, None]}


def test_probe_field_norm_shares_lambda_over_an_encoders_keys():
    """field_norm="encoder" changes the drift's path where an encoder's keys differ in residual;
    a single key is unaffected; the script refuses --field-norm with --config (a recipe sets it)."""
    real = _real()
    own = identity_probe(_TwoKeys(), real, "drift", steps=4, samples=2)
    shared = identity_probe(_TwoKeys(), real, "drift", steps=4, samples=2, field_norm="encoder")
    assert own.rows[-1] != shared.rows[-1] and own.grad0 != shared.grad0
    single = [
        identity_probe(RawFeatures(), real, "drift", steps=2, samples=2, field_norm=f)
        for f in ("key", "encoder")
    ]
    assert single[0].rows == single[1].rows
    args = ["--config", str(ROOT / "recipes" / "shapes_32px.yaml"), "--field-norm", "encoder"]
    with pytest.raises(SystemExit):
        _script().main(args)


def test_normalized_gradient_descent_keeps_the_direction_at_a_fixed_step_length():
    """One step moves the tensor by lr in RMS along minus its gradient, whatever the gradient's size;
    the probe passes the raw space with it and names a wrong optimizer."""
    from t2i_drift.eval.identity_probe import NormalizedGradientDescent

    x = torch.zeros(4, 8, requires_grad=True)
    x.grad = torch.randn(4, 8) * 1e-5
    NormalizedGradientDescent([x], lr=0.1).step()
    assert x.detach().pow(2).mean().sqrt().item() == pytest.approx(0.1, rel=1e-5)
    cosine = torch.nn.functional.cosine_similarity(x.detach().flatten(), -x.grad.flatten(), dim=0)
    assert cosine.item() == pytest.approx(1.0, abs=1e-6)
    result = identity_probe(
        RawFeatures(), _real(), "feat-mse", steps=60, samples=2, optimizer="normalized-gd"
    )
    assert result.passed
    with pytest.raises(ValueError, match="adam, normalized-gd"):
        identity_probe(RawFeatures(), _real(), "feat-mse", steps=1, samples=2, optimizer="sgd")


def test_probe_script_two_positives_reports_where_samples_end_and_draws_them(tmp_path, capsys):
    """--two-positives: in the raw space, samples kept among their own negatives end at the pixel
    mean of their two positives (the affinity floor makes the field the mean's pull); --grid writes
    the images, the other images and one sample row per space."""
    grid = tmp_path / "probe.png"
    args = ["--data", "shapes", "--spaces", "raw", "--keep-self", "--two-positives", "--losses", "drift"]
    assert (
        _script().main([*args, "--steps", "100", "--images", "4", "--samples", "2", "--grid", str(grid)]) == 0
    )
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("raw"))
    to_mean = float(line.split("to their mean ")[1].split(",")[0])
    nearer = float(line.split("to the nearer ")[1])
    assert to_mean < 0.1 * nearer
    from PIL import Image

    assert Image.open(grid).size == (4 * (32 * 4 + 2) + 2, 3 * (32 * 4 + 2) + 2)  # 3 rows of 4, padding 2
    with pytest.raises(SystemExit):
        _script().main([*args, "--require-pass"])


def test_contrast_blindness_finds_the_mae_blind_to_contrast_and_raw_not(tmp_path, capsys):
    """A GroupNorm right after the MAE's linear stem makes every map invariant to scaling the
    image: only the input-RMS key sees a faded copy; the raw key and a space without that norm do."""
    from helpers import tiny_mae

    from t2i_drift.models import MAEFeatures

    real = _real()
    mae = contrast_blindness(MAEFeatures(tiny_mae(sample_size=16)), real, scale=0.5)
    assert mae["mae/input_rms"] > 0.1
    assert max(v for k, v in mae.items() if k != "mae/input_rms") < 1e-6
    assert contrast_blindness(RawFeatures(), real)["raw/flat"] > 0.1
    assert contrast_blindness(_MeanColour(), real)["colour/mean"] > 0.1
    with pytest.raises(ValueError, match="at least 2"):
        contrast_blindness(RawFeatures(), real[:1])
    tiny_mae().save_pretrained(tmp_path / "mae")
    assert _script().main(["--data", "shapes", "--spaces", "mae", "raw", "--mae", str(tmp_path / "mae"),
                           "--images", "4", "--contrast", "0.5"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "median 0.000" in out and "1 keys above 0.01 (mae/input_rms)" in out
    assert "1 keys above 0.01 (raw/flat)" in out and "step" not in out  # no probe rows
