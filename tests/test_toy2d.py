"""The paper's 2-D toy (docs/method.md section 8, Figure 3): a generator collapsed onto one mode of a
bimodal target ends covering both modes, with the raw field."""

import torch

from t2i_drift.eval.toy2d import (
    BIMODAL_CENTER,
    ToyGenerator,
    energy_distance,
    left_mass,
    render_density,
    sample_target,
    train_toy,
)


def test_collapsed_init_ends_covering_both_modes():
    """Figure 3, collapsed case: tau 0.2, 512 samples per step, Adam 1e-3 (docs/method.md section 8
    measured a 0.50 / 0.50 split within 250 steps). About 5 s on a laptop CPU."""
    run = train_toy("bimodal", "collapsed", steps=400, batch=512, temperature=0.2, log_every=50, seed=0)
    assert run.left[0] == 1.0  # starts with all of the mass on the left mode
    assert 0.4 <= run.left[-1] <= 0.6
    assert run.energy[-1] < 0.25 * run.energy[0]


def test_initializations_are_the_stated_gaussians():
    noise = torch.randn(4096, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        collapsed = ToyGenerator(init="collapsed")(noise)
        far = ToyGenerator(init="far")(noise)
    torch.testing.assert_close(collapsed.mean(0), torch.tensor([-BIMODAL_CENTER, 0.0]), atol=0.03, rtol=0)
    torch.testing.assert_close(collapsed.std(0), torch.tensor([0.3, 0.3]), atol=0.02, rtol=0)
    assert far[:, 1].mean() > 5.5


def test_targets_and_metrics():
    g = torch.Generator().manual_seed(0)
    bimodal = sample_target("bimodal", 8192, g)
    assert abs(left_mass(bimodal) - 0.5) < 0.03
    board = sample_target("checkerboard", 8192, g)
    cells = torch.floor(board + 2).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()  # only the "black" squares
    assert board.abs().max() <= 2.0
    roll = sample_target("swiss_roll", 4096, g)
    assert roll.shape == (4096, 2) and torch.isfinite(roll).all()
    # energy distance: ~0 for two samples of one law, large between different laws
    same = energy_distance(sample_target("swiss_roll", 2048, g), roll[:2048])
    assert same < 0.02 < 0.05 < energy_distance(roll, board[:4096]) < energy_distance(roll, bimodal[:4096])
    panel = render_density(roll, extent=4.0, size=64, title="roll", reference=board)
    assert panel.size == (64, 78)
