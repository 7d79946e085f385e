"""The batched, chunked field against the plain per-group float64 reference (docs/method.md
sections 2 and 3): raw and normalized, several temperatures, masks, per-target weights, a shared
negative bank, several keys of equal and different shapes, chunked evaluation; plus the section-8
checks on the reference itself."""

import pytest
import torch

from t2i_drift.drifting import (
    DriftGroups,
    DriftOptions,
    drifting_loss,
    evaluate_drift,
    group_by_prompt,
    guidance_weight,
    text_to_image_drift_loss,
    uncond_mask,
)
from t2i_drift.drifting.reference import reference_drift, reference_loss


def _groups(num_groups, n, m, p, D, seed, *, masked=False, bank=False, weights=True):
    g = torch.Generator().manual_seed(seed)
    gen = torch.randn(num_groups, n, D, generator=g)
    pos = torch.randn(num_groups, p, D, generator=g) - 0.3
    if bank:
        neg = torch.randn(3, m, D, generator=g) + 0.4
        index = torch.randint(0, 3, (num_groups,), generator=g)
    else:
        neg, index = torch.randn(num_groups, m, D, generator=g) + 0.4, None
    w = torch.rand(num_groups, m, generator=g) * 2 if weights else None
    mask = torch.rand(num_groups, m, generator=g) > 0.3 if masked else None
    return DriftGroups(gen, pos, neg, w, mask, index)


def _keys():
    # "loc" and "loc2" share a group shape (one kernel call in the fast path), "mean" and "bank" do not.
    return {
        "loc": _groups(12, 5, 4, 2, 6, 0, masked=True),
        "loc2": _groups(7, 5, 4, 2, 6, 1),
        "mean": _groups(3, 6, 2, 1, 9, 2, weights=False),
        "bank": _groups(9, 4, 5, 1, 6, 3, masked=True, bank=True),
    }


def _close(actual, expected, what, **tolerances):
    """assert_close of fp32 ``actual`` against float64 ``expected``, naming ``what`` on failure."""
    torch.testing.assert_close(actual.double(), expected, msg=lambda m: f"{what}: {m}", **tolerances)


def _assert_matches(fast, ref, rtol=1e-4):
    """Each quantity within ``rtol`` of the reference (the field: relative to its largest entry)."""
    assert list(fast) == list(ref)
    for name in ref:
        f, r = fast[name], ref[name]
        largest = r.field.abs().max().item()
        assert largest > 0, name
        _close(f.field, r.field, f"{name} field", rtol=rtol, atol=rtol * largest)
        assert list(f.raw_v2) == list(r.raw_v2)
        scalars = {stat: (getattr(f, stat), getattr(r, stat)) for stat in SCALARS}
        scalars.update({f"v2/tau={tau:g}": (f.raw_v2[tau], r.raw_v2[tau]) for tau in r.raw_v2})
        for stat, (a, b) in scalars.items():
            _close(a, b, f"{name} {stat}", rtol=rtol, atol=1e-9, equal_nan=True)


SCALARS = ("scale", "feature_scale", "nearest_pos", "spread")
CASES = {
    "normalized": DriftOptions(),
    "raw": DriftOptions(normalize=False),
    "one_tau": DriftOptions(temperatures=(0.05,)),
    "raw_tau_1": DriftOptions(temperatures=(1.0,), normalize=False),
    "no_floor": DriftOptions(affinity_floor=0.0),
    "big_floor": DriftOptions(affinity_floor=1e-3, normalize=False),
    "chunked": DriftOptions(chunk_groups=2),
    "budget_recompute": DriftOptions(memory_budget=4096),
    "external_negatives": DriftOptions(gen_as_negatives=False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_path_matches_reference(case):
    options = CASES[case]
    keys = _keys()
    _assert_matches(evaluate_drift(keys, options), reference_drift(keys, options))


def test_fast_path_matches_reference_without_self_mask():
    """With mask_self off, a sample's distance to itself enters the softmax. The fast path gets it
    from ||x||^2 + ||t||^2 - 2 x.t in fp32: the cancellation leaves ~1e-3 instead of the 1e-4 floor,
    which moves the field by ~1e-3 of its size."""
    options = DriftOptions(mask_self=False)
    keys = _keys()
    _assert_matches(evaluate_drift(keys, options), reference_drift(keys, options), rtol=3e-3)


def test_each_key_alone_matches_reference():
    """The reference pools nothing across keys: evaluated alone or together, a key is the same."""
    keys = _keys()
    together = reference_drift(keys)
    for name, groups in keys.items():
        _assert_matches({name: together[name]}, reference_drift({name: groups}), rtol=1e-12)


def test_loss_and_stats_match_reference():
    keys = _keys()
    weights = {"loc2": 0.5, "bank": 2.0}
    loss, stats = drifting_loss(keys, DriftOptions(), key_weights=weights)
    ref_loss, ref_stats = reference_loss(keys, DriftOptions(), key_weights=weights)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-4, atol=0)
    assert list(stats) == list(ref_stats)
    for name, value in ref_stats.items():
        _close(stats[name], value, name, rtol=1e-4, atol=1e-9)


# "loc" and "mean"/"bank" live in different buckets: a shared lambda spans them; "loc2" keeps its own.
SHARED = {"loc": "enc", "mean": "enc", "bank": "enc"}


@pytest.mark.parametrize("case", ["normalized", "chunked", "budget_recompute", "one_tau", "raw"])
def test_shared_lambda_matches_reference(case):
    options = CASES[case]
    keys = _keys()
    _assert_matches(
        evaluate_drift(keys, options, SHARED), reference_drift(keys, options, lambda_groups=SHARED)
    )


def test_shared_lambda_keeps_relative_field_sizes():
    """One temperature: the shared field of key k is its own-lambda field times
    sqrt(mean(V_k^2) / mean over the label's keys), so a nearly matched key gets a small field and the
    label's keys' loss terms still sum to their number."""
    options = CASES["one_tau"]
    keys = _keys()
    own, shared = evaluate_drift(keys, options), evaluate_drift(keys, options, SHARED)
    (tau,) = options.temperatures
    mean_v2 = torch.stack([own[name].raw_v2[tau] for name in SHARED]).mean()
    for name in SHARED:
        factor = (own[name].raw_v2[tau] / mean_v2).sqrt()
        _close(shared[name].field, own[name].field.double() * factor.double(), name, rtol=1e-5, atol=1e-6)
        assert shared[name].raw_v2[tau] == own[name].raw_v2[tau]  # the logged statistic is the key's own
    total = sum(shared[name].field.square().mean() for name in SHARED)
    torch.testing.assert_close(total, torch.tensor(float(len(SHARED))), rtol=1e-5, atol=0)
    assert torch.equal(shared["loc2"].field, own["loc2"].field)


def test_shared_lambda_of_one_key_is_its_own():
    keys = _keys()
    own = evaluate_drift(keys)
    alone = evaluate_drift(keys, lambda_groups={"loc": "a", "mean": "b"})
    for name in keys:
        assert torch.equal(alone[name].field, own[name].field), name


def test_shared_lambda_names_unknown_keys():
    with pytest.raises(ValueError, match="lambda_groups names unknown feature keys: \\['nope'\\]"):
        evaluate_drift(_keys(), lambda_groups={"loc": "a", "nope": "a"})


def test_shared_lambda_loss_matches_reference():
    keys = _keys()
    loss, stats = drifting_loss(keys, DriftOptions(), lambda_groups=SHARED)
    ref_loss, ref_stats = reference_loss(keys, DriftOptions(), lambda_groups=SHARED)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-4, atol=0)
    own_loss, _ = drifting_loss(keys, DriftOptions())
    assert abs(loss.item() - own_loss.item()) > 1e-3  # the sharing changes the loss


@pytest.mark.parametrize("positives", [1, 3])
def test_text_to_image_loss_matches_reference(positives):
    """group = prompt x location; its positives are the prompt's paired image then its P - 1 extra
    positives at that location; the unconditional set is every prompt's paired image at that
    location, minus those with the same caption, weighted w_cfg (docs/method.md sections 5, 7)."""
    g = torch.Generator().manual_seed(5)
    B, G = 4, 3
    shapes = {"loc": (4, 6), "mean": (1, 6), "raw": (1, 20)}
    gen = {k: torch.randn(B * G, L, D, generator=g) for k, (L, D) in shapes.items()}
    real = {k: torch.randn(B, L, D, generator=g) for k, (L, D) in shapes.items()}
    extra = None
    if positives > 1:
        extra = {k: torch.randn(B, positives - 1, L, D, generator=g) + 0.2 for k, (L, D) in shapes.items()}
    alpha = torch.tensor([1.0, 1.5, 2.0, 3.5])
    ids = torch.tensor([0, 1, 0, 2])
    options = DriftOptions(temperatures=(0.05, 0.2), normalize=False, chunk_groups=3)  # normalize is forced
    loss, stats = text_to_image_drift_loss(
        gen, real, G, alpha, ids, options, key_weights={"raw": 0.5}, extra_positives=extra
    )

    valid = uncond_mask(ids)
    w_cfg = guidance_weight(alpha, G, valid.sum(1))
    keys = {}
    for k, (L, _) in shapes.items():
        gen_groups, _, bank, index = group_by_prompt(gen[k], real[k], G)
        pos_groups = torch.stack(  # written out group by group: row 0 the paired image
            [
                torch.cat([real[k][b, loc : loc + 1]] + ([] if extra is None else [extra[k][b, :, loc]]))
                for b in range(B)
                for loc in range(L)
            ]
        )
        assert pos_groups.shape[1] == positives
        neg = bank[index]  # [B*L, B, D]: the per-group copy the fast path never builds
        keys[k] = DriftGroups(
            gen_groups, pos_groups, neg, w_cfg.repeat_interleave(L)[:, None], valid.repeat_interleave(L, 0)
        )
    ref_loss, ref_stats = reference_loss(
        keys, DriftOptions(temperatures=(0.05, 0.2)), key_weights={"raw": 0.5}
    )
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-4, atol=0)
    assert list(stats) == list(ref_stats)
    for name, value in ref_stats.items():
        _close(stats[name], value, name, rtol=1e-4, atol=1e-9)


def test_extra_positives_of_the_wrong_shape_name_the_layout():
    gen, real = torch.randn(6, 2, 5), torch.randn(3, 2, 5)
    with pytest.raises(ValueError, match=r"extra positives must be \[B, P-1, L, D\]"):
        group_by_prompt(gen, real, 2, torch.randn(3, 2, 5))


@pytest.mark.parametrize("normalize", [False, True])
def test_reference_is_zero_at_equilibrium(normalize):
    """docs/method.md section 8 on the reference: no self-masking, unit weights, positives ==
    negatives -> V = 0 to float64 rounding."""
    gen = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    options = DriftOptions(normalize=normalize, mask_self=False)
    ref = reference_drift({"k": DriftGroups(gen, gen.clone())}, options)["k"]
    for v2 in ref.raw_v2.values():
        assert v2 < 1e-28
    if not normalize:  # normalization divides each V_tau by its (rounding-sized) RMS
        assert ref.field.abs().max() < 1e-14


def test_reference_is_antisymmetric():
    """docs/method.md section 8 on the reference: external negatives, unit weights; swapping the
    roles of positives and negatives negates V."""
    g = _groups(4, 5, 3, 3, 6, 7, weights=False)
    options = DriftOptions(gen_as_negatives=False)
    v = reference_drift({"k": g}, options)["k"].field
    swapped = reference_drift({"k": DriftGroups(g.gen, g.neg, g.pos)}, options)["k"].field
    assert v.abs().max() > 1e-3
    torch.testing.assert_close(swapped, -v, rtol=1e-12, atol=1e-14)


def test_reference_rejects_distributed():
    with pytest.raises(ValueError, match="distributed"):
        reference_drift(_keys(), DriftOptions(distributed=True))
