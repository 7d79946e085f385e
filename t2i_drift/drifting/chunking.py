"""Memory planning for the chunked field evaluation: how many groups fit in a byte budget.

The evaluator in ``bucket.py`` processes groups in chunks so that its working memory stays under a
budget whatever the batch size. The estimate below counts, per group, the fp32 tensors alive at the
peak of one chunk: the chunk's inputs (copies when gathered from a shared bank or cast from another
dtype), then the larger of two stages:

    inputs           x, u, y                                          (n + m + p) * D
    coefficients     distances, their normalized copy, logits and     2 * n * N + 3 * T * n * N
                     the two softmaxes (kernel.py, in place after)
    field norms      distances, coefficients and one V_tau per        n * N + T * n * N + T * n * D
                     temperature (squared in place for its norm)

With more than one chunk, the evaluator walks the groups three times (scale, norms of V_tau, field).
It caches the distances and coefficients between passes (fixed [groups, n, N] + [groups, T, n, N] buffers)
when they fit in half the budget, and recomputes them otherwise (slower, bounded memory).
``scripts/bench_drift.py`` measures the real peak against the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

_FLOAT_BYTES = 4
# The tensors counted above are not the whole story: freed blocks the allocator keeps (glibc raises
# its mmap threshold after large frees) and small temporaries. Measured peaks reached 1.17x the
# count at a budget that was filled exactly, so plan with 25% slack.
_ALLOCATOR_SLACK = 1.25


def bytes_per_group(n: int, m: int, p: int, D: int, num_temperatures: int) -> int:
    """Estimated peak working memory of one group in one chunk (fp32 bytes)."""
    N = n + m + p
    T = num_temperatures
    coefficients = 2 * n * N + 3 * T * n * N
    field_norms = n * N + T * n * N + T * n * D
    floats = (n + m + p) * D + max(coefficients, field_norms)
    return int(_ALLOCATOR_SLACK * _FLOAT_BYTES * floats)


def cache_bytes(total_groups: int, n: int, m: int, p: int, num_temperatures: int) -> int:
    """Bytes of the distances and coefficients of all groups, kept between passes."""
    N = n + m + p
    return _FLOAT_BYTES * total_groups * n * N * (1 + num_temperatures)


@dataclass(frozen=True)
class ChunkPlan:
    """How the evaluator walks the groups.

    Attributes:
        chunk_groups: groups per chunk (the last chunk may be smaller).
        num_chunks: ceil(total_groups / chunk_groups).
        cache: keep distances and coefficients between passes instead of recomputing them.
            Irrelevant with a single chunk (everything stays alive).
    """

    chunk_groups: int
    num_chunks: int
    cache: bool


def plan_chunks(
    total_groups: int,
    n: int,
    m: int,
    p: int,
    D: int,
    num_temperatures: int,
    memory_budget: int | None = None,
    chunk_groups: int | None = None,
) -> ChunkPlan:
    """Choose the chunk size for ``total_groups`` groups.

    Args:
        total_groups: groups of all keys evaluated together.
        n, m, p, D: group shape (generated, extra negatives, positives, feature dim).
        num_temperatures: T.
        memory_budget: bytes of working memory allowed; None means one chunk (no bound).
        chunk_groups: explicit groups per chunk; overrides ``memory_budget`` for the chunk size.
    Returns:
        the plan. A budget smaller than one group's needs still yields chunks of one group.
    """
    if memory_budget is not None and memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
    if chunk_groups is not None and chunk_groups <= 0:
        raise ValueError(f"chunk_groups must be positive, got {chunk_groups}")
    total_groups = max(total_groups, 1)
    stored = cache_bytes(total_groups, n, m, p, num_temperatures)
    if chunk_groups is None:
        if memory_budget is None:
            return ChunkPlan(total_groups, 1, True)
        per_group = bytes_per_group(n, m, p, D, num_temperatures)
        if per_group * total_groups <= memory_budget:
            return ChunkPlan(total_groups, 1, True)
        store = stored <= memory_budget // 2
        available = memory_budget - stored if store else memory_budget
        chunk_groups = max(1, available // per_group)
    else:
        store = memory_budget is None or stored <= memory_budget // 2
    chunk_groups = min(chunk_groups, total_groups)
    return ChunkPlan(chunk_groups, -(-total_groups // chunk_groups), store)
