"""The drifting loss: sum over feature keys of mean((x~ - stopgrad(x~ + V))^2) (docs/method.md 1, 3)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from t2i_drift.drifting.field import evaluate_drift
from t2i_drift.drifting.groups import DriftGroups
from t2i_drift.drifting.options import DEFAULT_OPTIONS, DriftOptions
from t2i_drift.drifting.result import DriftResult

__all__ = ["drifting_loss", "key_stats"]


def _key_loss(gen: torch.Tensor, result: DriftResult) -> torch.Tensor:
    """mean((x~ - stopgrad(x~ + V))^2) with x~ = gen / s_in (s_in a constant), in fp32.

    Its value is mean(V^2); its gradient is -2 V / (s_in * numel), flowing only into ``gen``.
    """
    with torch.autocast(device_type=gen.device.type, enabled=False):
        x = gen.float() / result.feature_scale
        target = (x.detach() + result.field).detach()
        return F.mse_loss(x, target)


def key_stats(result: DriftResult) -> dict[str, torch.Tensor]:
    """The logged statistics of one key: ``v2/tau=<tau>``, ``scale``, ``nearest_pos``, ``spread``."""
    stats = {f"v2/tau={tau:g}": v for tau, v in result.raw_v2.items()}
    stats.update(scale=result.scale, nearest_pos=result.nearest_pos, spread=result.spread)
    return stats


def drifting_loss(
    keys: Mapping[str, DriftGroups],
    options: DriftOptions = DEFAULT_OPTIONS,
    key_weights: Mapping[str, float] | None = None,
    lambda_groups: Mapping[str, str] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum over feature keys of the drifting loss (docs/method.md section 3: loss = sum_key loss_key).

    The gradient reaches only each key's ``gen``. With ``options.normalize`` the per-key value is
    mean(V^2) = O(1), which never goes to 0: it is not a convergence signal, the logged raw
    ``v2/tau=<tau>`` is.

    Args:
        keys: key name -> its groups; keys of equal group shape share kernel calls.
        options: see :class:`~t2i_drift.drifting.options.DriftOptions`.
        key_weights: optional weight per key (default 1, the method's plain sum). A key's
            normalization is unchanged; the weight only scales its loss term.
        lambda_groups: keys that share one field normalization per temperature (key -> label),
            see :func:`~t2i_drift.drifting.field.evaluate_drift`; None: one per key.
    Returns:
        loss: scalar fp32 tensor.
        stats: ``loss/<key>`` (the unweighted loss term) and ``<key>/<stat>`` for the stats of
            :func:`key_stats`; detached 0-d tensors (convert with ``float`` when logging, not every
            step: each conversion waits for the device).
    """
    if key_weights is not None and not set(key_weights) <= set(keys):
        raise ValueError(f"key_weights names unknown feature keys: {sorted(set(key_weights) - set(keys))}")
    results = evaluate_drift(keys, options, lambda_groups)
    total: torch.Tensor | None = None
    stats: dict[str, torch.Tensor] = {}
    for name, result in results.items():
        loss = _key_loss(keys[name].gen, result)
        weight = 1.0 if key_weights is None else float(key_weights.get(name, 1.0))
        total = weight * loss if total is None else total + weight * loss
        stats[f"loss/{name}"] = loss.detach()
        stats.update({f"{name}/{stat}": value for stat, value in key_stats(result).items()})
    assert total is not None  # evaluate_drift rejects an empty mapping
    return total, stats
