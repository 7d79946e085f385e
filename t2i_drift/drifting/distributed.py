"""Pooling of the section-3 normalization scalars over all processes (docs/method.md section 3).

The feature scale and the per-temperature drift norms are means over the *global* batch. In a
distributed run each process holds a slice of the groups, so numerators and denominators are
summed across processes before dividing. This is the only communication the objective needs: two
all-reduces per group shape per step (one for the scales and diagnostics, one for the drift norms),
whatever the number of feature keys.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_reduce_sum(
    tensor: torch.Tensor,
    *,
    distributed: bool = False,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Sum of ``tensor`` over the processes of ``process_group`` (or the tensor itself, locally).

    Args:
        tensor: local partial sums, any shape (fp32 recommended).
        distributed: all-reduce when True and torch.distributed is initialized.
        process_group: group to reduce over; None means the default (world) group.
    Returns:
        a new tensor of the same shape; the input is not modified.
    """
    out = tensor.detach().clone()
    if distributed and dist.is_available() and dist.is_initialized():
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=process_group)
    return out
