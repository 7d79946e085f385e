"""DeepSpeed ZeRO (stages 1-3 through Accelerate): whole tensors in and out of its partitions.

ZeRO keeps the fp32 master weights and the AdamW moments as flat partitions inside its own
optimizer (whose parameter groups no longer hold the model's parameters), and under stage 3 the
module's parameters themselves are partitions that exist whole only inside a forward. DeepSpeed's
tensor-fragment API (``safe_get_full_fp32_param``, ``safe_get_full_optimizer_state`` and their
setters, all collective) maps each model parameter to its pieces; this module uses it so that a
ZeRO checkpoint has the same whole, name-keyed tensors as every other topology's
(training/sharding.py), and adds what the trainer needs around it: the run's settings in the
DeepSpeed config, and whole parameters for the EMA under stage 3.

DeepSpeed is imported only when a run uses it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

MOMENT_KEYS = ("exp_avg", "exp_avg_sq")  # AdamW's per-parameter tensors


def is_zero_parameter(param: torch.Tensor) -> bool:
    """Whether DeepSpeed manages ``param`` (stage 3: ``ds_id``; stages 1-2: ``_hp_mapping``)."""
    return hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")


def uses_zero(module: torch.nn.Module) -> bool:
    return any(is_zero_parameter(p) for p in module.parameters())


def is_partitioned(module: torch.nn.Module) -> bool:
    """Whether the module's own parameters are partitions (ZeRO stage 3)."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def full_fp32(param: torch.Tensor) -> torch.Tensor:
    """The whole fp32 master value of a ZeRO parameter, on the CPU (collective)."""
    from deepspeed.utils import safe_get_full_fp32_param

    return safe_get_full_fp32_param(param).detach().contiguous().cpu()


@contextlib.contextmanager
def whole_parameters(module: torch.nn.Module) -> Iterator[None]:
    """Inside, a stage-3 module's parameters are whole (gathered on every process; collective),
    read-only: what the EMA reads. Other modules: nothing happens."""
    partitioned = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
        yield


@contextlib.contextmanager
def hidden_from_transformers(accelerator: Any) -> Iterator[None]:
    """Inside, transformers and diffusers do not see the run's ZeRO-3. Accelerate registers the
    DeepSpeed config with transformers, which then partitions every model it loads (frozen text
    encoders included, whose forward outside a DeepSpeed engine fails; only the trained model is
    partitioned, by ``prepare``), and diffusers' EMA then gathers parameters itself (with a
    DeepSpeed it never imported; :func:`whole_parameters` gathers them instead)."""
    if getattr(accelerator.distributed_type, "name", "") != "DEEPSPEED":
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        accelerator.state.deepspeed_plugin.set_deepspeed_weakref()


def _zero_optimizer(optimizer: Any) -> Any:
    """The ZeRO optimizer under Accelerate's wrappers."""
    inner = optimizer
    for _ in range(4):
        if hasattr(inner, "bit16_groups") or hasattr(inner, "fp16_groups"):
            return inner
        inner = getattr(inner, "optimizer", None)
        if inner is None:
            break
    raise ValueError("DeepSpeed run without a ZeRO optimizer (zero_stage 0 is not supported)")


def _groups(zero: Any) -> list[list[torch.Tensor]]:
    """The model parameters of each of the trainer's parameter groups, in order."""
    groups = getattr(zero, "bit16_groups", None)
    return groups if groups is not None else zero.fp16_groups


def _link_states(zero: Any, create: bool) -> None:
    """Make the AdamW states reachable through every parameter. ``create``: zero states where
    none exist yet (a fresh optimizer about to be restored: what AdamW's first step creates).
    Stages 1-2 then link each parameter's fragment to its group's state: DeepSpeed links them
    once, right after the first group's first update, when the other groups' lazily created
    states do not exist yet (their fragments stay empty)."""
    stage3 = getattr(zero, "fp32_partitioned_groups_flat", None)
    partitions = stage3 if stage3 is not None else zero.single_partition_of_fp32_groups
    if create:
        for flat in partitions:
            if not zero.optimizer.state.get(flat):
                zero.optimizer.state[flat] = {
                    "step": torch.tensor(0.0),
                    "exp_avg": torch.zeros_like(flat),
                    "exp_avg_sq": torch.zeros_like(flat),
                }
    if stage3 is not None:  # stage 3 finds the states through its optimizer at every access
        return
    from deepspeed.utils.mixed_precision_linkage import lazy_init_hp_params_optimizer_state

    for params, flat in zip(zero.bit16_groups, partitions, strict=True):
        lazy_init_hp_params_optimizer_state(params, flat, zero.optimizer.state)


def _step_value(zero: Any) -> torch.Tensor | None:
    """AdamW's step count (the same for every partition)."""
    for state in zero.optimizer.state.values():
        if "step" in state:
            return torch.as_tensor(state["step"]).detach().clone().cpu()
    return None


def optimizer_state(
    module: torch.nn.Module, optimizer: Any
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The ZeRO optimizer's state in training/sharding.py's format (tensors ``<name>:<key>``,
    groups of names). Collective."""
    from deepspeed.utils import safe_get_full_optimizer_state

    zero = _zero_optimizer(optimizer)
    _link_states(zero, create=False)
    names = {id(p): name for name, p in module.named_parameters()}
    step = _step_value(zero)
    tensors: dict[str, torch.Tensor] = {}
    groups = []
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in zero.optimizer.param_groups]
    for index, params in enumerate(_groups(zero)):
        group_names = [names[id(p)] for p in params]
        for name, param in zip(group_names, params, strict=True):
            for key in MOMENT_KEYS:
                value = safe_get_full_optimizer_state(param, key)
                if value is not None:
                    tensors[f"{name}:{key}"] = value.detach().contiguous().cpu()
            if step is not None:
                tensors[f"{name}:step"] = step.clone()
        groups.append({**hyper[min(index, len(hyper) - 1)], "params": group_names})
    return tensors, {"format": "by-name", "param_groups": groups, "scalars": {}}


def load_optimizer_state(
    module: torch.nn.Module,
    optimizer: Any,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    where: str,
) -> None:
    """Restore what :func:`optimizer_state` (or any topology's by-name checkpoint) holds."""
    from deepspeed.utils import safe_set_full_optimizer_state

    zero = _zero_optimizer(optimizer)
    _link_states(zero, create=True)
    names = {id(p): name for name, p in module.named_parameters()}
    ours = [[names[id(p)] for p in params] for params in _groups(zero)]
    saved = [group["params"] for group in meta["param_groups"]]
    if ours != saved:
        raise ValueError(f"{where}: the optimizer's parameter groups differ from this model's")
    step = None
    for params in _groups(zero):
        for param in params:
            name = names[id(param)]
            for key in MOMENT_KEYS:
                if f"{name}:{key}" in tensors:
                    safe_set_full_optimizer_state(param, tensors[f"{name}:{key}"], key)
            step = tensors.get(f"{name}:step", step)
    if step is not None:
        for state in zero.optimizer.state.values():
            if "step" in state:
                state["step"] = step.clone().to(torch.as_tensor(state["step"]).device)


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Whole tensors into a ZeRO module: the fp32 masters, and the module's own copies (whole
    under stages 1-2; under stage 3 written while gathered, then re-partitioned)."""
    from deepspeed.utils import safe_set_full_fp32_param

    params = dict(module.named_parameters())
    for name, param in params.items():
        safe_set_full_fp32_param(param, state[name])
    partitioned = [p for p in params.values() if hasattr(p, "ds_id")]
    context: Any = contextlib.nullcontext()
    if partitioned:
        import deepspeed

        context = deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0)
    with context, torch.no_grad():
        for name, param in params.items():
            param.data.copy_(state[name].to(param.device, param.dtype))
        for name, buffer in module.named_buffers():
            if name in state:
                buffer.copy_(state[name].to(buffer.device, buffer.dtype))


def configure(accelerator: Any, batch_size: int, max_grad_norm: float, accumulation: int) -> None:
    """Put the run's batch size and clipping into the DeepSpeed config before ``prepare``
    (Accelerate would take them from a prepared dataloader, which this trainer does not use)."""
    from t2i_drift.training.config import ConfigError

    if accumulation != 1:
        raise ConfigError(
            "train.gradient_accumulation_steps must be 1 with DeepSpeed (it steps inside backward); "
            "raise train.batch_size or the number of processes instead"
        )
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = batch_size
    config["gradient_accumulation_steps"] = 1
    config["train_batch_size"] = batch_size * accelerator.num_processes
    config["gradient_clipping"] = max(0.0, float(max_grad_norm))
