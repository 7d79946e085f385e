"""The inputs of one feature key, and their validation.

A *group* is one condition at one feature location (docs/method.md section 2); a *feature key* is
a set of groups that share the section-3 normalization scalars. Notation, as in docs/method.md:

    x  = gen  [groups, n, D]   generated features; also the (self-masked) negatives
    u  = neg  [groups, m, D]   extra negatives (unconditional real data), per-target weight w_cfg
    y  = pos  [groups, p, D]   positives (real data of this condition)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DriftGroups", "PreparedKey", "prepare_key"]


@dataclass
class DriftGroups:
    """The groups of one feature key (docs/method.md section 2).

    Attributes:
        gen: [groups, n, D] generated features x (the loss's gradient flows into these).
        pos: [groups, p, D] positives y, p >= 1.
        neg: extra negatives u: [groups, m, D], or with ``neg_index`` a bank [M, m, D] shared by
            groups (group g uses ``neg[neg_index[g]]``; the per-group copy is only made chunk by
            chunk). None: no extra negatives.
        neg_weights: per-target weights w of ``u`` (w_cfg), broadcastable to [groups, m]; default 1.
        neg_mask: bool broadcastable to [groups, m]; False removes that target from the group
            entirely (both softmaxes and the weights), e.g. real images whose caption equals this
            prompt.
        neg_index: [groups] integer tensor, see ``neg``.
    """

    gen: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor | None = None
    neg_weights: torch.Tensor | float | None = None
    neg_mask: torch.Tensor | None = None
    neg_index: torch.Tensor | None = None


@dataclass
class PreparedKey:
    """One key's inputs, validated and detached, weights and mask broadcast to [groups, m] (views).

    Attributes:
        name: the key ("" for a single anonymous key; error messages then name no key).
        gen: [groups, n, D] detached x.
        pos: [groups, p, D] detached y.
        neg: [groups, m, D] detached u, or a bank [M, m, D] with ``neg_index``; None without u.
        neg_index: [groups] long on ``neg``'s device, or None.
        weights: [groups, m] fp32 w_cfg (a broadcast view; masked entries are zeroed chunk by chunk).
        valid: [groups, m] bool, or None when nothing is masked.
    """

    name: str
    gen: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor | None
    neg_index: torch.Tensor | None
    weights: torch.Tensor
    valid: torch.Tensor | None

    @property
    def signature(self) -> tuple:
        """(n, m, p, D, device, has extra negatives): keys with equal signatures share kernel calls."""
        _, n, D = self.gen.shape
        m = 0 if self.neg is None else self.neg.shape[1]
        return (n, m, self.pos.shape[1], D, self.gen.device, self.neg is not None)


def prepare_key(name: str, groups: DriftGroups) -> PreparedKey:
    """Validate one key's inputs; errors name the key and the argument at fault."""
    gen, pos, neg = groups.gen, groups.pos, groups.neg
    where = f"feature key {name!r}: " if name else ""
    if gen.dim() != 3:
        raise ValueError(f"{where}gen must be [groups, n, D], got shape {tuple(gen.shape)}")
    num_groups, _, D = gen.shape
    if pos.dim() != 3 or pos.shape[0] != num_groups or pos.shape[2] != D:
        raise ValueError(
            f"{where}pos must be [groups, p, D] with groups={num_groups} and D={D} as in gen, "
            f"got shape {tuple(pos.shape)}"
        )
    if pos.shape[1] == 0:
        raise ValueError(f"{where}pos has no positives (shape {tuple(pos.shape)})")
    index = groups.neg_index
    if neg is None:
        for arg in ("neg_weights", "neg_mask", "neg_index"):
            if getattr(groups, arg) is not None:
                raise ValueError(f"{where}{arg} was given without neg")
        m = 0
    else:
        if index is not None:
            if index.shape != (num_groups,) or index.dtype not in (torch.int32, torch.int64):
                raise ValueError(
                    f"{where}neg_index must be an integer tensor of shape [groups] = [{num_groups}], "
                    f"got {index.dtype} of shape {tuple(index.shape)}"
                )
            if neg.dim() != 3 or neg.shape[2] != D:
                raise ValueError(f"{where}neg must be a bank [M, m, D] with D={D}, got {tuple(neg.shape)}")
            # Range check on CPU only: on an accelerator it would sync the device every step, and
            # an out-of-range gather fails there with a device-side assert anyway.
            if (
                num_groups
                and index.device.type == "cpu"
                and (int(index.min()) < 0 or int(index.max()) >= neg.shape[0])
            ):
                raise ValueError(f"{where}neg_index has entries outside [0, {neg.shape[0]})")
            index = index.to(device=neg.device, dtype=torch.long)
        elif neg.dim() != 3 or neg.shape[0] != num_groups or neg.shape[2] != D:
            raise ValueError(
                f"{where}neg must be [groups, m, D] with groups={num_groups} and D={D} as in gen, "
                f"got shape {tuple(neg.shape)}"
            )
        m = neg.shape[1]
    weights = torch.ones((), device=gen.device).expand(num_groups, m)
    if groups.neg_weights is not None:
        w = torch.as_tensor(groups.neg_weights, dtype=torch.float32, device=gen.device)
        try:
            weights = torch.broadcast_to(w, (num_groups, m))
        except RuntimeError as err:
            raise ValueError(
                f"{where}neg_weights of shape {tuple(w.shape)} does not broadcast to "
                f"[groups, m] = [{num_groups}, {m}]"
            ) from err
    valid = None
    if groups.neg_mask is not None:
        try:
            valid = torch.broadcast_to(
                groups.neg_mask.to(device=gen.device, dtype=torch.bool), (num_groups, m)
            )
        except RuntimeError as err:
            raise ValueError(
                f"{where}neg_mask of shape {tuple(groups.neg_mask.shape)} does not broadcast to "
                f"[groups, m] = [{num_groups}, {m}]"
            ) from err
    return PreparedKey(
        name=name,
        gen=gen.detach(),
        pos=pos.detach(),
        neg=None if neg is None else neg.detach(),
        neg_index=index,
        weights=weights,
        valid=valid,
    )
