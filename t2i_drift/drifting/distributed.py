"""Pooling of the section-3 normalization scalars over all processes (METHOD.md section 3).

The feature scale and the per-temperature drift norms are means over the *global* batch. In a
distributed run each process holds a slice of the groups, so numerator and denominator are
summed across processes before dividing. This is the only communication the objective needs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def global_mean(
    total: torch.Tensor,
    count: torch.Tensor | float | int,
    *,
    distributed: bool = False,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """sum(total) / sum(count) over the processes of ``process_group`` (or locally).

    Args:
        total: scalar tensor, the local sum.
        count: the local number of terms (or the sum of local weights).
        distributed: all-reduce when True and torch.distributed is initialized.
        process_group: group to reduce over; None means the default (world) group.
    Returns:
        scalar fp32 tensor on ``total``'s device.
    """
    pair = torch.stack(
        [total.detach().float().reshape(()), torch.as_tensor(count, dtype=torch.float32, device=total.device)]
    )
    if distributed and dist.is_available() and dist.is_initialized():
        dist.all_reduce(pair, op=dist.ReduceOp.SUM, group=process_group)
    return pair[0] / pair[1].clamp_min(1e-12)
