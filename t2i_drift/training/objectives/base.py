"""The interface between the training loop (training/loop.py) and what it trains.

The loop owns Accelerate, resume, the optimizer and its schedule, clipping, EMA, logging,
checkpoints and the end-of-run summary; an :class:`Objective` owns its models and its step:

    handlers = objective.prepare_run(source)        # before the Accelerator exists
    model = objective.build(accelerator, source, rng)   # frozen parts + the trainable model
    for each step s (0-based):
        objective.begin_step(s, model, ema)         # phase boundaries (e.g. MAE fine-tune)
        loss, stats = objective.loss(model, batch, s)
        ... backward, clip, step, EMA, log, checkpoint (the loop) ...
    summary = objective.export(ema_model, output_dir, steps)   # main process only

Adding a way to train is one new subclass; the loop does not change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from diffusers import ModelMixin
from diffusers.training_utils import EMAModel

from t2i_drift.data.source import DataSource
from t2i_drift.training.config import OptimConfig
from t2i_drift.training.sharding import parameter_count
from t2i_drift.training.step_timer import DISABLED, StepTimer


def warmup_then_constant(step: int, warmup_steps: int, start_factor: float | None = None) -> float:
    """Learning-rate factor of optimizer step ``step`` (0-based): linear warm-up to 1 over
    ``warmup_steps``, then constant. The warm-up starts at ``start_factor`` (the official release:
    1e-6 / lr) or, when None, at 1 / warmup_steps; never at 0, since the first step must move the
    weights."""
    if start_factor is None:
        return min(1.0, (step + 1) / max(warmup_steps, 1))
    return min(1.0, start_factor + (1.0 - start_factor) * step / max(warmup_steps, 1))


def warmup_start_factor(optim: OptimConfig) -> float | None:
    """``optim.warmup_start_lr`` as a factor of ``optim.learning_rate`` (None when unset)."""
    return None if optim.warmup_start_lr is None else optim.warmup_start_lr / optim.learning_rate


class Objective(ABC):
    """One kind of training (module docstring). ``cfg`` is the run config; the loop reads its
    ``data``, ``optim`` and ``train`` sections, the objective whatever else it needs."""

    name: str = "train"
    """Label of the progress bar and of errors."""
    model_subfolder: str = "model"
    """Folder of the trained model inside each checkpoint."""
    timer: StepTimer = DISABLED
    """Times the phases of a step (the loop's and the objective's); enabled only by benchmarks."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.accelerator: Any = None
        self.rng: torch.Generator | None = None

    # -- set-up ------------------------------------------------------------------------------
    def prepare_run(self, source: DataSource) -> list[Any]:
        """Decide what depends on the data, before the Accelerator exists; returns Accelerate
        kwargs handlers (e.g. DDP options)."""
        return []

    @abstractmethod
    def build(self, accelerator: Any, source: DataSource, rng: torch.Generator) -> ModelMixin:
        """Build the frozen parts (on ``accelerator.device``) and return the trainable model.
        ``rng`` is the run's own generator for every random draw of a step (checkpointed)."""

    @property
    def total_steps(self) -> int:
        return self.cfg.train.max_steps

    @property
    @abstractmethod
    def samples_per_step(self) -> int:
        """Samples one step processes on one process (for the throughput figures)."""

    def describe(self, model: ModelMixin) -> str:
        """The start-of-run line's part about the model and the step."""
        n_params = parameter_count(model)
        return f"{type(model).__name__} {n_params / 1e6:.2f}M params"

    # -- every step --------------------------------------------------------------------------
    def lr_factor(self, step: int) -> float:
        """Multiplier of ``optim.learning_rate`` at optimizer step ``step`` (0-based)."""
        optim = self.cfg.optim
        return warmup_then_constant(step, optim.warmup_steps, warmup_start_factor(optim))

    def phase(self, step: int) -> str | None:
        """Name of the training phase step ``step`` belongs to; the loop logs at every change."""
        return None

    def begin_step(self, step: int, model: ModelMixin, ema: EMAModel) -> None:  # noqa: B027 - optional hook
        """Called before step ``step`` with the unwrapped model and its EMA."""

    @abstractmethod
    def loss(
        self, model: torch.nn.Module, batch: dict, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one batch (the loop calls backward) and scalars to log, as 0-d device
        tensors (the loop converts them once per logged window)."""

    # -- reporting ---------------------------------------------------------------------------
    def progress_stats(self, line: dict[str, float]) -> dict[str, str]:
        """What the progress bar shows of a logged window: a quantity that converges."""
        return {"loss": f"{line['loss']:.4f}"}

    def tracker_stats(self, line: dict[str, float]) -> dict[str, float]:
        """What goes to the trackers of a logged window (metrics.jsonl keeps every statistic)."""
        return {f"train/{k}": v for k, v in line.items() if k != "step" and isinstance(v, (int, float))}

    def validation_images(
        self, model: ModelMixin, prompts: list[str], images_per_prompt: int, seed: int
    ) -> list[list[Any]] | None:
        """``images_per_prompt`` PIL images per prompt made by ``model`` (unwrapped, with the EMA
        weights), for the validation grid; None: this objective has no images to show."""
        return None

    # -- end of run --------------------------------------------------------------------------
    @abstractmethod
    def export(
        self, model: ModelMixin, output_dir: Path, steps: int, run_info: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Save the trained model (``model`` carries the EMA weights); main process only.
        ``run_info``: where and how long it trained (device, num_processes, train_wall_s), for
        model cards. Returns entries for the run summary."""
