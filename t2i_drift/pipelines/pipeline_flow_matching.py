"""FlowMatchingPipeline: the flow-matching baseline, sampled in ``num_inference_steps`` Euler steps.

The transformer is the drifting generator's architecture trained as a rectified-flow velocity
model (training/objectives/flow_matching.py): on x_s = (1 - s) x_0 + s eps it predicts
v = eps - x_0, with the noise level s in [0, 1] fed through the generator's guidance input. Sampling
integrates dx/ds = v from s = 1 (noise) to s = 0 with diffusers' ``FlowMatchEulerDiscreteScheduler``:

    prompt -> text encoder -> noise -> for s in the scheduler's sigmas: v = transformer(x, s)
    (classifier-free guidance: v_uncond + w (v_cond - v_uncond), uncond = the empty caption)
    -> x <- x + (s_next - s) v -> (VAE decode) -> postprocess

Each step costs one transformer call (two with guidance_scale > 1): its number of function
evaluations (NFE) is ``num_inference_steps`` (x 2 with guidance).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from t2i_drift.models.transformer_drifting import DriftingTransformer2DModel
from t2i_drift.pipelines.text_to_image import TextToImagePipeline
from t2i_drift.text.encoders import TextEmbeddings
from t2i_drift.text.open_clip_text import OpenCLIPTextModel


class FlowMatchingPipeline(TextToImagePipeline):
    """Text-to-image with a rectified-flow transformer and an Euler ODE solver.

    Components: as :class:`~t2i_drift.pipelines.pipeline_drifting.DriftingPipeline`, plus
    ``scheduler`` (``FlowMatchEulerDiscreteScheduler``).
    Config: the text settings of DriftingPipeline, plus
        classifier_free_guidance: whether the model was trained with dropped captions, i.e. knows
            the empty caption's unconditional velocity (guidance_scale > 1 is refused otherwise).
    """

    multi_step = True

    def __init__(
        self,
        transformer: DriftingTransformer2DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
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
        classifier_free_guidance: bool = False,
    ):
        super().__init__()
        self.register_text_to_image(
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            token_sources=token_sources,
            pooled_sources=pooled_sources,
            modules=dict(
                transformer=transformer,
                scheduler=scheduler,
                vae=vae,
            ),
            config=dict(
                max_sequence_length=max_sequence_length,
                text_pooling=text_pooling,
                max_sequence_length_2=max_sequence_length_2,
                text_pooling_2=text_pooling_2,
                classifier_free_guidance=classifier_free_guidance,
            ),
        )

    def velocity(
        self,
        x: torch.Tensor,
        sigma: float,
        emb: TextEmbeddings,
        style: torch.Tensor,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """v = transformer(x_sigma; text, guidance input = sigma) [B, C, h, w]."""
        dtype = self.transformer.dtype
        return self.transformer(
            hidden_states=x.to(dtype),
            encoder_hidden_states=emb.embeds.to(dtype=dtype),
            encoder_attention_mask=emb.mask,
            pooled_projections=emb.pooled.to(dtype=dtype),
            guidance=torch.full((x.shape[0],), sigma, device=x.device),
            style_indices=style,
            attention_kwargs=attention_kwargs,
        ).sample

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def attention_kwargs(self) -> dict[str, Any] | None:
        return self._attention_kwargs

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 25,
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
        """Generate images by integrating the learned flow.

        Args:
            num_inference_steps: Euler steps from noise to image (1 = a single jump).
            guidance_scale: classifier-free guidance weight w (1 = none; > 1 needs a model trained
                with dropped captions, and costs a second transformer call per step).
            callback_on_step_end: called after every Euler step with the current ``latents`` (and
                the other tensors named in ``callback_on_step_end_tensor_inputs``).
            Other arguments as :meth:`DriftingPipeline.__call__`.
        """
        # 1. Check inputs
        height = self.default_size() if height is None else height
        width = self.default_size() if width is None else width
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        self.check_common_inputs(
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
            guidance_scale=guidance_scale,
            generator=generator,
            latents=latents,
        )
        if (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, int)
            or num_inference_steps < 1
        ):
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        if guidance_scale < 1:
            raise ValueError(f"guidance_scale must be >= 1, got {guidance_scale}")
        if guidance_scale > 1 and not self.config.classifier_free_guidance:
            raise ValueError(
                f"guidance_scale={guidance_scale} needs a model trained with dropped captions "
                "(objective.caption_dropout > 0); this one was not"
            )
        self.begin_call(
            prompt, prompt_embeds, num_images_per_prompt, height, width, guidance_scale, attention_kwargs
        )
        self._num_timesteps = num_inference_steps
        device = self._execution_device

        # 2. Conditioning (and the empty caption's, for guidance)
        emb = TextEmbeddings(
            *self.encode_prompt(
                prompt,
                num_images_per_prompt,
                device,
                prompt_embeds=prompt_embeds,
                prompt_attention_mask=prompt_attention_mask,
                pooled_prompt_embeds=pooled_prompt_embeds,
                max_sequence_length=max_sequence_length,
            )
        )
        batch = emb.embeds.shape[0]
        uncond = None
        if guidance_scale > 1:
            uncond = TextEmbeddings(
                *self.encode_prompt("", batch, device, max_sequence_length=max_sequence_length)
            )
        # Fixed style: the flow's randomness is its initial noise.
        style = torch.zeros(
            batch, self.transformer.config.num_style_codebooks, dtype=torch.long, device=device
        )

        # 3. Noise and the sigma schedule
        x = self.prepare_latents(batch, height, width, torch.float32, device, generator, latents)
        self.scheduler.set_timesteps(num_inference_steps, device=device)

        # 4. Euler steps from sigma = 1 to 0
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            sigma = float(self.scheduler.sigmas[i])  # the noise level the model was trained on
            v = self.velocity(x, sigma, emb, style, attention_kwargs).float()
            if uncond is not None:
                v_uncond = self.velocity(x, sigma, uncond, style, attention_kwargs).float()
                v = v_uncond + guidance_scale * (v - v_uncond)
            x = self.scheduler.step(v, t, x, return_dict=False)[0]
            tensors = self.run_step_callback(
                callback_on_step_end,
                tensor_inputs,
                i,
                t,
                dict(
                    latents=x,
                    prompt_embeds=emb.embeds,
                    prompt_attention_mask=emb.mask,
                    pooled_prompt_embeds=emb.pooled,
                ),
            )
            x = tensors["latents"]
            emb = TextEmbeddings(
                tensors["prompt_embeds"], tensors["prompt_attention_mask"], tensors["pooled_prompt_embeds"]
            )

        # 5. Decode (latent space) and postprocess
        image = self.postprocess(x, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
