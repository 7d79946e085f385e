#!/usr/bin/env python
"""Evaluate an exported pipeline on the built-in OpenMoji or shapes data, at one or more NFE.

    python scripts/evaluate.py --model outputs/default/pipeline [--data openmoji] [--num 1000] [--seeds 2]
    python scripts/evaluate.py --model outputs/shapes/pipeline --data shapes [--num 200] [--seeds 2]
    python scripts/evaluate.py --model runs/fm/pipeline --data shapes --nfe 1 2 4 8 25

--data openmoji (default):
    fd_gen_train        FD-EffNetLite0 of one generated image per training caption (--num captions,
                        spread over the sorted list) vs the same captions' real images
    fd_real_train_val   the floor: those real training images vs all real validation images
    fd_gen_val          generated images for the validation captions (--num-val, default all) vs
                        their real images
    retrieval_top1/5    paired retrieval: is a generated image's nearest real image its own?
                        (prompt adherence; chance k / num; t2i_drift/eval/retrieval.py)
--data shapes:
    train, heldout      per-attribute checker accuracy (count, colour, shape, position, size,
                        all_attributes) of --seeds images per scene; heldout scenes use colour-shape
                        pairs never seen in training; reference.real_renders is the checker's ceiling
Both:
    diversity           per-prompt diversity: mean pairwise distance between the --seeds images of a
                        caption (pixel RMS in [-1, 1] units and EfficientNet-Lite0 feature distance);
                        reference.diversity is the same for real images (shapes: jittered renders of
                        one caption; OpenMoji has one image per caption, so only between captions)
    latency_s_per_image seconds per image around the pipeline calls, after one warm-up call

A one-step pipeline (DriftingPipeline) is evaluated at NFE 1 only; a multi-step pipeline (flow
matching) at each --nfe (default: its own default step count). FD-EffNetLite0 is a Frechet distance
in EfficientNet-Lite0 features, not FID. Prints the JSON (and writes it to --out).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from t2i_drift.eval.cli import add_eval_arguments, settings_from_args
from t2i_drift.eval.frechet import EffNetLite0Embedder
from t2i_drift.eval.generation import default_steps, is_multi_step, load_for_eval, pipeline_resolution
from t2i_drift.eval.suites import evaluate_pipeline, make_suite
from t2i_drift.model_card import EXPORT_INFO, METRICS, flatten_metrics, write_model_card
from t2i_drift.pipelines.loading import resolve_pipeline_folder, verify_hub_layout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="exported pipeline folder (either layout) or Hub id")
    add_eval_arguments(parser)
    parser.add_argument("--out", default=None, help="write the JSON here too")
    parser.add_argument(
        "--update-card",
        action="store_true",
        help="write the figures to <model>/metrics.json and render its model card again (a local export)",
    )
    args = parser.parse_args(argv)
    local = Path(args.model).exists()
    try:
        args.model = str(resolve_pipeline_folder(args.model))
    except ValueError as err:
        parser.error(f"argument --model: {err}")
    if args.update_card and not (local and (Path(args.model) / EXPORT_INFO).is_file()):
        parser.error(
            f"argument --update-card: {args.model!r} is not a local t2i_drift export (no {EXPORT_INFO})"
        )
    settings = settings_from_args(parser, args)
    pipe = load_for_eval(args.model, args.device)
    if args.nfe is None:
        nfes = [default_steps(pipe)]
    elif not is_multi_step(pipe) and set(args.nfe) != {1}:
        name = type(pipe).__name__
        parser.error(f"argument --nfe: {name} samples in one step; only --nfe 1 applies, got {args.nfe}")
    else:
        nfes = sorted(set(args.nfe))
    embedder = EffNetLite0Embedder().to(pipe.device)
    try:
        suite = make_suite(args.data, pipeline_resolution(pipe), settings, embedder)
    except ValueError as err:  # --num beyond the data
        parser.error(f"argument --num: {err}")
    result = evaluate_pipeline(pipe, suite, nfes, model=str(args.model))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    if args.update_card:
        folder = Path(args.model)
        record = {
            "description": f"Measured by `scripts/evaluate.py` on the built-in {args.data} data "
            f"({settings.seeds} image(s) per caption, noise seed {settings.seed}, guidance scale "
            f"{settings.guidance_scale}, {result['device']}):",
            "command": "python scripts/evaluate.py " + shlex.join(sys.argv[1:] if argv is None else argv),
            "metrics": flatten_metrics(result),
        }
        (folder / METRICS).write_text(json.dumps(record, indent=2) + "\n")
        card = write_model_card(folder, hub_layout=verify_hub_layout(folder))
        print(f"wrote {folder / METRICS} and {card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
