"""Evaluation metrics: paired retrieval accuracy (prompt adherence proxy)."""

import numpy as np
import pytest

from t2i_drift.eval import paired_retrieval_accuracy


def test_paired_retrieval_accuracy():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 16))
    assert paired_retrieval_accuracy(real + 0.01 * rng.normal(size=real.shape), real) == {1: 1.0, 5: 1.0}
    shuffled = paired_retrieval_accuracy(real[rng.permutation(200)], real, ks=(1, 20))
    assert shuffled[1] < 0.05 and shuffled[20] < 0.25  # about chance: 1/200 and 20/200
    # one caption whose image is generated as another caption's: top-1 drops by exactly 1/N
    swapped = real.copy()
    swapped[0] = real[1]
    assert paired_retrieval_accuracy(swapped, real)[1] == pytest.approx(199 / 200)
    with pytest.raises(ValueError, match="must both be"):
        paired_retrieval_accuracy(real, real[:10])
