"""The drifting field against METHOD.md: an independent float64 per-group reference, the
section-8 checks (equilibrium, anti-symmetry), gradients, dtypes and shapes."""

import math

import pytest
import torch

from t2i_drift.drifting import drifting_field, drifting_loss, guidance_weight, sample_alpha


def reference_group_field(x, u, y, w_u, taus, normalize_scale=None, mask_self=True, floor=1e-6):
    """METHOD.md section 2 for ONE group, float64, loops over targets written out plainly.

    normalize_scale: None for the raw field; else (s_in, dist_unit) of section 3."""
    x, u, y = x.double(), u.double(), y.double()
    n = x.shape[0]
    t = torch.cat([x, u, y])
    w = torch.cat([torch.ones(n), w_u.double(), torch.ones(y.shape[0])]).double()
    pos = torch.tensor([False] * (n + u.shape[0]) + [True] * y.shape[0])
    d = torch.sqrt(torch.clamp(((x[:, None, :] - t[None, :, :]) ** 2).sum(-1), min=1e-8))
    if normalize_scale is not None:
        s_in, unit = normalize_scale
        x, t = x / s_in, t / s_in
        d = d / unit
    if mask_self:
        d = d + 100.0 * torch.cat([torch.eye(n), torch.zeros(n, t.shape[0] - n)], 1).double()
    fields = []
    for tau in taus:
        logits = -d / tau
        a_row = torch.softmax(logits, 1)
        a_col = torch.softmax(logits, 0)
        A = torch.sqrt(torch.clamp(a_row * a_col, min=floor)) * w[None, :]
        s_pos = A[:, pos].sum(1)
        s_neg = A[:, ~pos].sum(1)
        V = torch.zeros_like(x)
        for i in range(n):
            for j in range(t.shape[0]):
                c = A[i, j] * s_neg[i] if pos[j] else -A[i, j] * s_pos[i]
                V[i] += c * (t[j] - x[i])
        fields.append(V)
    return fields


def _data(G=3, n=5, m=4, p=2, D=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    gen = torch.randn(G, n, D, generator=g)
    neg = torch.randn(G, m, D, generator=g) + 0.5
    pos = torch.randn(G, p, D, generator=g) - 0.5
    w = torch.rand(G, m, generator=g) * 2
    return gen, pos, neg, w


@pytest.mark.parametrize("taus", [(0.05,), (0.02, 0.05, 0.2), (1.0,)])
def test_raw_field_matches_float64_reference(taus):
    gen, pos, neg, w = _data()
    V = drifting_field(gen, pos, neg, w, temperatures=taus, normalize=False)
    assert V.shape == gen.shape and V.dtype == torch.float32
    for g in range(gen.shape[0]):
        ref = sum(reference_group_field(gen[g], neg[g], pos[g], w[g], taus))
        torch.testing.assert_close(V[g].double(), ref, rtol=1e-4, atol=1e-5)


def test_normalized_field_matches_float64_reference():
    gen, pos, neg, w = _data(G=4, D=8)
    taus = (0.02, 0.05, 0.2)
    V = drifting_field(gen, pos, neg, w, temperatures=taus, normalize=True)
    # Section 3 scalars pooled over all groups, computed here independently in float64.
    D = gen.shape[-1]
    num = den = 0.0
    for g in range(gen.shape[0]):
        t = torch.cat([gen[g], neg[g], pos[g]]).double()
        wt = torch.cat([torch.ones(gen.shape[1]), w[g], torch.ones(pos.shape[1])]).double()
        d = torch.sqrt(torch.clamp(((gen[g].double()[:, None] - t[None]) ** 2).sum(-1), min=1e-8))
        num += (d * wt[None]).sum().item()
        den += wt.sum().item() * gen.shape[1]
    scale = num / den
    s_in, unit = max(scale / math.sqrt(D), 1e-3), max(scale, 1e-3)
    per_tau = [
        torch.stack(
            [reference_group_field(gen[g], neg[g], pos[g], w[g], (tau,), (s_in, unit))[0] for g in range(4)]
        )
        for tau in taus
    ]
    ref = sum(v / torch.sqrt(torch.clamp(v.pow(2).mean(), min=1e-8)) for v in per_tau)
    torch.testing.assert_close(V.double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("normalize", [False, True])
def test_zero_at_equilibrium(normalize):
    """Section 8: self-masking off, unit weights, positive set == negative set -> V = 0."""
    from t2i_drift.drifting import compute_drift

    gen, _, _, _ = _data(G=4, n=6, D=5)
    eq = compute_drift(gen, gen.clone(), normalize=normalize, mask_self=False)
    away = compute_drift(gen, torch.randn_like(gen), normalize=normalize, mask_self=False)
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
    loss, stats = drifting_loss(gen, pos, neg, w)
    loss.backward()
    assert pos.grad is None and neg.grad is None
    assert gen.grad is not None and gen.grad.abs().sum() > 0
    # d/dx mean((x/s - sg(x/s + V))^2) = -2 V / (s * numel)
    from t2i_drift.drifting import compute_drift

    r = compute_drift(gen, pos, neg, w)
    expected = -2.0 * r.field / (r.feature_scale * gen.numel())
    torch.testing.assert_close(gen.grad, expected, rtol=1e-4, atol=1e-8)
    assert set(k for k in stats if k.startswith("v2/")) == {"v2/tau=0.02", "v2/tau=0.05", "v2/tau=0.2"}
    # Normalized loss is mean(V^2) with V a sum of three unit-RMS fields: O(1), never ~0.
    assert 0.3 < loss.item() < 9.0


def test_fp32_under_bf16_autocast():
    gen, pos, neg, w = _data()
    gen = gen.bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        V = drifting_field(gen, pos.bfloat16(), neg.bfloat16(), w)
        loss, _ = drifting_loss(gen, pos.bfloat16(), neg.bfloat16(), w)
    assert V.dtype == torch.float32 and loss.dtype == torch.float32
    loss.backward()
    assert gen.grad.dtype == torch.bfloat16
    ref = drifting_field(gen.detach().float(), pos.bfloat16().float(), neg.bfloat16().float(), w)
    torch.testing.assert_close(V, ref)


def test_loss_invariant_to_global_rescale():
    gen, pos, neg, w = _data()
    l1, _ = drifting_loss(gen, pos, neg, w)
    l2, _ = drifting_loss(gen * 37.0, pos * 37.0, neg * 37.0, w)
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
    from t2i_drift.drifting import drifting_loss, group_by_prompt, text_to_image_drift_loss

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
    loss, stats = text_to_image_drift_loss({"k": gen}, {"k": real}, G, alpha, ids, key_weights={"k": 0.5})
    valid = torch.tensor([[False, True, False], [True, False, True], [False, True, False]])
    w = guidance_weight(alpha, G, valid.sum(1))
    ref, _ = drifting_loss(
        gg, pp, nn_, neg_weights=w.repeat_interleave(L)[:, None], neg_mask=valid.repeat_interleave(L, 0)
    )
    torch.testing.assert_close(loss, 0.5 * ref)
    assert float(stats["loss/k"]) == pytest.approx(ref.item())
