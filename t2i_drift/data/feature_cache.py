"""Precomputed features in webdataset shards, so that large runs never re-encode.

scripts/cache_features.py runs the configured text encoder(s) and VAE (and optionally the frozen
feature encoder on the positives) over a dataset once and writes shards whose samples hold

    <key>.txt              the caption
    <key>.png              the decoded, resized image (optional: latent runs do not need it)
    <key>.t2i.safetensors  "embeds" [T, Dt] and "mask" [T] (trimmed after the last used token),
                           "pooled" [Dp], "latents" [C, h, w] (when a VAE is configured),
                           "feat/<key>" [L, D] per feature key (optional); its metadata says what
                           produced them (:func:`cache_meta`)

plus ``cache_meta.json`` beside the shards. ``data.name: webdataset`` reads such shards like any
other (data/webdataset.py) and the trainer uses the tensors whose producer matches the run's
(:func:`usable_cached`), so caching is transparent: a mismatch falls back to encoding again, with
a warning, instead of training on stale features.
"""

from __future__ import annotations

import hashlib
import json

import torch

from t2i_drift.text.cache import config_fingerprint, weights_fingerprint

TEXT_TENSORS = ("embeds", "mask", "pooled")
FEATURE_PREFIX = "feat/"


def module_key(module: torch.nn.Module | None) -> str:
    """Short hash of a frozen module's class, config and weights ("" for None)."""
    if module is None:
        return ""
    desc = {
        "class": type(module).__name__,
        "config": config_fingerprint(module) if hasattr(module, "config") else "",
        "weights": weights_fingerprint(module),
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def cache_meta(text_key: str, vae_key: str, features_key: str, resolution: int) -> dict[str, str]:
    """What produced a sample's tensors (stored as safetensors metadata: strings only)."""
    return {
        "text_key": text_key,
        "vae_key": vae_key,
        "features_key": features_key,
        "resolution": str(resolution),
    }


def usable_cached(meta: dict[str, str], expected: dict[str, str]) -> dict[str, bool]:
    """Which groups of cached tensors this run can use: ``{"text", "latents", "features"}`` ->
    whether the producer recorded in ``meta`` equals this run's (``expected``, from
    :func:`cache_meta`). Latents and features also need the same resolution."""
    same_res = meta.get("resolution") == expected["resolution"]
    return {
        "text": bool(expected["text_key"]) and meta.get("text_key") == expected["text_key"],
        "latents": bool(expected["vae_key"]) and same_res and meta.get("vae_key") == expected["vae_key"],
        "features": bool(expected["features_key"])
        and same_res
        and meta.get("features_key") == expected["features_key"],
    }
