"""Build the pieces of a run from its config: generator, feature encoder, text encoder, optimizer."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

from t2i_drift.data.hf import HFImageTextDataset, HFStreamingImageTextDataset
from t2i_drift.data.openmoji import OpenMojiDataset
from t2i_drift.data.rendered import RenderedImageCaptionDataset
from t2i_drift.data.shapes import ShapesDataset
from t2i_drift.data.streaming import StreamingImageTextDataset
from t2i_drift.data.webdataset import WebDatasetImageText
from t2i_drift.models.feature_encoders import (
    DecodedLatentFeatures,
    EfficientNetLite0Features,
    HubVisionFeatures,
    MAEFeatures,
    MultiFeatureEncoder,
    RawFeatures,
)
from t2i_drift.models.transformer_drifting import DriftingTransformer2DModel
from t2i_drift.pipelines.pipeline_drifting import TEXT_ENCODER_NAMES
from t2i_drift.text.encoders import TextEncoderSlot, load_text_encoder
from t2i_drift.training.config import Config, TextConfig


def build_dataset(
    cfg: Config, split: str = "train", batch_size: int | None = None
) -> RenderedImageCaptionDataset | StreamingImageTextDataset:
    """The configured dataset (``split``: train, or the built-in sets' held-out part).

    In-memory sets yield items; streams (``webdataset``, ``hf`` with ``data.streaming``) yield
    whole batches of ``batch_size`` (default ``train.batch_size``), see data/streaming.py.
    """
    d = cfg.data
    batch_size = batch_size or cfg.train.batch_size
    if d.name == "webdataset":
        return WebDatasetImageText(
            d.path,
            batch_size=batch_size,
            resolution=d.resolution,
            image_keys=d.image_keys,
            caption_keys=d.caption_keys,
            resampled=d.resampled,
            shuffle_buffer=d.shuffle_buffer,
            min_size=d.min_size,
            seed=cfg.train.seed,
        )
    if d.name == "hf" and d.streaming:
        return HFStreamingImageTextDataset(
            d.path,
            batch_size=batch_size,
            split=d.split,
            image_column=d.image_column,
            caption_columns=d.caption_columns,
            resolution=d.resolution,
            min_size=d.min_size,
            seed=cfg.train.seed,
            shuffle_buffer=d.shuffle_buffer,
            max_samples=d.max_samples,
        )
    if d.name == "hf":
        return HFImageTextDataset(
            d.path,
            split=d.split,
            image_column=d.image_column,
            caption_columns=d.caption_columns,
            resolution=d.resolution,
            max_samples=d.max_samples,
            min_size=d.min_size,
            seed=cfg.train.seed,
        )
    if d.name == "shapes":
        return ShapesDataset(
            split="train" if split == "train" else "heldout",
            resolution=d.resolution,
            renders_per_scene=d.renders_per_scene,
            max_samples=d.max_samples if split == "train" else None,
            seed=cfg.train.seed,
        )
    if d.name != "openmoji":
        raise ValueError(f"data.name={d.name!r} is not a known dataset")
    return OpenMojiDataset(
        split=split,
        resolution=d.resolution,
        val_fraction=d.val_fraction,
        max_samples=d.max_samples if split == "train" else None,
    )


def load_vae(cfg: Config) -> AutoencoderKL | None:
    """The frozen VAE of ``model.vae`` (None: pixel space)."""
    if cfg.model.vae is None:
        return None
    kwargs = {"subfolder": cfg.model.vae_subfolder} if cfg.model.vae_subfolder else {}
    try:
        vae = AutoencoderKL.from_pretrained(cfg.model.vae, **kwargs)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"model.vae={cfg.model.vae!r}: cannot load a diffusers AutoencoderKL: {err}"
        ) from err
    vae.requires_grad_(False)
    return vae.eval()


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent cell (the same rule as the pipeline's)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """[B, 3, R, R] in [-1, 1] -> scaled latents [B, C, R/f, R/f]: (mode - shift) * scaling, the
    inverse of the pipeline's decode (latents / scaling + shift). The mode keeps positives
    deterministic."""
    latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((latents - shift) * vae.config.scaling_factor).float()


def build_transformer(
    cfg: Config, text_embed_dim: int, pooled_embed_dim: int, vae: AutoencoderKL | None = None
) -> DriftingTransformer2DModel:
    """The generator at ``data.resolution`` (in pixels, or in ``vae`` latents); ``model.overrides``
    win over the preset."""
    sample_size, channels = cfg.data.resolution, 3
    if vae is not None:
        factor = vae_scale_factor(vae)
        if cfg.data.resolution % factor:
            raise ValueError(
                f"data.resolution={cfg.data.resolution} is not divisible by the VAE factor {factor}"
            )
        sample_size, channels = cfg.data.resolution // factor, vae.config.latent_channels
    args = dict(
        sample_size=sample_size,
        patch_size=cfg.model.patch_size,
        in_channels=channels,
        text_embed_dim=text_embed_dim,
        pooled_embed_dim=pooled_embed_dim,
    )
    args.update(cfg.model.overrides)
    try:
        return DriftingTransformer2DModel.from_preset(cfg.model.preset, **args)
    except TypeError as err:
        raise ValueError(f"model.overrides: {err}") from None


def load_text_slots(text: TextConfig) -> tuple[list[TextEncoderSlot], list[int], list[int]]:
    """The configured text encoders (frozen) and the token / pooled sources as slot indices."""
    tokenizer, model = load_text_encoder(text.encoder, subfolder=text.subfolder)
    slots = [TextEncoderSlot(model, tokenizer, text.max_length, text.pooling)]
    if text.encoder_2 is not None:
        tokenizer_2, model_2 = load_text_encoder(text.encoder_2, subfolder=text.subfolder_2)
        slots.append(TextEncoderSlot(model_2, tokenizer_2, text.max_length_2, text.pooling_2))
    index = {name: i for i, name in enumerate(TEXT_ENCODER_NAMES)}
    return slots, [index[s] for s in text.token_sources], [index[s] for s in text.pooled_sources]


def build_feature_encoder(cfg: Config, vae: AutoencoderKL | None = None) -> MultiFeatureEncoder:
    """Frozen encoders whose keyed features enter the loss (METHOD.md section 4); each key keeps
    its own normalization. ``vae``: the run's VAE (latent space), for ``features.decode_latents``
    and the MAE channel check."""
    f = cfg.features
    pixel: dict[str, torch.nn.Module] = {}
    if f.effnet:
        pixel["effnet"] = EfficientNetLite0Features(
            blocks=f.effnet_blocks,
            input_size=f.effnet_input_size,
            patch_sizes=f.patch_sizes,
            per_location=f.per_location,
        )
    if f.hub is not None:
        try:
            pixel["hub"] = HubVisionFeatures(
                f.hub,
                out_features=f.hub_out_features,
                input_size=f.hub_input_size,
                patch_sizes=f.patch_sizes,
                per_location=f.per_location,
            )
        except ValueError as err:
            raise ValueError(f"features.hub: {err}") from None
    encoders: dict[str, torch.nn.Module] = {}
    if pixel and vae is not None:  # latent run: pixel encoders see decoded latents
        decoded_pixels = MultiFeatureEncoder(pixel)
        encoders["decoded"] = DecodedLatentFeatures(vae, decoded_pixels, pixel_size=cfg.data.resolution)
    else:
        encoders.update(pixel)
    if f.mae is not None:
        try:
            mae = MAEFeatures(f.mae, maps=f.mae_maps, patch_sizes=f.patch_sizes, per_location=f.per_location)
        except (OSError, ValueError) as err:
            raise ValueError(f"features.mae={f.mae!r}: {err}") from None
        expected = 3 if vae is None else vae.config.latent_channels
        if mae.model.config.in_channels != expected:
            space = "pixels" if vae is None else f"the latents of model.vae ({expected} channels)"
            raise ValueError(
                f"features.mae={f.mae!r} was trained on {mae.model.config.in_channels}-channel inputs "
                f"but this run's generator outputs {space}"
            )
        encoders["mae"] = mae
    if f.raw:
        encoders["raw"] = RawFeatures()
    if not encoders:
        raise ValueError("features: enable at least one of features.effnet, hub, mae and raw")
    return MultiFeatureEncoder(encoders)


def build_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (no decay on norms, biases and 1-D parameters)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if len(cfg.optim.betas) != 2:
        raise ValueError(f"optim.betas must have two values, got {cfg.optim.betas}")
    return torch.optim.AdamW(groups, lr=cfg.optim.learning_rate, betas=tuple(cfg.optim.betas))


def feature_key_weights(cfg: Config, keys: list[str]) -> dict[str, float]:
    """Loss weight of each feature key from its encoder's key prefix (METHOD.md: 1, a plain sum)."""
    f = cfg.features
    by_prefix = {"effnet": f.effnet_weight, "hub": f.hub_weight, "mae": f.mae_weight, "raw": f.raw_weight}
    weights = {}
    for key in keys:
        prefix = key.split("/", 1)[0].split(".", 1)[0]
        weights[key] = by_prefix.get(prefix, 1.0)
    return weights
