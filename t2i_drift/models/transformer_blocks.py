"""The layers of DriftingTransformer2DModel: 2-D RoPE, QK-normed attention, SwiGLU, the adaLN-zero
block and the final layer (docs/method.md section 6). Shapes: N samples, S tokens, D channels."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_dispatch import dispatch_attention_fn

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


def sincos_2d(grid_h: int, grid_w: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding [grid_h * grid_w, dim] (half the channels encode the
    row, half the column; MAE/DiT style), the init of the learnable absolute position embedding."""
    if dim % 4 != 0:
        raise ValueError(f"a 2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    freqs = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))  # [D/4]
    rows = torch.arange(grid_h, dtype=torch.float32).repeat_interleave(grid_w)[:, None] * freqs  # [P, D/4]
    cols = torch.arange(grid_w, dtype=torch.float32).repeat(grid_h)[:, None] * freqs
    return torch.cat([rows.sin(), rows.cos(), cols.sin(), cols.cos()], dim=-1)  # [P, D]


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2k, 2k+1) of x [N, S, heads, hd] by angles [S, hd/2] (fp32 math)."""
    x_pairs = x.float().unflatten(-1, (-1, 2))  # [N, S, h, hd/2, 2]
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]  # [S, 1, hd/2]: shared by the heads
    a, b = x_pairs[..., 0], x_pairs[..., 1]
    rotated = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)
    return rotated.flatten(-2).type_as(x)


# ----------------------------------------------------------------------------------------------
#                                          Layers
# ----------------------------------------------------------------------------------------------


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x [N, S, D], shift/scale [N, D]."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class DriftingAttnProcessor:
    """The attention math of :class:`Attention`, run through diffusers' attention dispatcher so that
    ``transformer.set_attention_backend(...)`` and the ``attention_backend`` context manager apply
    (flash, sage, xformers, native SDPA, ...). Holds no weights."""

    _attention_backend = None  # set by ModelMixin.set_attention_backend
    _parallel_config = None  # set by diffusers' context-parallel hooks

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rope: torch.Tensor | None = None,
        rope_offset: int = 0,
    ) -> torch.Tensor:
        """hidden_states [N, S, D]; encoder_hidden_states [N, T, Dc] (None: self-attention);
        attention_mask [N, T] bool (True = attend); rope [S - rope_offset, hd/2] applied to the
        tokens after the first ``rope_offset``. Returns [N, S, D]."""
        N, S, _ = hidden_states.shape
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, (attn.num_heads, attn.head_dim)))  # [N,S,h,hd]
        k = attn.norm_k(attn.to_k(ctx).unflatten(-1, (attn.num_heads, attn.head_dim)))  # [N,T,h,hd]
        v = attn.to_v(ctx).unflatten(-1, (attn.num_heads, attn.head_dim))  # [N,T,h,hd]
        if rope is not None:
            # Register tokens (the first rope_offset) carry no position.
            q = torch.cat([q[:, :rope_offset], apply_rope(q[:, rope_offset:], rope)], dim=1)
            k = torch.cat([k[:, :rope_offset], apply_rope(k[:, rope_offset:], rope)], dim=1)
        attn_mask = None if attention_mask is None else attention_mask[:, None, None, :]  # [N,1,1,T]
        out = dispatch_attention_fn(
            q,
            k,
            v,
            attn_mask=attn_mask,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )  # [N,S,h,hd]
        return attn.to_out(out.flatten(2).to(q.dtype))


class Attention(nn.Module, AttentionModuleMixin):
    """Multi-head attention with QK-RMSNorm; self-attention (with RoPE) or cross-attention. The
    computation lives in its processor (diffusers' processor convention)."""

    _default_processor_cls = DriftingAttnProcessor
    _available_processors = [DriftingAttnProcessor]

    def __init__(
        self,
        dim: int,
        num_heads: int,
        context_dim: int | None = None,
        eps: float = 1e-6,
        processor: DriftingAttnProcessor | None = None,
    ):
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
        self.set_processor(processor if processor is not None else self._default_processor_cls())

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        rope: torch.Tensor | None = None,
        rope_offset: int = 0,
        **kwargs: Any,
    ) -> torch.Tensor:
        """x [N, S, D]; context [N, T, Dc] (None: self-attention); mask [N, T] bool (True = attend);
        rope [S - rope_offset, hd/2]; ``kwargs`` (the pipeline's ``attention_kwargs``) go to the
        processor. Returns [N, S, D]."""
        return self.processor(self, x, context, mask, rope, rope_offset, **kwargs)


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

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        eps: float,
        cross_attention: bool = True,
        norm_affine: bool = False,
    ):
        super().__init__()
        self.cross_attention = cross_attention
        self.norm1 = nn.RMSNorm(dim, eps=eps, elementwise_affine=norm_affine)
        self.attn = Attention(dim, num_heads, eps=eps)
        if cross_attention:
            self.norm2 = nn.RMSNorm(dim, eps=eps, elementwise_affine=norm_affine)
            self.cross_attn = Attention(dim, num_heads, context_dim=dim, eps=eps)
        self.norm3 = nn.RMSNorm(dim, eps=eps, elementwise_affine=norm_affine)
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
        attention_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """x [N, S, D], cond [N, D] -> [N, S, D]; ``attention_kwargs`` go to every attention processor.

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
        kwargs = attention_kwargs or {}
        x = x + sa_gate.unsqueeze(1) * self.attn(
            h, mask=self_mask, rope=rope, rope_offset=rope_offset, **kwargs
        )
        if self.cross_attention:
            h = modulate(self.norm2(x), ca_shift, ca_scale)
            x = x + ca_gate.unsqueeze(1) * self.cross_attn(h, context=context, mask=context_mask, **kwargs)
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
