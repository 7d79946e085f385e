"""Where a training step's time goes: per-phase wall time, samples/s and peak memory.

Two kinds of setting, both through the trainer's own step (training/loop.py ``optimizer_step``):

- ``--config RECIPE`` (with overrides): the recipe's real data, text encoder and feature encoders.
- ``--synthetic``: real-scale shapes without data (training/synthetic.py): random latents and
  text embeddings, a randomly initialized generator and latent MAE. ``--sweep`` varies one
  dimension (prompts B, samples per prompt G, output size = number of feature locations, ...);
  ``section.key=value`` overrides apply here too (e.g. ``drift.memory_budget_mb=8192``).

For each setting: ``--warmup`` untimed steps, ``--steps`` steps without phase timing (the step
time and samples/s reported), then ``--steps`` with phase timing (device syncs at every phase
boundary; the overhead is printed as a ratio). The baseline in the same process is the
generator alone: ``step / generator`` is what drifting costs per step over plain supervised
training of the same generator (forward + backward + optimizer + EMA).

    python scripts/bench_train.py --config recipes/shapes_32px.yaml        # the CPU default recipe
    python scripts/bench_train.py --config recipes/shapes_32px_mae.yaml \
        --variant features.channels_last=true --variant features.compile=true   # speed-ups, as ratios
    python scripts/bench_train.py --synthetic --preset XS --mae-width 32 \\
        --sweep prompts=4,8,16,32 --plot docs/bench_scaling.png             # drift share vs B
    python scripts/bench_train.py --synthetic --mixed-precision bf16 --prompts 32 --samples 8  # B/2, GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from t2i_drift.training.step_timer import StepTimer  # noqa: E402

PHASES = (
    "data",
    "text and positives",
    "generator forward",
    "features forward",
    "drift field",
    "features backward",
    "generator backward",
    "optimizer",
    "ema",
)
GENERATOR_PHASES = ("generator forward", "generator backward", "optimizer", "ema")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    from t2i_drift.training.loop import peak_memory_mb

    return peak_memory_mb()


def _config_run(config: str | None, overrides: list[str]) -> tuple[Any, Any]:
    """(run, next batch function) for a recipe, writing into a temporary output folder."""
    from t2i_drift.training.config import load_config
    from t2i_drift.training.loop import micro_batches, setup
    from t2i_drift.training.objectives import TEXT_TO_IMAGE_OBJECTIVES

    out = tempfile.mkdtemp(prefix="bench_train_")
    cfg = load_config(config, [*overrides, f"train.output_dir={out}", "train.report_to=[]"])
    run = setup(cfg, TEXT_TO_IMAGE_OBJECTIVES[cfg.objective.name](cfg))
    stream = micro_batches(run)
    return run, lambda: next(stream)


def _synthetic_run(setting: Any) -> tuple[Any, Any]:
    from t2i_drift.training.synthetic import synthetic_run

    run, batch = synthetic_run(setting)
    return run, lambda: batch


def measure(run: Any, next_batch: Any, steps: int, warmup: int) -> dict[str, Any]:
    """Time ``steps`` plain steps, then ``steps`` phase-timed steps, after ``warmup`` steps."""
    from t2i_drift.training.loop import optimizer_step

    device = run.accelerator.device
    accumulation = run.cfg.train.gradient_accumulation_steps

    def one_step() -> None:
        with timer("data"):
            batches = [next_batch() for _ in range(accumulation)]
        optimizer_step(run, batches)

    timer = StepTimer(enabled=False, device=device)
    run.objective.timer = timer
    for _ in range(warmup):
        one_step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    _sync(device)
    step_s = (time.perf_counter() - start) / steps
    timer.enabled = True
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    timed_step_s = (time.perf_counter() - start) / steps
    phases = {name: timer.seconds.get(name, 0.0) / steps for name in PHASES}
    total = sum(phases.values())
    samples = run.objective.samples_per_step * accumulation
    generator = sum(phases[name] for name in GENERATOR_PHASES)
    drift = phases["drift field"]
    return {
        "step_ms": 1000 * step_s,
        "samples_per_s": samples / step_s,
        "peak_memory_mb": _peak_memory_mb(device),
        "phases_ms": {name: 1000 * value for name, value in phases.items()},
        "share": {name: value / total for name, value in phases.items()},
        "drift_share": drift / total,
        "features_share": (phases["features forward"] + phases["features backward"]) / total,
        "step_over_generator": total / generator if generator else float("nan"),
        "timing_overhead": timed_step_s / step_s,
        "samples_per_step": samples,
        "device": str(device),
        "mixed_precision": run.accelerator.mixed_precision,
    }


def print_result(label: str, r: dict[str, Any]) -> None:
    print(f"\n## {label}")
    print(f"{'phase':<22}{'ms/step':>10}{'share':>8}")
    for name in PHASES:
        print(f"{name:<22}{r['phases_ms'][name]:>10.1f}{100 * r['share'][name]:>7.1f}%")
    print(
        f"step {r['step_ms']:.1f} ms untimed ({r['samples_per_s']:.1f} samples/s, {r['samples_per_step']} "
        f"per step), timing overhead x{r['timing_overhead']:.2f}; peak memory {r['peak_memory_mb']:.0f} MiB"
    )
    print(
        f"drift field {100 * r['drift_share']:.1f}% of the step, feature encoders "
        f"{100 * r['features_share']:.1f}%; step / generator alone = x{r['step_over_generator']:.2f}"
    )


def _nested(overrides: list[str]) -> dict[str, dict[str, Any]]:
    """``section.key=value`` overrides (values parsed as YAML) as nested dicts."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if not name:
            raise SystemExit(f"override {item!r}: use section.key=value")
        out.setdefault(section, {})[name] = yaml.safe_load(value)
    return out


def _parse_sweep(values: list[str]) -> tuple[str, list[int]] | None:
    if not values:
        return None
    if len(values) > 1:
        raise SystemExit("--sweep: give one dimension (e.g. --sweep prompts=4,8,16)")
    name, _, numbers = values[0].partition("=")
    if name not in ("prompts", "samples", "size", "mae_width"):
        raise SystemExit(f"--sweep {values[0]!r}: the dimension must be prompts, samples, size or mae_width")
    try:
        return name, [int(v) for v in numbers.split(",")]
    except ValueError:
        raise SystemExit(f"--sweep {values[0]!r}: values must be integers, e.g. prompts=4,8,16") from None


def plot(results: list[dict[str, Any]], dimension: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["setting"][dimension] for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    bottom = [0.0] * len(xs)
    for name in PHASES:
        values = [r["phases_ms"][name] for r in results]
        if max(values) == 0:
            continue
        left.bar([str(x) for x in xs], values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    left.set_xlabel(dimension)
    left.set_ylabel("ms per step (phase-timed)")
    left.legend(fontsize=7)
    right.plot(xs, [100 * r["drift_share"] for r in results], "o-", label="drift field")
    right.plot(xs, [100 * r["features_share"] for r in results], "s-", label="feature encoders")
    right.set_xscale("log", base=2)
    right.set_xlabel(dimension)
    right.set_ylabel("% of the step")
    right.axhline(10, color="grey", linestyle=":", linewidth=1)
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="a recipe (real data and encoders); none: the built-in default")
    parser.add_argument("--synthetic", action="store_true", help="random inputs at the shapes below")
    parser.add_argument("--preset", default="B", help="synthetic: generator preset")
    parser.add_argument("--patch-size", type=int, default=2)
    parser.add_argument("--channels", type=int, default=4, help="synthetic: 4 = SD-VAE latents, 3 = pixels")
    parser.add_argument("--size", type=int, default=32, help="synthetic: output side (32 = 256 px latents)")
    parser.add_argument("--text", default="clip-l", help="synthetic: clip-l or t5-xxl+clip-l")
    parser.add_argument("--prompts", type=int, default=32, help="synthetic: B prompts per step")
    parser.add_argument("--samples", type=int, default=8, help="synthetic: G samples per prompt")
    parser.add_argument(
        "--mae-width", type=int, default=256, help="synthetic: latent MAE width (0: raw key only)"
    )
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--sweep", action="append", default=[], help="synthetic: DIM=V1,V2,... (one dimension)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="with --config: also measure the recipe with these overrides (space-separated), reported "
        "as a ratio to the base setting; repeatable",
    )
    parser.add_argument("--steps", type=int, default=10, help="steps measured (twice: plain, then timed)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--plot", type=Path, help="with --sweep: stacked phases and shares, PNG")
    args, overrides = parser.parse_known_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    bad = [o for o in overrides if "=" not in o or o.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (overrides are section.key=value)")
    sweep = _parse_sweep(args.sweep)
    if sweep is not None and not args.synthetic:
        parser.error("--sweep needs --synthetic")
    if args.plot is not None and sweep is None:
        parser.error("--plot needs --sweep")
    if args.variant and args.synthetic:
        parser.error("--variant needs --config (for --synthetic use --sweep)")

    results = []
    if args.synthetic:
        from t2i_drift.training.synthetic import TEXT_ENCODERS, SyntheticSetting

        if args.text not in TEXT_ENCODERS:
            parser.error(f"--text {args.text!r}: choose one of {sorted(TEXT_ENCODERS)}")
        base = SyntheticSetting(
            preset=args.preset,
            patch_size=args.patch_size,
            channels=args.channels,
            size=args.size,
            text=args.text,
            prompts=args.prompts,
            samples_per_prompt=args.samples,
            mae_width=args.mae_width or None,
            mixed_precision=args.mixed_precision,
            gradient_checkpointing=args.gradient_checkpointing,
            overrides=_nested(overrides),
        )
        fields = {
            "prompts": "prompts",
            "samples": "samples_per_prompt",
            "size": "size",
            "mae_width": "mae_width",
        }
        settings = [base] if sweep is None else [replace(base, **{fields[sweep[0]]: v}) for v in sweep[1]]
        for setting in settings:
            run, next_batch = _synthetic_run(setting)
            r = measure(run, next_batch, args.steps, args.warmup)
            r["setting"] = {
                "preset": setting.preset,
                "patch_size": setting.patch_size,
                "channels": setting.channels,
                "size": setting.size,
                "text": setting.text,
                "prompts": setting.prompts,
                "samples": setting.samples_per_prompt,
                "mae_width": setting.mae_width,
                "overrides": overrides,
            }
            label = ", ".join(f"{k}={v}" for k, v in r["setting"].items())
            print_result(f"synthetic: {label}", r)
            results.append(r)
            del run
    else:
        for variant in [[], *(v.split() for v in args.variant)]:
            run, next_batch = _config_run(args.config, [*overrides, *variant])
            r = measure(run, next_batch, args.steps, args.warmup)
            r["setting"] = {"config": args.config or "built-in default", "overrides": [*overrides, *variant]}
            if variant:
                r["step_ratio_to_base"] = r["step_ms"] / results[0]["step_ms"]
            print_result(f"{args.config or 'built-in default'} {' '.join([*overrides, *variant])}", r)
            if variant:
                print(f"step time x{r['step_ratio_to_base']:.2f} of the base setting's (same process)")
            results.append(r)
            del run
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(f"results: {args.out}")
    if args.plot is not None and sweep is not None:
        plot(results, sweep[0], args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
