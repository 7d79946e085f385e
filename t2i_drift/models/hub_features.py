"""Any transformers vision backbone (ConvNeXt-V2, DINOv2, ...) as a frozen drifting feature encoder.

Loaded by class from its config rather than through ``AutoBackbone.from_pretrained``, which
contacts the Hub even for a local folder (transformers 5.x) and so fails offline.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from t2i_drift.drifting.feature_sets import input_rms, map_feature_sets
from t2i_drift.models.feature_encoders import FrozenEncoder
from t2i_drift.models.feature_map_norms import location_layer_norm

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
       With ``location_norm`` each map is first LayerNorm-normalized over channels at every
       location (no affine, eps 1e-6), as the official release does with ConvNeXt-V2. Note that
       transformers' ConvNeXt(-V2) backbones already end every output stage in a channels-first
       LayerNorm whose affine, when loaded from a classification checkpoint, is the identity
       init; for them the option changes little. It matters for a backbone whose maps come out
       unnormalized or through a trained affine.

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
        location_norm: per-location LayerNorm of each map before its sets (step 3).
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
        location_norm: bool = False,
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
        self.location_norm = location_norm
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
        for stage, fmap in maps.items():  # [N, C_s, H_s, W_s]
            if self.location_norm:
                fmap = location_layer_norm(fmap)
            out.update(map_feature_sets(fmap, f"{self.prefix}.{stage}", self.patch_sizes, self.per_location))
        return out
