"""Paired retrieval accuracy: a prompt-adherence proxy that needs no text-image model.

For N captions with one real image each, generate one image per caption and ask, in a frozen image
feature space, whether the generated image's nearest real image (cosine similarity among the N real
images) is the one paired with its caption. Top-k accuracy is the fraction of captions whose paired
image is among the k nearest. Chance is k / N. It rewards images that look like their own caption's
image more than like the other N - 1, which an unconditional generator cannot do.
"""

from __future__ import annotations

import numpy as np


def paired_retrieval_accuracy(
    generated: np.ndarray, real: np.ndarray, ks: tuple[int, ...] = (1, 5)
) -> dict[int, float]:
    """Top-k paired retrieval accuracy.

    Args:
        generated: [N, F] features of the image generated for caption i.
        real: [N, F] features of caption i's real image.
        ks: the k values.
    Returns:
        k -> accuracy in [0, 1].
    """
    if generated.shape != real.shape or generated.ndim != 2:
        raise ValueError(f"generated {generated.shape} and real {real.shape} must both be [N, F]")
    g = generated / np.linalg.norm(generated, axis=1, keepdims=True).clip(1e-12)
    r = real / np.linalg.norm(real, axis=1, keepdims=True).clip(1e-12)
    sim = g @ r.T  # [N, N]
    # rank of the paired image = how many real images are strictly more similar than it
    rank = (sim > np.diag(sim)[:, None]).sum(axis=1)
    return {k: float((rank < k).mean()) for k in ks}
