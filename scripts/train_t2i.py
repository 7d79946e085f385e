#!/usr/bin/env python
"""Train a one-step text-to-image drifting generator.

    accelerate launch scripts/train_t2i.py [--config recipes/NAME.yaml] [--output_dir DIR]
        [--max_steps N] [section.key=value ...]

With no arguments it runs the built-in default recipe (recipes/openmoji_32px.yaml: OpenMoji at
32x32, MiniLM text, EfficientNet-Lite0 + raw-pixel features). The exported pipeline lands in
<output_dir>/pipeline; load it with DriftingPipeline.from_pretrained.
"""

import argparse
import sys

from t2i_drift.training.config import ConfigError, load_config
from t2i_drift.training.trainer import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None, help="YAML recipe (default: the built-in defaults)")
    parser.add_argument("--output_dir", default=None, help="shortcut for train.output_dir=...")
    parser.add_argument("--max_steps", type=int, default=None, help="shortcut for train.max_steps=...")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.batch_size=16")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.output_dir is not None:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as err:
        parser.error(str(err))
    train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
