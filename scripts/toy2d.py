#!/usr/bin/env python
"""The paper's 2-D toys with t2i_drift's field: Figure 3 and the official notebook cases.

Figure 3: a bimodal target (modes at x = -2 and +2, std 0.3), the generator initialized between
the modes, far away, or collapsed onto the left mode; 512 samples per step, raw field. Notebook:
Swiss roll and checkerboard, 2048 samples, tau 0.05, Adam 1e-3, 2000 steps. Prints, per run, the
energy distance to the target, the left-mode mass (bimodal) and the raw mean V^2 (the notebook's
loss value), and writes density snapshots as PNG panels.

    python scripts/toy2d.py                      # both experiments, writes docs/toy2d_*.png
    python scripts/toy2d.py --experiment figure3 --affinity-floor 0 --steps 2000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from t2i_drift.eval.toy2d import render_density, sample_target, tile, train_toy


def snapshot_steps(steps: int) -> tuple[int, ...]:
    return tuple(sorted({0, steps // 8, steps // 4, steps // 2, steps}))


def run_experiment(name, cases, args, out_path: Path) -> list[str]:
    rows, panels = [], []
    for target, init, tau, batch in cases:
        snaps = snapshot_steps(args.steps if name == "figure3" else args.notebook_steps)
        steps = snaps[-1]
        run = train_toy(
            target,
            init,
            steps=steps,
            batch=batch,
            temperature=tau,
            lr=args.lr,
            affinity_floor=args.affinity_floor,
            seed=args.seed,
            log_every=max(1, steps // 20),
            snapshot_steps=snaps,
            progress=True,
        )
        left = f"{run.left[-1]:.2f} / {1 - run.left[-1]:.2f}" if target == "bimodal" else "-"
        v2_tail = sum(run.v2[-5:]) / len(run.v2[-5:]) / 2  # per element: the notebook's loss
        row = (
            f"| {target} | {init} | {tau:g} | {batch} | {steps} | {run.energy[0]:.3f} | {run.energy[-1]:.4f} "
            f"| {left} | {v2_tail:.1e} |"
        )
        print(row, flush=True)
        rows.append(row)
        reference = sample_target(target, 4096, torch.Generator().manual_seed(123))
        extent = 8.0 if init == "far" else 4.0
        panels.append(
            [
                render_density(
                    run.snapshots[s], extent=extent, title=f"{target}/{init} step {s}", reference=reference
                )
                for s in snaps
            ]
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tile(panels).save(out_path)
    print(f"wrote {out_path}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", choices=["figure3", "notebook", "all"], default="all")
    parser.add_argument("--steps", type=int, default=2000, help="steps of the Figure 3 runs")
    parser.add_argument("--notebook-steps", type=int, default=2000)
    parser.add_argument("--figure3-temperature", type=float, default=0.2)
    parser.add_argument("--affinity-floor", type=float, default=0.0, help="section 2 floor (official: 1e-6)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="docs")
    args = parser.parse_args(argv)

    columns = ["target", "init", "tau", "samples", "steps", "energy dist. start", "end", "left / right mass"]
    header = "| " + " | ".join([*columns, "mean V^2 end"]) + " |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    out = Path(args.out_dir)
    if args.experiment in ("figure3", "all"):
        tau = args.figure3_temperature
        cases = [("bimodal", init, tau, 512) for init in ("between", "far", "collapsed")]
        run_experiment("figure3", cases, args, out / "toy2d_figure3.png")
    if args.experiment in ("notebook", "all"):
        cases = [(target, "default", 0.05, 2048) for target in ("swiss_roll", "checkerboard")]
        run_experiment("notebook", cases, args, out / "toy2d_notebook.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
