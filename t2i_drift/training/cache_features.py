"""Write webdataset shards of precomputed text embeddings, VAE latents and (optionally) the
positives' features, so that large runs do not re-encode (layout: data/feature_cache.py).

Runs under ``accelerate launch`` too: each process encodes its share of the data and writes its
own shards (``shard-<rank>-<n>.tar``); a run is resumable only as a whole (delete and rerun).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from accelerate import Accelerator
from PIL import Image
from safetensors.torch import save as save_safetensors
from tqdm.auto import tqdm

from t2i_drift.data.feature_cache import FEATURE_PREFIX
from t2i_drift.data.webdataset import FEATURES_MEMBER
from t2i_drift.models.vae import encode_latents, load_vae
from t2i_drift.text.encoders import TextEmbeddings
from t2i_drift.training.batch_inputs import producers
from t2i_drift.training.builders import build_feature_encoder, build_source, build_text_conditioner
from t2i_drift.training.config import Config, save_config

META_FILE = "cache_meta.json"


def _png(pixels: torch.Tensor) -> bytes:
    """[3, R, R] in [-1, 1] (decoded from uint8) -> lossless PNG of the same uint8 values."""
    arr = ((pixels.permute(1, 2, 0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def _sample_tensors(
    text: TextEmbeddings,
    latents: torch.Tensor | None,
    features: dict[str, torch.Tensor],
    row: int,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """One sample's tensors: its text embeddings (``text``: one row, trailing padding dropped),
    latents [C, h, w] and feature row ``row`` of every key, as contiguous CPU tensors."""
    text = text.trimmed()
    tensors = {"embeds": text.embeds[0].to(dtype), "mask": text.mask[0], "pooled": text.pooled[0].to(dtype)}
    if latents is not None:
        tensors["latents"] = latents.to(dtype)
    for key, value in features.items():
        tensors[FEATURE_PREFIX + key] = value[row].to(dtype)
    # clone: views of one tensor (raw features of the latents) cannot share storage
    return {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in tensors.items()}


def check_out_dir(out_dir: Path, overwrite: bool) -> bool:
    """``out_dir`` must be new or empty, or (with ``overwrite``) a previous cache written here:
    stale shards of an earlier dataset would otherwise be mixed in by a brace pattern. Returns
    whether a previous cache is to be replaced. Raises ``ValueError`` naming the folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out_dir {out_dir} exists and is not a folder")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return False
    if not (out_dir / META_FILE).is_file():
        raise ValueError(
            f"--out_dir {out_dir} is not empty and holds no {META_FILE}: choose a new or empty folder"
        )
    if not overwrite:
        raise ValueError(
            f"--out_dir {out_dir} already holds a feature cache ({META_FILE}); pass --overwrite to replace "
            "it or choose a new folder"
        )
    return True


def remove_previous_cache(out_dir: Path) -> None:
    """Delete the files a previous cache_features run wrote in ``out_dir``, and nothing else."""
    for path in [*out_dir.glob("shard-*.tar"), *out_dir.glob("cache_meta*.json"), out_dir / "config.yaml"]:
        path.unlink(missing_ok=True)


def cache_features(
    cfg: Config,
    out_dir: str | Path,
    shard_size: int = 1000,
    batch_size: int = 64,
    include_images: bool = True,
    include_features: bool = False,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Encode the configured dataset once and write shards to ``out_dir``.

    Args:
        cfg: the run config whose data, text encoder(s), VAE and (with ``include_features``)
            feature encoders to use; train with the same config and ``data.name=webdataset``,
            ``data.path=<out_dir>/shard-{...}.tar``.
        shard_size: samples per shard.
        include_images: also store the decoded image (PNG); needed for pixel-space runs and
            for features not cached.
        include_features: also store the frozen feature encoder's output on each positive.
        dtype: storage dtype of embeddings, latents and features (float16 halves the size).
        overwrite: replace a previous cache in ``out_dir`` (:func:`check_out_dir`).
    Returns:
        the summary written to ``out_dir/cache_meta.json`` (per process: counts of this one).
    """
    if include_features and cfg.features.random_shift:
        raise ValueError(
            f"features.random_shift={cfg.features.random_shift}: the positives' features change every "
            f"step and cannot be cached; cache text and latents only (no --features)"
        )
    out_dir = Path(out_dir)
    replace = check_out_dir(out_dir, overwrite)  # every process: the same error, before any work
    accelerator = Accelerator()
    rank = accelerator.process_index
    accelerator.wait_for_everyone()
    if replace and accelerator.is_main_process:
        remove_previous_cache(out_dir)
    accelerator.wait_for_everyone()
    out_dir.mkdir(parents=True, exist_ok=True)
    device = accelerator.device

    if cfg.data.resampled and cfg.data.name == "webdataset":
        raise ValueError("data.resampled=true never ends: cache a finite pass (data.resampled=false)")
    # In order, every sample once; each process its own share.
    source = build_source(cfg.data, batch_size, cfg.train.seed, shuffle=False)
    source.prepare(accelerator)

    conditioner = build_text_conditioner(cfg.text).to(device)
    vae = None if cfg.model.vae is None else load_vae(cfg.model.vae, cfg.model.vae_subfolder).to(device)
    if vae is None and not include_images:
        raise ValueError("--no_images needs model.vae: a pixel-space run trains on the images themselves")
    features = build_feature_encoder(cfg.features, cfg.data.resolution, vae).to(device)
    cached_features = (cfg.features, features) if include_features else None
    meta = producers(conditioner, vae, cfg.data.resolution, cached_features)

    writer = wds.ShardWriter(str(out_dir / f"shard-{rank:03d}-%06d.tar"), maxcount=shard_size, verbose=0)
    written = 0
    show = progress and accelerator.is_main_process
    with torch.no_grad():
        for batch in tqdm(source.batches(0), desc="cache features", disable=not show):
            pixels = batch["pixel_values"].to(device)  # [B, 3, R, R]
            text = conditioner.encode(batch["caption"])
            real = encode_latents(vae, pixels) if vae is not None else pixels  # [B, C, h, w]
            feats = features(real) if include_features else {}  # key -> [B, L, D]
            for i, caption in enumerate(batch["caption"]):
                tensors = _sample_tensors(
                    text.index(slice(i, i + 1)), real[i] if vae is not None else None, feats, i, dtype
                )
                sample = {
                    "__key__": f"{rank:03d}-{written:09d}",
                    "txt": caption,
                    FEATURES_MEMBER: save_safetensors(tensors, metadata=meta),
                }
                if include_images:
                    sample["png"] = _png(batch["pixel_values"][i])
                writer.write(sample)
                written += 1
    writer.close()
    summary = {
        **meta,
        "process": rank,
        "samples": written,
        "skipped": source.skips.to_dict(),
        "images": include_images,
        "features": include_features,
        "dtype": str(dtype).removeprefix("torch."),
    }
    _write_summaries(accelerator, cfg, out_dir, summary, meta)
    if accelerator.is_main_process:
        accelerator.print(f"wrote {written} samples to {out_dir}; {source.skips.report()} (process {rank})")
    return summary


def _write_summaries(accelerator: Accelerator, cfg: Config, out_dir: Path, summary: dict, meta: dict) -> None:
    """Each process's ``cache_meta-<rank>.json``, then the main process's ``cache_meta.json`` (totals
    and every process's part) and the config the shards were made with."""
    rank = accelerator.process_index
    (out_dir / f"cache_meta-{rank:03d}.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_config(cfg, out_dir / "config.yaml")
        world = accelerator.num_processes
        parts = [json.loads((out_dir / f"cache_meta-{r:03d}.json").read_text()) for r in range(world)]
        total = {**meta, "samples": sum(p["samples"] for p in parts), "processes": parts}
        (out_dir / META_FILE).write_text(json.dumps(total, indent=2))
