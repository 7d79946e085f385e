"""features.sure_fraction (t2i_drift/models/gradient_gate.py): the learned encoders' gradient reaches
only the generated samples nearest their paired image; the raw key teaches every sample; through
the builder and the trainer; refused where it cannot apply."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import tiny_mae

from t2i_drift.models import MAEFeatures, MultiFeatureEncoder, RawFeatures
from t2i_drift.models.gradient_gate import GradientGate, patch_errors, set_gate, sure_gate
from t2i_drift.training.builders import build_feature_encoder
from t2i_drift.training.config import ConfigError, load_config

ROOT = Path(__file__).parent.parent
RECIPE = ROOT / "recipes" / "tiny_test.yaml"


def test_sure_gate_opens_the_smallest_errors():
    errors = torch.tensor([0.5, 0.1, 0.9, 0.1, 0.3])
    assert sure_gate(errors, 0.4).tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert sure_gate(errors, 0.5).tolist() == [0.0, 1.0, 0.0, 1.0, 1.0]  # ceil(2.5) = 3
    assert sure_gate(errors, 1.0).tolist() == [1.0] * 5
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            sure_gate(errors, bad)


def test_gate_keeps_the_features_and_scales_each_samples_gradient():
    torch.manual_seed(0)
    mae = MAEFeatures(tiny_mae(sample_size=16))
    gated = MultiFeatureEncoder({"mae": GradientGate(mae), "raw": RawFeatures()})
    x = torch.randn(3, 3, 16, 16, requires_grad=True)
    plain = mae(x)
    plain_grad = torch.autograd.grad(sum(v.square().sum() for v in plain.values()), x)[0]
    assert set_gate(gated, torch.tensor([1.0, 0.0, 1.0])) == 1
    out = gated(x)
    for k, v in plain.items():
        assert torch.equal(out[k], v)  # the encoder sees the samples unchanged
    mae_loss = sum(v.square().sum() for k, v in out.items() if k.startswith("mae"))
    grad = torch.autograd.grad(mae_loss, x)[0]
    assert torch.equal(grad[0], plain_grad[0]) and torch.equal(grad[2], plain_grad[2])
    assert grad[1].abs().max() == 0 and plain_grad[1].abs().max() > 0
    raw_grad = torch.autograd.grad(out["raw/flat"].sum(), x)[0]
    assert torch.equal(raw_grad, torch.ones_like(x))  # raw is never gated
    set_gate(gated, None)  # cleared: every sample's gradient passes again
    out = gated(x)
    grad = torch.autograd.grad(sum(v.square().sum() for k, v in out.items() if k.startswith("mae")), x)[0]
    assert torch.equal(grad, plain_grad)
    set_gate(gated, torch.ones(2))
    with pytest.raises(ValueError, match="gate of shape"):
        gated(x)


def test_cell_gate_passes_the_gradient_of_the_open_cells_only():
    """A gate per 4x4 cell ranks the cells of the whole batch by their error; the gradient reaches
    exactly the pixels of the open cells."""
    torch.manual_seed(0)
    paired = torch.zeros(2, 3, 8, 8)
    generated = torch.zeros(2, 3, 8, 8)
    generated[0, :, :4, :4] = 1.0  # sample 0's top-left cell is far, the rest exact
    generated[1, :, 4:, :] = 0.5  # sample 1's bottom cells are half as far
    errors = patch_errors(generated, paired, 4)
    assert errors.shape == (2, 2, 2) and errors[0, 0, 0] == 1.0 and errors[1, 1, 0] == 0.25
    gate = sure_gate(errors, 0.5)  # 4 of 8 cells: the exact ones, position breaks the ties
    assert gate.sum() == 4 and gate[0, 0, 0] == 0 and gate[1, 1].sum() == 0
    assert patch_errors(generated, paired, 0).shape == (2,)
    with pytest.raises(ValueError, match="must divide"):
        patch_errors(generated, paired, 3)
    encoder = GradientGate(RawFeatures())
    x = generated.clone().requires_grad_(True)
    set_gate(encoder, gate)
    grad = torch.autograd.grad(encoder(x)["raw/flat"].sum(), x)[0]
    expected = gate.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None].expand_as(x)
    assert torch.equal(grad, expected)
    set_gate(encoder, torch.ones(2, 3, 3))
    with pytest.raises(ValueError, match="gate of shape"):
        encoder(x)


def test_builder_gates_every_encoder_but_raw_and_config_errors_name_the_key(tmp_path):
    tiny_mae(sample_size=16).save_pretrained(tmp_path / "mae")
    cfg = load_config(RECIPE, [f"features.mae.path={tmp_path / 'mae'}", "features.sure_fraction=0.5"])
    encoder = build_feature_encoder(cfg.features, cfg.data.resolution)
    assert set_gate(encoder, None) == 2  # effnet and mae
    assert isinstance(encoder.encoders["raw"], RawFeatures)
    assert set_gate(build_feature_encoder(load_config(RECIPE).features, 16), None) == 0  # off: no wrapper
    for value in ("0", "1.5"):
        with pytest.raises(ConfigError, match=r"features.sure_fraction.*\(0, 1\]"):
            load_config(RECIPE, [f"features.sure_fraction={value}"])
    with pytest.raises(ConfigError, match="features.sure_fraction.*none is configured"):
        load_config(RECIPE, ["features.sure_fraction=0.5", "features.effnet=null"])
    with pytest.raises(ConfigError, match="features.sure_fraction.*drifting only"):
        load_config(RECIPE, ["features.sure_fraction=0.5", "objective.name=regression"])
    with pytest.raises(ConfigError, match="features.sure_patch.*sure_fraction < 1"):
        load_config(RECIPE, ["features.sure_patch=4"])
    with pytest.raises(ConfigError, match="features.sure_patch"):
        load_config(RECIPE, ["features.sure_patch=-1", "features.sure_fraction=0.5"])
    cells = load_config(RECIPE, ["features.sure_fraction=0.5", "features.sure_patch=3"])
    with pytest.raises(ConfigError, match="features.sure_patch=3 must divide the generator's output side 16"):
        build_feature_encoder(cells.features, cells.data.resolution)


@pytest.mark.parametrize("patch", [0, 4])
def test_trainer_gates_the_samples_farthest_from_their_image(patch, tmp_path, monkeypatch):
    """Every drifting step sets a gate from each sample's (or 4x4 cell's) distance to its paired
    image before encoding the generated samples, and clears it before the positives are encoded."""
    import t2i_drift.training.objectives.drifting as module
    from t2i_drift.training.runs import train_t2i

    calls: list[torch.Tensor | None] = []
    errors: list[torch.Tensor] = []
    real_set_gate, real_sure_gate = module.set_gate, module.sure_gate

    def recording_set_gate(encoder, gate):
        calls.append(None if gate is None else gate.clone())
        return real_set_gate(encoder, gate)

    def recording_sure_gate(err, fraction):
        errors.append(err.clone())
        return real_sure_gate(err, fraction)

    monkeypatch.setattr(module, "set_gate", recording_set_gate)
    monkeypatch.setattr(module, "sure_gate", recording_sure_gate)
    options = ["features.sure_fraction=0.5", f"features.sure_patch={patch}", "train.max_steps=2"]
    options.append(f"train.output_dir={tmp_path}")
    cfg = load_config(RECIPE, options)
    train_t2i(cfg)
    n = cfg.train.batch_size * cfg.drift.samples_per_prompt
    assert len(calls) == 4 and calls[1] is None and calls[3] is None  # set, then cleared, each step
    for gate, err in zip(calls[0::2], errors, strict=True):
        side = cfg.data.resolution // 4
        assert gate.shape == ((n,) if patch == 0 else (n, side, side)) and gate.sum() == -(-gate.numel() // 2)
        assert (err >= 0).all() and err.max() > 0  # squared distances to the paired images
        assert err[gate.bool()].max() <= err[~gate.bool()].min()  # the nearest samples are taught
