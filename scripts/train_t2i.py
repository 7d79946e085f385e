#!/usr/bin/env python
"""Train a one-step text-to-image drifting generator.

    accelerate launch scripts/train_t2i.py [--config recipes/NAME.yaml] [--output_dir DIR]
        [--max_steps N] [section.key=value ...]

With no arguments it runs the built-in default recipe (recipes/openmoji_32px.yaml: OpenMoji emoji
at 32x32 with their names as captions, the MiniLM text encoder, a pixel-space generator drifting on
its raw output). The exported pipeline lands in <output_dir>/pipeline; load it with
DriftingPipeline.from_pretrained.
"""

import sys

from t2i_drift.training.cli import run_training_cli
from t2i_drift.training.config import Config, load_config
from t2i_drift.training.runs import train_t2i


def main(argv: list[str] | None = None) -> int:
    return run_training_cli(
        __doc__, load_config, train_t2i, argv, example="train.batch_size=16", config_cls=Config
    )


if __name__ == "__main__":
    sys.exit(main())
