#!/usr/bin/env python
"""Plot a run's logged statistics (``<run>/logs/metrics.jsonl``) as a PNG of curves.

    python scripts/plot_metrics.py --run outputs/shapes --out outputs/shapes/curves.png \\
        [--keys loss grad_norm lr]

Default panels: loss, learning rate, gradient norm, and for drifting runs the raw squared field
V^2 summed over every feature key and temperature (the quantity that falls as samples reach the
data; the normalized loss stays near its target by design) and the mean spread of the keys.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display
import matplotlib.pyplot as plt  # noqa: E402


def derived_series(lines: list[dict]) -> dict[str, list[float]]:
    """``V2 (sum)`` and ``spread (mean)`` of each logged line, when it has drift statistics."""
    out: dict[str, list[float]] = {}
    for line in lines:
        v2 = [v for k, v in line.items() if "/v2/" in k]
        spread = [v for k, v in line.items() if k.endswith("/spread")]
        if v2:
            out.setdefault("V2 (sum over keys and temperatures)", []).append(sum(v2))
        if spread:
            out.setdefault("spread (mean over keys)", []).append(sum(spread) / len(spread))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="a training output folder (train.output_dir)")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--keys", nargs="+", default=None, help="metrics.jsonl keys to plot instead")
    args = parser.parse_args(argv)
    path = Path(args.run) / "logs" / "metrics.jsonl"
    if not path.is_file():
        parser.error(f"argument --run: {path} does not exist (is {args.run!r} a training output folder?)")
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        parser.error(f"argument --run: {path} has no logged lines yet")
    steps = [line["step"] for line in lines]
    if args.keys:
        missing = [k for k in args.keys if k not in lines[-1]]
        if missing:
            parser.error(f"argument --keys: {missing} are not in {path} (it has {sorted(lines[-1])})")
        series = {k: [line.get(k, float("nan")) for line in lines] for k in args.keys}
    else:
        series = {
            k: [line.get(k, float("nan")) for line in lines]
            for k in ("loss", "lr", "grad_norm")
            if k in lines[-1]
        }
        series.update(derived_series(lines))
    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3.2), squeeze=False)
    for ax, (name, values) in zip(axes[0], series.items(), strict=True):
        ax.plot(steps, values)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        if name.startswith(("V2", "grad_norm")) and all(v > 0 for v in values):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.suptitle(str(args.run), fontsize=9)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
