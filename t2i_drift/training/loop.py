"""The one Accelerate training loop; what it trains is an :class:`Objective` (objectives/base.py).

    data source -> objective.build (frozen parts + trainable model) -> AdamW + warm-up schedule
    -> for each optimizer step: train.gradient_accumulation_steps micro-batches, each
       objective.loss -> backward (gradients synchronized on the last one only) -> clip -> step -> EMA
       -> metrics (averaged over the log window; to metrics.jsonl and the trackers)
       -> checkpoint -> validation grid
    -> objective.export(EMA model) -> run summary

Output folder layout (``train.output_dir``); objectives add their own exports:
    config.yaml                 resolved run config
    logs/metrics.jsonl          one JSON line per logged window
    logs/<tracker_project>/     TensorBoard events (train.report_to: [tensorboard])
    checkpoints/checkpoint-N/   resumable state (safetensors + JSON, training/checkpoint.py)
    validation/step-N.png       validation grids (train.validation_prompts)
    run_summary.json            steps, wall time, throughput, peak memory, skipped data
"""

from __future__ import annotations

import contextlib
import json
import resource
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedType,
    ProjectConfiguration,
    gather_object,
    set_seed,
)
from torch.distributed.tensor import DTensor
from tqdm.auto import tqdm

from t2i_drift.data.images import SkipLog
from t2i_drift.data.source import DataSource
from t2i_drift.model_card import labelled_grid
from t2i_drift.training import zero
from t2i_drift.training.builders import build_optimizer, build_source
from t2i_drift.training.checkpoint import TrainerState, resume_if_requested, save_and_prune
from t2i_drift.training.config import ConfigError, save_config
from t2i_drift.training.ema import ema_copy, make_ema
from t2i_drift.training.objectives.base import Objective
from t2i_drift.training.sharding import check_topology, describe_sharding, is_sharded, parameter_count


def peak_memory_mb() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


@dataclass
class Run:
    """Everything the step loop touches."""

    cfg: Any
    objective: Objective
    accelerator: Accelerator
    source: DataSource | None  # None: synthetic inputs (training/synthetic.py)
    model: torch.nn.Module  # prepared (DDP-wrapped in distributed runs)
    unwrapped: Any
    optimizer: Any
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: Any
    rng: torch.Generator
    state: TrainerState
    out_dir: Path
    window: dict[str, torch.Tensor] = field(default_factory=dict)  # stat sums since the last log line
    window_steps: int = 0
    steps_this_run: int = 0
    session_start: float = 0.0  # time.perf_counter() when this session's first step began
    wall_before: float | None = 0.0  # training seconds of the steps before this session (None: unknown)


def train(cfg: Any, objective: Objective) -> Path:
    """Run ``objective`` with the ``data``, ``optim`` and ``train`` sections of ``cfg``; returns the
    output folder. Exact resume: ``train.resume_from_checkpoint`` (a folder or ``latest``)."""
    run = setup(cfg, objective)
    progress = tqdm(
        total=objective.total_steps,
        initial=run.state.step,
        desc=objective.name,
        disable=not run.accelerator.is_main_process,
    )
    t_start = time.perf_counter()
    run.session_start, run.wall_before = t_start, run.state.train_wall_s
    try:
        _run_epochs(run, progress, t_start)
    finally:
        progress.close()
    wall = time.perf_counter() - t_start
    _finish(run, wall)
    return run.out_dir


def check_trackers(report_to: list[str]) -> None:
    """Every tracker of ``train.report_to`` must be importable: Accelerate would skip a missing
    one with a log line, and the run would record nothing."""
    import importlib.util

    missing = [name for name in report_to if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"train.report_to: {missing} not installed (pip install {' '.join(missing)}); "
            "tensorboard comes with t2i_drift[train]"
        )


RUN_FILE = "run.json"  # the id of the run that owns an output folder
RUN_ARTIFACTS = ("config.yaml", RUN_FILE, "run_summary.json", "checkpoints", "pipeline", "logs/metrics.jsonl")


def check_output_dir(train_cfg: Any) -> str | None:
    """Refuse, before anything is written, a fresh run into a folder that holds another run
    (unless ``train.overwrite_output_dir``). Returns the id of the run found there, if any."""
    out_dir = Path(train_cfg.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"train.output_dir={str(out_dir)!r} exists and is not a folder")
    found = [name for name in RUN_ARTIFACTS if (out_dir / name).exists()]
    previous = None
    if (out_dir / RUN_FILE).is_file():
        previous = json.loads((out_dir / RUN_FILE).read_text()).get("run_id")
    if found and train_cfg.resume_from_checkpoint is None and not train_cfg.overwrite_output_dir:
        raise ConfigError(
            f"train.output_dir={str(out_dir)!r} already holds a run ({', '.join(found)}): continue it "
            "with train.resume_from_checkpoint=latest, choose another folder, or set "
            "train.overwrite_output_dir=true"
        )
    return previous


def _claim_output_dir(accelerator: Accelerator, out_dir: Path, cfg: Any, previous: str | None) -> str:
    """The run id: the previous run's when resuming, else a new one; the main process records it
    in run.json (and, for a new run over an old one, keeps the old metrics.jsonl aside)."""
    resuming = cfg.train.resume_from_checkpoint is not None
    if accelerator.is_main_process:
        (out_dir / "logs").mkdir(parents=True, exist_ok=True)
        if not (resuming and previous):
            metrics = out_dir / "logs" / "metrics.jsonl"
            if metrics.exists():
                metrics.rename(metrics.with_name(f"metrics.{previous or 'previous'}.jsonl"))
            (out_dir / RUN_FILE).write_text(json.dumps({"run_id": uuid.uuid4().hex}) + "\n")
    accelerator.wait_for_everyone()
    return json.loads((out_dir / RUN_FILE).read_text())["run_id"]


def _truncate_metrics(out_dir: Path, step: int) -> None:
    """Drop logged lines after ``step`` (written by the interrupted run after its last checkpoint),
    so that a resumed run's metrics.jsonl has every step once."""
    path = out_dir / "logs" / "metrics.jsonl"
    if path.is_file():
        lines = path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            path.write_text("".join(line + "\n" for line in kept))


def setup(cfg: Any, objective: Objective) -> Run:
    check_trackers(list(cfg.train.report_to))
    # Every process checks before the Accelerator's process-group rendezvous, so none can see the
    # run.json / config.yaml that the main process writes after it.
    previous_run = check_output_dir(cfg.train)
    out_dir = Path(cfg.train.output_dir)
    seed = cfg.train.seed
    source = build_source(cfg.data, cfg.train.batch_size, seed)
    report_to = list(cfg.train.report_to)
    accelerator = Accelerator(
        # None: the launcher's choice (accelerate config / accelerate launch --mixed_precision).
        mixed_precision=cfg.train.mixed_precision,
        log_with=report_to or None,
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed),
        kwargs_handlers=objective.prepare_run(source),
    )
    check_topology(accelerator)
    # The same seed on every process while the model is built: FSDP2 shards each process's own
    # initialization without broadcasting it (DDP would copy process 0's), so the processes must
    # initialize identically. Their random streams part after the build.
    set_seed(seed)
    run_id = _claim_output_dir(accelerator, out_dir, cfg, previous_run)
    if accelerator.is_main_process:
        save_config(cfg, out_dir / "config.yaml")
    if report_to:
        accelerator.init_trackers(cfg.train.tracker_project, config=tracker_config(cfg.to_dict()))
    # The loop's own generator for every random draw of a step (noise, alpha, style, masks):
    # nothing else consumes it, so a resumed run continues the exact stream (libraries may draw
    # from the global RNG at any time).
    rng = torch.Generator(device=accelerator.device).manual_seed(seed * 1000 + accelerator.process_index)
    with zero.hidden_from_transformers(accelerator):
        model = objective.build(accelerator, source, rng)
    if accelerator.num_processes > 1:
        set_seed(seed, device_specific=True)
    optimizer = build_optimizer(model, cfg.optim)
    # Stepped once per optimizer step on every process (not through accelerator.prepare, which
    # would step it num_processes times and shorten the warm-up in distributed runs).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, objective.lr_factor)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        zero.configure(
            accelerator, cfg.train.batch_size, cfg.optim.max_grad_norm, cfg.train.gradient_accumulation_steps
        )
    model, optimizer = accelerator.prepare(model, optimizer)
    source.prepare(accelerator)
    unwrapped = accelerator.unwrap_model(model)
    with zero.whole_parameters(unwrapped):  # ZeRO-3: the EMA keeps whole fp32 copies
        ema = make_ema(unwrapped, cfg.optim, accelerator.device)
    state = resume_if_requested(
        cfg.train.resume_from_checkpoint,
        out_dir / "checkpoints",
        log=accelerator.print,
        run_id=run_id,
        model=unwrapped,
        ema=ema,
        optimizer=optimizer,
        scheduler=scheduler,
        process_index=accelerator.process_index,
        generators={"train": rng},
        model_subfolder=objective.model_subfolder,
    )
    state.run_id = state.run_id or run_id  # checkpoints from before run ids adopt this run's
    if accelerator.is_main_process:
        _truncate_metrics(out_dir, state.step)
    layout = f"{accelerator.num_processes} process(es)"
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        layout += f", DeepSpeed ZeRO-{accelerator.state.deepspeed_plugin.zero_stage}"
    elif is_sharded(unwrapped):
        layout += f", {describe_sharding(unwrapped)}"
    accelerator.print(f"{source.describe()} | {objective.describe(unwrapped)} | {layout}")
    return Run(
        cfg, objective, accelerator, source, model, unwrapped, optimizer, scheduler, ema, rng, state, out_dir
    )


def micro_batches(run: Run) -> Iterator[dict]:
    """Batches from the saved (epoch, batch) position on, epoch after epoch; ``run.state`` counts
    what has been consumed, so a checkpoint taken between two optimizer steps resumes exactly."""
    state = run.state
    while True:
        started_empty, produced = state.batches_in_epoch == 0, False
        for batch in run.source.batches(state.epoch, state.batches_in_epoch):
            produced = True
            state.batches_in_epoch += 1
            yield batch
        if started_empty and not produced:
            raise ValueError(
                f"data: an epoch produced no complete batch of {run.cfg.train.batch_size} usable "
                f"samples on process {run.accelerator.process_index} ({run.source.name}; "
                f"{run.source.skips.report()})"
            )
        state.epoch += 1
        state.batches_in_epoch = 0


def _run_epochs(run: Run, progress: tqdm, t_start: float) -> None:
    """Optimizer steps until ``objective.total_steps``, each over ``gradient_accumulation_steps``
    micro-batches (an epoch boundary may fall inside a step)."""
    state, total = run.state, run.objective.total_steps
    accumulation = run.cfg.train.gradient_accumulation_steps
    stream = micro_batches(run)
    while state.step < total:
        with run.objective.timer("data"):
            batches = [next(stream) for _ in range(accumulation)]
        lr = optimizer_step(run, batches)
        state.step += 1
        run.steps_this_run += 1
        progress.update(1)
        _maybe_log(run, lr, progress, t_start)
        _maybe_checkpoint(run)
        _maybe_validate(run)


def optimizer_step(run: Run, batches: list[dict]) -> float:
    """One optimizer step over the micro-batches ``batches``; returns the learning rate it used.

    Each micro-batch's loss is backpropagated at 1/k weight; in distributed runs the gradients
    are all-reduced once, with the last micro-batch. Logged statistics are micro-batch means."""
    run.objective.begin_step(run.state.step, run.unwrapped, run.ema)
    k = len(batches)
    totals: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(batches):
        sync = contextlib.nullcontext() if i == k - 1 else run.accelerator.no_sync(run.model)
        with sync:
            loss, stats = run.objective.loss(run.model, batch, run.state.step)
            if not torch.isfinite(loss):  # the one device sync per micro-batch: never step on a NaN
                values = {key: float(v) for key, v in stats.items()}
                raise FloatingPointError(
                    f"non-finite {run.objective.name} loss {loss.item()} at step {run.state.step + 1} "
                    f"(stats: {values})"
                )
            with run.objective.timer("generator backward"):
                run.accelerator.backward(loss / k)
        stats["loss"] = loss.detach()
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + value.detach().float() / k
    lr = run.optimizer.param_groups[0]["lr"]
    max_norm = run.cfg.optim.max_grad_norm
    with run.objective.timer("optimizer"):
        if max_norm > 0:
            # DeepSpeed clips inside backward and returns the norm it measured (a float).
            norm = run.accelerator.clip_grad_norm_(run.model.parameters(), max_norm)
            norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
            totals["grad_norm"] = torch.as_tensor(float("nan") if norm is None else norm).float()
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
    with run.objective.timer("ema"):
        with zero.whole_parameters(run.unwrapped), zero.hidden_from_transformers(run.accelerator):
            run.ema.step(run.unwrapped.parameters())
    for key, value in totals.items():  # device tensors: no sync until the log step
        run.window[key] = run.window.get(key, 0.0) + value
    run.window_steps += 1
    return lr


def _maybe_log(run: Run, lr: float, progress: tqdm, t_start: float) -> None:
    """Write the window's mean stats every ``train.log_every`` steps, at the end, and at every
    phase change (so no line mixes two phases)."""
    step, objective = run.state.step, run.objective
    phase = objective.phase(step - 1)
    if not (
        step % run.cfg.train.log_every == 0 or step == objective.total_steps or objective.phase(step) != phase
    ):
        return
    line: dict[str, Any] = {k: float(v) / run.window_steps for k, v in run.window.items()}
    line.update(
        step=step,
        lr=lr,
        samples_per_s=run.steps_this_run * _samples_per_step(run) / (time.perf_counter() - t_start),
    )
    if phase is not None:
        line["phase"] = phase
    run.window, run.window_steps = {}, 0
    progress.set_postfix(objective.progress_stats(line))
    if run.accelerator.is_main_process:
        with (run.out_dir / "logs" / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")
    if run.cfg.train.report_to:
        run.accelerator.log(objective.tracker_stats(line), step=step)


def _total_wall(run: Run, session_wall: float) -> float | None:
    """Training wall time of the run so far: the earlier sessions' (from the checkpoint resumed)
    plus ``session_wall`` seconds of this one; None when the checkpoint did not record it."""
    return None if run.wall_before is None else run.wall_before + session_wall


def _maybe_checkpoint(run: Run) -> None:
    step = run.state.step
    if step % run.cfg.train.checkpointing_steps and step != run.objective.total_steps:
        return
    run.state.train_wall_s = _total_wall(run, time.perf_counter() - run.session_start)
    path = save_and_prune(
        run.accelerator,
        run.out_dir / "checkpoints",
        run.cfg.train.checkpoints_total_limit,
        model=run.unwrapped,
        ema=run.ema,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
        state=run.state,
        config=run.cfg.to_dict(),
        generators={"train": run.rng},
        model_subfolder=run.objective.model_subfolder,
    )
    run.accelerator.print(f"saved {path.name} ({path})")


def _maybe_validate(run: Run) -> None:
    """Every ``train.validation_steps`` (and at the end): render ``train.validation_prompts`` with
    the EMA weights (what the export will hold) as a labelled grid, save it as
    ``validation/step-N.png`` and send it to the trackers. The main process renders; a sharded
    model's EMA weights are first gathered by every process."""
    train, step = run.cfg.train, run.state.step
    if not train.validation_prompts or (step % train.validation_steps and step != run.objective.total_steps):
        return
    prompts, count = list(train.validation_prompts), train.num_validation_images
    if is_sharded(run.unwrapped):  # a sharded forward needs every process: gather a full copy
        averaged = ema_copy(run.unwrapped, run.ema).to(run.accelerator.device)
        if not run.accelerator.is_main_process:
            return
        rows = run.objective.validation_images(averaged, prompts, count, train.seed)
    else:
        if not run.accelerator.is_main_process:
            return
        params = list(run.unwrapped.parameters())
        run.ema.store(params)
        run.ema.copy_to(params)
        try:
            rows = run.objective.validation_images(run.unwrapped, prompts, count, train.seed)
        finally:
            run.ema.restore(params)
    if rows is None:
        return
    grid = labelled_grid(rows, list(train.validation_prompts), cell=max(128, run.cfg.data.resolution))
    (run.out_dir / "validation").mkdir(exist_ok=True)
    path = run.out_dir / "validation" / f"step-{step}.png"
    grid.save(path)
    run.accelerator.print(f"validation grid: {path}")
    for tracker in run.accelerator.trackers:
        log_image(tracker, "validation", grid, step)


def log_image(tracker: Any, name: str, image: Any, step: int) -> None:
    """Send one PIL image to an Accelerate tracker, in the form each tracker expects."""
    import numpy as np

    if tracker.name == "tensorboard":
        tracker.writer.add_image(name, np.asarray(image), step, dataformats="HWC")
        tracker.writer.flush()
    elif tracker.name == "wandb":
        import wandb

        tracker.log({name: wandb.Image(image)}, step=step)
    elif tracker.name == "trackio":
        import trackio

        tracker.log({name: trackio.Image(image)}, step=step)


def tracker_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The run config flattened to ``section.key`` scalars (what TensorBoard's hparams accept)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(tracker_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:  # lists and null
            flat[name] = json.dumps(value)
    return flat


def _samples_per_step(run: Run) -> int:
    """Samples per optimizer step over all processes and micro-batches."""
    return (
        run.objective.samples_per_step
        * run.accelerator.num_processes
        * run.cfg.train.gradient_accumulation_steps
    )


def _device_name(device: torch.device) -> str:
    """A human name of the training device (the GPU model, or "CPU")."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type.upper()


def _finish(run: Run, wall: float) -> None:
    """Report skipped data from every process, export the EMA model, write the run summary."""
    accelerator = run.accelerator
    skips = SkipLog()
    parts = (
        gather_object([run.source.skips.to_dict()])
        if accelerator.num_processes > 1
        else [run.source.skips.to_dict()]
    )
    for part in parts:
        skips.merge(SkipLog.from_dict(part))
    if skips.total:
        accelerator.print(f"data: {skips.report()}")
    averaged = ema_copy(run.unwrapped, run.ema).eval()  # collective under FSDP
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        run_info: dict[str, Any] = {"device": _device_name(accelerator.device)}
        run_info["num_processes"] = accelerator.num_processes
        total = _total_wall(run, wall)
        if total is not None:
            run_info["train_wall_s"] = round(total, 1)
        exported = run.objective.export(averaged, run.out_dir, run.state.step, run_info)
        summary = {
            "steps": run.state.step,
            "steps_this_run": run.steps_this_run,
            "train_wall_s": wall,
            "train_wall_s_total": total,
            "samples_per_s": run.steps_this_run * _samples_per_step(run) / max(wall, 1e-9),
            "peak_memory_mb": peak_memory_mb(),
            "mixed_precision": accelerator.mixed_precision,
            "gradient_accumulation_steps": run.cfg.train.gradient_accumulation_steps,
            "model_params": parameter_count(run.unwrapped),
            "data_skipped": skips.to_dict(),
            **exported,
        }
        (run.out_dir / "run_summary.json").write_text(json.dumps(summary, indent=2))
        accelerator.print(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    accelerator.end_training()
