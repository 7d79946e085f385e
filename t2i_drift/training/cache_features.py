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
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from t2i_drift.data.feature_cache import FEATURE_PREFIX
from t2i_drift.data.images import SkipLog
from t2i_drift.data.streaming import StreamingImageTextDataset
from t2i_drift.data.webdataset import FEATURES_MEMBER
from t2i_drift.text.encoders import encode_text
from t2i_drift.training.batch_inputs import BatchInputs
from t2i_drift.training.builders import (
    build_dataset,
    build_feature_encoder,
    encode_latents,
    load_text_slots,
    load_vae,
)
from t2i_drift.training.config import Config, save_config

META_FILE = "cache_meta.json"


def _png(pixels: torch.Tensor) -> bytes:
    """[3, R, R] in [-1, 1] (decoded from uint8) -> lossless PNG of the same uint8 values."""
    arr = ((pixels.permute(1, 2, 0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def cache_features(
    cfg: Config,
    out_dir: str | Path,
    shard_size: int = 1000,
    batch_size: int = 64,
    include_images: bool = True,
    include_features: bool = False,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
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
    Returns:
        the summary written to ``out_dir/cache_meta.json`` (per process: counts of this one).
    """
    accelerator = Accelerator()
    rank, world = accelerator.process_index, accelerator.num_processes
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = accelerator.device

    dataset = build_dataset(cfg, "train", batch_size=batch_size)
    skips = SkipLog()
    if isinstance(dataset, StreamingImageTextDataset):
        if getattr(dataset, "resampled", False):
            raise ValueError("data.resampled=true never ends: cache a finite pass (data.resampled=false)")
        dataset.shuffle_buffer = 0  # stream order: a cache needs no shuffling
        loader = DataLoader(dataset, batch_size=None, num_workers=cfg.data.num_workers)
    else:
        if hasattr(dataset, "skipped"):
            skips.merge(dataset.skipped)
        mine = Subset(dataset, range(rank, len(dataset), world))
        loader = DataLoader(mine, batch_size=batch_size, num_workers=cfg.data.num_workers)

    slots, token_sources, pooled_sources = load_text_slots(cfg.text)
    for slot in slots:
        slot.model.to(device)
    vae = load_vae(cfg)
    if vae is not None:
        vae.to(device)
    if vae is None and not include_images:
        raise ValueError("--no_images needs model.vae: a pixel-space run trains on the images themselves")
    features = build_feature_encoder(cfg, vae).to(device)
    meta = BatchInputs.expected(cfg, slots, token_sources, pooled_sources, vae, features)
    if not include_features:
        meta["features_key"] = ""

    writer = wds.ShardWriter(str(out_dir / f"shard-{rank:03d}-%06d.tar"), maxcount=shard_size, verbose=0)
    written = 0
    with torch.no_grad():
        for batch in tqdm(
            loader, desc="cache features", disable=not (progress and accelerator.is_main_process)
        ):
            skips.extend(batch.pop("skipped", ()))
            if not batch["caption"]:
                continue
            pixels = batch["pixel_values"].to(device)  # [B, 3, R, R]
            text = encode_text(slots, list(batch["caption"]), token_sources, pooled_sources, device)
            real = encode_latents(vae, pixels) if vae is not None else pixels  # [B, C, h, w]
            feats = features(real) if include_features else {}  # key -> [B, L, D]
            for i, caption in enumerate(batch["caption"]):
                used = text.mask[i].nonzero()
                length = int(used.max()) + 1 if len(used) else 1  # trim trailing padding
                tensors = {
                    "embeds": text.embeds[i, :length].to(dtype),
                    "mask": text.mask[i, :length],
                    "pooled": text.pooled[i].to(dtype),
                }
                if vae is not None:
                    tensors["latents"] = real[i].to(dtype)
                for key, value in feats.items():
                    tensors[FEATURE_PREFIX + key] = value[i].to(dtype)
                # clone: views of one tensor (raw features of the latents) cannot share storage
                tensors = {
                    k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
                    for k, v in tensors.items()
                }
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
        "skipped": skips.to_dict(),
        "images": include_images,
        "features": include_features,
        "dtype": str(dtype).removeprefix("torch."),
    }
    (out_dir / f"cache_meta-{rank:03d}.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_config(cfg, out_dir / "config.yaml")
        parts = [json.loads((out_dir / f"cache_meta-{r:03d}.json").read_text()) for r in range(world)]
        total = {**meta, "samples": sum(p["samples"] for p in parts), "processes": parts}
        (out_dir / META_FILE).write_text(json.dumps(total, indent=2))
        accelerator.print(f"wrote {total['samples']} samples to {out_dir}; {skips.report()} (process {rank})")
    return summary
