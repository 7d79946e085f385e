"""DriftingPipeline: one-step text-to-image sampling with a drifting generator.

    prompt -> text encoder (token embeddings + pooled) -> noise (randn_tensor) + style indices
           -> ONE transformer call with guidance = alpha -> (VAE decode) -> postprocess

``guidance_scale`` is the alpha the generator was trained with (docs/method.md section 5): guidance is
learned, so every value costs the same single forward pass, with no unconditional branch.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from t2i_drift.models.transformer_drifting import DriftingTransformer2DModel
from t2i_drift.models.vae import decode_latents, vae_scale_factor
from t2i_drift.text.conditioner import ENCODER_NAMES, TextConditioner
from t2i_drift.text.encoders import TextEmbeddings, TextEncoderSlot

_OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class DriftingPipeline(DiffusionPipeline):
    """Text-to-image in one forward pass.

    Components:
        transformer: :class:`DriftingTransformer2DModel`.
        text_encoder: a frozen transformers text model (MiniLM, CLIP, T5, ...).
        tokenizer: its tokenizer.
        vae: optional diffusers ``AutoencoderKL``; absent for pixel-space generators.
        text_encoder_2, tokenizer_2: an optional second encoder (e.g. CLIP pooled + T5 tokens).
    Config:
        max_sequence_length: text tokens of ``text_encoder`` (padding/truncation length of training).
        text_pooling: how its pooled embedding is made (``auto``, ``mean``, ``cls``, ``pooler``).
        max_sequence_length_2, text_pooling_2: the same for ``text_encoder_2``.
        token_sources, pooled_sources: which encoders give the token embeddings (concatenated
            along the sequence) and the pooled embedding (concatenated along channels).
        guidance_scale_range: [min, max] alpha seen in training; values outside are refused.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->transformer->vae"
    _optional_components = ["vae", "text_encoder_2", "tokenizer_2"]

    def __init__(
        self,
        transformer: DriftingTransformer2DModel,
        text_encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        vae: Any = None,
        text_encoder_2: PreTrainedModel | None = None,
        tokenizer_2: PreTrainedTokenizerBase | None = None,
        max_sequence_length: int = 32,
        text_pooling: str = "auto",
        max_sequence_length_2: int = 77,
        text_pooling_2: str = "auto",
        token_sources: list[str] | tuple[str, ...] = ("text_encoder",),
        pooled_sources: list[str] | tuple[str, ...] = ("text_encoder",),
        guidance_scale_range: list[float] | tuple[float, float] = (1.0, 4.0),
    ):
        super().__init__()
        if (text_encoder_2 is None) != (tokenizer_2 is None):
            raise ValueError("text_encoder_2 and tokenizer_2 must be given together")
        available = ENCODER_NAMES if text_encoder_2 is not None else ENCODER_NAMES[:1]
        for name, sources in (("token_sources", token_sources), ("pooled_sources", pooled_sources)):
            if not sources or any(s not in available for s in sources):
                raise ValueError(f"{name} must be a non-empty list of {list(available)}, got {list(sources)}")
        self.register_modules(
            transformer=transformer,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            vae=vae,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
        )
        self.register_to_config(
            max_sequence_length=max_sequence_length,
            text_pooling=text_pooling,
            max_sequence_length_2=max_sequence_length_2,
            text_pooling_2=text_pooling_2,
            token_sources=list(token_sources),
            pooled_sources=list(pooled_sources),
            guidance_scale_range=[float(g) for g in guidance_scale_range],
        )
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_normalize=True)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell, from the VAE config (1 in pixel space)."""
        return vae_scale_factor(getattr(self, "vae", None))

    # ------------------------------------------------------------------------------------------
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

    def check_inputs(
        self,
        prompt: str | list[str] | None,
        height: int,
        width: int,
        guidance_scale: float,
        num_images_per_prompt: int,
        prompt_embeds: torch.Tensor | None,
        prompt_attention_mask: torch.Tensor | None,
        pooled_prompt_embeds: torch.Tensor | None,
        output_type: str,
    ) -> None:
        factor = self.vae_scale_factor * self.transformer.config.patch_size
        if height % factor or width % factor:
            raise ValueError(
                f"height and width must be divisible by {factor} "
                f"(VAE factor {self.vae_scale_factor} x patch size "
                f"{self.transformer.config.patch_size}), got height={height}, width={width}"
            )
        lo, hi = self.config.guidance_scale_range
        if not lo <= guidance_scale <= hi:
            raise ValueError(f"guidance_scale={guidance_scale} is outside the trained range [{lo}, {hi}]")
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
        if output_type not in _OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {_OUTPUT_TYPES}, got {output_type!r}")

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

    def prepare_style_indices(
        self, batch_size: int, generator: torch.Generator | list[torch.Generator] | None, device: torch.device
    ) -> torch.Tensor:
        """Random style indices [batch, num_style_codebooks] drawn from ``generator``."""
        if isinstance(generator, list):
            rows = [self.transformer.sample_style_indices(1, g, g.device) for g in generator]
            return torch.cat(rows).to(device)
        gen_device = generator.device if generator is not None else torch.device("cpu")
        return self.transformer.sample_style_indices(batch_size, generator, gen_device).to(device)

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float = 1.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Generate images in one forward pass.

        Args:
            prompt: text or list of texts (or pass ``prompt_embeds``).
            height, width: output size in pixels; default: the trained size.
            guidance_scale: alpha (learned guidance); 1 = no guidance. One forward pass at any value.
            num_images_per_prompt: images per prompt (each with its own noise and style).
            generator: torch.Generator(s) for reproducible noise and style draws.
            latents: pre-drawn noise [B*n, C, h, w]; style indices still come from ``generator``.
            prompt_embeds: [B, T, Dt] precomputed token embeddings (from ``encode_prompt``).
            prompt_attention_mask: [B, T]; None attends to every token.
            pooled_prompt_embeds: [B, Dp].
            output_type: ``pil``, ``np``, ``pt`` (images in [0, 1]) or ``latent`` (raw generator output).
            return_dict: return ``ImagePipelineOutput`` (else a tuple).
        """
        # 1. Check inputs
        default = self.transformer.config.sample_size * self.vae_scale_factor
        height = height or default
        width = width or default
        self.check_inputs(
            prompt,
            height,
            width,
            guidance_scale,
            num_images_per_prompt,
            prompt_embeds,
            prompt_attention_mask,
            pooled_prompt_embeds,
            output_type,
        )
        device = self._execution_device

        # 2. Encode the prompt (same function as the trainer)
        if prompt_embeds is None:
            emb = self.encode_prompt(prompt, num_images_per_prompt, device)
        else:
            mask = prompt_attention_mask
            if mask is None:
                mask = torch.ones(prompt_embeds.shape[:2], dtype=torch.long, device=prompt_embeds.device)
            emb = TextEmbeddings(prompt_embeds, mask, pooled_prompt_embeds).repeat(num_images_per_prompt)
        batch = emb.embeds.shape[0]

        # 3. Noise and style
        dtype = self.transformer.dtype
        noise = self.prepare_latents(batch, height, width, dtype, device, generator, latents)
        style = self.prepare_style_indices(batch, generator, device)

        # 4. One forward pass
        guidance = torch.full((batch,), float(guidance_scale), device=device)
        sample = self.transformer(
            hidden_states=noise,
            encoder_hidden_states=emb.embeds.to(device=device, dtype=dtype),
            encoder_attention_mask=emb.mask.to(device),
            pooled_projections=emb.pooled.to(device=device, dtype=dtype),
            guidance=guidance,
            style_indices=style,
        ).sample

        # 5. Decode (latent space) and postprocess
        if output_type == "latent":
            image = sample
        else:
            if self.vae is not None:
                sample = decode_latents(self.vae, sample)
            image = self.image_processor.postprocess(sample.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
