"""Training checkpoints as safetensors + JSON (never pickle).

Layout of ``<output_dir>/checkpoints/checkpoint-<step>/``:

    transformer/               config.json + safetensors of the online weights, as save_pretrained
                               writes them (``model_subfolder``: another name for another model,
                               e.g. ``mae``)
    ema.safetensors            EMA shadow parameters (same order as model.parameters())
    optimizer.safetensors      the optimizer's tensors, keyed ``<parameter name>:<state name>``
    trainer_state.json         step, epoch, training wall time so far, optimizer param_groups
                               (parameters by name) and scalar state, EMA and scheduler scalars,
                               saved config
    rng_state_<rank>.safetensors  torch CPU (and CUDA) generator states of each process

Writes are atomic: every process writes into ``.tmp-checkpoint-<step>/`` and the main process
renames it to ``checkpoint-<step>`` once all parts are on disk, so a run killed mid-save (or a
full disk) never leaves a ``checkpoint-N`` that looks complete. ``latest`` takes the newest
complete checkpoint of the run; a checkpoint missing a part is an error naming the file.
Checkpoints carry their run's id, and rotation deletes only the current run's.

Every tensor is saved whole (gathered from FSDP shards or ZeRO partitions: training/sharding.py),
so a checkpoint resumes on any number of processes and topology, and exports without the trainer.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file, save_file

from t2i_drift.training.sharding import (
    full_optimizer_state,
    full_state_dict,
    full_tensors,
    load_full_optimizer_state,
    load_full_state_dict,
    shard_like,
    unsharded_class,
)

CHECKPOINT_PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-"  # a checkpoint being written
OLD_PREFIX = ".old-"  # a checkpoint being replaced by a newer write of the same step


@dataclass
class TrainerState:
    step: int
    epoch: int
    batches_in_epoch: int
    run_id: str = ""
    # Training wall time of steps 1..step over every session of the run, so that a resumed run
    # reports what it cost in total; None for a checkpoint written before this was recorded.
    train_wall_s: float | None = 0.0


def _unflatten_legacy_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """The optimizer state dict of a checkpoint written before states were keyed by parameter
    name (tensors ``<index>.<state name>``)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_tensors(generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    out = {"cpu": torch.get_rng_state()}
    out.update({f"gen.{name}": g.get_state() for name, g in generators.items()})
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda{i}"] = s
    return out


def save_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    ema: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainerState,
    config: dict[str, Any],
    process_index: int = 0,
    is_main_process: bool = True,
    generators: dict[str, torch.Generator] | None = None,
    model_subfolder: str = "transformer",
) -> None:
    """Write one checkpoint folder (model/optimizer/EMA on the main process, RNG on every process).

    ``generators``: the run's own named torch.Generators (e.g. the one drawing noise and alpha),
    saved per process so a resumed run draws exactly what an uninterrupted one would."""
    path.mkdir(parents=True, exist_ok=True)
    save_file(_rng_tensors(generators or {}), str(path / f"rng_state_{process_index}.safetensors"))
    # Collective under FSDP: every process gathers, the main process writes (training/sharding.py).
    weights = full_state_dict(model)
    ema_state = ema.state_dict()
    shadow = full_tensors(ema_state.pop("shadow_params"))
    opt_tensors, opt_meta = full_optimizer_state(model, optimizer)
    if not is_main_process:
        return
    save_model_folder(model, weights, path / model_subfolder)
    save_file({f"{i}": p for i, p in enumerate(shadow)}, str(path / "ema.safetensors"))
    save_file(opt_tensors, str(path / "optimizer.safetensors"))
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    (path / "trainer_state.json").write_text(
        json.dumps(
            {
                "step": state.step,
                "epoch": state.epoch,
                "batches_in_epoch": state.batches_in_epoch,
                "run_id": state.run_id,
                "train_wall_s": state.train_wall_s,
                "optimizer": opt_meta,
                "ema": ema_state,
                "scheduler": sched,
                "config": config,
            },
            indent=2,
        )
    )


def save_model_folder(model: torch.nn.Module, weights: dict[str, torch.Tensor], folder: Path) -> None:
    """What ``model.save_pretrained(folder)`` writes (config.json + safetensors weights), from
    gathered ``weights``; the config names the model's own class, not FSDP's wrapper of it."""
    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads(model.to_json_string())
    config["_class_name"] = unsharded_class(model).__name__
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(weights, str(folder / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})


def load_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    ema: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    process_index: int = 0,
    generators: dict[str, torch.Generator] | None = None,
    model_subfolder: str = "transformer",
    log=None,
) -> TrainerState:
    """Restore everything :func:`save_checkpoint` wrote; returns the step counters. The optimizer
    keeps this run's hyperparameters (learning rate, weight decay, betas), reported via ``log``."""
    missing = missing_parts(path, model_subfolder, process_index)
    if missing:
        raise ValueError(f"checkpoint {path} is incomplete: {path / missing[0]} is missing")
    meta = json.loads((path / "trainer_state.json").read_text())
    weights = load_file(str(path / model_subfolder / SAFETENSORS_WEIGHTS_NAME))
    load_full_state_dict(model, weights, f"{path}/{model_subfolder}")
    shadow = load_file(str(path / "ema.safetensors"))
    params = list(model.parameters())
    if len(shadow) != len(params):
        raise ValueError(f"{path}/ema.safetensors holds {len(shadow)} tensors, the model {len(params)}")
    ema_state = dict(meta["ema"])
    # fp32 shadows (training/ema.py); a ZeRO-3 parameter's shadow is whole (shard_like keeps it so).
    ema_state["shadow_params"] = [shard_like(shadow[str(i)], p).float() for i, p in enumerate(params)]
    ema.load_state_dict(ema_state)
    # This run's hyperparameters (optim.* of the config, possibly overridden for the resume)
    # win over the checkpoint's: the moments and the step count are what a resume restores.
    wanted = [
        {k: g[k] for k in ("weight_decay", "betas", "eps", "initial_lr") if k in g}
        for g in optimizer.param_groups
    ]
    base_lrs = [g.get("initial_lr", g["lr"]) for g in scheduler.optimizer.param_groups]
    opt_tensors = load_file(str(path / "optimizer.safetensors"))
    if meta["optimizer"].get("format") == "by-name":
        load_full_optimizer_state(
            model, optimizer, opt_tensors, meta["optimizer"], f"{path}/optimizer.safetensors"
        )
    else:
        optimizer.load_state_dict(_unflatten_legacy_optimizer(opt_tensors, meta["optimizer"]))
    changed = set()
    for group, values in zip(optimizer.param_groups, wanted, strict=True):
        for key, value in values.items():
            old = group.get(key)
            if (list(old) if isinstance(old, (list, tuple)) else old) != (
                list(value) if isinstance(value, (list, tuple)) else value
            ):
                changed.add(f"{key}: {old} -> {value}")
            group[key] = value
    if changed and log is not None:
        log(
            "resume: optimizer settings from this run's config, not the checkpoint's "
            f"({'; '.join(sorted(changed))})"
        )
    sched_state = scheduler.state_dict()
    sched_state.update(meta["scheduler"])
    scheduler.load_state_dict(sched_state)
    scheduler.base_lrs = base_lrs
    # The saved optimizer holds the rate the *old* schedule set for the next step. A resumed run
    # may change what the schedule depends on (train.max_steps moves the MAE fine-tune boundary),
    # so the next step's rate comes from this run's schedule (the same number when nothing changed).
    lambdas = zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    rates = [base * factor(scheduler.last_epoch) for base, factor in lambdas]
    for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    scheduler._last_lr = rates
    rng_file = path / f"rng_state_{process_index}.safetensors"
    rng = load_file(str(rng_file))
    torch.set_rng_state(rng["cpu"])
    for name, g in (generators or {}).items():
        if f"gen.{name}" not in rng:
            raise ValueError(f"{rng_file} has no state for the {name!r} generator")
        g.set_state(rng[f"gen.{name}"])
    if torch.cuda.is_available():
        cuda_states = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda"))]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    return TrainerState(
        step=meta["step"],
        epoch=meta["epoch"],
        batches_in_epoch=meta["batches_in_epoch"],
        run_id=meta.get("run_id", ""),
        train_wall_s=meta.get("train_wall_s"),
    )


def missing_parts(path: Path, model_subfolder: str = "transformer", process_index: int = 0) -> list[str]:
    """The files a checkpoint folder lacks (relative paths; empty when complete for this process)."""
    parts = [
        "trainer_state.json",
        f"{model_subfolder}/{SAFETENSORS_WEIGHTS_NAME}",
        "ema.safetensors",
        "optimizer.safetensors",
        f"rng_state_{process_index}.safetensors",
    ]
    return [name for name in parts if not (path / name).is_file()]


def checkpoint_run_id(path: Path) -> str:
    """The run id a checkpoint was written by ("" for checkpoints older than run ids)."""
    try:
        return json.loads((path / "trainer_state.json").read_text()).get("run_id", "")
    except (OSError, ValueError):
        return ""


def list_checkpoints(checkpoint_root: Path) -> list[Path]:
    """Checkpoint folders under ``checkpoint_root``, oldest first."""
    if not checkpoint_root.is_dir():
        return []
    found = [
        p
        for p in checkpoint_root.iterdir()
        if p.is_dir() and re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", p.name)
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def prune_checkpoints(checkpoint_root: Path, keep: int | None, run_id: str | None = None) -> list[Path]:
    """Delete the oldest checkpoints of run ``run_id`` (None: every checkpoint counts) so that at
    most ``keep`` of them remain; other runs' checkpoints are never touched. Returns the deleted."""
    if keep is None:
        return []
    if keep < 1:
        raise ValueError(f"train.checkpoints_total_limit must be >= 1 or null, got {keep}")
    existing = [
        p for p in list_checkpoints(checkpoint_root) if run_id is None or checkpoint_run_id(p) == run_id
    ]
    doomed = existing[: max(0, len(existing) - keep)]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def latest_checkpoint(
    checkpoint_root: Path, run_id: str | None = None, model_subfolder: str = "transformer", log=print
) -> Path | None:
    """The newest complete checkpoint (of run ``run_id`` when given); incomplete ones, which only
    a pre-atomic writer can leave, are skipped with a message naming the missing file."""
    for path in reversed(list_checkpoints(checkpoint_root)):
        if run_id is not None and checkpoint_run_id(path) not in (run_id, ""):
            continue
        missing = missing_parts(path, model_subfolder)
        if missing:
            log(f"skipping incomplete checkpoint {path} ({missing[0]} is missing)")
            continue
        return path
    return None


def resolve_resume(
    value: str | None,
    checkpoint_root: Path,
    run_id: str | None = None,
    model_subfolder: str = "transformer",
    log=print,
) -> Path | None:
    """``None`` -> None; ``latest`` -> the newest complete checkpoint (None if none yet); else a
    folder path."""
    if value is None:
        return None
    if value == "latest":
        return latest_checkpoint(checkpoint_root, run_id, model_subfolder, log)
    path = Path(value)
    if not (path / "trainer_state.json").is_file():
        raise ValueError(f"train.resume_from_checkpoint={value!r} is not a checkpoint folder")
    return path


def resume_if_requested(
    value: str | None, checkpoint_root: Path, log=print, run_id: str | None = None, **load_kwargs: Any
) -> TrainerState:
    """Where a run starts: step 0, or the checkpoint ``value`` names (``latest``: the newest
    complete one of run ``run_id`` under ``checkpoint_root``; none yet: step 0, said so) restored
    with :func:`load_checkpoint` (``load_kwargs``)."""
    subfolder = load_kwargs.get("model_subfolder", "transformer")
    path = resolve_resume(value, checkpoint_root, run_id, subfolder, log)
    if path is None:
        if value == "latest":
            log(
                f"train.resume_from_checkpoint=latest: no complete checkpoint in {checkpoint_root}; "
                "starting at step 0"
            )
        return TrainerState(step=0, epoch=0, batches_in_epoch=0)
    state = load_checkpoint(path, log=log, **load_kwargs)
    log(f"resumed from {path} at step {state.step}")
    return state


def save_and_prune(accelerator: Any, checkpoint_root: Path, keep: int | None, **save_kwargs: Any) -> Path:
    """Every process writes its part of ``.tmp-checkpoint-<step>`` (:func:`save_checkpoint` with
    ``save_kwargs``, step from ``state``) between two barriers; then the main process renames it to
    ``checkpoint-<step>`` (replacing an earlier write of the same step only now, when the new one
    is complete) and deletes all but the newest ``keep`` checkpoints of this run.
    ``accelerator``: anything with ``wait_for_everyone``, ``process_index`` and
    ``is_main_process`` (an Accelerate ``Accelerator``)."""
    state = save_kwargs["state"]
    name = f"{CHECKPOINT_PREFIX}{state.step}"
    final, tmp, old = (
        checkpoint_root / name,
        checkpoint_root / f"{TMP_PREFIX}{name}",
        checkpoint_root / f"{OLD_PREFIX}{name}",
    )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for leftover in (tmp, old):  # our own names: a write that was interrupted
            if leftover.exists():
                shutil.rmtree(leftover)
    accelerator.wait_for_everyone()
    save_checkpoint(
        tmp,
        process_index=accelerator.process_index,
        is_main_process=accelerator.is_main_process,
        **save_kwargs,
    )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            final.rename(old)
        tmp.rename(final)  # atomic: checkpoint-N appears complete or not at all
        if old.exists():
            shutil.rmtree(old)
        prune_checkpoints(checkpoint_root, keep, state.run_id or None)
    accelerator.wait_for_everyone()
    return final
