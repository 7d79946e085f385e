"""From a loader batch to the step's inputs: positives, text conditioning and caption ids.

Three ways to the text embeddings, decided per batch:

- in-memory sets (built-in, ``hf``): every caption was encoded once before training; the batch's
  ``index`` looks them up;
- streams (``webdataset``, streamed ``hf``): the batch's captions are encoded now;
- shards written by scripts/cache_features.py: the batch carries them (and the VAE latents, and
  possibly the positives' features); used when their producer matches this run's
  (data/feature_cache.py), otherwise encoded again after a one-time warning.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from t2i_drift.data.feature_cache import FEATURE_PREFIX, TEXT_TENSORS, cache_meta, module_key, usable_cached
from t2i_drift.text.cache import encoder_key
from t2i_drift.text.encoders import TextEmbeddings, TextEncoderSlot, encode_text
from t2i_drift.training.builders import encode_latents
from t2i_drift.training.config import Config


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


def features_key(cfg: Config, encoder: torch.nn.Module) -> str:
    """Identity of the frozen feature encoder: its weights plus the ``features`` config section."""
    desc = json.dumps({"module": module_key(encoder), "features": asdict(cfg.features)}, sort_keys=True)
    return hashlib.sha256(desc.encode()).hexdigest()[:16]


def pad_tokens(tensors: dict[str, torch.Tensor], length: int) -> dict[str, torch.Tensor]:
    """Zero-pad ``embeds`` [B, T, D] and ``mask`` [B, T] to ``length`` tokens (padding is masked)."""
    out = dict(tensors)
    pad = length - out["mask"].shape[1]
    if pad > 0:
        out["embeds"] = F.pad(out["embeds"], (0, 0, 0, pad))
        out["mask"] = F.pad(out["mask"], (0, pad))
    return out


class BatchInputs:
    """Turns loader batches into :class:`StepInputs` (module docstring).

    Args:
        slots, token_sources, pooled_sources: the frozen text encoder(s) and how they combine.
        vae: the frozen VAE of a latent-space run (None: pixel space).
        device: where the step runs.
        table: every caption's embeddings, for batches with an ``index`` (in-memory sets).
        table_ids: [N] caption hashes of ``table``'s rows.
        expected_meta: this run's producers (data/feature_cache.py ``cache_meta``), to decide
            whether tensors cached in the shards can be used.
        source: the data source, named in warnings.
    """

    def __init__(
        self,
        slots: list[TextEncoderSlot],
        token_sources: list[int],
        pooled_sources: list[int],
        vae: torch.nn.Module | None,
        device: torch.device,
        table: TextEmbeddings | None = None,
        table_ids: torch.Tensor | None = None,
        expected_meta: dict[str, str] | None = None,
        source: str = "data",
    ):
        self.slots, self.token_sources, self.pooled_sources = slots, token_sources, pooled_sources
        self.vae = vae
        self.device = device
        self.table = table.to(device) if table is not None else None
        self.table_ids = table_ids.to(device) if table_ids is not None else None
        self.expected_meta = expected_meta
        self.source = source
        self._warned = False

    @staticmethod
    def expected(
        cfg: Config,
        slots: list[TextEncoderSlot],
        token_sources: list[int],
        pooled_sources: list[int],
        vae: torch.nn.Module | None,
        features: torch.nn.Module,
    ) -> dict[str, str]:
        """This run's producers of cacheable tensors (compared with a shard sample's metadata)."""
        return cache_meta(
            text_key=encoder_key(slots, token_sources, pooled_sources),
            vae_key=module_key(vae),
            features_key=features_key(cfg, features),
            resolution=cfg.data.resolution,
        )

    def _usable(self, batch: dict) -> dict[str, bool]:
        meta = batch.get("cache_meta")
        if meta is None or self.expected_meta is None:
            return {"text": False, "latents": False, "features": False}
        usable = usable_cached(meta, self.expected_meta)
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
        # --- text ---
        if "index" in batch and self.table is not None:
            idx = batch["index"].to(self.device)
            text, caption_ids = self.table.index(idx), self.table_ids[idx]
        else:
            caption_ids = batch["caption_id"].to(self.device)
            if usable["text"]:
                length = sum(self.slots[s].max_length for s in self.token_sources)
                tensors = pad_tokens({k: batch[k] for k in TEXT_TENSORS}, length)
                text = TextEmbeddings(
                    tensors["embeds"].float(), tensors["mask"], tensors["pooled"].float()
                ).to(self.device)
            else:
                with torch.no_grad():
                    text = encode_text(
                        self.slots, batch["caption"], self.token_sources, self.pooled_sources, self.device
                    )
        # --- positives ---
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
