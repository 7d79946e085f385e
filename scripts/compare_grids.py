#!/usr/bin/env python
"""Side-by-side sample grids of several pipelines (same prompts, same seed), one labelled panel each.

    python scripts/compare_grids.py --model runs/a/pipeline --label "raw" --model runs/b/pipeline \
        --label "raw + effnet" --prompt teapot --prompt "grinning face" --num-images 4 --out compare.png
"""

import argparse
import sys

import torch
from diffusers.utils import make_image_grid
from PIL import Image, ImageDraw

from t2i_drift import load_pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", required=True, help="pipeline folder or Hub id (repeat)")
    parser.add_argument("--label", action="append", default=None, help="panel title, one per --model")
    parser.add_argument("--prompt", action="append", required=True)
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=3, help="nearest-neighbour upscaling of the panels")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    labels = args.label or args.model
    if len(labels) != len(args.model):
        parser.error(f"got {len(args.model)} --model but {len(labels)} --label")
    panels = []
    for path, label in zip(args.model, labels, strict=True):
        try:
            pipe = load_pipeline(path)
        except ValueError as err:
            parser.error(f"argument --model: {err}")
        pipe.set_progress_bar_config(disable=True)
        images = pipe(
            args.prompt,
            num_images_per_prompt=args.num_images,
            generator=torch.Generator().manual_seed(args.seed),
        ).images
        grid = make_image_grid(images, rows=len(args.prompt), cols=args.num_images)
        grid = grid.resize((grid.width * args.scale, grid.height * args.scale), Image.Resampling.NEAREST)
        panel = Image.new("RGB", (grid.width, grid.height + 20), "white")
        panel.paste(grid, (0, 20))
        ImageDraw.Draw(panel).text((4, 4), label, fill="black")
        panels.append(panel)
    gap = 12
    out = Image.new(
        "RGB", (sum(p.width for p in panels) + gap * (len(panels) - 1), panels[0].height), "white"
    )
    x = 0
    for panel in panels:
        out.paste(panel, (x, 0))
        x += panel.width + gap
    out.save(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
