#!/usr/bin/env python
"""Train the MAE feature encoder (a ResNet masked autoencoder, METHOD.md section 4).

    accelerate launch scripts/train_mae.py [--config recipes/mae/NAME.yaml] [--output_dir DIR]
        [--max_steps N] [section.key=value ...]

With no arguments it runs the built-in defaults (shapes at 32x32, width 64). The EMA model lands
in <output_dir>/mae; use it as a frozen drifting feature encoder with
``t2i_drift.models.MAEFeatures("<output_dir>/mae")``.
"""

import argparse
import sys

from t2i_drift.training.config import ConfigError
from t2i_drift.training.mae_config import load_mae_config
from t2i_drift.training.mae_trainer import train_mae


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None, help="YAML recipe (default: the built-in defaults)")
    parser.add_argument("--output_dir", default=None, help="shortcut for train.output_dir=...")
    parser.add_argument("--max_steps", type=int, default=None, help="shortcut for train.max_steps=...")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.width=32")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.output_dir is not None:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    try:
        cfg = load_mae_config(args.config, overrides)
    except ConfigError as err:
        parser.error(str(err))
    train_mae(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
