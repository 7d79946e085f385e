#!/usr/bin/env python
"""Compositional accuracy of a pipeline on the built-in "shapes" set, read back by the analytic checker.

    python scripts/evaluate_shapes.py --model outputs/shapes/pipeline [--split heldout] [--seeds 2]

Generates one image per scene caption and seed, checks each with t2i_drift.data.shapes.check_image
and prints JSON: per-attribute accuracy (count, colour, shape, position, size), the fraction of
images with every attribute right, and the same for the real renders (the checker's ceiling).
``heldout`` captions use colour-shape pairs that never appear in training.
"""

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch
from tqdm.auto import tqdm

from t2i_drift import DriftingPipeline
from t2i_drift.data.shapes import ShapesDataset, check_image


def score(images, scenes) -> dict[str, float]:
    right, total, all_right = Counter(), Counter(), 0
    for image, scene in zip(images, scenes, strict=True):
        result = {k: v for k, v in check_image(image, scene).items() if v is not None}
        for attr, ok in result.items():
            total[attr] += 1
            right[attr] += ok
        all_right += all(result.values())
    out = {attr: right[attr] / total[attr] for attr in sorted(total)}
    out["all_attributes"] = all_right / len(scenes)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="exported pipeline folder")
    parser.add_argument("--split", choices=["train", "heldout"], default="heldout")
    parser.add_argument("--seeds", type=int, default=1, help="images per caption")
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--max-scenes", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not (Path(args.model) / "model_index.json").is_file():
        parser.error(f"--model {args.model!r} is not a pipeline folder (no model_index.json)")
    pipe = DriftingPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    data = ShapesDataset(
        args.split, resolution=pipe.transformer.config.sample_size, max_samples=args.max_scenes
    )
    scenes = data.scenes * args.seeds
    generator = torch.Generator().manual_seed(0)
    images = []
    for start in tqdm(range(0, len(scenes), args.batch_size), desc="generate"):
        prompts = [s.caption for s in scenes[start : start + args.batch_size]]
        out = pipe(prompts, guidance_scale=args.guidance_scale, generator=generator, output_type="pt").images
        images.extend(out * 2 - 1)  # [3, R, R] in [-1, 1], the checker's tensor format
    result = {
        "split": args.split,
        "scenes": len(data.scenes),
        "images": len(scenes),
        "guidance_scale": args.guidance_scale,
        "generated": score(images, scenes),
        "real_renders": score([img.numpy() for img in data.images], data.scenes),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
