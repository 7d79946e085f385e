"""What every text-to-image objective shares: frozen text conditioning (and VAE), the generator
transformer, turning batches into step inputs, and the export as a ``DriftingPipeline``.

Output folder additions (``train.output_dir``):
    samples/step-N.png   the exported pipeline's sample grid
    pipeline/            the DriftingPipeline with the EMA generator:
                         DriftingPipeline.from_pretrained(<output_dir>/pipeline)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from t2i_drift.data.source import DataSource
from t2i_drift.models.transformer_drifting import DriftingTransformer2DModel
from t2i_drift.models.vae import load_vae
from t2i_drift.text.cache import default_cache_dir
from t2i_drift.training.batch_inputs import BatchInputs, producers
from t2i_drift.training.builders import build_text_conditioner, build_transformer
from t2i_drift.training.config import Config
from t2i_drift.training.export import SAMPLE_GRID_NAME, export_pipeline, make_pipeline
from t2i_drift.training.objectives.base import Objective
from t2i_drift.training.sharding import parameter_count

PIPELINE_SUBDIR = "pipeline"


class TextToImageObjective(Objective):
    """Base of the objectives that train a ``DriftingTransformer2DModel`` on image-caption pairs.

    Subclasses add their frozen parts in :meth:`build_extra` and implement ``loss``.
    """

    model_subfolder = "transformer"
    cfg: Config

    def build(self, accelerator: Any, source: DataSource, rng: torch.Generator) -> DriftingTransformer2DModel:
        cfg = self.cfg
        self.accelerator, self.rng, self.source = accelerator, rng, source
        device = accelerator.device
        self.conditioner = build_text_conditioner(cfg.text).to(device)
        if source.captions is not None:  # encode every caption once (the main process fills the cache)
            cache_dir = default_cache_dir() if cfg.text.cache_dir == "auto" else cfg.text.cache_dir
            with accelerator.main_process_first():
                encoded = self.conditioner.precompute(source.captions, cache_dir, accelerator.is_main_process)
            where = f", the rest read from {cache_dir}" if cache_dir is not None else ""
            accelerator.print(f"text embeddings: {encoded} captions encoded{where}")
        self.vae = None
        if cfg.model.vae is not None:
            self.vae = load_vae(cfg.model.vae, cfg.model.vae_subfolder).to(device)
        model = build_transformer(
            cfg.model, cfg.data.resolution, *self.conditioner.dims(), self.vae, self.transformer_overrides()
        )
        if cfg.model.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        if cfg.model.attention_backend is not None:
            model.set_attention_backend(cfg.model.attention_backend)
        self.build_extra(accelerator)
        self.inputs = BatchInputs(
            self.conditioner,
            self.vae,
            device,
            expected_meta=lambda: producers(
                self.conditioner, self.vae, cfg.data.resolution, self.cached_features()
            ),
            source=source.name,
        )
        return model

    def transformer_overrides(self) -> dict[str, Any]:
        """Generator config arguments this objective needs (``model.overrides`` still win)."""
        return {}

    def build_extra(self, accelerator: Any) -> None:
        """Build the subclass's own frozen parts (called after the generator is built)."""

    def cached_features(self) -> tuple[Any, torch.nn.Module] | None:
        """(features config, frozen encoder) whose outputs on the positives may come cached in
        the data (scripts/cache_features.py --features); None: this objective uses none."""
        return None

    @property
    def samples_per_step(self) -> int:
        return self.cfg.train.batch_size

    def describe(self, model: torch.nn.Module) -> str:
        n_params = parameter_count(model)
        prompts = self.cfg.train.batch_size
        return f"generator {n_params / 1e6:.2f}M params | {prompts} prompts per step per process"

    @torch.no_grad()
    def validation_images(
        self, model: DriftingTransformer2DModel, prompts: list[str], images_per_prompt: int, seed: int
    ) -> list[list[Any]]:
        """The exported pipeline's images for ``prompts``, made with ``model`` as it is now."""
        pipe = make_pipeline(self.cfg, model, self.conditioner, self.vae)
        pipe.set_progress_bar_config(disable=True)
        was_training = model.training
        model.eval()
        try:
            kwargs = {"guidance_scale": self.cfg.eval.guidance_scale}
            if self.cfg.objective.name == "flow_matching":
                kwargs["num_inference_steps"] = self.cfg.objective.num_inference_steps
            images = pipe(
                prompts,
                num_images_per_prompt=images_per_prompt,
                generator=torch.Generator().manual_seed(seed),
                **kwargs,
            ).images
        finally:
            model.train(was_training)
        return [images[i * images_per_prompt : (i + 1) * images_per_prompt] for i in range(len(prompts))]

    def export(
        self,
        model: DriftingTransformer2DModel,
        output_dir: Path,
        steps: int,
        run_info: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        pipe_dir = output_dir / PIPELINE_SUBDIR
        export_pipeline(
            self.cfg, model, self.conditioner, pipe_dir, steps=steps, vae=self.vae, run_info=run_info
        )
        # The same grid, kept with the run's other sample grids.
        (output_dir / "samples").mkdir(exist_ok=True)
        shutil.copyfile(pipe_dir / SAMPLE_GRID_NAME, output_dir / "samples" / f"step-{steps}.png")
        return {"pipeline": str(pipe_dir)}
