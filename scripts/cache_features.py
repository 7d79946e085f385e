#!/usr/bin/env python
"""Precompute text embeddings and VAE latents (and optionally the positives' features) into
webdataset shards, so that large runs do not re-encode.

    accelerate launch scripts/cache_features.py --config recipes/NAME.yaml --out_dir DIR
        [--shard_size 1000] [--no_images] [--features] [--dtype float16] [section.key=value ...]

Then train with the same recipe plus ``data.name=webdataset data.path=DIR/shard-{...}.tar``
(e.g. ``DIR/shard-000-{000000..000009}.tar``); the trainer uses the cached tensors when they were
produced by the run's own text encoder / VAE / feature encoder and encodes again otherwise.
"""

import argparse
import sys
from pathlib import Path

import torch

from t2i_drift.training.cache_features import cache_features, check_out_dir
from t2i_drift.training.config import ConfigError, load_config

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None, help="YAML recipe (default: the built-in defaults)")
    parser.add_argument("--out_dir", required=True, help="folder for the shards and cache_meta.json")
    parser.add_argument("--shard_size", type=int, default=1000, help="samples per shard")
    parser.add_argument("--batch_size", type=int, default=64, help="samples encoded at once")
    parser.add_argument("--no_images", action="store_true", help="do not store the images (latent runs)")
    parser.add_argument("--features", action="store_true", help="also store the positives' features")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="storage dtype")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a previous cache in --out_dir (its own files only)"
    )
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.max_samples=100")
    args = parser.parse_args(argv)
    if args.shard_size < 1 or args.batch_size < 1:
        parser.error("--shard_size and --batch_size must be >= 1")
    try:
        cfg = load_config(args.config, list(args.overrides))
        check_out_dir(Path(args.out_dir), args.overwrite)
    except (ConfigError, ValueError) as err:
        parser.error(str(err))
    cache_features(
        cfg,
        args.out_dir,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        include_images=not args.no_images,
        include_features=args.features,
        dtype=DTYPES[args.dtype],
        overwrite=args.overwrite,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
