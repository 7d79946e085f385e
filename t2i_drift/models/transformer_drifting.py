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
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin

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
#                                   Positional embedding (RoPE)
# ----------------------------------------------------------------------------------------------


def rope_2d(grid_h: int, grid_w: int, head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """Rotation angles of 2-D RoPE: half of each head rotates with the row, half with the column.

    Returns:
        [grid_h * grid_w, head_dim // 2] angles, one per rotated pair of channels.
    """
    if head_dim % 4 != 0:
        raise ValueError(f"2-D RoPE needs a head dimension divisible by 4, got {head_dim}")
    axis_dim = head_dim // 2
    freqs = theta ** (-torch.arange(0, axis_dim, 2, device=device, dtype=torch.float32) / axis_dim)  # [hd/4]
    rows = torch.arange(grid_h, device=device, dtype=torch.float32).repeat_interleave(grid_w)  # [P]
    cols = torch.arange(grid_w, device=device, dtype=torch.float32).repeat(grid_h)  # [P]
    return torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=-1)  # [P, hd/2]


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2k, 2k+1) of x [N, heads, S, hd] by angles [S, hd/2] (fp32 math)."""
    x_pairs = x.float().unflatten(-1, (-1, 2))  # [N, h, S, hd/2, 2]
    cos, sin = angles.cos(), angles.sin()
    a, b = x_pairs[..., 0], x_pairs[..., 1]
    rotated = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)
    return rotated.flatten(-2).type_as(x)


# ----------------------------------------------------------------------------------------------
#                                          Layers
# ----------------------------------------------------------------------------------------------


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x [N, S, D], shift/scale [N, D]."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    """Multi-head attention with QK-RMSNorm; self-attention (with RoPE) or cross-attention."""

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None, eps: float = 1e-6):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"hidden_size {dim} is not divisible by num_attention_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(context_dim or dim, dim)
        self.to_v = nn.Linear(context_dim or dim, dim)
        self.norm_q = nn.RMSNorm(self.head_dim, eps=eps)
        self.norm_k = nn.RMSNorm(self.head_dim, eps=eps)
        self.to_out = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        rope: torch.Tensor | None = None,
        rope_offset: int = 0,
    ) -> torch.Tensor:
        """x [N, S, D]; context [N, T, Dc] (None: self-attention); mask [N, T] bool (True = attend);
        rope [S - rope_offset, hd/2] applied to the tokens after the first ``rope_offset``."""
        N, S, _ = x.shape
        ctx = x if context is None else context
        q = self.norm_q(self.to_q(x).view(N, S, self.num_heads, self.head_dim).transpose(1, 2))  # [N,h,S,hd]
        k = self.norm_k(
            self.to_k(ctx).view(N, -1, self.num_heads, self.head_dim).transpose(1, 2)
        )  # [N,h,T,hd]
        v = self.to_v(ctx).view(N, -1, self.num_heads, self.head_dim).transpose(1, 2)  # [N,h,T,hd]
        if rope is not None:
            # Register tokens (the first rope_offset) carry no position.
            q = torch.cat([q[:, :, :rope_offset], apply_rope(q[:, :, rope_offset:], rope)], dim=2)
            k = torch.cat([k[:, :, :rope_offset], apply_rope(k[:, :, rope_offset:], rope)], dim=2)
        attn_mask = None if mask is None else mask[:, None, None, :]  # [N,1,1,T]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [N,h,S,hd]
        return self.to_out(out.transpose(1, 2).reshape(N, S, -1))


class SwiGLU(nn.Module):
    """SwiGLU MLP; hidden width 2/3 * mlp_ratio * dim rounded up to a multiple of 32."""

    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        hidden = int(math.ceil(2 * mlp_ratio * dim / 3 / 32) * 32)
        self.w_gate_up = nn.Linear(dim, 2 * hidden)
        self.w_down = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w_gate_up(x).chunk(2, dim=-1)
        return self.w_down(F.silu(gate) * up)


class DriftingTransformerBlock(nn.Module):
    """Self-attention, cross-attention to text (``cross_attention``), SwiGLU; each branch
    adaLN-zero modulated and gated. Without cross-attention the text tokens are part of ``x``
    (joint attention) and reach the image tokens through the self-attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float, cross_attention: bool = True):
        super().__init__()
        self.cross_attention = cross_attention
        self.norm1 = nn.RMSNorm(dim, eps=eps, elementwise_affine=False)
        self.attn = Attention(dim, num_heads, eps=eps)
        if cross_attention:
            self.norm2 = nn.RMSNorm(dim, eps=eps, elementwise_affine=False)
            self.cross_attn = Attention(dim, num_heads, context_dim=dim, eps=eps)
        self.norm3 = nn.RMSNorm(dim, eps=eps, elementwise_affine=False)
        self.mlp = SwiGLU(dim, mlp_ratio)
        # shift, scale, gate for each branch; zero-init -> every block starts as identity.
        branches = 3 if cross_attention else 2
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * branches * dim))

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None,
        rope: torch.Tensor,
        rope_offset: int,
    ) -> torch.Tensor:
        """x [N, S, D], cond [N, D] -> [N, S, D].

        Cross-attention: S = R+P, context [N, T, D] and context_mask [N, T] feed the cross branch.
        Joint attention: S = R+T+P, context is None and context_mask [N, S] masks padded text keys.
        RoPE rotates the tokens after the first ``rope_offset`` (the patches).
        """
        if self.cross_attention:
            sa_shift, sa_scale, sa_gate, ca_shift, ca_scale, ca_gate, mlp_shift, mlp_scale, mlp_gate = (
                self.adaLN_modulation(cond).chunk(9, dim=-1)
            )
        else:
            sa_shift, sa_scale, sa_gate, mlp_shift, mlp_scale, mlp_gate = self.adaLN_modulation(cond).chunk(
                6, dim=-1
            )
        h = modulate(self.norm1(x), sa_shift, sa_scale)
        self_mask = None if self.cross_attention else context_mask
        x = x + sa_gate.unsqueeze(1) * self.attn(h, mask=self_mask, rope=rope, rope_offset=rope_offset)
        if self.cross_attention:
            h = modulate(self.norm2(x), ca_shift, ca_scale)
            x = x + ca_gate.unsqueeze(1) * self.cross_attn(h, context=context, mask=context_mask)
        h = modulate(self.norm3(x), mlp_shift, mlp_scale)
        return x + mlp_gate.unsqueeze(1) * self.mlp(h)


class FinalLayer(nn.Module):
    """adaLN-modulated RMSNorm and a zero-initialized projection to patch pixels."""

    def __init__(self, dim: int, patch_size: int, out_channels: int, eps: float):
        super().__init__()
        self.norm = nn.RMSNorm(dim, eps=eps, elementwise_affine=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.proj = nn.Linear(dim, patch_size * patch_size * out_channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(cond).chunk(2, dim=-1)
        return self.proj(modulate(self.norm(x), shift, scale))


# ----------------------------------------------------------------------------------------------
#                                       The generator
# ----------------------------------------------------------------------------------------------


class DriftingTransformer2DModel(ModelMixin, ConfigMixin):
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
        self.style_embedding = nn.Embedding(num_style_codebooks * style_codebook_size, D)
        self.blocks = nn.ModuleList(
            [
                DriftingTransformerBlock(
                    D, num_attention_heads, mlp_ratio, norm_eps, text_attention == "cross"
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
        # Sum of num_style_codebooks entries: scale so the sum has std ~0.02 like other embeddings.
        nn.init.normal_(self.style_embedding.weight, std=0.02 / math.sqrt(self.config.num_style_codebooks))
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.proj.weight)
        nn.init.zeros_(self.final_layer.proj.bias)

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
        offsets = torch.arange(cfg.num_style_codebooks, device=style_indices.device) * cfg.style_codebook_size
        style = self.style_embedding(style_indices + offsets).sum(dim=1)  # [N, D]
        return self.pooled_embedder(pooled.to(self.dtype)) + g + style

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        pooled_projections: torch.Tensor | None = None,
        guidance: torch.Tensor | float | None = None,
        style_indices: torch.Tensor | None = None,
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
        R = self.config.num_register_tokens
        if self.config.text_attention == "joint":
            # [registers | text | patches]; padded text keys are masked, registers and patches never.
            T = context.shape[1]
            x = torch.cat([self.registers.expand(N, -1, -1), context, x], dim=1)  # [N, R+T+P, D]
            if mask is not None:
                keep = torch.ones(N, x.shape[1], dtype=torch.bool, device=device)
                keep[:, R : R + T] = mask
                mask = keep  # [N, R+T+P]
            context, offset = None, R + T
        else:
            x = torch.cat([self.registers.expand(N, -1, -1), x], dim=1)  # [N, R+P, D]
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
                x = self._gradient_checkpointing_func(block, x, cond, context, mask, rope, offset)
            else:
                x = block(x, cond, context, mask, rope, offset)  # [N, offset+P, D]

        x = self.final_layer(x[:, offset:], cond)  # [N, P, p*p*C_out]
        x = x.view(N, H // p, W // p, p, p, self.out_channels)
        sample = x.permute(0, 5, 1, 3, 2, 4).reshape(N, self.out_channels, H, W)  # [N, C_out, H, W]
        if not return_dict:
            return (sample,)
        return Transformer2DModelOutput(sample=sample)
