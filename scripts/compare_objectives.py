#!/usr/bin/env python
"""Train drifting, regression and flow matching from one recipe at equal steps, evaluate, report.

    python scripts/compare_objectives.py --config recipes/shapes_32px.yaml --data shapes --max_steps 1000 \\
        --out_dir runs/compare/shapes --doc docs/objectives_shapes [--nfe 1 2 4 8 25] [--seeds 2] \\
        [section.key=value ...]

Each objective trains with ``objective.name=<objective>`` and the same recipe, seed, overrides and
--max_steps into <out_dir>/<objective>/; an objective whose <out_dir>/<objective>/pipeline exists is
not trained again (an interrupted run resumes from its latest checkpoint). Drifting and regression
are evaluated at 1 NFE, flow matching at each --nfe, with the suite of scripts/evaluate.py
(--data openmoji: FD-EffNetLite0, retrieval; shapes: checker accuracy, on the captions the recipe
trains on unless --shapes-omit says otherwise; both: diversity and latency).
Each evaluation is saved as <out_dir>/<objective>/eval_<data>.json and reused while the pipeline and
the settings are unchanged. Writes <doc>.md (a table: objective, NFE, train wall time from each
run_summary.json, quality, diversity, latency; the command) and <doc>.png (the main quality metric
against NFE). Put the overrides before --nfe (or after --).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import torch

from t2i_drift.eval.cli import add_eval_arguments, positive_int, settings_from_args
from t2i_drift.eval.comparison import (
    OBJECTIVES,
    cached_eval,
    eval_path,
    is_trained,
    markdown_table,
    objective_nfes,
    pipeline_dir,
    read_run_summary,
    run_dir,
    table_rows,
    training_overrides,
    write_report,
)
from t2i_drift.eval.frechet import EffNetLite0Embedder
from t2i_drift.eval.generation import default_device, is_multi_step, load_for_eval, pipeline_resolution
from t2i_drift.eval.suites import EvalSettings, evaluate_pipeline, make_suite
from t2i_drift.training.config import Config, ConfigError, load_config
from t2i_drift.training.runs import train_t2i

DEFAULT_NFE = (1, 2, 4, 8, 25)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict[str, Config], EvalSettings]:
    """Arguments, the config of each objective and the evaluation settings; every check that can
    fail runs here, before any training."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="YAML recipe every objective trains from")
    parser.add_argument("--max_steps", type=positive_int, required=True, help="training steps per objective")
    parser.add_argument("--out_dir", required=True, help="one training folder per objective under it")
    parser.add_argument("--doc", required=True, help="report path without extension: writes DOC.md, DOC.png")
    parser.add_argument(
        "--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES), help="default: all three"
    )
    add_eval_arguments(parser, data_required=True, nfe_default=DEFAULT_NFE)
    parser.add_argument("overrides", nargs="*", help="dotted config overrides for every objective")
    args = parser.parse_args(argv)
    if not Path(args.config).is_file():
        parser.error(f"argument --config: no such recipe file: {args.config}")
    if Path(args.doc).suffix not in ("", ".md"):
        parser.error(f"argument --doc: give the path without extension (writes .md and .png), got {args.doc}")
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        parser.error(f"argument --out_dir: {args.out_dir} exists and is not a folder")
    settings = settings_from_args(parser, args)
    configs = {}
    for objective in args.objectives:
        overrides = training_overrides(objective, args.out_dir, args.max_steps, args.overrides)
        if not is_trained(args.out_dir, objective) and run_dir(args.out_dir, objective).exists():
            overrides.append("train.resume_from_checkpoint=latest")  # an earlier attempt: continue it
        try:
            configs[objective] = load_config(args.config, overrides)
        except ConfigError as err:
            parser.error(str(err))
        if configs[objective].data.name != args.data:
            parser.error(
                f"argument --data: {args.data} does not match the recipe's data.name="
                f"{configs[objective].data.name} ({args.config})"
            )
    if args.data == "shapes" and args.shapes_omit is None:
        # evaluate the captions the models were trained on
        settings = replace(settings, shapes_omit=tuple(next(iter(configs.values())).data.shapes_omit))
    return args, configs, settings


def conditions(device: torch.device) -> str:
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()})"
    )
    return (
        f"evaluated on {where}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
        "training on the device Accelerate chose."
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, configs, settings = parse_args(argv)
    command = "python scripts/compare_objectives.py " + shlex.join(argv)
    objectives = list(configs)

    # 1. Train (or skip) each objective
    for k, objective in enumerate(objectives, 1):
        tag = f"[{k}/{len(objectives)}] {objective}:"
        if is_trained(args.out_dir, objective):
            steps = read_run_summary(args.out_dir, objective).get("steps")
            print(f"{tag} {pipeline_dir(args.out_dir, objective)} exists, not retrained", flush=True)
            if steps not in (None, args.max_steps):
                print(f"{tag} WARNING: that run trained {steps} steps, not --max_steps {args.max_steps}")
            continue
        print(f"{tag} training {args.max_steps} steps into {run_dir(args.out_dir, objective)}", flush=True)
        train_t2i(configs[objective])
        wall = read_run_summary(args.out_dir, objective).get("train_wall_s", float("nan"))
        print(f"{tag} trained in {wall:.0f} s", flush=True)

    # 2. Evaluate: one-step objectives at NFE 1, flow matching at each --nfe
    evals, summaries, suite = {}, {}, None
    for objective in objectives:
        summaries[objective] = read_run_summary(args.out_dir, objective)
        nfes = objective_nfes(objective, args.nfe)
        saved = cached_eval(args.out_dir, objective, args.data, settings.to_json(), nfes)
        if saved is not None:
            print(
                f"evaluate {objective}: reusing {eval_path(args.out_dir, objective, args.data)}", flush=True
            )
            evals[objective] = saved
            continue
        print(f"evaluate {objective} on {args.data} at NFE {nfes}", flush=True)
        pipe = load_for_eval(pipeline_dir(args.out_dir, objective), args.device)
        if nfes != [1] and not is_multi_step(pipe):
            name = type(pipe).__name__
            print(f"error: {objective} exported a one-step {name}; it cannot be sampled at NFE {nfes}")
            return 1
        if suite is None or suite.resolution != pipeline_resolution(pipe):
            print(f"building the {args.data} reference at {pipeline_resolution(pipe)} px", flush=True)
            embedder = EffNetLite0Embedder().to(pipe.device)
            suite = make_suite(args.data, pipeline_resolution(pipe), settings, embedder)
        evals[objective] = evaluate_pipeline(
            pipe, suite, nfes, model=str(pipeline_dir(args.out_dir, objective))
        )
        eval_path(args.out_dir, objective, args.data).write_text(json.dumps(evals[objective], indent=2))
        del pipe

    # 3. Report
    device = torch.device(args.device) if args.device else default_device()
    md, png = write_report(
        args.doc, args.data, evals, summaries, command, args.config, args.max_steps, conditions(device)
    )
    print(markdown_table(*table_rows(args.data, evals, summaries)))
    print(f"wrote {md} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
