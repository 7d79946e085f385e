"""A frozen VAE encoder as a drifting feature space for a pixel-space generator.

Why: a learned encoder that only has to *recognise* images (an MAE, EfficientNet) can be satisfied
by a texture: many different inputs give it the same features, and the drift toward a positive's
features then finds the nearest such input rather than the positive (docs/results.md "Feature
spaces"). An autoencoder's encoder is trained so that its latent *reconstructs* the image: two
inputs with the same latent decode to the same picture, so matching the latent leaves little room
for a texture. Drifting a latent generator in that space beats drifting a pixel generator in
pixels; this encoder gives a pixel generator the same geometry as a key, without a decoder at
sampling time. Measured on OpenMoji, the flat latent key passes the free-pixel probe but costs the
generator 3-8 FD, and the per-location and statistic sets bring the texture back (docs/results.md
"A VAE's encoder as keys").

``images`` [N, 3, H, W] in [-1, 1] -> the encoder's maps, each giving the official feature sets
(per-location, global and patch mean/std; docs/method.md section 4):

- ``down<i>``: the output of down block i (0-based, after its downsampler if it has one);
- ``mid``: the mid block's output;
- ``latent``: the posterior mean, scaled as the pipeline's latents are (``(mean - shift_factor) *
  scaling_factor``), [N, C_lat, H/f, W/f]. ``flat=True`` adds it as one vector, ``vae.latent/flat``
  [N, 1, C_lat*h*w], the key a latent-space generator's raw output gives.

Keys: ``<prefix>.<map>/<set>`` (``vae.latent/loc``, ``vae.down0/mean2x2``) and ``vae.latent/flat``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import AutoencoderKL

from t2i_drift.drifting.feature_sets import flattened, map_feature_sets
from t2i_drift.models.feature_encoders import FrozenEncoder
from t2i_drift.models.vae import scale_latents

LATENT_MAP = "latent"
MID_MAP = "mid"


def autoencoder_map_names(vae: AutoencoderKL) -> list[str]:
    """The maps of ``vae``'s encoder, shallow to deep: ``down0`` ... ``down<k-1>``, ``mid``, ``latent``."""
    return [f"down{i}" for i in range(len(vae.encoder.down_blocks))] + [MID_MAP, LATENT_MAP]


class AutoencoderFeatures(FrozenEncoder):
    """The encoder of a diffusers ``AutoencoderKL`` (e.g. one from scripts/train_vae.py), frozen,
    as feature maps (see the module docstring).

    Args:
        vae: the autoencoder; only its encoder (and ``quant_conv``) runs. Frozen here.
        maps: map names from :func:`autoencoder_map_names` (default: the latent only).
        patch_sizes / per_location: which official sets each map gives.
        flat: also give the scaled latent as one vector, ``<prefix>.latent/flat`` (needs ``latent``
            among ``maps``).
        prefix: key prefix.
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        maps: Sequence[str] = (LATENT_MAP,),
        patch_sizes: Sequence[int] = (2, 4),
        per_location: bool = True,
        flat: bool = False,
        prefix: str = "vae",
    ):
        super().__init__()
        valid = autoencoder_map_names(vae)
        unknown = [m for m in maps if m not in valid]
        if unknown or not maps:
            raise ValueError(
                f"autoencoder feature maps {unknown or list(maps)} unknown; this VAE has {valid}"
            )
        if flat and LATENT_MAP not in maps:
            raise ValueError(f"flat=True needs the {LATENT_MAP!r} map among maps={list(maps)}")
        self.vae = vae
        self.maps = [m for m in valid if m in maps]  # shallow to deep, each once
        self.deepest = valid.index(self.maps[-1])  # the encoder runs no further
        self.patch_sizes = tuple(patch_sizes)
        self.per_location = per_location
        self.flat = flat
        self.prefix = prefix
        self.freeze()

    def feature_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images [N, 3, H, W] -> dict name -> [N, C_i, h_i, w_i] for the requested maps, in the
        VAE's dtype. Runs the encoder only as deep as the deepest requested map."""
        encoder, wanted = self.vae.encoder, set(self.maps)
        out: dict[str, torch.Tensor] = {}
        x = encoder.conv_in(images.to(self.vae.dtype))
        for i, block in enumerate(encoder.down_blocks):
            x = block(x)
            if f"down{i}" in wanted:
                out[f"down{i}"] = x
            if i == self.deepest:
                return out
        x = encoder.mid_block(x)
        if MID_MAP in wanted:
            out[MID_MAP] = x
        if LATENT_MAP in wanted:
            x = encoder.conv_out(encoder.conv_act(encoder.conv_norm_out(x)))
            if self.vae.quant_conv is not None:
                x = self.vae.quant_conv(x)
            out[LATENT_MAP] = scale_latents(self.vae, x.chunk(2, dim=1)[0])  # moments = [mean, logvar]
        return out

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images [N, 3, H, W] in [-1, 1] -> dict key -> [N, L, D] in the images' dtype."""
        if images.dim() != 4 or images.shape[1] != self.vae.config.in_channels:
            raise ValueError(
                f"AutoencoderFeatures: images must be [N, {self.vae.config.in_channels}, H, W], "
                f"got {list(images.shape)}"
            )
        out: dict[str, torch.Tensor] = {}
        for name, fmap in self.feature_maps(images).items():
            fmap = fmap.to(images.dtype)
            if name == LATENT_MAP and self.flat:
                out[f"{self.prefix}.{name}/flat"] = flattened(fmap)
            out.update(map_feature_sets(fmap, f"{self.prefix}.{name}", self.patch_sizes, self.per_location))
        return out
