"""Chunked, key-batched evaluation of the field: the same numbers as one big evaluation, within a
memory budget (docs/method.md section 3 scalars stay pooled over every chunk and key)."""

import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from t2i_drift.drifting import DriftGroups, DriftOptions, drifting_loss, evaluate_drift
from t2i_drift.drifting.chunking import bytes_per_group, cache_bytes, plan_chunks

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def one_thread():
    """Bitwise comparisons need one thread: with several, a reduction over one group may be split
    differently depending on how many groups a call holds (a few ulp apart)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _groups(num_groups, n, m, p, D, seed, masked=True):
    g = torch.Generator().manual_seed(seed)
    return DriftGroups(
        gen=torch.randn(num_groups, n, D, generator=g),
        pos=torch.randn(num_groups, p, D, generator=g) - 0.2,
        neg=torch.randn(num_groups, m, D, generator=g) + 0.3,
        neg_weights=torch.rand(num_groups, m, generator=g) * 2,
        neg_mask=(torch.rand(num_groups, m, generator=g) > 0.2) if masked else None,
    )


def _keys():
    # "a" and "b" share a group shape (one kernel call); "c" has its own.
    return {
        "a": _groups(37, 8, 12, 2, 16, 0),
        "b": _groups(11, 8, 12, 2, 16, 1),
        "c": _groups(5, 4, 3, 1, 7, 2),
    }


def _assert_same(out, ref, exact):
    for name in ref:
        pairs = [(out[name].field, ref[name].field), (out[name].scale, ref[name].scale)]
        pairs += [(out[name].nearest_pos, ref[name].nearest_pos), (out[name].spread, ref[name].spread)]
        pairs += [(out[name].raw_v2[t], ref[name].raw_v2[t]) for t in ref[name].raw_v2]
        for a, b in pairs:
            if exact:
                assert torch.equal(a, b) or (a.isnan().all() and b.isnan().all()), name
            else:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("chunk_groups", [1, 3, 16, 1000])
def test_chunked_equals_unchunked_bitwise(normalize, chunk_groups):
    keys = _keys()
    with one_thread():
        ref = evaluate_drift(keys, DriftOptions(normalize=normalize))
        out = evaluate_drift(keys, DriftOptions(normalize=normalize, chunk_groups=chunk_groups))
    _assert_same(out, ref, exact=True)


def test_chunked_equals_unchunked_multithreaded():
    keys = _keys()
    ref = evaluate_drift(keys)
    for chunk_groups in (1, 7):
        _assert_same(evaluate_drift(keys, DriftOptions(chunk_groups=chunk_groups)), ref, exact=False)


def test_recomputing_pass_equals_cached():
    """A budget too small to cache coefficients between passes takes the recompute path."""
    keys = _keys()
    plan = plan_chunks(48, 8, 12, 2, 16, 3, memory_budget=4096)
    assert not plan.cache and plan.chunk_groups == 1
    with one_thread():
        ref = evaluate_drift(keys)
        out = evaluate_drift(keys, DriftOptions(memory_budget=4096))
    _assert_same(out, ref, exact=True)


def test_batched_keys_equal_separate_keys():
    keys = _keys()
    with one_thread():
        together = evaluate_drift(keys)
        for name, g in keys.items():
            _assert_same(evaluate_drift({name: g}), {name: together[name]}, exact=True)
    # Each key keeps its own normalization: the scalars differ between keys of one batch.
    assert not torch.isclose(together["a"].scale, together["b"].scale)


def test_shared_negative_bank_equals_explicit_negatives():
    g = torch.Generator().manual_seed(3)
    bank = torch.randn(4, 6, 5, generator=g)  # 4 locations x 6 unconditional images
    index = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 3])
    gen, pos = torch.randn(9, 3, 5, generator=g), torch.randn(9, 1, 5, generator=g)
    w = torch.rand(9, 1, generator=g)
    with one_thread():
        shared = evaluate_drift(
            {"k": DriftGroups(gen, pos, bank, w, neg_index=index)}, DriftOptions(chunk_groups=2)
        )
        explicit = evaluate_drift({"k": DriftGroups(gen, pos, bank[index], w)})
    _assert_same(shared, explicit, exact=True)


def test_losses_sum_keys_with_weights_and_gradients():
    keys = _keys()
    for g in keys.values():
        g.gen.requires_grad_(True)
    total, stats = drifting_loss(keys, DriftOptions(chunk_groups=5), key_weights={"b": 0.5})
    expected = stats["loss/a"] + 0.5 * stats["loss/b"] + stats["loss/c"]
    torch.testing.assert_close(total.detach(), expected)
    total.backward()
    # d/dx mean((x~ - sg(x~ + V))^2) with x~ = x / s_in is -2 V / (s_in * numel), per key.
    results = evaluate_drift(keys)
    for name, weight in (("a", 1.0), ("b", 0.5)):
        r = results[name]
        grad = -2 * weight * r.field / (r.feature_scale * r.field.numel())
        torch.testing.assert_close(keys[name].gen.grad, grad, rtol=1e-4, atol=1e-9)
    assert {"a/v2/tau=0.02", "b/scale", "c/spread", "c/nearest_pos"} <= set(stats)


def test_errors_name_the_key_and_argument():
    bad = _groups(4, 3, 2, 1, 5, 0)
    bad.neg_weights = torch.ones(4, 3)  # m is 2
    with pytest.raises(ValueError, match=r"'effnet.b2/loc'.*neg_weights"):
        evaluate_drift({"ok": _groups(4, 3, 2, 1, 5, 1), "effnet.b2/loc": bad})
    bank_key = _groups(4, 3, 2, 1, 5, 0)
    bank_key.neg_index = torch.tensor([0, 1, 2, 9])
    with pytest.raises(ValueError, match=r"'k'.*neg_index"):
        evaluate_drift({"k": bank_key})
    with pytest.raises(ValueError, match="temperatures"):
        evaluate_drift({"k": _groups(4, 3, 2, 1, 5, 0)}, DriftOptions(temperatures=(0.1, -1.0)))
    with pytest.raises(ValueError, match="memory_budget"):
        evaluate_drift({"k": _groups(4, 3, 2, 1, 5, 0)}, DriftOptions(memory_budget=0))
    with pytest.raises(ValueError, match="at least one feature key"):
        evaluate_drift({})


def test_plan_respects_budget():
    n, m, p, D, T = 16, 31, 1, 256, 3
    per_group = bytes_per_group(n, m, p, D, T)
    everything = plan_chunks(4096, n, m, p, D, T, memory_budget=per_group * 4096)
    assert everything.num_chunks == 1
    budget = 128 * 2**20
    plan = plan_chunks(4096, n, m, p, D, T, memory_budget=budget)
    assert plan.cache and plan.num_chunks > 1
    assert plan.chunk_groups * per_group + cache_bytes(4096, n, m, p, T) <= budget
    small = plan_chunks(4096, n, m, p, D, T, memory_budget=budget // 4)  # cache does not fit: recompute
    assert not small.cache and small.chunk_groups * per_group <= budget // 4
    assert plan_chunks(4096, n, m, p, D, T).num_chunks == 1  # no budget: one chunk


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_measured_peak_memory_stays_within_budget():
    """scripts/bench_drift.py's fresh-process measurement: unchunked needs far more than the budget,
    the chunked call stays under it.

    One BLAS thread: with several, each thread's GEMM packing workspace (a few MiB, outside what the
    planner budgets) made the peak vary between 28 and 34 MiB from run to run on 2 cores."""
    import os

    size, budget = [2048, 16, 31, 1, 256], 32 * 2**20

    def peak(b):
        spec = json.dumps([size, "field", b, False])
        cmd = [sys.executable, str(ROOT / "scripts" / "bench_drift.py"), "--measure", spec]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=env)
        return int(out.stdout.strip().splitlines()[-1])

    assert peak(None) > 2 * budget
    assert peak(budget) <= budget


def test_compiled_kernel_matches_eager():
    keys = {"a": _groups(6, 4, 5, 1, 8, 0), "b": _groups(3, 4, 2, 2, 8, 1, masked=False)}
    ref = evaluate_drift(keys, DriftOptions(chunk_groups=4))
    out = evaluate_drift(keys, DriftOptions(chunk_groups=4, compile=True))
    _assert_same(out, ref, exact=False)
