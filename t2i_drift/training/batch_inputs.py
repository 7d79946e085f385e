"""From a loader batch to the step's inputs: positives, text conditioning and caption ids.

Every source yields the same batch keys (data/source.py). The text embeddings come from

- the conditioner's precomputed table, when the source knew its captions up front (in-memory sets
  encode every caption once before training);
- shards written by scripts/cache_features.py, which carry them (and the VAE latents, and possibly
  the positives' features): used when their producer matches this run's (data/feature_cache.py),
  otherwise encoded again after a one-time warning;
- else the conditioner, encoding the batch's captions now (streams).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from diffusers import AutoencoderKL

from t2i_drift.data.feature_cache import FEATURE_PREFIX, TEXT_TENSORS, cache_meta, module_key, usable_cached
from t2i_drift.models.vae import encode_latents
from t2i_drift.text.cache import encoder_key
from t2i_drift.text.conditioner import TextConditioner
from t2i_drift.text.encoders import TextEmbeddings
from t2i_drift.training.config import FeaturesConfig


@dataclass
class StepInputs:
    """What one drifting step consumes (B prompts)."""

    real: torch.Tensor
    """[B, C, H, W] positives in the generator's space (pixels in [-1, 1], or scaled latents)."""
    text: TextEmbeddings
    """embeds [B, T, Dt], mask [B, T], pooled [B, Dp]."""
    caption_ids: torch.Tensor
    """[B] int64 caption hashes (negatives with the prompt's own caption are excluded)."""
    real_features: dict[str, torch.Tensor] | None = None
    """Precomputed features of the positives, key -> [B, L, D], when the shards carry them."""


def features_key(features: FeaturesConfig, encoder: torch.nn.Module) -> str:
    """Identity of the frozen feature encoder: its weights plus the ``features`` config section."""
    desc = json.dumps({"module": module_key(encoder), "features": asdict(features)}, sort_keys=True)
    return hashlib.sha256(desc.encode()).hexdigest()[:16]


def producers(
    conditioner: TextConditioner,
    vae: AutoencoderKL | None,
    resolution: int,
    features: tuple[FeaturesConfig, torch.nn.Module] | None = None,
) -> dict[str, str]:
    """This run's producers of cacheable tensors (compared with a shard sample's metadata);
    ``features``: the features config and frozen encoder whose outputs may be cached."""
    return cache_meta(
        text_key=encoder_key(conditioner),
        vae_key=module_key(vae),
        features_key="" if features is None else features_key(*features),
        resolution=resolution,
    )


class BatchInputs:
    """Turns loader batches into :class:`StepInputs` (module docstring).

    Args:
        conditioner: the run's frozen text encoder(s).
        vae: the frozen VAE of a latent-space run (None: pixel space).
        device: where the step runs.
        expected_meta: returns this run's producers (:func:`producers`); called once, when the
            first batch with cached tensors arrives (fingerprinting weights takes a pass over them).
        source: the data source, named in warnings.
    """

    def __init__(
        self,
        conditioner: TextConditioner,
        vae: AutoencoderKL | None,
        device: torch.device,
        expected_meta: Callable[[], dict[str, str]],
        source: str = "data",
    ):
        self.conditioner = conditioner
        self.vae = vae
        self.device = device
        self._expected_meta = expected_meta
        self._expected: dict[str, str] | None = None
        self.source = source
        self._warned = False

    def _usable(self, batch: dict) -> dict[str, bool]:
        meta = batch.get("cache_meta")
        if meta is None:
            return {"text": False, "latents": False, "features": False}
        if self._expected is None:
            self._expected = self._expected_meta()
        usable = usable_cached(meta, self._expected)
        present = {
            "text": "embeds" in batch,
            "latents": "latents" in batch,
            "features": any(k.startswith(FEATURE_PREFIX) for k in batch),
        }
        stale = [name for name in present if present[name] and not usable[name]]
        if stale and not self._warned:
            self._warned = True
            warnings.warn(
                f"{self.source}: cached {stale} were produced by a different text encoder / VAE / "
                f"feature encoder / resolution than this run's; encoding again instead (rerun "
                f"scripts/cache_features.py with this config to make them usable)",
                stacklevel=2,
            )
        return {name: present[name] and usable[name] for name in present}

    def __call__(self, batch: dict) -> StepInputs:
        usable = self._usable(batch)
        caption_ids = batch["caption_id"].to(self.device)
        if usable["text"]:
            text = TextEmbeddings(*(batch[k] for k in TEXT_TENSORS)).padded(self.conditioner.max_length)
            text = TextEmbeddings(text.embeds.float(), text.mask, text.pooled.float()).to(self.device)
        else:
            text = self.conditioner.embed(batch["caption"])
        if self.vae is not None and usable["latents"]:
            real = batch["latents"].to(self.device).float()  # [B, C, h, w], already scaled
        else:
            if "pixel_values" not in batch:
                raise ValueError(
                    f"{self.source}: samples have no image and no usable cached latents "
                    f"(keys {sorted(k for k in batch if not k.startswith(FEATURE_PREFIX))})"
                )
            real = batch["pixel_values"].to(self.device)  # [B, 3, R, R] in [-1, 1]
            if self.vae is not None:
                real = encode_latents(self.vae, real)  # [B, C, R/f, R/f]
        real_features = None
        if usable["features"]:
            real_features = {
                k[len(FEATURE_PREFIX) :]: v.to(self.device).float()
                for k, v in batch.items()
                if k.startswith(FEATURE_PREFIX)
            }
        return StepInputs(real=real, text=text, caption_ids=caption_ids, real_features=real_features)
