"""Full (unsharded) training state from any topology, and back.

Checkpoints hold full tensors keyed by parameter name, whatever wrote them: one process, DDP,
FSDP2 (Accelerate ``fsdp_version: 2``, full or hybrid shard), whose parameters, EMA shadows and
optimizer moments are ``DTensor`` shards, or DeepSpeed ZeRO 1-3 (training/zero.py). Gathering
makes a checkpoint resumable on any other topology (train on 8 GPUs with FSDP, resume or export
on one) and keeps the single-file safetensors format; it costs one all-gather per tensor at save
time, one tensor at a time, and the main process's host memory for the full state (about 16
bytes per parameter with AdamW and EMA), which is fine up to a few billion parameters.

Every function that gathers is collective: all processes call it, in the same order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.tensor import DTensor, distribute_tensor

from t2i_drift.training import zero


def is_sharded(module: torch.nn.Module) -> bool:
    """Whether ``module``'s parameters are shards (FSDP2 DTensors, ZeRO-3 partitions): its forward
    then needs every process, and whole values need gathering."""
    return any(isinstance(p, DTensor) for p in module.parameters()) or zero.is_partitioned(module)


def parameter_count(module: torch.nn.Module) -> int:
    """Parameters of the whole model (a ZeRO-3 partition counts its full size; DTensors do)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters())


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """The full value of ``tensor`` on the CPU (collective for a DTensor: all-gather)."""
    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().contiguous().cpu()


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` laid out like ``like``: this process's shard when ``like`` is a DTensor (taken from
    the local full copy, no communication), else ``full`` on ``like``'s device and dtype."""
    if isinstance(like, DTensor):
        full = full.to(device=like.device, dtype=like.dtype)
        return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)
    return full.to(device=like.device, dtype=like.dtype)


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with every tensor gathered to the CPU (collective); ZeRO
    parameters give their fp32 masters."""
    return {
        name: zero.full_fp32(value) if zero.is_zero_parameter(value) else gather(value)
        for name, value in module.state_dict(keep_vars=True).items()
    }


def load_full_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load full tensors into ``module`` (sharded or not); ``where`` names the source in errors."""
    current = module.state_dict(keep_vars=True)
    missing = sorted(set(current) - set(state))
    unexpected = sorted(set(state) - set(current))
    if missing or unexpected:
        raise ValueError(f"{where} does not match the model: missing {missing}, unexpected {unexpected}")
    if zero.uses_zero(module):
        zero.load_weights(module, state)
        return
    module.load_state_dict({name: shard_like(state[name], current[name]) for name in current})


def _param_names(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each parameter of ``optimizer``, in its param_groups order."""
    by_id = {id(p): name for name, p in module.named_parameters()}
    names = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in by_id:
                raise ValueError("the optimizer holds a parameter that is not in the model")
            names.append(by_id[id(p)])
    return names


def full_optimizer_state(
    module: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimizer's state as (tensors keyed ``<param name>:<state name>``, JSON-able meta with
    the param groups, whose ``params`` are names, and the non-tensor state). Collective."""
    if zero.uses_zero(module):
        return zero.optimizer_state(module, optimizer)
    names = _param_names(module, optimizer)
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(names):
        for key, value in sorted(state_dict["state"].get(index, {}).items()):
            if isinstance(value, torch.Tensor):
                tensors[f"{name}:{key}"] = gather(value)
            else:
                scalars.setdefault(name, {})[key] = value
    groups, start = [], 0
    for group in state_dict["param_groups"]:
        count = len(group["params"])
        groups.append({**group, "params": names[start : start + count]})
        start += count
    return tensors, {"format": "by-name", "param_groups": groups, "scalars": scalars}


def load_full_optimizer_state(
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    where: str,
) -> None:
    """Restore what :func:`full_optimizer_state` returned, sharding each moment like its
    parameter; ``where`` names the source in errors."""
    if zero.uses_zero(module):
        zero.load_optimizer_state(module, optimizer, tensors, meta, where)
        return
    names = _param_names(module, optimizer)
    saved = [name for group in meta["param_groups"] for name in group["params"]]
    if saved != names:
        raise ValueError(
            f"{where}: the optimizer's parameters {sorted(set(saved) ^ set(names))[:5]} differ "
            "between the checkpoint and this model (or their grouping changed)"
        )
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for index, (name, param) in enumerate(zip(names, params, strict=True)):
        entry: dict[str, Any] = dict(meta["scalars"].get(name, {}))
        prefix = f"{name}:"
        for key, value in tensors.items():
            if key.startswith(prefix):
                # 0-d values (AdamW's step) stay plain tensors: torch keeps them on the CPU.
                entry[key[len(prefix) :]] = shard_like(value, param) if value.dim() else value
        if entry:
            state[index] = entry
    groups, start = [], 0
    for group in meta["param_groups"]:
        count = len(group["params"])
        groups.append({**group, "params": list(range(start, start + count))})
        start += count
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def full_tensors(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor gathered to the CPU (collective)."""
    return [gather(t) for t in tensors]


def unsharded_class(module: torch.nn.Module) -> type:
    """The model's own class: FSDP2 swaps a sharded module's class for a subclass of it
    (``FSDP<Name>``), whose name must not reach config files or ``from_config``."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule))


def describe_sharding(module: torch.nn.Module) -> str:
    """How ``module`` is sharded, for the start-of-run line ("" when it is not): the device mesh
    and the placement of its first sharded parameter, e.g. ``FSDP2 mesh (2, 2): Replicate,
    Shard(dim=0)`` for hybrid sharding over 2 groups of 2."""
    for p in module.parameters():
        if isinstance(p, DTensor):
            placements = ", ".join(str(pl) for pl in p.placements)
            return f"FSDP2 mesh {tuple(p.device_mesh.shape)}: {placements}"
    return ""


def check_topology(accelerator: Any) -> None:
    """Refuse, before training, FSDP1, whose flat parameters this trainer cannot save whole;
    FSDP2 covers it (``fsdp_version: 2``)."""
    from t2i_drift.training.config import ConfigError

    kind = getattr(accelerator.distributed_type, "name", str(accelerator.distributed_type))
    if kind == "FSDP" and accelerator.state.fsdp_plugin.fsdp_version != 2:
        raise ConfigError(
            "accelerate config: fsdp_version 1 is not supported; set fsdp_config.fsdp_version: 2 "
            "(recipes/accelerate/fsdp.yaml)"
        )
