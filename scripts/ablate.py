#!/usr/bin/env python
"""Train the variants of an ablation plan with several training seeds at equal steps, evaluate, report.

    python scripts/ablate.py --plan recipes/ablations/official_details.yaml --max_steps 300 \\
        --train-seeds 0 1 --out_dir runs/ablate/official --doc docs/ablation_official [--variants a b]

A plan (t2i_drift/eval/ablation.py) names a recipe, a data set (shapes or openmoji) and variants,
each a list of dotted overrides; the first variant is the baseline the others are compared with.
Each (variant, seed) trains into <out_dir>/<variant>/seed<k>/ unless its pipeline exists (an
interrupted run resumes from its latest checkpoint), is evaluated at NFE 1 with the suite of
scripts/evaluate.py (saved as eval_<data>.json there and reused while the pipeline and the settings
are unchanged), and <doc>.md gets one row per variant: the mean over seeds and each seed's value.
Processes with different --train-seeds can share an --out_dir; a last call with every seed only
reads their results and writes the report.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace

from t2i_drift.eval.ablation import load_plan, read_json, run_dir, training_overrides, write_report
from t2i_drift.eval.cli import add_eval_arguments, positive_int, settings_from_args
from t2i_drift.eval.frechet import EffNetLite0Embedder
from t2i_drift.eval.generation import load_for_eval, pipeline_resolution
from t2i_drift.eval.suites import evaluate_pipeline, make_suite
from t2i_drift.training.config import ConfigError, load_config
from t2i_drift.training.runs import train_t2i


def parse_args(argv: list[str]):
    """Arguments, the plan and every (variant, seed) config; all checks run before any training."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--plan", required=True, help="YAML ablation plan (config, data, variants)")
    parser.add_argument("--max_steps", type=positive_int, required=True, help="training steps per run")
    parser.add_argument(
        "--train-seeds", type=int, nargs="+", default=[0, 1], help="train.seed values (default 0 1)"
    )
    parser.add_argument("--out_dir", required=True, help="one folder per variant and seed under it")
    parser.add_argument("--doc", required=True, help="report path without extension: writes DOC.md")
    parser.add_argument("--variants", nargs="+", default=None, help="a subset of the plan's variants")
    add_eval_arguments(parser)
    args = parser.parse_args(argv)
    try:
        plan = load_plan(args.plan)
    except ValueError as err:
        parser.error(f"argument --plan: {err}")
    args.data = plan.data
    variants = args.variants or list(plan.variants)
    unknown = [v for v in variants if v not in plan.variants]
    if unknown:
        parser.error(f"argument --variants: {unknown} not in {args.plan} (has {list(plan.variants)})")
    settings = settings_from_args(parser, args)
    configs = {}
    for variant in variants:
        for seed in args.train_seeds:
            overrides = training_overrides(plan, variant, seed, args.out_dir, args.max_steps)
            if run_dir(args.out_dir, variant, seed).exists():  # an earlier attempt: continue it
                overrides.append("train.resume_from_checkpoint=latest")
            try:
                configs[variant, seed] = load_config(plan.config, overrides)
            except ConfigError as err:
                parser.error(f"{args.plan}: variants.{variant}: {err}")
    if plan.data == "shapes" and args.shapes_omit is None:
        # evaluate the captions the runs train on
        settings = replace(settings, shapes_omit=tuple(next(iter(configs.values())).data.shapes_omit))
    return args, plan, variants, configs, settings


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, plan, variants, configs, settings = parse_args(argv)
    results: dict[str, dict[int, dict]] = {v: {} for v in variants}
    walls: dict[str, list[float]] = {v: [] for v in variants}
    suite = None
    for k, ((variant, seed), cfg) in enumerate(configs.items(), 1):
        folder = run_dir(args.out_dir, variant, seed)
        tag = f"[{k}/{len(configs)}] {variant} seed {seed}:"
        index = folder / "pipeline" / "model_index.json"
        if not index.is_file():
            print(f"{tag} training {args.max_steps} steps into {folder}", flush=True)
            train_t2i(cfg)
        summary = read_json(folder / "run_summary.json") or {}
        if summary.get("steps") not in (None, args.max_steps):
            print(f"{tag} WARNING: that run trained {summary.get('steps')} steps, not {args.max_steps}")
        wall = summary.get("train_wall_s_total")  # every session of a resumed run
        walls[variant].append(float(wall if wall is not None else summary.get("train_wall_s", float("nan"))))
        path = folder / f"eval_{plan.data}.json"
        saved = read_json(path)
        if (
            saved
            and saved.get("settings") == settings.to_json()
            and path.stat().st_mtime >= index.stat().st_mtime
        ):
            results[variant][seed] = saved
            continue
        print(f"{tag} evaluating on {plan.data}", flush=True)
        pipe = load_for_eval(folder / "pipeline", args.device)
        if suite is None or suite.resolution != pipeline_resolution(pipe):
            suite = make_suite(
                plan.data, pipeline_resolution(pipe), settings, EffNetLite0Embedder().to(pipe.device)
            )
        results[variant][seed] = evaluate_pipeline(pipe, suite, [1], model=str(folder / "pipeline"))
        path.write_text(json.dumps(results[variant][seed], indent=2))
    command = "python scripts/ablate.py " + shlex.join(argv)
    md = write_report(args.doc, plan, results, walls, args.max_steps, command)
    print(md.read_text())
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
