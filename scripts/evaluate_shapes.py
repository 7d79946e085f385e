#!/usr/bin/env python
"""Compositional accuracy of a pipeline on one split of the built-in shapes set (the analytic checker).

    python scripts/evaluate_shapes.py --model outputs/shapes/pipeline [--split heldout] [--seeds 2]

One split at a time, in the output format earlier results were recorded with; scripts/evaluate.py
--data shapes scores both splits (plus diversity and latency at several NFE) and is the general
tool. Generates --seeds images per scene caption, checks each with
t2i_drift.data.shapes.check_image and prints JSON: per-attribute accuracy (count, colour, shape,
position, size), the fraction of images with every attribute right, and the same for the real
renders (the checker's ceiling). ``heldout`` captions use colour-shape pairs that never appear in
training. --max-scenes takes that many scenes (captions) spread evenly over the split.
--shapes-omit position|size scores a model trained on captions that leave those attributes out
(data.shapes_omit): an image is right when it matches any scene its caption allows, and
``coverage`` says how many of a caption's scenes its images draw.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from t2i_drift.data.shapes import CAPTION_OMITS
from t2i_drift.eval.frechet import EffNetLite0Embedder
from t2i_drift.eval.generation import default_steps, load_for_eval, pipeline_resolution, steps_kwargs
from t2i_drift.eval.suites import EvalSettings, ShapesSuite
from t2i_drift.pipelines.loading import resolve_pipeline_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="exported pipeline folder (either layout) or Hub id")
    parser.add_argument("--split", choices=["train", "heldout"], default="heldout")
    parser.add_argument("--seeds", type=int, default=1, help="images per caption")
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--nfe", type=int, default=None, help="sampling steps (multi-step pipelines only)")
    parser.add_argument("--max-scenes", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--shapes-omit",
        nargs="*",
        choices=CAPTION_OMITS,
        default=[],
        help="attributes the captions leave out",
    )
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    try:
        args.model = str(resolve_pipeline_folder(args.model))
    except ValueError as err:
        parser.error(f"argument --model: {err}")
    for name in ("seeds", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"argument --{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    if args.max_scenes is not None and args.max_scenes < 2:
        parser.error(f"argument --max-scenes: must be >= 2, got {args.max_scenes}")
    pipe = load_for_eval(args.model, args.device)
    nfe = default_steps(pipe) if args.nfe is None else args.nfe
    try:
        steps_kwargs(pipe, nfe)
    except ValueError as err:
        parser.error(f"argument --nfe: {err}")
    settings = EvalSettings(
        seeds=args.seeds,
        guidance_scale=args.guidance_scale,
        batch_size=args.batch_size,
        num=args.max_scenes,
        shapes_omit=tuple(args.shapes_omit),
    )
    embedder = EffNetLite0Embedder().to(pipe.device)
    suite = ShapesSuite(pipeline_resolution(pipe), settings, embedder, splits=[args.split])
    run = suite.evaluate(pipe, nfe)
    result = {
        "split": args.split,
        "scenes": suite.reference["scenes"][args.split],
        "captions": suite.reference["captions"][args.split],
        "shapes_omit": suite.reference["shapes_omit"],
        "images": run["images"],
        "guidance_scale": args.guidance_scale,
        "nfe": nfe,
        "generated": run[args.split],
        "real_renders": suite.reference["real_renders"][args.split],
        "latency_s_per_image": run["latency_s_per_image"],
        "diversity": run["diversity"],
        "real_renders_diversity": suite.reference["diversity"],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
