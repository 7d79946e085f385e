"""Training checkpoints as safetensors + JSON (never pickle).

Layout of ``<output_dir>/checkpoints/checkpoint-<step>/``:

    transformer/               save_pretrained folder of the online weights (``model_subfolder``:
                               another name for another model, e.g. ``mae``)
    ema.safetensors            EMA shadow parameters (same order as model.parameters())
    optimizer.safetensors      every tensor of optimizer.state_dict()["state"]
    trainer_state.json         step, epoch, optimizer param_groups and scalar state, EMA and
                               scheduler scalars, saved config
    rng_state_<rank>.safetensors  torch CPU (and CUDA) generator states of each process
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

CHECKPOINT_PREFIX = "checkpoint-"


@dataclass
class TrainerState:
    step: int
    epoch: int
    batches_in_epoch: int


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able scalars."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, param_state in state_dict["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
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
    if not is_main_process:
        return
    model.save_pretrained(path / model_subfolder)
    ema_state = ema.state_dict()
    save_file(
        {f"{i}": p.detach().contiguous().cpu() for i, p in enumerate(ema_state.pop("shadow_params"))},
        str(path / "ema.safetensors"),
    )
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    save_file(opt_tensors, str(path / "optimizer.safetensors"))
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    (path / "trainer_state.json").write_text(
        json.dumps(
            {
                "step": state.step,
                "epoch": state.epoch,
                "batches_in_epoch": state.batches_in_epoch,
                "optimizer": opt_meta,
                "ema": ema_state,
                "scheduler": sched,
                "config": config,
            },
            indent=2,
        )
    )


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
) -> TrainerState:
    """Restore everything :func:`save_checkpoint` wrote; returns the step counters."""
    meta_path = path / "trainer_state.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint folder (no trainer_state.json)")
    meta = json.loads(meta_path.read_text())
    weights = load_file(str(path / model_subfolder / SAFETENSORS_WEIGHTS_NAME))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}/{model_subfolder} does not match the model: missing {missing}, unexpected {unexpected}"
        )
    shadow = load_file(str(path / "ema.safetensors"))
    ema_state = dict(meta["ema"])
    device = next(model.parameters()).device
    ema_state["shadow_params"] = [shadow[str(i)].to(device) for i in range(len(shadow))]
    ema.load_state_dict(ema_state)
    opt = _unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), meta["optimizer"])
    optimizer.load_state_dict(opt)
    sched_state = scheduler.state_dict()
    sched_state.update(meta["scheduler"])
    scheduler.load_state_dict(sched_state)
    # The saved optimizer holds the rate the *old* schedule set for the next step. A resumed run
    # may change what the schedule depends on (train.max_steps moves the MAE fine-tune boundary),
    # so the next step's rate comes from this run's schedule (the same number when nothing changed).
    lambdas = zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    rates = [base * factor(scheduler.last_epoch) for base, factor in lambdas]
    for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    scheduler._last_lr = rates
    rng_file = path / f"rng_state_{process_index}.safetensors"
    if rng_file.is_file():
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
    return TrainerState(step=meta["step"], epoch=meta["epoch"], batches_in_epoch=meta["batches_in_epoch"])


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


def prune_checkpoints(checkpoint_root: Path, keep: int | None) -> list[Path]:
    """Delete the oldest checkpoints so that at most ``keep`` remain; returns the deleted ones."""
    if keep is None:
        return []
    existing = list_checkpoints(checkpoint_root)
    doomed = existing[: max(0, len(existing) - keep)]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def resolve_resume(value: str | None, checkpoint_root: Path) -> Path | None:
    """``None`` -> None; ``latest`` -> newest checkpoint (None if none yet); else a folder path."""
    if value is None:
        return None
    if value == "latest":
        existing = list_checkpoints(checkpoint_root)
        return existing[-1] if existing else None
    path = Path(value)
    if not (path / "trainer_state.json").is_file():
        raise ValueError(f"train.resume_from_checkpoint={value!r} is not a checkpoint folder")
    return path


def resume_if_requested(
    value: str | None, checkpoint_root: Path, log=print, **load_kwargs: Any
) -> TrainerState:
    """Where a run starts: step 0, or the checkpoint ``value`` names (``latest``: the newest under
    ``checkpoint_root``, none yet: step 0) restored with :func:`load_checkpoint` (``load_kwargs``)."""
    path = resolve_resume(value, checkpoint_root)
    if path is None:
        return TrainerState(step=0, epoch=0, batches_in_epoch=0)
    state = load_checkpoint(path, **load_kwargs)
    log(f"resumed from {path} at step {state.step}")
    return state


def save_and_prune(accelerator: Any, checkpoint_root: Path, keep: int | None, **save_kwargs: Any) -> Path:
    """Every process writes its part of ``checkpoint-<step>`` (:func:`save_checkpoint` with
    ``save_kwargs``, step from ``state``) between two barriers; then the main process deletes all
    but the newest ``keep`` checkpoints. ``accelerator``: anything with ``wait_for_everyone``,
    ``process_index`` and ``is_main_process`` (an Accelerate ``Accelerator``)."""
    path = checkpoint_root / f"{CHECKPOINT_PREFIX}{save_kwargs['state'].step}"
    accelerator.wait_for_everyone()
    save_checkpoint(
        path,
        process_index=accelerator.process_index,
        is_main_process=accelerator.is_main_process,
        **save_kwargs,
    )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        prune_checkpoints(checkpoint_root, keep)
    return path
