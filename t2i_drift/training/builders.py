"""Build the pieces of a run from the config sections they need: data source, generator, text
conditioner, feature encoders, optimizer."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL

from t2i_drift.data.hf import HFImageTextDataset, HFStreamingImageTextDataset
from t2i_drift.data.openmoji import OpenMojiDataset
from t2i_drift.data.photos import PhotoCropsDataset
from t2i_drift.data.rendered import RenderedImageCaptionDataset
from t2i_drift.data.shapes import ShapesDataset
from t2i_drift.data.source import DataSource, InMemorySource, StreamSource
from t2i_drift.data.webdataset import WebDatasetImageText
from t2i_drift.models.feature_encoders import (
    DecodedLatentFeatures,
    EfficientNetLite0Features,
    MAEFeatures,
    MultiFeatureEncoder,
    RawFeatures,
    key_matches,
)
from t2i_drift.models.gradient_gate import GradientGate
from t2i_drift.models.hub_features import HubVisionFeatures
from t2i_drift.models.shifted_encoder import ShiftedEncoder
from t2i_drift.models.transformer_drifting import DriftingTransformer2DModel
from t2i_drift.models.vae import load_vae, vae_scale_factor
from t2i_drift.models.vae_features import AutoencoderFeatures
from t2i_drift.text.conditioner import TextConditioner, TextEncoderSpec
from t2i_drift.training.config import (
    FEATURE_ENCODERS,
    ConfigError,
    DataConfig,
    FeaturesConfig,
    ModelConfig,
    OptimConfig,
    TextConfig,
)


def build_source(data: DataConfig, batch_size: int, seed: int, shuffle: bool = True) -> DataSource:
    """The configured training data as a :class:`DataSource` (data/source.py).

    ``batch_size``: prompts per batch and process. ``shuffle=False`` reads every sample once, in
    order (scripts/cache_features.py).
    """
    name = f"data.path={data.path!r}" if data.path else f"data.name={data.name!r}"
    if data.name == "webdataset":
        stream = WebDatasetImageText(
            data.path,
            batch_size=batch_size,
            resolution=data.resolution,
            image_keys=data.image_keys,
            caption_keys=data.caption_keys,
            resampled=data.resampled,
            shuffle_buffer=data.shuffle_buffer if shuffle else 0,
            min_size=data.min_size,
            seed=seed,
        )
        return StreamSource(stream, data.num_workers, name)
    if data.name == "hf" and data.streaming:
        stream = HFStreamingImageTextDataset(
            data.path,
            batch_size=batch_size,
            split=data.split,
            image_column=data.image_column,
            caption_columns=data.caption_columns,
            resolution=data.resolution,
            min_size=data.min_size,
            seed=seed,
            shuffle_buffer=data.shuffle_buffer if shuffle else 0,
            max_samples=data.max_samples,
        )
        return StreamSource(stream, data.num_workers, name)
    dataset = build_in_memory_dataset(data, seed)
    return InMemorySource(dataset, batch_size, seed, data.num_workers, shuffle, name)


def build_in_memory_dataset(data: DataConfig, seed: int) -> RenderedImageCaptionDataset:
    """The training split of an in-memory set (built-in sets, ``hf`` without streaming)."""
    if data.name == "hf":
        return HFImageTextDataset(
            data.path,
            split=data.split,
            image_column=data.image_column,
            caption_columns=data.caption_columns,
            resolution=data.resolution,
            max_samples=data.max_samples,
            min_size=data.min_size,
            seed=seed,
        )
    if data.name == "shapes":
        return ShapesDataset(
            split="train",
            resolution=data.resolution,
            renders_per_scene=data.renders_per_scene,
            max_samples=data.max_samples,
            seed=seed,
            omit=data.shapes_omit,
        )
    if data.name == "photos":
        return PhotoCropsDataset(split="train", resolution=data.resolution, max_samples=data.max_samples)
    if data.name != "openmoji":
        raise ValueError(f"data.name={data.name!r} is not a known dataset")
    return OpenMojiDataset(
        split="train",
        resolution=data.resolution,
        val_fraction=data.val_fraction,
        max_samples=data.max_samples,
    )


def build_transformer(
    model: ModelConfig,
    resolution: int,
    text_embed_dim: int,
    pooled_embed_dim: int,
    vae: AutoencoderKL | None = None,
    objective_overrides: dict[str, Any] | None = None,
) -> DriftingTransformer2DModel:
    """The generator for ``resolution``-pixel images (in pixels, or in ``vae`` latents).
    Precedence: the preset, then ``objective_overrides`` (what the training objective needs), then
    ``model.overrides``."""
    factor = vae_scale_factor(vae)
    if resolution % factor:
        raise ValueError(f"data.resolution={resolution} is not divisible by the VAE factor {factor}")
    args = dict(
        sample_size=resolution // factor,
        patch_size=model.patch_size,
        in_channels=3 if vae is None else vae.config.latent_channels,
        text_embed_dim=text_embed_dim,
        pooled_embed_dim=pooled_embed_dim,
        text_attention=model.text_attention,
    )
    args.update(objective_overrides or {})
    args.update(model.overrides)
    try:
        return DriftingTransformer2DModel.from_preset(model.preset, **args)
    except TypeError as err:
        raise ValueError(f"model.overrides: {err}") from None


def build_text_conditioner(text: TextConfig) -> TextConditioner:
    """The configured frozen text encoder(s) and how they combine."""
    encoders = [
        TextEncoderSpec(
            text.encoder, text.subfolder, text.max_length, text.pooling, text.pretrained, text.layer
        )
    ]
    if text.encoder_2 is not None:
        encoders.append(
            TextEncoderSpec(
                text.encoder_2,
                text.subfolder_2,
                text.max_length_2,
                text.pooling_2,
                text.pretrained_2,
                text.layer_2,
            )
        )
    return TextConditioner.load(encoders, text.token_sources, text.pooled_sources)


def build_feature_encoder(
    features: FeaturesConfig, resolution: int, vae: AutoencoderKL | None = None
) -> MultiFeatureEncoder:
    """Frozen encoders whose keyed features enter the loss (docs/method.md section 4); each key
    keeps its own normalization. With ``vae`` (a latent-space run) the pixel-space encoders see
    the decoded latents at ``resolution`` pixels, and an MAE must have the latents' channels.
    Raises ``ConfigError`` naming the ``features`` key at fault (the CLI's exit 2, no traceback)."""
    f = features
    pixel: dict[str, torch.nn.Module] = {}
    if f.effnet is not None:
        pixel["effnet"] = EfficientNetLite0Features(
            blocks=f.effnet.blocks,
            input_size=f.effnet.input_size,
            patch_sizes=f.patch_sizes,
            per_location=f.per_location,
        )
    if f.hub is not None:
        try:
            pixel["hub"] = HubVisionFeatures(
                f.hub.name,
                out_features=f.hub.out_features,
                input_size=f.hub.input_size,
                patch_sizes=f.patch_sizes,
                per_location=f.per_location,
                location_norm=f.hub.location_norm,
            )
        except ValueError as err:
            raise ConfigError(f"features.hub.name: {err}") from None
    if f.vae is not None:
        pixel["vae"] = _autoencoder_features(f)
    if f.random_shift:
        _check_random_shift(f.random_shift, resolution, vae, latent_encoder=f.mae is not None)
        # The shift applies where each encoder reads: pixels for the pixel encoders (after decoding
        # in a latent run), the generator's output space for the MAE.
        pixel = {name: ShiftedEncoder(encoder) for name, encoder in pixel.items()}
    encoders: dict[str, torch.nn.Module] = {}
    if pixel and vae is not None:  # latent run: pixel encoders see decoded latents
        encoders["decoded"] = DecodedLatentFeatures(vae, MultiFeatureEncoder(pixel), pixel_size=resolution)
    else:
        encoders.update(pixel)
    if f.mae is not None:
        mae = _mae_features(f, vae)
        encoders["mae"] = ShiftedEncoder(mae) if f.random_shift else mae
    side = _output_side(resolution, vae)
    if f.sure_patch and side % f.sure_patch:
        raise ConfigError(
            f"features.sure_patch={f.sure_patch} must divide the generator's output side {side}"
        )
    if f.sure_fraction < 1.0:
        # Gated on the generator's output (latents in a latent run, before any decoding): one weight
        # per generated sample or output cell, whatever space the encoder reads.
        encoders = {name: GradientGate(encoder) for name, encoder in encoders.items()}
    if f.raw is not None:
        encoders["raw"] = RawFeatures()
    if not encoders:
        raise ConfigError(f"features: enable at least one of {list(FEATURE_ENCODERS)}")
    encoder = MultiFeatureEncoder(encoders, drop_keys=f.drop_keys)
    if f.drop_keys:
        _check_drop_keys(encoder, resolution, vae)
    return encoder


def _output_side(resolution: int, vae: AutoencoderKL | None) -> int:
    """The side of the generator's output: pixels, or latent cells in a latent run."""
    return resolution // vae_scale_factor(vae) if vae is not None else resolution


def _check_random_shift(shift: int, resolution: int, vae: AutoencoderKL | None, latent_encoder: bool) -> None:
    """``features.random_shift`` is smaller than every input it shifts (pixels, and the latent side
    when an MAE reads latents)."""
    side = _output_side(resolution, vae) if latent_encoder else resolution
    if shift >= side:
        raise ConfigError(
            f"features.random_shift={shift} must be smaller than the encoder input's side {side}"
        )


def _check_drop_keys(encoder: MultiFeatureEncoder, resolution: int, vae: AutoencoderKL | None) -> None:
    """Every ``features.drop_keys`` pattern matches a key and some key remains: one forward pass of
    a blank sample in the generator's output space lists the keys."""
    if vae is None:
        blank = torch.zeros(1, 3, resolution, resolution)
    else:
        side = resolution // vae_scale_factor(vae)
        blank = torch.zeros(1, vae.config.latent_channels, side, side, dtype=vae.dtype)
    keys = encoder.all_keys(blank)
    for pattern in encoder.drop_keys:
        if not any(key_matches(key, [pattern]) for key in keys):
            raise ConfigError(f"features.drop_keys: {pattern!r} matches no feature key; the keys are {keys}")
    if all(encoder.dropped(key) for key in keys):
        raise ConfigError(f"features.drop_keys: {list(encoder.drop_keys)} drop every feature key")


def _autoencoder_features(f: FeaturesConfig) -> AutoencoderFeatures:
    try:
        vae = load_vae(f.vae.path, f.vae.subfolder, key="features.vae.path")
    except ValueError as err:  # the message names features.vae.path
        raise ConfigError(str(err)) from None
    try:
        return AutoencoderFeatures(
            vae, maps=f.vae.maps, patch_sizes=f.patch_sizes, per_location=f.per_location, flat=f.vae.flat
        )
    except ValueError as err:
        raise ConfigError(f"features.vae.maps: {err}") from None


def _mae_features(f: FeaturesConfig, vae: AutoencoderKL | None) -> MAEFeatures:
    try:
        mae = MAEFeatures(
            f.mae.path,
            maps=f.mae.maps,
            patch_sizes=f.patch_sizes,
            per_location=f.per_location,
            stem=f.mae.stem,
            stage_norm=f.mae.stage_norm,
            keep_single_cell_patches=f.mae.keep_single_cell_patches,
            input_rms_on_encoder_input=f.mae.input_rms_on_encoder_input,
        )
    except (OSError, ValueError) as err:
        raise ConfigError(f"features.mae.path={f.mae.path!r}: {err}") from None
    expected = 3 if vae is None else vae.config.latent_channels
    if mae.model.config.in_channels != expected:
        space = "pixels" if vae is None else f"the latents of model.vae ({expected} channels)"
        raise ConfigError(
            f"features.mae.path={f.mae.path!r} was trained on {mae.model.config.in_channels}-channel "
            f"inputs but this run's generator outputs {space}"
        )
    return mae


def speed_up_encoder(encoder: MultiFeatureEncoder, features: FeaturesConfig) -> torch.nn.Module:
    """``features.channels_last`` / ``features.compile`` applied to the frozen encoder. Channels-last
    converts the weights of its 4-D convolutions (PyTorch then keeps conv activations in that
    format); the outputs are the same features up to floating-point summation order."""
    if features.channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
    if features.compile:
        encoder = torch.compile(encoder)
    return encoder


def feature_key_weights(features: FeaturesConfig, keys: list[str]) -> dict[str, float]:
    """Loss weight of each feature key: its encoder's ``weight`` (keys start with the encoder's
    name; the decoded-latent path keeps the pixel encoders' key names)."""
    weights = {}
    for key in keys:
        name = key.split("/", 1)[0].split(".", 1)[0]
        encoder = getattr(features, name) if name in FEATURE_ENCODERS else None
        weights[key] = encoder.weight if encoder is not None else 1.0
    return weights


def build_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (no decay on norms, biases and 1-D parameters)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if len(optim.betas) != 2:
        raise ValueError(f"optim.betas must have two values, got {optim.betas}")
    return torch.optim.AdamW(groups, lr=optim.learning_rate, betas=tuple(optim.betas))
