#!/usr/bin/env python
"""Train a one-step text-to-image drifting generator.

    accelerate launch scripts/train_t2i.py [--config recipes/NAME.yaml] [--output_dir DIR]
        [--max_steps N] [section.key=value ...]

With no arguments it runs the built-in default recipe (recipes/openmoji_32px.yaml: OpenMoji at
32x32, MiniLM text, EfficientNet-Lite0 + raw-pixel features). The exported pipeline lands in
<output_dir>/pipeline; load it with DriftingPipeline.from_pretrained.
"""

import sys

from t2i_drift.training.cli import run_training_cli
from t2i_drift.training.config import load_config
from t2i_drift.training.trainer import train


def main(argv: list[str] | None = None) -> int:
    return run_training_cli(__doc__, load_config, train, argv, example="train.batch_size=16")


if __name__ == "__main__":
    sys.exit(main())
