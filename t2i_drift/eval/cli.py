"""Command-line options the evaluation scripts share (scripts/evaluate.py, scripts/compare_objectives.py)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from t2i_drift.data.shapes import CAPTION_OMITS
from t2i_drift.eval.suites import DATA, EvalSettings


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_eval_arguments(
    parser: argparse.ArgumentParser, data_required: bool = False, nfe_default: Sequence[int] | None = None
) -> None:
    """--data, --nfe, --num, --num-val, --seeds, --seed, --guidance-scale, --batch-size,
    --diversity-prompts, --shapes-omit, --device."""
    parser.add_argument(
        "--data",
        choices=DATA,
        required=data_required,
        default=None if data_required else "openmoji",
        help="built-in data set to evaluate on" + ("" if data_required else " (default openmoji)"),
    )
    parser.add_argument(
        "--nfe",
        type=positive_int,
        nargs="+",
        default=None if nfe_default is None else list(nfe_default),
        help="sampling steps to evaluate a multi-step (flow-matching) pipeline at"
        + (f" (default {' '.join(map(str, nfe_default))})" if nfe_default else " (default: its own)")
        + "; one-step pipelines: 1 only",
    )
    parser.add_argument(
        "--num",
        type=int,
        default=None,
        help="openmoji: training captions scored (default 1000); shapes: captions per split (default all)",
    )
    parser.add_argument(
        "--num-val", type=int, default=None, help="openmoji: validation captions scored (default all 220)"
    )
    parser.add_argument("--seeds", type=positive_int, default=2, help="images per caption (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="base noise seed (default 0)")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="default 1 (no guidance)")
    parser.add_argument("--batch-size", type=positive_int, default=100, help="prompts per pipeline call")
    parser.add_argument(
        "--diversity-prompts", type=positive_int, default=100, help="captions in the diversity figures"
    )
    parser.add_argument(
        "--shapes-omit",
        nargs="*",
        choices=CAPTION_OMITS,
        default=None,
        help="shapes: attributes the captions leave out, as the model was trained (data.shapes_omit); "
        "an image is then right when it matches any scene its caption allows",
    )
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")


def settings_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> EvalSettings:
    """EvalSettings from the parsed options; a bad value is an argparse error naming the option."""
    for name in ("num", "num_val"):
        value = getattr(args, name)
        if value is not None and value < 2:
            parser.error(f"argument --{name.replace('_', '-')}: must be >= 2, got {value}")
    if args.shapes_omit and args.data != "shapes":
        parser.error(f"argument --shapes-omit: applies to --data shapes only, got --data {args.data}")
    return EvalSettings(
        seeds=args.seeds,
        seed=args.seed,
        guidance_scale=args.guidance_scale,
        batch_size=args.batch_size,
        num=args.num,
        num_val=args.num_val,
        diversity_prompts=args.diversity_prompts,
        shapes_omit=tuple(args.shapes_omit or ()),
    )
