"""Generating evaluation images from an exported pipeline: loading, sampling steps, timed batches.

Both pipeline kinds take ``pipe(prompts, generator=..., output_type="pt", guidance_scale=g)`` and
return ``.images`` [B, 3, H, W] in [0, 1]. A :class:`~t2i_drift.DriftingPipeline` is one
transformer evaluation per image at any guidance scale and takes no ``num_inference_steps``; a
multi-step pipeline (flow matching) takes ``num_inference_steps=k`` and, with classifier-free
guidance above 1, evaluates the transformer twice per step.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from t2i_drift.pipelines import TextToImagePipeline, load_pipeline

STEPS_ARGUMENT = "num_inference_steps"


def load_for_eval(folder: str | Path, device: str | torch.device | None = None) -> TextToImagePipeline:
    """An exported pipeline folder -> the pipeline on ``device`` (default: CUDA if available), with
    its progress bar off: a DriftingPipeline or a FlowMatchingPipeline, as the folder's
    ``model_index.json`` names (:func:`t2i_drift.pipelines.load_pipeline`)."""
    pipe = load_pipeline(folder)
    pipe.to(torch.device(device) if device else default_device())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def is_multi_step(pipe: TextToImagePipeline) -> bool:
    """True when the pipeline samples in several steps (a one-step pipeline accepts
    ``num_inference_steps`` too, for diffusers callers, but only 1)."""
    return bool(getattr(pipe, "multi_step", False))


def default_steps(pipe: TextToImagePipeline) -> int:
    """The pipeline's own default step count (1 for a one-step pipeline)."""
    if not is_multi_step(pipe):
        return 1
    default = inspect.signature(pipe.__call__).parameters[STEPS_ARGUMENT].default
    return int(default) if isinstance(default, int) else 25


def steps_kwargs(pipe: TextToImagePipeline, nfe: int) -> dict[str, int]:
    """The call arguments that sample with ``nfe`` steps; a one-step pipeline accepts only 1.

    Raises:
        ValueError: ``nfe`` < 1, or ``nfe`` != 1 for a one-step pipeline.
    """
    if nfe < 1:
        raise ValueError(f"the number of sampling steps must be >= 1, got {nfe}")
    if not is_multi_step(pipe):
        if nfe != 1:
            raise ValueError(f"{type(pipe).__name__} samples in one step; got {nfe} steps")
        return {}
    return {STEPS_ARGUMENT: nfe}


def transformer_passes(pipe: TextToImagePipeline, nfe: int, guidance_scale: float) -> int:
    """Transformer evaluations per image: ``nfe`` steps, doubled by classifier-free guidance > 1 in a
    multi-step pipeline (a drifting pipeline's guidance is learned: always one pass)."""
    return nfe * (2 if is_multi_step(pipe) and guidance_scale > 1 else 1)


def pipeline_resolution(pipe: TextToImagePipeline) -> int:
    """Output side in pixels: the transformer's ``sample_size`` times the VAE factor (1 in pixel space)."""
    return int(pipe.transformer.config.sample_size) * int(getattr(pipe, "vae_scale_factor", 1))


@dataclass(frozen=True)
class Generated:
    """Images generated for a caption list, with the time the pipeline calls took.

    Attributes:
        images: [N, 3, H, W] float32 in [-1, 1] on the CPU, row i for caption i.
        seconds: wall time of the timed pipeline calls (warm-up excluded, outputs copied to the CPU).
    """

    images: torch.Tensor
    seconds: float

    @property
    def latency_s_per_image(self) -> float:
        """Seconds per image at the batch size used."""
        return self.seconds / max(len(self.images), 1)


def generate_images(
    pipe: TextToImagePipeline,
    captions: list[str],
    seed: int = 0,
    batch_size: int = 64,
    call_kwargs: dict[str, Any] | None = None,
    warmup: bool = True,
    desc: str = "generate",
) -> Generated:
    """One image per caption (repeat a caption to get several), in batches of ``batch_size``.

    The noise of every batch comes from one ``torch.Generator().manual_seed(seed)`` (on the CPU, so
    results do not depend on the device). ``call_kwargs`` go to every call (``guidance_scale``,
    ``num_inference_steps``, ...). With ``warmup`` one untimed call on the first batch, from its own
    generator, runs first so that one-time costs (allocations, kernel selection) stay out of the
    latency.

    Returns:
        :class:`Generated` with images [N, 3, H, W] in [-1, 1].
    """
    if not captions:
        raise ValueError("no captions to generate for")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    kwargs = dict(call_kwargs or {})
    kwargs["output_type"] = "pt"
    if warmup:
        pipe(captions[:batch_size], generator=torch.Generator().manual_seed(seed), **kwargs)
    generator = torch.Generator().manual_seed(seed)
    chunks, seconds = [], 0.0
    for start in tqdm(range(0, len(captions), batch_size), desc=desc, leave=False):
        t0 = time.perf_counter()
        images = pipe(captions[start : start + batch_size], generator=generator, **kwargs).images
        images = images.float().cpu()  # [B, 3, H, W] in [0, 1]; the copy waits for the device
        seconds += time.perf_counter() - t0
        chunks.append(images * 2 - 1)
    return Generated(images=torch.cat(chunks), seconds=seconds)
