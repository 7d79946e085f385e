"""The command line every training script shares: a recipe, two shortcuts and dotted overrides."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from t2i_drift.training.config import ConfigError


def run_training_cli(
    doc: str,
    load: Callable[[str | None, list[str]], Any],
    run: Callable[[Any], Any],
    argv: list[str] | None = None,
    example: str = "train.batch_size=16",
) -> int:
    """Parse ``[--config YAML] [--output_dir DIR] [--max_steps N] [section.key=value ...]``, load
    the config with ``load(path, overrides)`` and call ``run(cfg)``. A config error exits with
    status 2 and a message naming the key (argparse's usage error), never a traceback."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML recipe (default: the built-in defaults)")
    parser.add_argument("--output_dir", default=None, help="shortcut for train.output_dir=...")
    parser.add_argument("--max_steps", type=int, default=None, help="shortcut for train.max_steps=...")
    parser.add_argument("overrides", nargs="*", help=f"dotted overrides, e.g. {example}")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.output_dir is not None:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    try:
        cfg = load(args.config, overrides)
    except ConfigError as err:
        parser.error(str(err))
    run(cfg)
    return 0
