"""DriftingPipeline: one-step text-to-image sampling with a drifting generator.

    prompt -> text encoder (token embeddings + pooled) -> noise (randn_tensor) + style indices
           -> ONE transformer call with guidance = alpha -> (VAE decode) -> postprocess

``guidance_scale`` is the alpha the generator was trained with (docs/method.md section 5): guidance is
learned, so every value costs the same single forward pass, with no unconditional branch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils import replace_example_docstring
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from t2i_drift.models.transformer_drifting import DriftingTransformer2DModel
from t2i_drift.pipelines.text_to_image import TextToImagePipeline
from t2i_drift.text.open_clip_text import OpenCLIPTextModel

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from t2i_drift import DriftingPipeline

        >>> pipe = DriftingPipeline.from_pretrained("outputs/shapes/pipeline", torch_dtype=torch.float32)
        >>> generator = torch.Generator().manual_seed(0)
        >>> image = pipe("a large red circle at the top", generator=generator).images[0]
        >>> image.save("red_circle.png")
        ```
"""


class DriftingPipeline(TextToImagePipeline):
    """Text-to-image in one forward pass.

    Components:
        transformer: :class:`DriftingTransformer2DModel`.
        text_encoder: a frozen transformers (or OpenCLIP) text model; None when only
            precomputed embeddings are passed.
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
        text_encoder: PreTrainedModel | OpenCLIPTextModel | None,
        tokenizer: PreTrainedTokenizerBase | None,
        vae: AutoencoderKL | None = None,
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
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            token_sources=token_sources,
            pooled_sources=pooled_sources,
            modules=dict(transformer=transformer, vae=vae),
            config=dict(
                max_sequence_length=max_sequence_length,
                text_pooling=text_pooling,
                max_sequence_length_2=max_sequence_length_2,
                text_pooling_2=text_pooling_2,
                guidance_scale_range=[float(g) for g in guidance_scale_range],
            ),
        )

    def check_inputs(self, guidance_scale: float, num_inference_steps: int, **common: Any) -> None:
        self.check_common_inputs(guidance_scale=guidance_scale, **common)
        lo, hi = self.config.guidance_scale_range
        if not lo <= guidance_scale <= hi:
            raise ValueError(f"guidance_scale={guidance_scale} is outside the trained range [{lo}, {hi}]")
        if isinstance(num_inference_steps, bool) or num_inference_steps != 1:
            raise ValueError(
                f"num_inference_steps={num_inference_steps}: a drifting generator maps noise to an image "
                "in one forward pass, so the only valid value is 1"
            )

    def prepare_style_indices(
        self, batch_size: int, generator: torch.Generator | list[torch.Generator] | None, device: torch.device
    ) -> torch.Tensor:
        """Random style indices [batch, num_style_codebooks] drawn from ``generator``."""
        if isinstance(generator, list):
            rows = [self.transformer.sample_style_indices(1, g, g.device) for g in generator]
            return torch.cat(rows).to(device)
        gen_device = generator.device if generator is not None else torch.device("cpu")
        return self.transformer.sample_style_indices(batch_size, generator, gen_device).to(device)

    @property
    def guidance_scale(self) -> float:
        """The alpha of the current (or last) call."""
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        """Transformer calls per image: always 1."""
        return 1

    @property
    def attention_kwargs(self) -> dict[str, Any] | None:
        return self._attention_kwargs

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 1,
        guidance_scale: float = 1.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[..., dict[str, Any]]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        max_sequence_length: int | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Generate images in one forward pass.

        Args:
            prompt: text or list of texts (or pass ``prompt_embeds``).
            height, width: output size in pixels; default: the trained size.
            num_inference_steps: accepted for compatibility with diffusers callers; must be 1.
            guidance_scale: alpha (learned guidance); 1 = no guidance. One forward pass at any value.
            num_images_per_prompt: images per prompt (each with its own noise and style).
            generator: torch.Generator(s) for reproducible noise and style draws.
            latents: pre-drawn noise [B*n, C, h, w]; style indices still come from ``generator``.
            prompt_embeds: [B, T, Dt] precomputed token embeddings (from ``encode_prompt``); the text
                encoders may then be None.
            prompt_attention_mask: [B, T]; None attends to every token.
            pooled_prompt_embeds: [B, Dp].
            output_type: ``pil``, ``np``, ``pt`` (images in [0, 1]) or ``latent`` (raw generator output).
            return_dict: return ``ImagePipelineOutput`` (else a tuple).
            attention_kwargs: passed to the attention processors (``scale``: the LoRA scale).
            callback_on_step_end: ``fn(pipe, step, timestep, callback_kwargs) -> dict`` called once,
                after the forward pass and before decoding, with the tensors named in
                ``callback_on_step_end_tensor_inputs`` (default ``["latents"]``); tensors it returns
                replace the pipeline's. ``timestep`` is 0 (a drifting generator has no schedule).
            callback_on_step_end_tensor_inputs: names from ``_callback_tensor_inputs``.
            max_sequence_length: token length of the token-embedding encoder(s); default: the
                length the model was trained with.

        Examples:
        """
        # 1. Check inputs
        height = self.default_size() if height is None else height
        width = self.default_size() if width is None else width
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        self.check_inputs(
            guidance_scale,
            num_inference_steps,
            prompt=prompt,
            height=height,
            width=width,
            num_images_per_prompt=num_images_per_prompt,
            prompt_embeds=prompt_embeds,
            prompt_attention_mask=prompt_attention_mask,
            pooled_prompt_embeds=pooled_prompt_embeds,
            output_type=output_type,
            callback_on_step_end_tensor_inputs=tensor_inputs,
            max_sequence_length=max_sequence_length,
            generator=generator,
            latents=latents,
        )
        self.begin_call(
            prompt, prompt_embeds, num_images_per_prompt, height, width, guidance_scale, attention_kwargs
        )
        device = self._execution_device

        # 2. Encode the prompt (the trainer's TextConditioner)
        prompt_embeds, prompt_attention_mask, pooled_prompt_embeds = self.encode_prompt(
            prompt,
            num_images_per_prompt,
            device,
            prompt_embeds=prompt_embeds,
            prompt_attention_mask=prompt_attention_mask,
            pooled_prompt_embeds=pooled_prompt_embeds,
            max_sequence_length=max_sequence_length,
        )
        batch = prompt_embeds.shape[0]

        # 3. Noise and style
        dtype = self.transformer.dtype
        noise = self.prepare_latents(batch, height, width, dtype, device, generator, latents)
        style = self.prepare_style_indices(batch, generator, device)

        # 4. One forward pass
        with self.progress_bar(total=1) as progress_bar:
            guidance = torch.full((batch,), float(guidance_scale), device=device)
            sample = self.transformer(
                hidden_states=noise,
                encoder_hidden_states=prompt_embeds.to(dtype=dtype),
                encoder_attention_mask=prompt_attention_mask,
                pooled_projections=pooled_prompt_embeds.to(dtype=dtype),
                guidance=guidance,
                style_indices=style,
                attention_kwargs=attention_kwargs,
            ).sample
            tensors = self.run_step_callback(
                callback_on_step_end,
                tensor_inputs,
                0,
                torch.zeros((), device=device),
                dict(
                    latents=sample,
                    prompt_embeds=prompt_embeds,
                    prompt_attention_mask=prompt_attention_mask,
                    pooled_prompt_embeds=pooled_prompt_embeds,
                ),
            )
            sample = tensors["latents"]
            progress_bar.update()

        # 5. Decode (latent space) and postprocess
        image = self.postprocess(sample, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
