#!/usr/bin/env python
"""Linear probes of frozen encoders on the built-in shapes set (t2i_drift/eval/linear_probe.py).

    python scripts/probe_encoder.py --mae outputs/mae_shapes/mae [--mae OTHER ...] [--random-width 32]
        [--renders 4] [--json probe.json] [--device cuda]

For each encoder it fits a logistic regression on the global-mean-pooled stage outputs (each
stage alone and all concatenated) of the one-object training scenes' renders (140 scenes), to
predict the object's shape (3 classes, chance 33%) and colour (6, chance 17%), and reports the
accuracy on

    train renders   the same scenes rendered with another jitter seed (in distribution)
    held-out        the 40 one-object held-out scenes, whose colour-shape pair no training scene has

The raw pixels (flattened) are always probed as the baseline; ``--random-width W`` adds an
untrained MAE of width W (what the architecture gives without training). The first column says
whether the features carry shape at all; the held-out one whether shape is readable apart from
colour: each training colour comes with only some shapes, so a read-out that takes colour as the
cue fails there (every encoder measured so far does, docs/results.md "Wider MAEs on a GPU").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from t2i_drift.data.shapes import COLOURS, SHAPES, ShapesDataset
from t2i_drift.eval.linear_probe import accuracy, fit_linear_probe, pooled_maps
from t2i_drift.models.mae_resnet import ResNetMAE

TARGETS = {"shape": len(SHAPES), "colour": len(COLOURS)}


def _split(split: str, renders: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Images [N, 3, 32, 32] in [-1, 1] of a split's one-object scenes, and their labels."""
    data = ShapesDataset(split, resolution=32, renders_per_scene=renders, seed=seed)
    # One object only: in a two-object scene a pooled feature cannot say which object is "first".
    keep = [i for i, scene in enumerate(data.scenes) if len(scene.objects) == 1]
    labels = {
        "shape": torch.tensor([SHAPES.index(data.scenes[i].objects[0].shape) for i in keep]),
        "colour": torch.tensor([list(COLOURS).index(data.scenes[i].objects[0].colour) for i in keep]),
    }
    return torch.stack([data[i]["pixel_values"] for i in keep]), labels


def _load_mae(path: str) -> ResNetMAE:
    folder = Path(path)
    if not (folder / "config.json").is_file() and (folder / "mae" / "config.json").is_file():
        folder = folder / "mae"  # an MAE run's output folder
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"--mae {path}: no ResNetMAE (config.json) there or in its mae/ subfolder")
    return ResNetMAE.from_pretrained(str(folder))


def probe_rows(
    name: str, feats: dict[str, dict[str, torch.Tensor]], labels: dict[str, dict[str, torch.Tensor]]
) -> list[dict]:
    """One row per (feature set, target). feats: split -> feature set -> [N, D]."""
    rows = []
    for fset in feats["train"]:
        for target, k in TARGETS.items():
            probe = fit_linear_probe(feats["train"][fset], labels["train"][target], k)
            rows.append(
                {
                    "encoder": name,
                    "features": fset,
                    "dim": int(feats["train"][fset].shape[1]),
                    "target": target,
                    "train_fit": accuracy(probe, feats["train"][fset], labels["train"][target]),
                    "train_renders": accuracy(probe, feats["renders"][fset], labels["renders"][target]),
                    "heldout": accuracy(probe, feats["heldout"][fset], labels["heldout"][target]),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mae", action="append", default=[], help="a trained ResNetMAE folder (repeatable)")
    parser.add_argument("--random-width", type=int, action="append", default=[], help="untrained MAE width")
    parser.add_argument("--renders", type=int, default=4, help="jittered renders per training scene")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = parser.parse_args(argv)
    if args.renders < 1:
        parser.error(f"argument --renders: must be >= 1, got {args.renders}")
    bad = [w for w in args.random_width if w < 8 or w % 8]
    if bad:
        parser.error(f"argument --random-width: must be a positive multiple of 8, got {bad}")
    try:
        maes = [(path, _load_mae(path)) for path in args.mae]
    except (FileNotFoundError, OSError, ValueError) as err:
        parser.error(str(err))
    for width in args.random_width:
        torch.manual_seed(0)
        maes.append(
            (f"untrained width {width}", ResNetMAE(width=width, stem_patch_size=2, norm_num_groups=8))
        )
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    splits = {
        "train": _split("train", args.renders, seed=0),
        "renders": _split("train", 1, seed=1),
        "heldout": _split("heldout", 1, seed=0),
    }
    labels = {s: lab for s, (_, lab) in splits.items()}
    rows = probe_rows("pixels", {s: {"flat": img.flatten(1)} for s, (img, _) in splits.items()}, labels)
    for name, mae in maes:
        mae = mae.to(device).eval()
        feats = {s: pooled_maps(mae, img) for s, (img, _) in splits.items()}
        rows += probe_rows(name, feats, labels)

    print(
        f"{'encoder':<40} {'features':<8} {'dim':>5} {'target':<7} {'fit':>6} {'renders':>8} {'held-out':>9}"
    )
    for r in rows:
        print(
            f"{r['encoder'][-40:]:<40} {r['features']:<8} {r['dim']:>5} {r['target']:<7} "
            f"{100 * r['train_fit']:5.1f}% {100 * r['train_renders']:7.1f}% {100 * r['heldout']:8.1f}%"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
