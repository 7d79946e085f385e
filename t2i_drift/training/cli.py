"""The command line every training script shares: a recipe, dotted overrides, and the flag names
of the diffusers example trainers as aliases of config keys.

    scripts/train_t2i.py [--config YAML] [section.key=value ...] [--output_dir DIR] [--max_train_steps N]
        [--mixed_precision bf16] [--report_to tensorboard] [--validation_prompts "a" "b"] ...

Flags and overrides mix in any order; an alias becomes the override it names (given after the
recipe's values and before the explicit overrides, which win). ``--help`` lists every config key
with its type, default and doc, generated from the config dataclasses.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from t2i_drift.training.config import ConfigError
from t2i_drift.training.config_docs import config_keys, format_keys


@dataclass(frozen=True)
class Alias:
    """A diffusers-style flag and the config override(s) it stands for."""

    flag: str
    keys: tuple[str, ...]
    help: str
    kind: str = "value"  # value | int | float | list | flag | dataset
    choices: tuple[str, ...] | None = None


ALIASES = (
    Alias("--output_dir", ("train.output_dir",), "train.output_dir"),
    Alias("--max_steps", ("train.max_steps",), "train.max_steps", "int"),
    Alias("--max_train_steps", ("train.max_steps",), "train.max_steps (diffusers' name)", "int"),
    Alias("--train_batch_size", ("train.batch_size",), "train.batch_size", "int"),
    Alias("--learning_rate", ("optim.learning_rate",), "optim.learning_rate", "float"),
    Alias("--seed", ("train.seed",), "train.seed", "int"),
    Alias("--resolution", ("data.resolution",), "data.resolution", "int"),
    Alias(
        "--mixed_precision",
        ("train.mixed_precision",),
        "train.mixed_precision (default: the launcher's)",
        choices=("no", "fp16", "bf16"),
    ),
    Alias(
        "--gradient_accumulation_steps",
        ("train.gradient_accumulation_steps",),
        "train.gradient_accumulation_steps",
        "int",
    ),
    Alias("--checkpointing_steps", ("train.checkpointing_steps",), "train.checkpointing_steps", "int"),
    Alias(
        "--checkpoints_total_limit",
        ("train.checkpoints_total_limit",),
        "train.checkpoints_total_limit",
        "int",
    ),
    Alias(
        "--resume_from_checkpoint",
        ("train.resume_from_checkpoint",),
        "train.resume_from_checkpoint (a folder or latest)",
    ),
    Alias(
        "--report_to",
        ("train.report_to",),
        "train.report_to: one or more trackers",
        "list",
        ("tensorboard", "wandb", "trackio"),
    ),
    Alias("--tracker_project_name", ("train.tracker_project",), "train.tracker_project"),
    Alias("--validation_prompts", ("train.validation_prompts",), "train.validation_prompts", "list"),
    Alias("--validation_steps", ("train.validation_steps",), "train.validation_steps", "int"),
    Alias("--num_validation_images", ("train.num_validation_images",), "train.num_validation_images", "int"),
    Alias(
        "--dataset_name", ("data.name", "data.path"), "a Hub dataset: data.name=hf data.path=NAME", "dataset"
    ),
    Alias(
        "--train_data_dir",
        ("data.name", "data.path"),
        "a local imagefolder: data.name=hf data.path=DIR",
        "dataset",
    ),
    Alias("--image_column", ("data.image_column",), "data.image_column"),
    Alias("--caption_column", ("data.caption_columns",), "data.caption_columns (one or more)", "list"),
    Alias("--push_to_hub", ("train.push_to_hub",), "train.push_to_hub=true", "flag"),
    Alias("--hub_model_id", ("train.hub_model_id",), "train.hub_model_id"),
)


def _add_alias(parser: argparse.ArgumentParser, alias: Alias) -> None:
    kwargs: dict[str, Any] = {"help": alias.help, "default": None}
    if alias.kind == "flag":
        kwargs = {"help": alias.help, "action": "store_true", "default": False}
    elif alias.kind == "list":
        kwargs["nargs"] = "+"
    elif alias.kind in ("int", "float"):
        kwargs["type"] = int if alias.kind == "int" else float
    if alias.choices:
        kwargs["choices"] = alias.choices
    parser.add_argument(alias.flag, dest=alias.flag.lstrip("-"), **kwargs)


def alias_overrides(args: argparse.Namespace, aliases: tuple[Alias, ...]) -> list[str]:
    """The overrides the given alias flags stand for (values as JSON, which YAML reads back)."""
    overrides = []
    for alias in aliases:
        value = getattr(args, alias.flag.lstrip("-"))
        if value is None or value is False:
            continue
        if alias.kind == "flag":
            overrides.append(f"{alias.keys[0]}=true")
        elif alias.kind == "dataset":
            overrides += [f"{alias.keys[0]}=hf", f"{alias.keys[1]}={json.dumps(value)}"]
        else:
            overrides.append(f"{alias.keys[0]}={json.dumps(value)}")
    return overrides


def run_training_cli(
    doc: str,
    load: Callable[[str | None, list[str]], Any],
    run: Callable[[Any], Any],
    argv: list[str] | None = None,
    example: str = "train.batch_size=16",
    config_cls: type | None = None,
) -> int:
    """Parse ``[--config YAML] [alias flags] [section.key=value ...]``, load the config with
    ``load(path, overrides)`` and call ``run(cfg)``. ``config_cls`` (the config tree) decides which
    aliases exist and what ``--help`` lists. A config error exits with status 2 and a message
    naming the key (argparse's usage error), never a traceback."""
    keys = config_keys(config_cls) if config_cls is not None else []
    known = {k.key for k in keys}
    aliases = tuple(a for a in ALIASES if not known or all(k in known for k in a.keys))
    parser = argparse.ArgumentParser(
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "config keys (section.key=value on the command line, or in the recipe YAML):\n"
            + format_keys(keys)
            if keys
            else None
        ),
    )
    parser.add_argument("--config", default=None, help="YAML recipe (default: the built-in defaults)")
    for alias in aliases:
        _add_alias(parser, alias)
    parser.add_argument("overrides", nargs="*", help=f"dotted overrides, e.g. {example}")
    args = parser.parse_intermixed_args(argv)
    overrides = alias_overrides(args, aliases) + list(args.overrides)
    try:
        cfg = load(args.config, overrides)
    except ConfigError as err:
        parser.error(str(err))
    try:
        run(cfg)
    except ConfigError as err:  # checks that need the environment (e.g. a Hub token), before training
        parser.error(str(err))
    return 0
