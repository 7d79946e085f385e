#!/usr/bin/env python
"""Does a feature space pull pixels toward the paired image? A free-pixel probe.

For 16 real images (32x32; OpenMoji, or the shapes set with ``--data shapes``), optimize free
pixel tensors (G per image, no generator) with Adam for N steps under a loss built from one
feature space, and print the pixel MSE to the paired image ("own") and to another image
("other", the baseline a useless loss stays near), and how hard the loss pushes the pixels at
the start (grad0: RMS of its gradient). Losses:
    drift:   the t2i drifting loss (docs/method.md sections 3 and 7: group = image, one positive)
    feat-mse: plain feature matching, sum over keys of mean((f(x) - f(y))^2) / var(f(y))

    python scripts/bench_feature_identity.py [--steps 200] [--spaces raw effnet32 effnet128]
    python scripts/bench_feature_identity.py --data shapes --mae outputs/mae_shapes/mae \
        --spaces raw effnet32 mae mae+raw

A space whose own-MSE does not fall well below other-MSE cannot, by itself, teach a generator the
caption -> image mapping; docs/results.md reports the numbers.
"""

import argparse
import sys

import torch

from t2i_drift.data import OpenMojiDataset, ShapesDataset
from t2i_drift.drifting import DriftOptions, text_to_image_drift_loss
from t2i_drift.models import EfficientNetLite0Features, MAEFeatures, MultiFeatureEncoder, RawFeatures

SPACES = {
    "raw": lambda mae: RawFeatures(),
    "effnet32": lambda mae: EfficientNetLite0Features(blocks=(0, 2, 4, 10), input_size=32),
    "effnet128": lambda mae: EfficientNetLite0Features(blocks=(4, 10), input_size=128),
    "mae": lambda mae: MAEFeatures(mae),
    "mae+raw": lambda mae: MultiFeatureEncoder({"mae": MAEFeatures(mae), "raw": RawFeatures()}),
}


def probe(
    space: str, loss_kind: str, steps: int, samples: int, lr: float, data_name: str = "openmoji", mae=None
) -> tuple[list[tuple[int, float, float]], float]:
    torch.manual_seed(0)
    if data_name == "shapes":
        data = ShapesDataset("train", resolution=32, renders_per_scene=1)
    else:
        data = OpenMojiDataset("train", resolution=32, max_samples=400)
    idx = torch.randperm(len(data))[:16]
    real = torch.stack([data[int(i)]["pixel_values"] for i in idx])  # [16, 3, 32, 32]
    encoder = SPACES[space](mae)
    x = (0.01 * torch.randn(16 * samples, 3, 32, 32)).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    with torch.no_grad():
        real_feats = encoder(real)
    rows = []
    for step in range(steps + 1):
        feats = encoder(x)
        if loss_kind == "drift":
            options = DriftOptions()
            loss, _ = text_to_image_drift_loss(feats, real_feats, samples, torch.ones(16), idx, options)
        else:
            loss = sum(
                ((feats[k].view(16, samples, *feats[k].shape[1:]) - real_feats[k][:, None]) ** 2).mean()
                / (real_feats[k].var() + 1e-6)
                for k in feats
            )
        if step % max(1, steps // 4) == 0:
            xs = x.detach().view(16, samples, 3, 32, 32)
            own = (xs - real[:, None]).pow(2).mean().item()
            other = (xs - real.roll(1, 0)[:, None]).pow(2).mean().item()
            rows.append((step, own, other))
        opt.zero_grad()
        loss.backward()
        if step == 0:  # how hard this space pushes the pixels at the start (RMS of d loss / d x)
            grad0 = x.grad.pow(2).mean().sqrt().item()
        opt.step()
    return rows, grad0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--samples", type=int, default=4, help="free samples per image (G)")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--spaces", nargs="+", default=["raw", "effnet32", "effnet128"], choices=list(SPACES))
    parser.add_argument("--data", choices=["openmoji", "shapes"], default="openmoji")
    parser.add_argument("--mae", default=None, help="a trained ResNetMAE folder (spaces mae, mae+raw)")
    args = parser.parse_args(argv)
    if any(s.startswith("mae") for s in args.spaces) and args.mae is None:
        parser.error("--spaces mae / mae+raw need --mae FOLDER (scripts/train_mae.py output)")
    print(
        f"{'space':<10} {'loss':<9} "
        + " ".join(f"{'step':>5} {'own':>6} {'other':>6} |" for _ in range(5))
        + " grad0 (RMS of d loss/d pixels at step 0)"
    )
    for space in args.spaces:
        for kind in ("drift", "feat-mse"):
            rows, grad0 = probe(space, kind, args.steps, args.samples, args.lr, args.data, args.mae)
            print(
                f"{space:<10} {kind:<9} "
                + " ".join(f"{s:>5} {o:6.3f} {w:6.3f} |" for s, o, w in rows)
                + f" {grad0:9.2e}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
