#!/usr/bin/env python
"""The free-pixel identity probe (t2i_drift/eval/identity_probe.py): does a feature space pull
samples toward their own image? Run it on any feature space before training with it.

A recipe's feature space, exactly as training builds it (its data, its VAE for latent runs, its
drift temperatures, self-masking and affinity floor):

    python scripts/bench_feature_identity.py --config recipes/shapes_32px_mae.yaml [key=value ...]

or named spaces on 32 px images of a built-in set:

    python scripts/bench_feature_identity.py [--data shapes] [--spaces raw effnet32 effnet128]
    python scripts/bench_feature_identity.py --data shapes --mae outputs/mae_shapes/mae --spaces mae mae+raw

For each space and loss (drift, feat-mse, feat-log-mse) it prints the mean squared distance of the
free samples to their own image and to another image at 5 steps, the RMS of the loss's gradient at
the start (how hard the space pushes), and PASS when the own distance ends at most half the other
one and at most half where it started. ``--require-pass`` exits 1 when a drift row fails (a check to
run before a long training run). A drift row that tracks its feat-log-mse row is, in that space,
the regression the single-positive field reduces to (docs/method.md section 7). ``--field-norm
encoder`` (named spaces) lets an encoder's keys share the field normalization, as the recipes'
``drift.field_norm`` does (docs/method.md section 3). ``--shift 2`` (named spaces) translates the
encoders' input by one random offset per step, as the recipes' ``features.random_shift`` does.
``--two-positives`` gives every image's samples a second, different positive (what a generator
faces while it cannot yet tell similar captions apart) and reports whether they end at the pixel
mean of the two, at one of them, or elsewhere; ``--grid out.png`` shows the samples.
``--contrast 0.5`` runs no probe: it prints, per space, how far each image at half its contrast is
from the image, relative to another image, over the keys (median, max, which keys see it at all).
An MAE with GroupNorm after its stem sees contrast only through its input-RMS key.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from t2i_drift.data import OpenMojiDataset, ShapesDataset
from t2i_drift.drifting import DriftOptions
from t2i_drift.drifting.feature_sets import FIELD_NORM_SCOPES, FieldNormScope
from t2i_drift.eval.identity_probe import (
    PASS_RATIO,
    PROBE_LOSSES,
    PROBE_OPTIMIZERS,
    contrast_blindness,
    identity_probe,
)
from t2i_drift.models import EfficientNetLite0Features, MAEFeatures, MultiFeatureEncoder, RawFeatures
from t2i_drift.models.shifted_encoder import ShiftedEncoder, set_shift
from t2i_drift.models.vae import encode_latents, load_vae
from t2i_drift.training.builders import build_feature_encoder, build_in_memory_dataset
from t2i_drift.training.config import ConfigError, load_config

SPACES = {
    "raw": lambda mae: RawFeatures(),
    "effnet32": lambda mae: EfficientNetLite0Features(blocks=(0, 2, 4, 10), input_size=32),
    "effnet128": lambda mae: EfficientNetLite0Features(blocks=(4, 10), input_size=128),
    "mae": lambda mae: MAEFeatures(mae),
    "mae+raw": lambda mae: MultiFeatureEncoder({"mae": MAEFeatures(mae), "raw": RawFeatures()}),
}


def _pick(dataset, count: int, seed: int) -> torch.Tensor:
    """[count, 3, R, R] images of ``dataset`` chosen with ``seed``."""
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
    return torch.stack([dataset[int(i)]["pixel_values"] for i in idx])


Spaces = list[tuple[str, torch.nn.Module, torch.Tensor]]


def _shifted(encoder: torch.nn.Module) -> torch.nn.Module:
    """``encoder`` with every part but the raw key behind a ShiftedEncoder (features.random_shift)."""
    if isinstance(encoder, MultiFeatureEncoder):
        for name, part in encoder.encoders.items():
            encoder.encoders[name] = _shifted(part)
        return encoder
    return encoder if isinstance(encoder, RawFeatures) else ShiftedEncoder(encoder)


def _two_positive_distances(samples: torch.Tensor, real: torch.Tensor, other: torch.Tensor) -> str:
    """Where samples [N, G, C, H, W] with two positives (real [N, C, H, W], other) ended: their mean
    squared distance to the pixel mean of the two, and to the nearer of the two."""
    to_mean = (samples - (0.5 * (real + other))[:, None]).pow(2).mean().item()
    own = (samples - real[:, None]).pow(2).mean((2, 3, 4))
    nearer = torch.minimum(own, (samples - other[:, None]).pow(2).mean((2, 3, 4))).mean().item()
    return f"to their mean {to_mean:.4f}, to the nearer {nearer:.4f}"


def _recipe_space(args, parser) -> tuple[Spaces, DriftOptions, FieldNormScope, int]:
    """The recipe's feature encoder, real samples in its generator's output space, its drift's
    field options (temperatures, self-masking), field normalization scope and input shift."""
    try:
        cfg = load_config(args.config, args.overrides)
        dataset = build_in_memory_dataset(cfg.data, cfg.train.seed)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        parser.error(f"argument --config: {err}")
    real = _pick(dataset, args.images, args.seed)
    vae = None
    if cfg.model.vae is not None:
        vae = load_vae(cfg.model.vae, cfg.model.vae_subfolder)
        with torch.no_grad():
            real = encode_latents(vae, real)  # free samples live where the generator's outputs do
    encoder = build_feature_encoder(cfg.features, cfg.data.resolution, vae).eval()
    options = DriftOptions(
        temperatures=tuple(cfg.drift.temperatures),
        mask_self=cfg.drift.mask_self,
        affinity_floor=cfg.drift.affinity_floor,
    )
    return [(Path(args.config).stem, encoder, real)], options, cfg.drift.field_norm, cfg.features.random_shift


def _named_spaces(args, parser) -> tuple[Spaces, DriftOptions, FieldNormScope, int]:
    if any(s.startswith("mae") for s in args.spaces) and args.mae is None:
        parser.error("--spaces mae / mae+raw need --mae FOLDER (scripts/train_mae.py output)")
    mae = None
    if args.mae is not None:
        from t2i_drift.models.mae_resnet import ResNetMAE

        mae = ResNetMAE.from_pretrained(args.mae)
    if args.data == "shapes":
        dataset = ShapesDataset("train", resolution=32, renders_per_scene=1)
    else:
        dataset = OpenMojiDataset("train", resolution=32, max_samples=400)
    real = _pick(dataset, args.images, args.seed)
    options = DriftOptions(mask_self=not args.keep_self)
    spaces = [(name, SPACES[name](mae).eval(), real) for name in args.spaces]
    if args.shift:
        spaces = [(name, _shifted(encoder), real) for name, encoder, real in spaces]
    return spaces, options, args.field_norm, args.shift


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None, help="probe this recipe's feature space (features.*)")
    parser.add_argument(
        "overrides", nargs="*", help="section.key=value overrides of --config (put them before --losses)"
    )
    parser.add_argument("--spaces", nargs="+", default=["raw", "effnet32", "effnet128"], choices=list(SPACES))
    parser.add_argument("--data", choices=["openmoji", "shapes"], default="openmoji", help="for --spaces")
    parser.add_argument("--mae", default=None, help="a trained ResNetMAE folder (spaces mae, mae+raw)")
    parser.add_argument(
        "--keep-self", action="store_true", help="for --spaces: samples stay among their own negatives"
    )
    parser.add_argument(
        "--field-norm",
        choices=list(FIELD_NORM_SCOPES),
        default="key",
        help="for --spaces: which keys share the field normalization (drift.field_norm)",
    )
    parser.add_argument(
        "--shift",
        type=int,
        default=0,
        help="for --spaces: random input shift of the encoders but raw (features.random_shift); "
        "the raw space is probed unshifted",
    )
    parser.add_argument(
        "--optimizer",
        choices=list(PROBE_OPTIMIZERS),
        default="adam",
        help="adam (per-pixel steps) or normalized-gd (the loss's direction at a fixed step length)",
    )
    parser.add_argument(
        "--two-positives",
        action="store_true",
        help="give each image's samples the other image as a second positive: prints how far they end "
        "from the mean of the two and from the nearer one (own / other are then both positives)",
    )
    parser.add_argument(
        "--grid", default=None, help="for --spaces: save a PNG of the images and each row's first samples"
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--samples", type=int, default=4, help="free samples per image (G)")
    parser.add_argument("--images", type=int, default=16, help="real images probed")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0, help="picks the images and the start")
    parser.add_argument(
        "--contrast",
        type=float,
        default=None,
        help="instead of the probe: per space, how far the images at this factor of their contrast "
        "are from them, relative to another image, per key (median, max; 0: blind to contrast)",
    )
    parser.add_argument("--losses", nargs="+", default=["drift", "feat-mse"], choices=list(PROBE_LOSSES))
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--require-pass", action="store_true", help="exit 1 when a drift row fails")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = parser.parse_args(argv)
    if args.overrides and args.config is None:
        parser.error(f"overrides {args.overrides} need --config")
    if args.keep_self and args.config:
        parser.error("--keep-self is for --spaces; with --config set drift.mask_self=false instead")
    if args.field_norm != "key" and args.config:
        parser.error("--field-norm is for --spaces; with --config set drift.field_norm instead")
    if args.shift and args.config:
        parser.error("--shift is for --spaces; with --config set features.random_shift instead")
    if args.shift < 0:
        parser.error("--shift must be >= 0")
    if args.two_positives and args.require_pass:
        parser.error("--require-pass judges one positive per image; drop --two-positives")
    if args.grid and args.config:
        parser.error("--grid is for --spaces (pixel samples)")
    if args.steps < 1 or args.samples < 2 or args.images < 2:
        parser.error("need --steps >= 1, --samples >= 2 and --images >= 2")
    spaces, options, field_norm, shift = (
        _recipe_space(args, parser) if args.config else _named_spaces(args, parser)
    )
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.contrast is not None:
        for name, encoder, real in spaces:
            ratios = contrast_blindness(encoder.to(device), real.to(device), args.contrast)
            values = torch.tensor(list(ratios.values()))
            above = sorted(k for k, v in ratios.items() if v > 0.01)
            names = f" ({', '.join(above)})" if 0 < len(above) <= 4 else ""
            print(
                f"{name:<22} contrast x{args.contrast}: distance / other image, over {len(ratios)} keys: "
                f"median {values.median():.3f}, max {values.max():.3f}; {len(above)} keys above 0.01{names}"
            )
        return 0
    print(
        f"{'space':<22} {'loss':<12} "
        + " ".join(f"{'step':>5} {'own':>6} {'other':>6} |" for _ in range(5))
        + f"    grad0  verdict (at the end own <= {PASS_RATIO} x other and <= {PASS_RATIO} x own at 0)"
    )
    report, failed, grid = [], False, []
    for name, encoder, real in spaces:
        other = real.roll(1, 0)  # the probe's "other" image of each image
        extra = other[:, None].to(device) if args.two_positives else None
        if not grid:
            grid += [real[:8], other[:8]]
        for loss in args.losses:
            result = identity_probe(
                encoder.to(device),
                real.to(device),
                loss,
                args.steps,
                args.samples,
                args.lr,
                args.seed,
                options=options,
                field_norm=field_norm,
                shift=shift if set_shift(encoder, (0, 0)) else 0,  # the raw space has nothing to shift
                optimizer=args.optimizer,
                extra_positives=extra,
            )
            verdict = "PASS" if result.passed else "FAIL"
            failed |= loss == "drift" and not result.passed
            grid.append(result.samples[:8, 0])
            if args.two_positives:
                verdict = _two_positive_distances(result.samples, real.cpu(), other.cpu())
            print(
                f"{name:<22} {loss:<12} "
                + " ".join(f"{s:>5} {o:6.3f} {w:6.3f} |" for s, o, w in result.rows)
                + f" {result.grad0:8.2e}  {verdict}",
                flush=True,
            )
            report.append(
                {
                    "space": name,
                    "loss": loss,
                    "rows": result.rows,
                    "grad0": result.grad0,
                    "passed": result.passed,
                }
            )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.grid:
        # Rows: the images, the other images, then each space/loss row's first sample per image.
        images = torch.cat(grid).clamp(-1, 1).add(1).div(2)
        save_image(F.interpolate(images, scale_factor=4, mode="nearest"), args.grid, nrow=len(grid[0]))
        print(f"wrote {args.grid}")
    return 1 if args.require_pass and failed else 0


if __name__ == "__main__":
    sys.exit(main())
