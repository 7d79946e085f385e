"""Turn a trained generator into a diffusers pipeline folder (``save_pretrained`` of the pipeline
class its objective samples with: DriftingPipeline, or FlowMatchingPipeline for flow matching).

Used at the end of training and by ``scripts/export_pipeline.py`` for any checkpoint. A pipeline
folder holds the standard diffusers layout plus what its model card is rendered from
(t2i_drift/model_card.py):
    README.md              model card
    training_config.yaml   the resolved run config
    export_info.json       steps, generator size, where it trained, the sample prompts
    samples.png            labelled, upscaled sample grid of the exported weights
    images/sample_K.png    one image per sample prompt (the Hub widget)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from safetensors.torch import load_file

from t2i_drift.model_card import (
    EXPORT_INFO,
    METRICS,
    SAMPLE_GRID,
    WIDGET_DIR,
    labelled_grid,
    upscaled,
    write_model_card,
)
from t2i_drift.models.transformer_drifting import DriftingTransformer2DModel
from t2i_drift.models.vae import load_vae
from t2i_drift.pipelines import DriftingPipeline, FlowMatchingPipeline, TextToImagePipeline
from t2i_drift.text.conditioner import TextConditioner
from t2i_drift.training.builders import build_text_conditioner
from t2i_drift.training.config import Config, config_from_dict, save_config

SAMPLE_GRID_NAME = SAMPLE_GRID
_VARIANT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def make_pipeline(
    cfg: Config, transformer: DriftingTransformer2DModel, conditioner: TextConditioner, vae: Any = None
) -> TextToImagePipeline:
    """The inference pipeline for a generator trained with ``cfg`` (its ``objective.name`` decides
    the class) and the text ``conditioner`` (and ``vae`` for latent-space generators)."""
    slots = conditioner.slots
    second = slots[1] if len(slots) > 1 else None
    common = dict(
        transformer=transformer,
        vae=vae,
        text_encoder=slots[0].model,
        tokenizer=slots[0].tokenizer,
        text_encoder_2=None if second is None else second.model,
        tokenizer_2=None if second is None else second.tokenizer,
        max_sequence_length=cfg.text.max_length,
        text_pooling=cfg.text.pooling,
        max_sequence_length_2=cfg.text.max_length_2,
        text_pooling_2=cfg.text.pooling_2,
        token_sources=cfg.text.token_sources,
        pooled_sources=cfg.text.pooled_sources,
    )
    if cfg.objective.name == "flow_matching":
        return FlowMatchingPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            classifier_free_guidance=cfg.objective.caption_dropout > 0,
            **common,
        )
    # Drifting learns guidance alpha in [1, alpha_max]; regression learns none.
    alpha_max = cfg.drift.alpha_max if cfg.objective.name == "drifting" else 1.0
    return DriftingPipeline(guidance_scale_range=(1.0, alpha_max), **common)


def sample_images(pipe: TextToImagePipeline, cfg: Config, seed: int) -> list[list[Any]]:
    """``eval.samples_per_grid_prompt`` PIL images for each ``eval.sample_prompts`` entry."""
    n = cfg.eval.samples_per_grid_prompt
    steps = (
        {"num_inference_steps": cfg.objective.num_inference_steps}
        if cfg.objective.name == "flow_matching"
        else {}
    )
    images = pipe(
        list(cfg.eval.sample_prompts),
        num_images_per_prompt=n,
        guidance_scale=cfg.eval.guidance_scale,
        generator=torch.Generator().manual_seed(seed),
        **steps,
    ).images
    return [images[i * n : (i + 1) * n] for i in range(len(cfg.eval.sample_prompts))]


def export_pipeline(
    cfg: Config,
    transformer: DriftingTransformer2DModel,
    conditioner: TextConditioner,
    out_dir: str | Path,
    *,
    steps: int,
    metrics: dict[str, float] | None = None,
    variant: str | None = None,
    repo_or_path: str | None = None,
    vae: Any = None,
    run_info: dict[str, Any] | None = None,
) -> TextToImagePipeline:
    """Save a pipeline folder with model card, config and sample grid; returns the pipeline.

    Args:
        variant: None for fp32 weights; ``bf16``/``fp16`` additionally writes the transformer in
            that dtype as a diffusers variant (``diffusion_pytorch_model.bf16.safetensors``), loaded
            with ``from_pretrained(..., variant="bf16", torch_dtype=torch.bfloat16)``.
        repo_or_path: what the card's usage snippet loads (default: ``out_dir``).
        run_info: facts of the training run for the card (device, num_processes, train_wall_s).
    """
    if variant is not None and variant not in _VARIANT_DTYPES:
        raise ValueError(f"variant must be one of {sorted(_VARIANT_DTYPES)} or None, got {variant!r}")
    out_dir = Path(out_dir)
    transformer.eval()
    pipe = make_pipeline(cfg, transformer, conditioner, vae)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(out_dir)
    if variant is not None:
        low = DriftingTransformer2DModel.from_config(transformer.config)
        low.load_state_dict(transformer.state_dict())
        low.to(_VARIANT_DTYPES[variant]).save_pretrained(out_dir / "transformer", variant=variant)
    save_config(cfg, out_dir / "training_config.yaml")
    # The EMA copy is built on the CPU while the text encoder (and VAE) stay on the training
    # device: sample on the latter, or a GPU run's export mixes devices in the first layer.
    pipe.to(conditioner.device)
    rows = sample_images(pipe, cfg, cfg.train.seed)
    labelled_grid(rows, list(cfg.eval.sample_prompts), cell=max(128, cfg.data.resolution)).save(
        out_dir / SAMPLE_GRID_NAME
    )
    (out_dir / WIDGET_DIR).mkdir(exist_ok=True)
    for k, row in enumerate(rows):
        upscaled(row[0]).save(out_dir / WIDGET_DIR / f"sample_{k}.png")
    info = {
        "steps": steps,
        "generator_params": sum(p.numel() for p in transformer.parameters()),
        "prompts": list(cfg.eval.sample_prompts),
        "guidance_scale": cfg.eval.guidance_scale,
        "seed": cfg.train.seed,
        **(run_info or {}),
    }
    (out_dir / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    metrics_path = out_dir / METRICS
    if metrics:
        metrics_path.write_text(json.dumps({"metrics": metrics}, indent=2) + "\n")
    elif metrics_path.is_file():  # measured on the weights this export replaces
        metrics_path.unlink()
    write_model_card(out_dir, repo_or_path=repo_or_path or str(out_dir))
    return pipe


def load_checkpoint_generator(checkpoint: str | Path, use_ema: bool = True) -> DriftingTransformer2DModel:
    """The generator of a training checkpoint folder, with its EMA weights by default.

    The EMA file stores the shadow parameters in ``model.parameters()`` order (diffusers EMAModel).
    """
    checkpoint = Path(checkpoint)
    if not (checkpoint / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a checkpoint folder (no trainer_state.json)")
    model = DriftingTransformer2DModel.from_pretrained(checkpoint / "transformer")
    if use_ema:
        shadow = load_file(str(checkpoint / "ema.safetensors"))
        params = list(model.parameters())
        if len(shadow) != len(params):
            raise ValueError(
                f"{checkpoint}/ema.safetensors holds {len(shadow)} tensors, "
                f"the model has {len(params)} parameters"
            )
        with torch.no_grad():
            for i, p in enumerate(params):
                if shadow[str(i)].shape != p.shape:
                    raise ValueError(
                        f"{checkpoint}/ema.safetensors tensor {i} has shape {tuple(shadow[str(i)].shape)}, "
                        f"parameter {i} has {tuple(p.shape)}"
                    )
                p.copy_(shadow[str(i)])
    return model.eval()


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    use_ema: bool = True,
    variant: str | None = None,
    repo_or_path: str | None = None,
) -> TextToImagePipeline:
    """Checkpoint folder -> pipeline folder, with the run config saved in the checkpoint."""
    checkpoint = Path(checkpoint)
    model = load_checkpoint_generator(checkpoint, use_ema=use_ema)
    meta = json.loads((checkpoint / "trainer_state.json").read_text())
    cfg = config_from_dict(meta["config"], source=f"{checkpoint}/trainer_state.json")
    return export_pipeline(
        cfg,
        model,
        build_text_conditioner(cfg.text),
        out_dir,
        vae=None if cfg.model.vae is None else load_vae(cfg.model.vae, cfg.model.vae_subfolder),
        steps=int(meta["step"]),
        variant=variant,
        repo_or_path=repo_or_path,
    )
