"""The drifting field against docs/method.md: the section-8 checks (equilibrium, anti-symmetry),
gradients, dtypes, shapes, options and the text-to-image grouping. The comparison with the
per-group float64 reference is in test_drift_reference.py."""

import pytest
import torch

from t2i_drift.drifting import (
    DriftGroups,
    DriftOptions,
    drifting_field,
    drifting_loss,
    evaluate_drift,
    guidance_weight,
    sample_alpha,
)


def _data(num_groups=3, n=5, m=4, p=2, D=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    gen = torch.randn(num_groups, n, D, generator=g)
    neg = torch.randn(num_groups, m, D, generator=g) + 0.5
    pos = torch.randn(num_groups, p, D, generator=g) - 0.5
    w = torch.rand(num_groups, m, generator=g) * 2
    return gen, pos, neg, w


def _one_key(gen, pos, neg=None, w=None, **options):
    """evaluate_drift of a single key."""
    return evaluate_drift({"k": DriftGroups(gen, pos, neg, w)}, DriftOptions(**options))["k"]


def _loss(gen, pos, neg=None, w=None, **options):
    """drifting_loss of a single key."""
    return drifting_loss({"k": DriftGroups(gen, pos, neg, w)}, DriftOptions(**options))


@pytest.mark.parametrize("normalize", [False, True])
def test_zero_at_equilibrium(normalize):
    """Section 8: self-masking off, unit weights, positive set == negative set -> V = 0."""
    gen, _, _, _ = _data(num_groups=4, n=6, D=5)
    eq = _one_key(gen, gen.clone(), normalize=normalize, mask_self=False)
    away = _one_key(gen, torch.randn_like(gen), normalize=normalize, mask_self=False)
    for tau in eq.raw_v2:  # the un-normalized V_tau vanish to rounding
        assert away.raw_v2[tau] > 1e-6
        assert eq.raw_v2[tau] < 1e-6 * away.raw_v2[tau]
    if normalize:
        # Section 3 divides each V_tau by max(RMS, 1e-4): rounding noise (~1e-7) grows by at most 1e4.
        assert eq.field.abs().max() < 1e-2
    else:
        # fp32 rounding on unit-scale features, four orders below the field away from equilibrium
        assert eq.field.abs().max() < 1e-5 < 1e-3 < away.field.abs().max()


@pytest.mark.parametrize("normalize", [False, True])
def test_antisymmetry(normalize):
    """Section 8: external negatives, unit weights: swapping positives and negatives negates V."""
    gen, pos, neg, _ = _data(m=3, p=3)
    V = drifting_field(gen, pos, neg, gen_as_negatives=False, normalize=normalize)
    V_swapped = drifting_field(gen, neg, pos, gen_as_negatives=False, normalize=normalize)
    assert V.abs().max() > 1e-3
    torch.testing.assert_close(V_swapped, -V, rtol=1e-5, atol=1e-6)


def test_gradient_only_into_gen_and_equals_minus_field():
    gen, pos, neg, w = _data()
    gen.requires_grad_(True)
    pos.requires_grad_(True)
    neg.requires_grad_(True)
    loss, stats = _loss(gen, pos, neg, w)
    loss.backward()
    assert pos.grad is None and neg.grad is None
    assert gen.grad is not None and gen.grad.abs().sum() > 0
    # d/dx mean((x/s - sg(x/s + V))^2) = -2 V / (s * numel)
    r = _one_key(gen, pos, neg, w)
    expected = -2.0 * r.field / (r.feature_scale * gen.numel())
    torch.testing.assert_close(gen.grad, expected, rtol=1e-4, atol=1e-8)
    assert list(stats) == [
        "loss/k",
        "k/v2/tau=0.02",
        "k/v2/tau=0.05",
        "k/v2/tau=0.2",
        "k/scale",
        "k/nearest_pos",
        "k/spread",
    ]
    # Normalized loss is mean(V^2) with V a sum of three unit-RMS fields: O(1), never ~0.
    assert 0.3 < loss.item() < 9.0


def test_fp32_under_bf16_autocast():
    gen, pos, neg, w = _data()
    gen = gen.bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        V = drifting_field(gen, pos.bfloat16(), neg.bfloat16(), w)
        loss, _ = _loss(gen, pos.bfloat16(), neg.bfloat16(), w)
    assert V.dtype == torch.float32 and loss.dtype == torch.float32
    loss.backward()
    assert gen.grad.dtype == torch.bfloat16
    ref = drifting_field(gen.detach().float(), pos.bfloat16().float(), neg.bfloat16().float(), w)
    torch.testing.assert_close(V, ref)


def test_loss_invariant_to_global_rescale():
    gen, pos, neg, w = _data()
    l1, _ = _loss(gen, pos, neg, w)
    l2, _ = _loss(gen * 37.0, pos * 37.0, neg * 37.0, w)
    torch.testing.assert_close(l1, l2, rtol=1e-4, atol=1e-6)


def test_neg_mask_removes_targets_entirely():
    gen, pos, neg, w = _data(m=4)
    masked = drifting_field(gen, pos, neg, w, neg_mask=torch.tensor([True, False, True, False]))
    dropped = drifting_field(gen, pos, neg[:, [0, 2]], w[:, [0, 2]])
    torch.testing.assert_close(masked, dropped, rtol=1e-5, atol=1e-6)


def test_bad_shapes_raise_clear_errors():
    gen, pos, neg, w = _data()
    with pytest.raises(ValueError, match="pos must be"):
        drifting_field(gen, pos[:, :, :3], neg, w)
    with pytest.raises(ValueError, match="neg_weights"):
        drifting_field(gen, pos, neg, torch.ones(7))
    with pytest.raises(ValueError, match="temperatures"):
        drifting_field(gen, pos, neg, w, temperatures=())


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperatures", ()),
        ("temperatures", (0.1, -1.0)),
        ("temperatures", (0.1, float("nan"))),
        ("temperatures", 0.05),
        ("normalize", 1),
        ("affinity_floor", -1e-6),
        ("memory_budget", 0),
        ("memory_budget", 1.5e6),
        ("chunk_groups", -2),
    ],
)
def test_options_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        DriftOptions(**{field: value})


def test_options_are_normalized_and_frozen():
    options = DriftOptions(temperatures=[0.1, 1], memory_budget=2**20)
    assert options.temperatures == (0.1, 1.0) and all(type(t) is float for t in options.temperatures)
    with pytest.raises(AttributeError):
        options.normalize = False  # type: ignore[misc]


def test_drifting_field_accepts_option_overrides():
    gen, pos, neg, w = _data()
    V = drifting_field(gen, pos, neg, w, (0.05,), False, mask_self=False, chunk_groups=1)
    ref = _one_key(gen, pos, neg, w, temperatures=(0.05,), normalize=False, mask_self=False).field
    torch.testing.assert_close(V, ref)
    with pytest.raises(TypeError):
        drifting_field(gen, pos, neg, w, not_an_option=True)


def test_key_weights_must_name_known_keys():
    gen, pos, neg, w = _data()
    with pytest.raises(ValueError, match="key_weights"):
        drifting_loss({"k": DriftGroups(gen, pos, neg, w)}, key_weights={"typo": 2.0})


def test_guidance_weight_formula():
    alpha = torch.tensor([1.0, 2.0, 4.0])
    w = guidance_weight(alpha, num_generated=5, num_uncond=torch.tensor([8, 8, 2]))
    torch.testing.assert_close(w, torch.tensor([0.0, 1.0 * 4 / 8, 3.0 * 4 / 2]))
    with pytest.raises(ValueError):
        guidance_weight(torch.tensor([0.5]), 4, 4)


def test_alpha_sampler_matches_power_law_moments():
    k, amax = 3.0, 4.0
    a = sample_alpha(200_000, alpha_max=amax, power=k, generator=torch.Generator().manual_seed(0)).double()
    assert a.min() >= 1.0 and a.max() <= amax
    # E[alpha] under p(a) = c a^-k on [1, amax]: c = (k-1)/(1 - amax^(1-k)), E = c (amax^(2-k) - 1)/(2-k)
    c = (k - 1) / (1 - amax ** (1 - k))
    mean = c * (amax ** (2 - k) - 1) / (2 - k)
    assert abs(a.mean().item() - mean) < 0.01
    frac = sample_alpha(100_000, fraction_at_one=0.3, generator=torch.Generator().manual_seed(1))
    assert abs((frac == 1.0).float().mean().item() - 0.3) < 0.01


def test_text_to_image_grouping_matches_explicit_groups():
    """group = prompt x location; negatives = other prompts' real images at that location."""
    from t2i_drift.drifting import group_by_prompt, text_to_image_drift_loss

    g = torch.Generator().manual_seed(0)
    B, G, L, D = 3, 2, 4, 5
    gen = torch.randn(B * G, L, D, generator=g)
    real = torch.randn(B, L, D, generator=g)
    gg, pp, bank, index = group_by_prompt(gen, real, G)
    nn_ = bank[index]  # [B*L, B, D], the per-group unconditional sets
    b, loc = 2, 3
    torch.testing.assert_close(gg[b * L + loc], gen[b * G : b * G + G, loc])
    torch.testing.assert_close(pp[b * L + loc, 0], real[b, loc])
    torch.testing.assert_close(nn_[b * L + loc], real[:, loc])
    alpha = torch.tensor([1.0, 2.0, 3.0])
    ids = torch.tensor([7, 8, 7])  # prompts 0 and 2 share a caption: excluded from each other's negatives
    loss, stats = text_to_image_drift_loss(
        {"k": gen}, {"k": real}, G, alpha, ids, DriftOptions(), key_weights={"k": 0.5}
    )
    valid = torch.tensor([[False, True, False], [True, False, True], [False, True, False]])
    w = guidance_weight(alpha, G, valid.sum(1))
    groups = DriftGroups(gg, pp, nn_, w.repeat_interleave(L)[:, None], valid.repeat_interleave(L, 0))
    ref, _ = drifting_loss({"k": groups})
    torch.testing.assert_close(loss, 0.5 * ref)
    assert float(stats["loss/k"]) == pytest.approx(ref.item())


def test_unmasked_field_seeks_the_nearest_mode_only_without_the_affinity_floor():
    """Two modes of one condition, 4 positives at each; two samples, each 20% of the way from the
    positives' mean to a different mode; the samples stay among their own negatives. Each sample's
    zero distance to itself takes nearly all of its row softmax, so every other affinity falls
    under the official 1e-6 floor: the floor makes the positives' weights equal and the field points
    back to their mean. Without the floor the kernel still ranks the positives and the field
    points on to the sample's own mode (docs/method.md section 7)."""
    g = torch.Generator().manual_seed(0)
    D = 256
    modes = torch.zeros(2, D)
    modes[0, :8], modes[1, 8:16] = 1.0, 1.0
    mean = modes.mean(0)
    pos = (modes.repeat_interleave(4, 0) + 0.02 * torch.randn(8, D, generator=g))[None]  # [1, 8, D]
    gen = (mean + 0.2 * (modes - mean))[None]  # [1, 2, D]: sample k leans to mode k
    to_mode = (modes - gen[0])[None]  # [1, 2, D]
    for floor, expected_sign in ((1e-6, -1.0), (0.0, 1.0)):
        V = drifting_field(gen, pos, mask_self=False, affinity_floor=floor)
        cos = torch.nn.functional.cosine_similarity(V, to_mode, dim=-1)  # [1, 2]
        assert (cos * expected_sign > 0.5).all(), (floor, cos)


def test_one_positive_with_the_floor_drifts_along_the_log_mse_gradient_of_each_key():
    """The text-to-image regime (one positive, samples among their own negatives, the floor, no
    guidance): each key's drift gradient points along the gradient of log(mean squared error to
    the paired features), with one common factor for all keys although their units differ 100x.
    Plain squared error weighs the keys by their units instead (docs/method.md section 7)."""
    from t2i_drift.drifting import text_to_image_drift_loss

    g = torch.Generator().manual_seed(0)
    B, G = 16, 2
    shapes = {"a": (16, 4, 1.0), "b": (4, 8, 10.0), "c": (1, 32, 0.1)}  # L, D, units
    real, gen = {}, {}
    for key, (L, D, unit) in shapes.items():
        real[key] = torch.randn(B, L, D, generator=g) * unit
        start = 0.5 * real[key] + 0.5 * unit * torch.randn(B, L, D, generator=g)  # halfway
        siblings = 0.015 * unit * torch.randn(B * G, L, D, generator=g)  # G near-identical samples
        gen[key] = (start.repeat_interleave(G, 0) + siblings).requires_grad_()
    keys = list(shapes)
    loss, _ = text_to_image_drift_loss(
        gen, real, G, torch.ones(B), torch.arange(B), DriftOptions(mask_self=False)
    )
    drift = torch.autograd.grad(loss, [gen[k] for k in keys])
    paired = {k: real[k].repeat_interleave(G, 0) for k in keys}
    errors = [(gen[k] - paired[k]).pow(2).mean() for k in keys]
    log_mse = torch.autograd.grad(sum(e.log() for e in errors), [gen[k] for k in keys], retain_graph=True)
    mse = torch.autograd.grad(sum(errors), [gen[k] for k in keys])
    ratios = []
    for d, lg in zip(drift, log_mse, strict=True):
        assert torch.nn.functional.cosine_similarity(d.flatten(), lg.flatten(), dim=0) > 0.9
        ratios.append((d.norm() / lg.norm()).item())
    assert max(ratios) / min(ratios) < 1.25  # one factor for every key
    plain = [m.norm().item() for m in mse]
    assert max(plain) / min(plain) > 100  # what the units alone do to plain squared error


def test_one_sample_per_group_is_pulled_to_its_positive_alone():
    """samples_per_prompt=1 (training's drift.sibling_negatives=false: each of a prompt's samples
    is its own group): every location's field points exactly at the paired image. Grouped in
    twos, the sibling bends it, if only slightly: kept among its own negatives, a sample's zero
    distance to itself dominates S-, so a sibling's repulsion is weighted by its small affinity.
    Self-masked, a lone sample would have no negatives at all."""
    from t2i_drift.drifting import text_to_image_drift_loss

    g = torch.Generator().manual_seed(0)
    real = torch.randn(4, 3, 8, generator=g, dtype=torch.float64)  # 4 prompts, 3 locations
    gen = real.repeat_interleave(2, 0) + 0.1 * torch.randn(8, 3, 8, generator=g, dtype=torch.float64)

    def grad_of_first(G: int) -> torch.Tensor:
        rows = gen.clone().requires_grad_()
        pos, ids = real.repeat_interleave(2 // G, 0), torch.arange(4).repeat_interleave(2 // G)
        loss, _ = text_to_image_drift_loss(
            {"k": rows}, {"k": pos}, G, torch.ones(8 // G), ids, DriftOptions(mask_self=False)
        )
        return torch.autograd.grad(loss, rows)[0][0]  # [3 locations, 8]

    toward = real[0] - gen[0]
    alone = 1 - torch.nn.functional.cosine_similarity(-grad_of_first(1), toward, dim=1)
    paired = 1 - torch.nn.functional.cosine_similarity(-grad_of_first(2), toward, dim=1)
    assert (alone < 1e-10).all()
    assert (paired > 1e-8).all() and (paired < 1e-4).all()
    with pytest.raises(ValueError, match="mask_self=False"):
        text_to_image_drift_loss({"k": gen}, {"k": gen}, 1, torch.ones(8), torch.arange(8), DriftOptions())
