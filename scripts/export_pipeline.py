#!/usr/bin/env python
"""Export a training checkpoint as a diffusers pipeline folder (EMA weights by default).

    python scripts/export_pipeline.py --checkpoint outputs/default/checkpoints/checkpoint-1000 \\
        --out exported/ [--no-ema] [--variant bf16] [--hub-layout exported-hub/]

The folder loads with DriftingPipeline.from_pretrained(out). --hub-layout additionally writes the
layout for a Hub upload (DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)); see
scripts/push_to_hub.py to upload.
"""

import argparse
import sys

from t2i_drift.hub import write_hub_layout
from t2i_drift.training.export import export_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="a checkpoint-N folder written by the trainer")
    parser.add_argument("--out", required=True, help="output pipeline folder")
    parser.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    parser.add_argument(
        "--variant", choices=["bf16", "fp16"], default=None, help="also write a low-precision variant"
    )
    parser.add_argument("--hub-layout", default=None, help="also write the hub layout to this folder")
    args = parser.parse_args(argv)
    try:
        export_checkpoint(args.checkpoint, args.out, use_ema=not args.no_ema, variant=args.variant)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    print(f"exported {args.checkpoint} ({'raw' if args.no_ema else 'EMA'} weights) to {args.out}")
    if args.hub_layout:
        files = write_hub_layout(args.out, args.hub_layout)
        print(f"hub layout ({len(files)} files) in {args.hub_layout}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
