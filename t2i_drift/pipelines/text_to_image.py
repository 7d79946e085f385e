"""What the t2i_drift pipelines share: text conditioning, input checks, noise, decoding.

Both :class:`~t2i_drift.pipelines.pipeline_drifting.DriftingPipeline` (one step) and
:class:`~t2i_drift.pipelines.pipeline_flow_matching.FlowMatchingPipeline` (an ODE solved in
``num_inference_steps``) run the same ``DriftingTransformer2DModel`` on the same conditioning:

    prompt -> text encoder(s) (token embeddings [B, T, Dt] + pooled [B, Dp], the trainer's own
    TextConditioner) -> transformer call(s) on noise of the output's shape -> (VAE decode)
    -> postprocess
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from t2i_drift.models.vae import decode_latents, vae_scale_factor
from t2i_drift.text.conditioner import ENCODER_NAMES, TextConditioner
from t2i_drift.text.encoders import TextEmbeddings, TextEncoderSlot

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class TextToImagePipeline(DiffusionPipeline):
    """Base class; subclasses define ``__init__`` (calling :meth:`register_text_to_image`) and
    ``__call__``. Components: ``transformer`` and the optional ``text_encoder``, ``tokenizer``,
    ``vae``, ``text_encoder_2``, ``tokenizer_2``: a text encoder may be left out (``None``) when
    the caller passes precomputed embeddings, diffusers' usual memory-saving recipe."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->transformer->vae"
    multi_step = False  # True for pipelines that integrate over several num_inference_steps
    _optional_components = ["vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"]
    # What ``callback_on_step_end`` may read and replace; "latents" is the generator's output
    # (before VAE decoding) at the end of the step.
    _callback_tensor_inputs = ["latents", "prompt_embeds", "prompt_attention_mask", "pooled_prompt_embeds"]

    def register_text_to_image(
        self,
        *,
        text_encoder: Any,
        tokenizer: Any,
        text_encoder_2: Any,
        tokenizer_2: Any,
        token_sources: list[str] | tuple[str, ...],
        pooled_sources: list[str] | tuple[str, ...],
        modules: dict[str, Any],
        config: dict[str, Any],
    ) -> None:
        """Check the text sources, register ``modules`` and ``config``, build the image processor."""
        for index, (encoder, tok) in enumerate(((text_encoder, tokenizer), (text_encoder_2, tokenizer_2))):
            if (encoder is None) != (tok is None):
                names = ENCODER_NAMES[index], ENCODER_NAMES[index].replace("text_encoder", "tokenizer")
                raise ValueError(f"{names[0]} and {names[1]} must be given together (or both None)")
        for name, sources in (("token_sources", token_sources), ("pooled_sources", pooled_sources)):
            if not sources or any(s not in ENCODER_NAMES for s in sources):
                raise ValueError(
                    f"{name} must be a non-empty list of {list(ENCODER_NAMES)}, got {list(sources)}"
                )
        self.register_modules(
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            **modules,
        )
        self.register_to_config(
            token_sources=list(token_sources), pooled_sources=list(pooled_sources), **config
        )
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_normalize=True)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell, from the VAE config (1 in pixel space)."""
        return vae_scale_factor(getattr(self, "vae", None))

    # ------------------------------------------------------------------------------------------
    def text_conditioner(self, max_sequence_length: int | None = None) -> TextConditioner:
        """The pipeline's text encoders as the trainer's :class:`TextConditioner`.

        ``max_sequence_length`` replaces the trained token length of the encoders that give the
        token embeddings (``token_sources``); None keeps the trained lengths."""
        sources = set(self.config.token_sources) | set(self.config.pooled_sources)
        if "text_encoder_2" in sources:
            sources.add("text_encoder")  # the conditioner's slots come in ENCODER_NAMES order
        slots = []
        for name, length_key, pooling_key in (
            ("text_encoder", "max_sequence_length", "text_pooling"),
            ("text_encoder_2", "max_sequence_length_2", "text_pooling_2"),
        ):
            encoder = getattr(self, name, None)
            if encoder is None:
                if name in sources:
                    raise ValueError(
                        f"this pipeline's conditioning uses {name} (token_sources="
                        f"{self.config.token_sources}, pooled_sources={self.config.pooled_sources}) but it "
                        "was loaded as None: load it, or pass prompt_embeds and pooled_prompt_embeds"
                    )
                break
            tokenizer = getattr(self, name.replace("text_encoder", "tokenizer"))
            length = self.config[length_key]
            if max_sequence_length is not None and name in self.config.token_sources:
                length = max_sequence_length
            slots.append(TextEncoderSlot(encoder, tokenizer, length, self.config[pooling_key]))
        return TextConditioner(slots, self.config.token_sources, self.config.pooled_sources)

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        num_images_per_prompt: int = 1,
        device: torch.device | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        max_sequence_length: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The trainer's text conditioning, repeated ``num_images_per_prompt`` times per prompt
        (rows b*n .. b*n+n-1 belong to prompt b).

        With ``prompt_embeds`` given, no encoder runs: the embeddings (and their mask, all ones
        when None) are only repeated. Returns the diffusers tuple
        ``(prompt_embeds [B*n, T, Dt], prompt_attention_mask [B*n, T], pooled_prompt_embeds [B*n, Dp])``.
        """
        device = device or self._execution_device
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            emb = self.text_conditioner(max_sequence_length).encode(prompts, device)
        else:
            mask = prompt_attention_mask
            if mask is None:
                mask = torch.ones(prompt_embeds.shape[:2], dtype=torch.long, device=prompt_embeds.device)
            emb = TextEmbeddings(prompt_embeds, mask, pooled_prompt_embeds).to(device)
        emb = emb.repeat(num_images_per_prompt)
        return emb.embeds, emb.mask, emb.pooled

    def check_common_inputs(
        self,
        prompt: str | list[str] | None,
        height: int,
        width: int,
        num_images_per_prompt: int,
        prompt_embeds: torch.Tensor | None,
        prompt_attention_mask: torch.Tensor | None,
        pooled_prompt_embeds: torch.Tensor | None,
        output_type: str,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        max_sequence_length: int | None = None,
        guidance_scale: float = 1.0,
        generator: Any = None,
        latents: Any = None,
    ) -> None:
        """The checks every t2i_drift pipeline makes before any work; each error is a
        ``ValueError`` that names the argument."""
        for name, value in (
            ("height", height),
            ("width", width),
            ("num_images_per_prompt", num_images_per_prompt),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
            raise ValueError(f"guidance_scale must be a number, got {guidance_scale!r}")
        if not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be finite, got {guidance_scale!r}")
        if prompt is not None and not (
            isinstance(prompt, str)
            or (isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt))
        ):
            raise ValueError(f"`prompt` must be a string or a non-empty list of strings, got {prompt!r}")
        for name, tensor, ndim in (
            ("prompt_embeds", prompt_embeds, 3),
            ("pooled_prompt_embeds", pooled_prompt_embeds, 2),
            ("latents", latents, 4),
        ):
            if tensor is None:
                continue
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"`{name}` must be a torch.Tensor, got {type(tensor).__name__}")
            if tensor.ndim != ndim:
                raise ValueError(f"`{name}` must have {ndim} dimensions, got shape {tuple(tensor.shape)}")
            if not torch.isfinite(tensor).all():
                raise ValueError(f"`{name}` contains NaN or infinite values")
        generators = generator if isinstance(generator, list) else [generator]
        if not all(g is None or isinstance(g, torch.Generator) for g in generators) or generator == []:
            raise ValueError(
                f"`generator` must be a torch.Generator, a list of them or None, got {generator!r}"
            )
        factor = self.vae_scale_factor * self.transformer.config.patch_size
        if height % factor or width % factor:
            raise ValueError(
                f"height and width must be divisible by {factor} "
                f"(VAE factor {self.vae_scale_factor} x patch size "
                f"{self.transformer.config.patch_size}), got height={height}, width={width}"
            )
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of `prompt` and `prompt_embeds`")
        if prompt_embeds is not None:
            if pooled_prompt_embeds is None:
                raise ValueError("`prompt_embeds` needs `pooled_prompt_embeds` as well")
            if pooled_prompt_embeds.shape[0] != prompt_embeds.shape[0]:
                raise ValueError(
                    f"batch mismatch: prompt_embeds has {prompt_embeds.shape[0]} rows, "
                    f"pooled_prompt_embeds {pooled_prompt_embeds.shape[0]}"
                )
            if prompt_attention_mask is not None and prompt_attention_mask.shape != prompt_embeds.shape[:2]:
                raise ValueError(
                    f"prompt_attention_mask shape {tuple(prompt_attention_mask.shape)} does not match "
                    f"prompt_embeds {tuple(prompt_embeds.shape[:2])}"
                )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        batch = (
            prompt_embeds.shape[0]
            if prompt_embeds is not None
            else 1
            if isinstance(prompt, str)
            else len(prompt)
        )
        if isinstance(generator, list) and len(generator) != batch * num_images_per_prompt:
            raise ValueError(
                f"got {len(generator)} generators for {batch * num_images_per_prompt} images "
                f"({batch} prompt(s) x num_images_per_prompt={num_images_per_prompt})"
            )
        unknown = [
            k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs
        ]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs {unknown} are not among {self._callback_tensor_inputs}"
            )
        if max_sequence_length is not None:
            if not isinstance(max_sequence_length, int) or max_sequence_length < 1:
                raise ValueError(f"max_sequence_length must be a positive int, got {max_sequence_length!r}")
            for name in self.config.token_sources:
                tokenizer = getattr(self, name.replace("text_encoder", "tokenizer"), None)
                limit = getattr(tokenizer, "model_max_length", None)
                if prompt is not None and limit is not None and limit < 1e6 and max_sequence_length > limit:
                    raise ValueError(
                        f"max_sequence_length={max_sequence_length} exceeds the {name} tokenizer's "
                        f"model_max_length {limit}"
                    )

    def run_step_callback(
        self,
        callback: Callable[..., dict[str, Any]] | PipelineCallback | MultiPipelineCallbacks | None,
        tensor_inputs: list[str],
        step: int,
        timestep: torch.Tensor,
        tensors: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """diffusers' ``callback_on_step_end(pipe, step, timestep, callback_kwargs)``: hands the
        named ``tensors`` to the callback and returns them with whatever it replaced."""
        if callback is None:
            return tensors
        outputs = callback(self, step, timestep, {k: tensors[k] for k in tensor_inputs}) or {}
        return {**tensors, **{k: v for k, v in outputs.items() if k in tensors}}

    def estimate_call_bytes(self, images: int, height: int, width: int, text_tokens: int = 77) -> int:
        """A rough upper estimate of the working memory of one call making ``images`` images:
        transformer activations (about 16 floats per token and channel), attention scores (tokens^2
        per head, as SDPA's math kernel materializes them) and, in latent space, the VAE decoder
        (about 512 floats per output pixel). Used to refuse, with a clear error, calls that could
        only end in an allocation failure."""
        cfg = self.transformer.config
        f, p = self.vae_scale_factor, cfg.patch_size
        tokens = (height // (f * p)) * (width // (f * p)) + cfg.num_register_tokens
        if cfg.text_attention == "joint":
            tokens += text_tokens
        floats = images * tokens * cfg.hidden_size * 16 + images * cfg.num_attention_heads * tokens * tokens
        if getattr(self, "vae", None) is not None:
            floats += images * height * width * 512
        return floats * 4

    @staticmethod
    def available_bytes(device: torch.device) -> int | None:
        """Free accelerator memory, or the machine's physical memory for the CPU (None: unknown)."""
        if device.type == "cuda":
            return torch.cuda.mem_get_info(device)[0]
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None

    def check_memory(self, images: int, height: int, width: int, device: torch.device) -> None:
        """Refuse a call whose memory estimate exceeds what the device has."""
        need, have = self.estimate_call_bytes(images, height, width), self.available_bytes(device)
        if have is not None and need > have:
            raise ValueError(
                f"num_images_per_prompt x prompts = {images} images of {height}x{width} need about "
                f"{need / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB available on {device}: "
                "make fewer images per call or smaller ones"
            )

    def begin_call(
        self,
        prompt: str | list[str] | None,
        prompt_embeds: torch.Tensor | None,
        num_images_per_prompt: int,
        height: int,
        width: int,
        guidance_scale: float,
        attention_kwargs: dict[str, Any] | None,
    ) -> None:
        """After the input checks: record the call's settings (the diffusers properties) and
        refuse a call too large for the device's memory."""
        self._guidance_scale = float(guidance_scale)
        self._attention_kwargs = attention_kwargs
        if prompt_embeds is not None:
            prompts = prompt_embeds.shape[0]
        else:
            prompts = 1 if isinstance(prompt, str) else len(prompt)
        self.check_memory(prompts * num_images_per_prompt, height, width, self._execution_device)

    def default_size(self) -> int:
        """The trained image side in pixels."""
        return self.transformer.config.sample_size * self.vae_scale_factor

    def prepare_latents(
        self,
        batch_size: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        """Noise [batch, C, height/f, width/f] of the generator's output shape."""
        shape = (
            batch_size,
            self.transformer.config.in_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}")
            return latents.to(device=device, dtype=dtype)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch_size} images")
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)

    def postprocess(self, sample: torch.Tensor, output_type: str) -> Any:
        """Generator output [B, C, h, w] -> images of ``output_type`` (VAE-decoded in latent space)."""
        if output_type == "latent":
            return sample
        if self.vae is not None:
            sample = decode_latents(self.vae, sample)
        return self.image_processor.postprocess(sample.float(), output_type=output_type)
