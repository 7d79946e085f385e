#!/usr/bin/env python
"""Train the MAE feature encoder (a ResNet masked autoencoder, docs/method.md section 4).

    accelerate launch scripts/train_mae.py [--config recipes/mae/NAME.yaml] [--output_dir DIR]
        [--max_steps N] [section.key=value ...]

With no arguments it runs the built-in defaults (shapes at 32x32, width 64). The EMA model lands
in <output_dir>/mae; use it as a frozen drifting feature encoder with
``t2i_drift.models.MAEFeatures("<output_dir>/mae")``.
"""

import sys

from t2i_drift.training.cli import run_training_cli
from t2i_drift.training.mae_config import MAEConfig, load_mae_config
from t2i_drift.training.runs import train_mae


def main(argv: list[str] | None = None) -> int:
    return run_training_cli(
        __doc__, load_mae_config, train_mae, argv, example="model.width=32", config_cls=MAEConfig
    )


if __name__ == "__main__":
    sys.exit(main())
