"""The drifting field V (docs/method.md sections 2 and 3), batched over groups and feature keys.

Everything is batched over *groups* (one condition at one feature location); there is no Python
loop over groups. Notation, as in docs/method.md section 2:

    x  = gen  [groups, n, D]   generated features; also the (self-masked) negatives
    u  = neg  [groups, m, D]   extra negatives (unconditional real data), per-target weight w_cfg
    y  = pos  [groups, p, D]   positives (real data of this condition)
    t  = concat[x, u, y]       [groups, N, D] targets, N = n + m + p

One *feature key* (section 3) is a set of groups that share the normalization scalars.
:func:`evaluate_drift` evaluates several keys at once: keys whose groups have the same shape are
concatenated along the group axis and evaluated together (:class:`~t2i_drift.drifting.bucket.Bucket`),
each group carrying its key's scalars. All drift math runs in float32, whatever the input dtype or
an enclosing autocast region. :mod:`t2i_drift.drifting.reference` is the same estimator written
one group at a time, to test this one against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from t2i_drift.drifting.bucket import Bucket
from t2i_drift.drifting.groups import DriftGroups, PreparedKey, prepare_key
from t2i_drift.drifting.options import DEFAULT_OPTIONS, DEFAULT_TEMPERATURES, DriftOptions
from t2i_drift.drifting.result import DriftResult

__all__ = ["drifting_field", "evaluate_drift"]


def evaluate_drift(
    keys: Mapping[str, DriftGroups],
    options: DriftOptions = DEFAULT_OPTIONS,
    lambda_groups: Mapping[str, str] | None = None,
) -> dict[str, DriftResult]:
    """The field and diagnostics of several feature keys; each key has its own section-3 scalars.

    Args:
        keys: key name -> its groups (:class:`~t2i_drift.drifting.groups.DriftGroups`). Keys with
            the same group shape (n, m, p, D) share one kernel call per chunk.
        options: see :class:`~t2i_drift.drifting.options.DriftOptions`.
        lambda_groups: key name -> label. Keys with the same label share the field normalization
            lambda_tau = sqrt(mean over those keys of mean(V_tau^2)) instead of each using its own
            (docs/method.md section 3). The keys' fields then keep their relative sizes (a key
            already matched gets a small field) while, per temperature, sum over the keys of
            mean((V_tau / lambda_tau)^2) is still their number. Keys not named keep their own
            lambda; None: every key its own (the method).
    Returns:
        key -> :class:`~t2i_drift.drifting.result.DriftResult`, in the order of ``keys``; each
        field is [groups, n, D] fp32 and detached (no gradient ever flows through V).
    """
    if not keys:
        raise ValueError("at least one feature key is needed")
    if lambda_groups is not None and not set(lambda_groups) <= set(keys):
        raise ValueError(
            f"lambda_groups names unknown feature keys: {sorted(set(lambda_groups) - set(keys))}"
        )
    prepared = [prepare_key(name, groups) for name, groups in keys.items()]
    buckets: dict[tuple, list[PreparedKey]] = {}
    for key in prepared:  # insertion order: identical on every process, so collectives match
        buckets.setdefault(key.signature, []).append(key)
    out: dict[str, DriftResult] = {}
    with torch.no_grad(), torch.autocast(device_type=prepared[0].gen.device.type, enabled=False):
        if not _shares_lambda(lambda_groups):
            for bucket_keys in buckets.values():
                for key, result in zip(bucket_keys, Bucket(bucket_keys, options).evaluate(), strict=True):
                    out[key.name] = result
        else:
            assert lambda_groups is not None
            evaluated = []
            for bucket_keys in buckets.values():
                bucket = Bucket(bucket_keys, options)
                raw_v2 = bucket.norms()  # [keys of the bucket, T]
                if len(buckets) > 1:  # pass 3 waits for every bucket: keep one cache alive at a time
                    bucket.release()
                evaluated.append((bucket, raw_v2))
            rows = {key.name: raw_v2[k] for bucket, raw_v2 in evaluated for k, key in enumerate(bucket.keys)}
            lambda_v2 = _pooled_over_labels(rows, lambda_groups)
            for bucket, raw_v2 in evaluated:
                shared = torch.stack([lambda_v2[key.name] for key in bucket.keys])
                for key, result in zip(bucket.keys, bucket.results(raw_v2, shared), strict=True):
                    out[key.name] = result
    return {name: out[name] for name in keys}


def _shares_lambda(lambda_groups: Mapping[str, str] | None) -> bool:
    """True when some label names two keys or more (otherwise every key keeps its own lambda)."""
    if not lambda_groups:
        return False
    return len(set(lambda_groups.values())) < len(lambda_groups)


def _pooled_over_labels(
    rows: dict[str, torch.Tensor], lambda_groups: Mapping[str, str]
) -> dict[str, torch.Tensor]:
    """key -> [T] mean of ``rows`` over the keys of its label (its own row when unlabelled).

    The mean runs over keys (in the fixed order of ``rows``), not over their elements, so every
    key counts once whatever its number of groups: per temperature, the label's keys' mean
    squared normalized fields sum to their number, as with one lambda per key.
    """
    pooled = {
        label: torch.stack([row for name, row in rows.items() if lambda_groups.get(name) == label]).mean(0)
        for label in set(lambda_groups.values())
    }
    return {name: pooled[lambda_groups[name]] if name in lambda_groups else row for name, row in rows.items()}


def drifting_field(
    gen: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor | None = None,
    neg_weights: torch.Tensor | float | None = None,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    normalize: bool = True,
    *,
    neg_mask: torch.Tensor | None = None,
    neg_index: torch.Tensor | None = None,
    **option_overrides: Any,
) -> torch.Tensor:
    """The drifting field V of one feature key (docs/method.md sections 2 and 3).

    A convenience over :func:`evaluate_drift` for a single key; the arguments are the fields of
    :class:`~t2i_drift.drifting.groups.DriftGroups` and of
    :class:`~t2i_drift.drifting.options.DriftOptions`.

    Args:
        gen: [groups, n, D] generated features; also the negatives, each self-masked.
        pos: [groups, p, D] positives y.
        neg: [groups, m, D] extra negatives u, or None; with ``neg_index`` a bank [M, m, D].
        neg_weights: per-target weights of ``neg`` (w_cfg), broadcastable to [groups, m].
        temperatures, normalize: as in ``DriftOptions``.
        neg_mask: bool broadcastable to [groups, m]; False removes that target entirely.
        neg_index: [groups] integer; group g uses ``neg[neg_index[g]]``.
        **option_overrides: any other ``DriftOptions`` field (``mask_self``, ``memory_budget``, ...).
    Returns:
        [groups, n, D] float32 field, detached.
    """
    options = DriftOptions(temperatures=temperatures, normalize=normalize, **option_overrides)
    groups = DriftGroups(gen, pos, neg, neg_weights, neg_mask, neg_index)
    return evaluate_drift({"": groups}, options)[""].field
