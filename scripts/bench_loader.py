#!/usr/bin/env python
"""Data loader throughput per source, against what a training step consumes.

It writes the same N OpenMoji images (64x64 PNG, real captions) as a parquet file, as webdataset
shards, and as feature-cache shards (scripts/cache_features.py: MiniLM embeddings stored), then
measures, in one process, the samples/s that each source delivers at ``--resolution`` through a
``DataLoader`` with ``--workers`` workers (median of ``--repeats`` passes after a warm-up pass):

    openmoji (memory)      built-in set: decoded once, indexed (the default recipe's source)
    hf parquet (memory)    HFImageTextDataset: decode every row up front, then index
    hf parquet (stream)    HFStreamingImageTextDataset: decode per row as the stream arrives
    webdataset             WebDatasetImageText on local shards
    + text encode          the same stream plus the per-batch MiniLM encoding the trainer does in
                           the main process for streams (what a step really waits for)
    cached shards          feature-cache shards: images + stored embeddings (no text encoding)

and the ratio of each to the training step's consumption: prompts/s of the default recipe's
train step (``--train_steps`` steps of recipes/openmoji_32px.yaml, run here first). A ratio
above 1 means the loader keeps up.

    python scripts/bench_loader.py                 # 2 workers, 1024 samples, 32 px
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from t2i_drift.data.hf import HFImageTextDataset, HFStreamingImageTextDataset
from t2i_drift.data.openmoji import OpenMojiDataset
from t2i_drift.data.webdataset import WebDatasetImageText
from t2i_drift.training.builders import build_text_conditioner
from t2i_drift.training.cache_features import cache_features
from t2i_drift.training.config import load_config
from t2i_drift.training.runs import train_t2i

RECIPE = Path(__file__).parent.parent / "recipes" / "openmoji_32px.yaml"


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_sources(root: Path, n: int) -> tuple[str, str]:
    """N OpenMoji images at 64 px as parquet and as webdataset shards; returns their paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    emoji = OpenMojiDataset(split="train", resolution=64, max_samples=n)
    pngs = [_png(emoji.images[i].numpy()) for i in range(len(emoji))]
    table = pa.table({"image": [{"bytes": b, "path": None} for b in pngs], "text": emoji.captions})
    pq.write_table(table, root / "data.parquet", row_group_size=128)
    with wds.ShardWriter(str(root / "shard-%06d.tar"), maxcount=128, verbose=0) as writer:
        for i, (png, caption) in enumerate(zip(pngs, emoji.captions, strict=True)):
            writer.write({"__key__": f"{i:08d}", "png": png, "txt": caption})
    shards = sorted(root.glob("shard-*.tar"))
    return str(root / "data.parquet"), f"{root}/shard-{{000000..{len(shards) - 1:06d}}}.tar"


def rate(make_batches, samples_per_pass: int, repeats: int) -> float:
    """Median samples/s of ``repeats`` full passes of ``make_batches()`` (after one warm-up)."""
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        count = sum(len(batch["caption"]) for batch in make_batches())
        if i:
            times.append(time.perf_counter() - start)
    if count < samples_per_pass * 0.9:
        raise RuntimeError(f"a pass delivered {count} samples, expected about {samples_per_pass}")
    return count / statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train_steps", type=int, default=20, help="0: skip the training-step baseline")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    B, R, W = args.batch_size, args.resolution, args.workers

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        consumed = None
        if args.train_steps:
            cfg = load_config(
                RECIPE,
                [
                    f"train.max_steps={args.train_steps}",
                    f"train.output_dir={root / 'run'}",
                    f"train.batch_size={B}",
                    f"train.checkpointing_steps={10**9}",
                    "data.max_samples=256",
                ],
            )
            train_t2i(cfg)
            summary = json.loads((root / "run" / "run_summary.json").read_text())
            consumed = summary["samples_per_s"] / cfg.drift.samples_per_prompt  # prompts/s
        parquet, shards = write_sources(root, args.samples)
        cfg = load_config(RECIPE, ["data.name=webdataset", f"data.path={shards}", f"data.resolution={R}"])
        cache_features(cfg, root / "cached", shard_size=128, batch_size=128, progress=False)
        n_cached = len(list((root / "cached").glob("shard-*.tar")))
        cached = f"{root}/cached/shard-000-{{000000..{n_cached - 1:06d}}}.tar"
        conditioner = build_text_conditioner(cfg.text)

        def loader(source, batch_size=None):
            return DataLoader(source, batch_size=batch_size, num_workers=W, shuffle=False)

        def stream_with_text():
            for batch in loader(WebDatasetImageText(shards, B, R, shuffle_buffer=0)):
                if batch["caption"]:
                    conditioner.encode(batch["caption"])
                yield batch

        emoji = OpenMojiDataset(split="train", resolution=R, max_samples=args.samples)
        in_memory = HFImageTextDataset(parquet, resolution=R, progress=False)
        t0 = time.perf_counter()
        HFImageTextDataset(parquet, resolution=R, progress=False)
        decode_once = args.samples / (time.perf_counter() - t0)
        rows = [
            ("openmoji (memory)", lambda: loader(emoji, B)),
            ("hf parquet (memory)", lambda: loader(in_memory, B)),
            (
                "hf parquet (stream)",
                lambda: loader(HFStreamingImageTextDataset(parquet, B, resolution=R, shuffle_buffer=0)),
            ),
            ("webdataset", lambda: loader(WebDatasetImageText(shards, B, R, shuffle_buffer=0))),
            ("webdataset + text encode", stream_with_text),
            ("cached shards (embeds)", lambda: loader(WebDatasetImageText(cached, B, R, shuffle_buffer=0))),
        ]
        print(f"\n{args.samples} samples, {R}x{R}, batch {B}, {W} workers, median of {args.repeats} passes")
        if consumed is not None:
            print(f"training step (recipes/openmoji_32px.yaml, batch {B}): {consumed:.1f} prompts/s consumed")
        print(f"hf parquet (memory) one-off decode before training: {decode_once:.0f} samples/s\n")
        print("| source | samples/s | x training step |")
        print("|---|---:|---:|")
        for name, make in rows:
            r = rate(make, args.samples, args.repeats)
            ratio = f"{r / consumed:.1f}x" if consumed else "-"
            print(f"| {name} | {r:.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
