"""What the t2i_drift pipelines share: text conditioning, input checks, noise, decoding.

Both :class:`~t2i_drift.pipelines.pipeline_drifting.DriftingPipeline` (one step) and
:class:`~t2i_drift.pipelines.pipeline_flow_matching.FlowMatchingPipeline` (an ODE solved in
``num_inference_steps``) run the same ``DriftingTransformer2DModel`` on the same conditioning:

    prompt -> text encoder(s) (token embeddings [B, T, Dt] + pooled [B, Dp], the trainer's own
    TextConditioner) -> transformer call(s) on noise of the output's shape -> (VAE decode)
    -> postprocess
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from t2i_drift.models.vae import decode_latents, vae_scale_factor
from t2i_drift.text.conditioner import ENCODER_NAMES, TextConditioner
from t2i_drift.text.encoders import TextEmbeddings, TextEncoderSlot

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class TextToImagePipeline(DiffusionPipeline):
    """Base class; subclasses define ``__init__`` (calling :meth:`register_text_to_image`) and
    ``__call__``. Components: ``transformer``, ``text_encoder``, ``tokenizer`` and the optional
    ``vae``, ``text_encoder_2``, ``tokenizer_2``."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->transformer->vae"
    _optional_components = ["vae", "text_encoder_2", "tokenizer_2"]

    def register_text_to_image(
        self,
        *,
        text_encoder_2: Any,
        tokenizer_2: Any,
        token_sources: list[str] | tuple[str, ...],
        pooled_sources: list[str] | tuple[str, ...],
        modules: dict[str, Any],
        config: dict[str, Any],
    ) -> None:
        """Check the text sources, register ``modules`` and ``config``, build the image processor."""
        if (text_encoder_2 is None) != (tokenizer_2 is None):
            raise ValueError("text_encoder_2 and tokenizer_2 must be given together")
        available = ENCODER_NAMES if text_encoder_2 is not None else ENCODER_NAMES[:1]
        for name, sources in (("token_sources", token_sources), ("pooled_sources", pooled_sources)):
            if not sources or any(s not in available for s in sources):
                raise ValueError(f"{name} must be a non-empty list of {list(available)}, got {list(sources)}")
        self.register_modules(text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, **modules)
        self.register_to_config(
            token_sources=list(token_sources), pooled_sources=list(pooled_sources), **config
        )
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_normalize=True)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell, from the VAE config (1 in pixel space)."""
        return vae_scale_factor(getattr(self, "vae", None))

    # ------------------------------------------------------------------------------------------
    def text_conditioner(self) -> TextConditioner:
        """The pipeline's text encoders as the trainer's :class:`TextConditioner`."""
        slots = [
            TextEncoderSlot(
                self.text_encoder, self.tokenizer, self.config.max_sequence_length, self.config.text_pooling
            )
        ]
        if getattr(self, "text_encoder_2", None) is not None:
            slots.append(
                TextEncoderSlot(
                    self.text_encoder_2,
                    self.tokenizer_2,
                    self.config.max_sequence_length_2,
                    self.config.text_pooling_2,
                )
            )
        return TextConditioner(slots, self.config.token_sources, self.config.pooled_sources)

    def encode_prompt(
        self,
        prompt: str | list[str],
        num_images_per_prompt: int = 1,
        device: torch.device | None = None,
    ) -> TextEmbeddings:
        """The trainer's text conditioning, repeated ``num_images_per_prompt`` times per prompt.

        Returns TextEmbeddings(embeds [B*n, T, Dt], mask [B*n, T], pooled [B*n, Dp])."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        emb = self.text_conditioner().encode(prompts, device or self._execution_device)
        return emb.repeat(num_images_per_prompt)

    def conditioning(
        self,
        prompt: str | list[str] | None,
        num_images_per_prompt: int,
        prompt_embeds: torch.Tensor | None,
        prompt_attention_mask: torch.Tensor | None,
        pooled_prompt_embeds: torch.Tensor | None,
        device: torch.device,
    ) -> TextEmbeddings:
        """Text conditioning from ``prompt`` or from precomputed embeddings, [B*n, ...] rows."""
        if prompt_embeds is None:
            return self.encode_prompt(prompt, num_images_per_prompt, device)
        mask = prompt_attention_mask
        if mask is None:
            mask = torch.ones(prompt_embeds.shape[:2], dtype=torch.long, device=prompt_embeds.device)
        return TextEmbeddings(prompt_embeds, mask, pooled_prompt_embeds).repeat(num_images_per_prompt)

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
    ) -> None:
        """The checks every t2i_drift pipeline makes before any work; errors name the argument."""
        factor = self.vae_scale_factor * self.transformer.config.patch_size
        if height % factor or width % factor:
            raise ValueError(
                f"height and width must be divisible by {factor} "
                f"(VAE factor {self.vae_scale_factor} x patch size "
                f"{self.transformer.config.patch_size}), got height={height}, width={width}"
            )
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of `prompt` and `prompt_embeds`")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise ValueError(f"`prompt` must be a string or a list of strings, got {type(prompt).__name__}")
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
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
