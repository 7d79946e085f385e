"""DriftingTransformer2DModel: the one-step generator (docs/method.md sections 6 and 7).

A DiT that maps noise of the output's shape to a sample in one forward pass, conditioned on
    - text: per-token embeddings through cross-attention (or joint attention, ``text_attention``),
      plus a pooled embedding in the adaLN vector;
    - guidance alpha: embedded like a diffusion timestep (alpha is trained, section 5);
    - style: ``num_style_codebooks`` random indices, each picking 1 of ``style_codebook_size``
      learned embeddings, summed into the adaLN vector (paper: FID 8.86 -> 8.46).
Blocks: adaLN-zero modulation, RMSNorm, QK-norm, 2-D RoPE over patches, SwiGLU MLP, and
``num_register_tokens`` learned in-context tokens prepended to the patch sequence.

Shapes: N = batch, C = channels, H x W = sample size, P = patches (H/p * W/p), R = registers,
T = text tokens, D = hidden size, Dt = text embedding size.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.peft_utils import apply_lora_scale

from t2i_drift.models.transformer_blocks import DriftingTransformerBlock, FinalLayer, rope_2d, sincos_2d

# Named sizes. The small ones train on a laptop CPU; B and L follow DiT-B / DiT-L widths.
# How image tokens see the text: cross-attention per block, or one joint sequence.
TextAttention = Literal["cross", "joint"]

DRIFTING_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, num_layers=2, num_attention_heads=2, num_register_tokens=4),
    "XS": dict(hidden_size=192, num_layers=4, num_attention_heads=3, num_register_tokens=16),
    "S": dict(hidden_size=256, num_layers=6, num_attention_heads=4, num_register_tokens=16),
    "M": dict(hidden_size=384, num_layers=8, num_attention_heads=6, num_register_tokens=16),
    "B": dict(hidden_size=768, num_layers=12, num_attention_heads=12, num_register_tokens=16),
    "L": dict(hidden_size=1024, num_layers=24, num_attention_heads=16, num_register_tokens=16),
}


# ----------------------------------------------------------------------------------------------
#                                       The generator
# ----------------------------------------------------------------------------------------------


class DriftingTransformer2DModel(ModelMixin, ConfigMixin, AttentionMixin):
    """One-step drifting generator. The whole architecture is in ``config.json``.

    Args:
        sample_size: height = width of the output (pixels or latents).
        patch_size: side of a square patch.
        in_channels: channels of the noise input (= output channels unless ``out_channels``).
        out_channels: channels of the output; None means ``in_channels``.
        hidden_size, num_layers, num_attention_heads, mlp_ratio: transformer size.
        text_embed_dim: Dt, width of the per-token text embeddings.
        pooled_embed_dim: width of the pooled text embedding.
        num_register_tokens: R learned in-context tokens (official: 16).
        num_style_codebooks, style_codebook_size: style tokens (official: 32 indices into 64 each).
        guidance_embed_dim: frequency channels of the alpha embedding.
        guidance_embed_scale: alpha is multiplied by this before the sinusoidal embedding, so the
            trained range [1, alpha_max] spans many periods (timesteps use a 0..1000 scale).
        rope_theta: RoPE base.
        norm_eps: RMSNorm epsilon.
        guidance_embed_gain: None adds the alpha embedding to the adaLN vector as is; a number g
            (official release: 0.02) adds g * RMSNorm(embedding), so at init alpha does not dominate
            the pooled text and style (whose RMS is ~0.02-0.1).
        conditioned_registers: the in-context tokens are their learned embedding plus a linear map
            of the conditioning vector (official release), so they carry text, alpha and style.
        absolute_pos_embed: add a learnable position embedding (initialized 2-D sin-cos) to the
            patch tokens, next to RoPE (official release).
        norm_affine: learnable scale in the blocks' RMSNorms (official release).
        style_init_std: std of each style embedding at init; None: 0.02 / sqrt(num_style_codebooks)
            so that their sum has std 0.02 (official release: 0.02 per embedding).
        text_attention: ``cross`` (PixArt-style: image tokens cross-attend to the text tokens in
            every block) or ``joint`` (single-stream, FLUX single-block style: the projected text
            tokens join the sequence between the registers and the patches, sharing the
            self-attention and MLP weights). docs/results.md has the measured comparison.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["DriftingTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        patch_size: int = 4,
        in_channels: int = 3,
        out_channels: int | None = None,
        hidden_size: int = 256,
        num_layers: int = 6,
        num_attention_heads: int = 4,
        mlp_ratio: float = 4.0,
        text_embed_dim: int = 384,
        pooled_embed_dim: int = 384,
        num_register_tokens: int = 16,
        num_style_codebooks: int = 32,
        style_codebook_size: int = 64,
        guidance_embed_dim: int = 256,
        guidance_embed_scale: float = 250.0,
        rope_theta: float = 10000.0,
        norm_eps: float = 1e-6,
        text_attention: TextAttention = "cross",
        guidance_embed_gain: float | None = None,
        conditioned_registers: bool = False,
        absolute_pos_embed: bool = False,
        norm_affine: bool = False,
        style_init_std: float | None = None,
    ):
        super().__init__()
        if text_attention not in ("cross", "joint"):
            raise ValueError(f"text_attention must be 'cross' or 'joint', got {text_attention!r}")
        if sample_size % patch_size != 0:
            raise ValueError(f"sample_size {sample_size} is not divisible by patch_size {patch_size}")
        self.out_channels = out_channels or in_channels
        D = hidden_size
        self.patch_embed = nn.Conv2d(in_channels, D, kernel_size=patch_size, stride=patch_size)
        self.registers = nn.Parameter(torch.zeros(1, num_register_tokens, D))
        self.context_embedder = nn.Sequential(
            nn.RMSNorm(text_embed_dim, eps=norm_eps), nn.Linear(text_embed_dim, D)
        )
        self.pooled_embedder = nn.Sequential(nn.Linear(pooled_embed_dim, D), nn.SiLU(), nn.Linear(D, D))
        self.guidance_proj = Timesteps(guidance_embed_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.guidance_embedder = TimestepEmbedding(guidance_embed_dim, D)
        self.guidance_norm = nn.RMSNorm(D, eps=norm_eps) if guidance_embed_gain is not None else None
        self.register_proj = nn.Linear(D, D) if conditioned_registers else None
        grid = sample_size // patch_size
        self.pos_embed = nn.Parameter(sincos_2d(grid, grid, D)[None]) if absolute_pos_embed else None
        self.style_embedding = nn.Embedding(num_style_codebooks * style_codebook_size, D)
        self.blocks = nn.ModuleList(
            [
                DriftingTransformerBlock(
                    D, num_attention_heads, mlp_ratio, norm_eps, text_attention == "cross", norm_affine
                )
                for _ in range(num_layers)
            ]
        )
        self.final_layer = FinalLayer(D, patch_size, self.out_channels, norm_eps)
        self.gradient_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT init: xavier linears, small embeddings, zero adaLN and output (adaLN-zero)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.registers, std=0.02)
        # Default: the sum of num_style_codebooks entries has std ~0.02 like other embeddings.
        style_std = self.config.style_init_std or 0.02 / math.sqrt(self.config.num_style_codebooks)
        nn.init.normal_(self.style_embedding.weight, std=style_std)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.proj.weight)
        nn.init.zeros_(self.final_layer.proj.bias)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> Any:
        """diffusers' ``from_pretrained``, strict: weights that do not match ``config.json``
        (missing, unexpected or differently shaped tensors) are an error naming the folder, where
        diffusers would leave missing layers on the meta device and drop unexpected ones."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, output_loading_info=True, **kwargs
        )
        bad = {k: info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)}
        if bad:
            where = pretrained_model_name_or_path
            if kwargs.get("subfolder"):
                where = f"{where}/{kwargs['subfolder']}"
            details = "; ".join(f"{k}: {sorted(v)[:4]}{' ...' if len(v) > 4 else ''}" for k, v in bad.items())
            raise ValueError(f"{where}: the weights do not match config.json ({details})")
        return (model, info) if want_info else model

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> DriftingTransformer2DModel:
        """Build a named size (see ``DRIFTING_PRESETS``); ``overrides`` set any config argument."""
        if name not in DRIFTING_PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(DRIFTING_PRESETS)}")
        return cls(**{**DRIFTING_PRESETS[name], **overrides})

    def sample_style_indices(
        self, batch_size: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> torch.Tensor:
        """Random style indices [batch_size, num_style_codebooks], one entry per codebook."""
        return torch.randint(
            0,
            self.config.style_codebook_size,
            (batch_size, self.config.num_style_codebooks),
            generator=generator,
            device=device or self.device,
        )

    def _conditioning(
        self, pooled: torch.Tensor, guidance: torch.Tensor, style_indices: torch.Tensor
    ) -> torch.Tensor:
        """adaLN vector [N, D] = pooled text + alpha embedding + summed style embeddings."""
        cfg = self.config
        g = self.guidance_proj(guidance.float() * cfg.guidance_embed_scale).to(self.dtype)  # [N, Fg]
        g = self.guidance_embedder(g)  # [N, D]
        if self.guidance_norm is not None:
            g = cfg.guidance_embed_gain * self.guidance_norm(g)
        offsets = torch.arange(cfg.num_style_codebooks, device=style_indices.device) * cfg.style_codebook_size
        style = self.style_embedding(style_indices + offsets).sum(dim=1)  # [N, D]
        return self.pooled_embedder(pooled.to(self.dtype)) + g + style

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        pooled_projections: torch.Tensor | None = None,
        guidance: torch.Tensor | float | None = None,
        style_indices: torch.Tensor | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """One generator step: noise -> sample.

        Args:
            hidden_states: [N, C_in, H, W] noise.
            encoder_hidden_states: [N, T, Dt] per-token text embeddings.
            encoder_attention_mask: [N, T], 1/True for real tokens; None attends to all.
            pooled_projections: [N, Dt_pooled] pooled text embedding; None uses zeros.
            guidance: alpha, scalar or [N]; None means 1 (no guidance).
            style_indices: [N, num_style_codebooks] ints; None draws them from the global RNG.
            attention_kwargs: extra keyword arguments for the attention processors; ``scale`` is the
                LoRA scale (applied to PEFT adapters, diffusers' convention).
        Returns:
            ``Transformer2DModelOutput(sample=[N, C_out, H, W])`` or a 1-tuple.
        """
        N, _, H, W = hidden_states.shape
        p = self.config.patch_size
        if H % p or W % p:
            raise ValueError(f"height {H} and width {W} must be divisible by patch_size {p}")
        device = hidden_states.device
        if pooled_projections is None:
            pooled_projections = torch.zeros(N, self.config.pooled_embed_dim, device=device, dtype=self.dtype)
        if guidance is None:
            guidance = 1.0
        guidance = torch.as_tensor(guidance, device=device, dtype=torch.float32).expand(N)
        if style_indices is None:
            style_indices = self.sample_style_indices(N, device=device)
        mask = None if encoder_attention_mask is None else encoder_attention_mask.to(device=device).bool()

        cond = self._conditioning(pooled_projections, guidance, style_indices)  # [N, D]
        context = self.context_embedder(encoder_hidden_states.to(self.dtype))  # [N, T, D]
        x = self.patch_embed(hidden_states.to(self.dtype))  # [N, D, H/p, W/p]
        x = x.flatten(2).transpose(1, 2)  # [N, P, D]
        if self.pos_embed is not None:
            if self.pos_embed.shape[1] != x.shape[1]:
                raise ValueError(
                    f"absolute_pos_embed is fixed at {self.config.sample_size}x{self.config.sample_size}; "
                    f"got {H}x{W}"
                )
            x = x + self.pos_embed
        R = self.config.num_register_tokens
        registers = self.registers.expand(N, -1, -1)  # [N, R, D]
        if self.register_proj is not None:
            registers = registers + self.register_proj(cond)[:, None, :]
        if self.config.text_attention == "joint":
            # [registers | text | patches]; padded text keys are masked, registers and patches never.
            T = context.shape[1]
            x = torch.cat([registers, context, x], dim=1)  # [N, R+T+P, D]
            if mask is not None:
                keep = torch.ones(N, x.shape[1], dtype=torch.bool, device=device)
                keep[:, R : R + T] = mask
                mask = keep  # [N, R+T+P]
            context, offset = None, R + T
        else:
            x = torch.cat([registers, x], dim=1)  # [N, R+P, D]
            offset = R
        rope = rope_2d(
            H // p,
            W // p,
            self.config.hidden_size // self.config.num_attention_heads,
            self.config.rope_theta,
            device,
        )  # [P, hd/2]

        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(
                    block, x, cond, context, mask, rope, offset, attention_kwargs
                )
            else:
                x = block(x, cond, context, mask, rope, offset, attention_kwargs)  # [N, offset+P, D]

        x = self.final_layer(x[:, offset:], cond)  # [N, P, p*p*C_out]
        x = x.view(N, H // p, W // p, p, p, self.out_channels)
        sample = x.permute(0, 5, 1, 3, 2, 4).reshape(N, self.out_channels, H, W)  # [N, C_out, H, W]
        if not return_dict:
            return (sample,)
        return Transformer2DModelOutput(sample=sample)
