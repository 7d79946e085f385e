#!/usr/bin/env python
"""Generate images with an exported pipeline (a folder in either layout, or a Hub id).

python scripts/generate.py --model outputs/default/pipeline --prompt "teapot" --num-images 4 --out samples/

Files are named <prompt index>_<prompt>_<image index>.png, so prompts that differ only in
punctuation never overwrite each other.
"""

import argparse
import sys
from pathlib import Path

import torch
from diffusers.utils import make_image_grid

from t2i_drift import load_pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="pipeline folder (or hub id)")
    parser.add_argument("--prompt", required=True, action="append", help="repeat for several prompts")
    parser.add_argument("--num-images", type=int, default=4, help="images per prompt")
    parser.add_argument("--out", required=True, help="output folder for PNGs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--grid", default=None, help="also write one grid PNG here (a row per prompt)")
    args = parser.parse_args(argv)
    try:
        pipe = load_pipeline(args.model)
    except ValueError as err:
        parser.error(f"argument --model: {err}")
    pipe.set_progress_bar_config(disable=True)
    try:
        images = pipe(
            args.prompt,
            num_images_per_prompt=args.num_images,
            guidance_scale=args.guidance_scale,
            height=args.height,
            width=args.width,
            generator=torch.Generator().manual_seed(args.seed),
        ).images
    except ValueError as err:
        parser.error(str(err))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        k = i // args.num_images
        slug = "".join(c if c.isalnum() else "_" for c in args.prompt[k])[:60]
        path = out / f"{k:02d}_{slug}_{i % args.num_images:02d}.png"
        image.save(path)
        print(path)
    if args.grid:
        make_image_grid(images, rows=len(args.prompt), cols=args.num_images).save(args.grid)
        print(args.grid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
