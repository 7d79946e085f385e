#!/usr/bin/env python
"""Throughput of the training-batch augmentation (t2i_drift/data/augment.py) against the per-image
torchvision loop it replaces, in one process.

    python scripts/bench_augment.py [--batch 256] [--size 32] [--device cuda] [--repeats 20]

Both make RandomResizedCrop (scale 0.2-1) + flip views of a random batch: ``BatchAugment`` draws
every box at once and resamples with one ``grid_sample``; the baseline applies
``torchvision.transforms.v2`` to each image in turn (one set of kernels per image). Prints
images/s of each (median of --repeats timed calls after a warm-up) and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torchvision.transforms import v2

from t2i_drift.data.augment import BatchAugment


def _median_seconds(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = parser.parse_args(argv)
    if min(args.batch, args.size, args.repeats) < 1:
        parser.error("--batch, --size and --repeats must be >= 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    images = torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1
    batched = BatchAugment(args.size, (0.2, 1.0), hflip=True)
    per_image = v2.Compose(
        [v2.RandomResizedCrop(args.size, scale=(0.2, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    )
    gen = torch.Generator().manual_seed(0)
    t_batched = _median_seconds(lambda: batched(images, gen), args.repeats, device)
    t_loop = _median_seconds(lambda: torch.stack([per_image(i) for i in images]), args.repeats, device)
    print(f"device {device}, batch {args.batch} x 3 x {args.size} x {args.size}")
    print(f"per-image torchvision loop: {args.batch / t_loop:12.0f} images/s")
    print(f"BatchAugment (batched):     {args.batch / t_batched:12.0f} images/s")
    print(f"ratio batched / loop:       {t_loop / t_batched:12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
