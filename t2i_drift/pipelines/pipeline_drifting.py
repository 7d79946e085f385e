"""DriftingPipeline: one-step text-to-image sampling with a drifting generator.

    prompt -> text encoder (token embeddings + pooled) -> noise (randn_tensor) + style indices
           -> ONE transformer call with guidance = alpha -> (VAE decode) -> postprocess

``guidance_scale`` is the alpha the generator was trained with (docs/method.md section 5): guidance is
learned, so every value costs the same single forward pass, with no unconditional branch.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from t2i_drift.models.transformer_drifting import DriftingTransformer2DModel
from t2i_drift.pipelines.text_to_image import TextToImagePipeline
from t2i_drift.text.open_clip_text import OpenCLIPTextModel


class DriftingPipeline(TextToImagePipeline):
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

    def __init__(
        self,
        transformer: DriftingTransformer2DModel,
        text_encoder: PreTrainedModel | OpenCLIPTextModel,
        tokenizer: PreTrainedTokenizerBase,
        vae: Any = None,
        text_encoder_2: PreTrainedModel | OpenCLIPTextModel | None = None,
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
        self.register_text_to_image(
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            token_sources=token_sources,
            pooled_sources=pooled_sources,
            modules=dict(transformer=transformer, text_encoder=text_encoder, tokenizer=tokenizer, vae=vae),
            config=dict(
                max_sequence_length=max_sequence_length,
                text_pooling=text_pooling,
                max_sequence_length_2=max_sequence_length_2,
                text_pooling_2=text_pooling_2,
                guidance_scale_range=[float(g) for g in guidance_scale_range],
            ),
        )

    def check_inputs(self, guidance_scale: float, **common: Any) -> None:
        self.check_common_inputs(**common)
        lo, hi = self.config.guidance_scale_range
        if not lo <= guidance_scale <= hi:
            raise ValueError(f"guidance_scale={guidance_scale} is outside the trained range [{lo}, {hi}]")

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
        height = height or self.default_size()
        width = width or self.default_size()
        self.check_inputs(
            guidance_scale,
            prompt=prompt,
            height=height,
            width=width,
            num_images_per_prompt=num_images_per_prompt,
            prompt_embeds=prompt_embeds,
            prompt_attention_mask=prompt_attention_mask,
            pooled_prompt_embeds=pooled_prompt_embeds,
            output_type=output_type,
        )
        device = self._execution_device

        # 2. Encode the prompt (the trainer's TextConditioner)
        emb = self.conditioning(
            prompt, num_images_per_prompt, prompt_embeds, prompt_attention_mask, pooled_prompt_embeds, device
        )
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
        image = self.postprocess(sample, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
