#!/usr/bin/env python
"""Does the drifting field put samples on a caption's modes, or on their mean? A free-pixel probe.

    python scripts/bench_mode_seeking.py [--captions 16] [--samples 4] [--steps 300] \\
        [--variant NAME:mask_self=0,affinity_floor=1e-6,positives=8 ...]

Shapes captions without the position ("a large red circle") have five layouts each. For every
caption the probe starts ``--samples`` free images at the caption's mean image (plus N(0, s^2)
noise, s = ``--init-noise``, default 0.05: the differences the field has to amplify to send a
caption's samples to different layouts) and optimizes them with Adam under the drifting loss
alone, raw-pixel key, no generator. Each step draws ``positives`` of the caption's 20 renders (4
per layout) as its positives; the other captions' paired images are the unconditional negatives,
as in training. Reported every quarter of the run, per variant:

- ``all``: the share of samples the shapes checker finds fully right for some layout of the caption;
- ``coverage``: the share of a caption's layouts drawn by at least one sample (real draws of the
  same number reach ``1 - (4/5)^samples``, 0.59 for 4);
- ``to mean`` / ``to nearest``: mean squared pixel distance to the caption's mean image and to the
  nearest real render.

A mode-seeking field ends with ``all`` near 1 and ``to nearest`` near 0; a mean-seeking one stays
at the mean (``to mean`` near 0, ``all`` near 0); a diverging one moves away from both.

``--vae FOLDER`` (a diffusers AutoencoderKL, e.g. a scripts/train_vae.py export) runs the same probe
in its latent space, as a latent generator's field sees it: the renders are encoded with the
training conventions, the free samples are latents starting at the caption's mean latent, the key
is the flattened latent, the checker scores their decodings, and the distances are per latent element.

``--mae FOLDER --space mae+raw`` (or ``mae``) puts a trained ResNet MAE's keys in the field (next to
the raw key, or alone), each key normalized on its own as in training, and ``--shift S`` moves the
MAE's input by one random offset in [-S, S] per step (``features.random_shift``): does the MAE's
field seek the caption's modes where several different images share it, the paper's setting?
``--resolution 128`` renders the captions' images at that side: does the raw key still rank them there?

``--data photos`` replaces the shapes by textured natural images (t2i_drift/data/photos.py): each
of ``--captions`` subjects (brick wall, grass, gravel, the moon, ...) has 20 random crops of its
photograph, and the samples start at the mean crop. There is no checker; instead of ``all`` and
``coverage`` the rows give ``landed``, the share of samples at most a quarter as far from their
nearest real crop as the mean crop is, ``distinct``, the share of a caption's samples whose nearest
crops differ, and ``detail``, the samples' squared difference between neighbouring pixels over the
real crops' (about 1 for a texture like the real ones, near 0 for a blur, above 1 for noise),
and after each variant the same three per subject at the last step, next to ``mean / nn``: the
crops' distance to their mean over that to their nearest other crop (below 1: raw distances
favour the blurred mean over every real crop).
On textures the mean crop is nearer to every crop than the crops are to each other: the case
where the paper says raw distances stop ranking images. ``--space effnet`` or ``effnet+raw`` puts
the ImageNet EfficientNet-Lite0's keys (blocks 2, 4 and 10 at 64 px) in the field.
"""

from __future__ import annotations

import argparse
import sys

import torch

from t2i_drift.data.photos import PHOTOS, photo_crops
from t2i_drift.data.shapes import all_scenes, caption_groups, render_scene
from t2i_drift.drifting import DriftOptions, text_to_image_drift_loss
from t2i_drift.eval.detail import detail_ratio
from t2i_drift.eval.shapes import group_accuracy
from t2i_drift.models import EfficientNetLite0Features, MAEFeatures, MultiFeatureEncoder, RawFeatures
from t2i_drift.models.shifted_encoder import ShiftedEncoder, set_shift, shift_offset
from t2i_drift.models.vae import decode_latents, encode_latents, load_vae

DEFAULT_VARIANTS = (
    "unmasked, floor 1e-6 (before):mask_self=0,affinity_floor=1e-6,positives=8",
    "unmasked, no floor:mask_self=0,affinity_floor=0,positives=8",
    "self-masked, floor 1e-6 (paper):mask_self=1,affinity_floor=1e-6,positives=8",
    "unmasked, no floor, 1 positive:mask_self=0,affinity_floor=0,positives=1",
)
RENDERS_PER_LAYOUT = 4


def parse_variant(text: str) -> tuple[str, dict[str, float]]:
    """``NAME:key=value,...`` with keys mask_self, affinity_floor, positives."""
    name, _, spec = text.rpartition(":")
    values = {"mask_self": 0.0, "affinity_floor": 0.0, "positives": 8.0}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key not in values:
            raise argparse.ArgumentTypeError(f"unknown variant key {key!r} in {text!r}; use {list(values)}")
        values[key] = float(value)
    if values["positives"] < 1:
        raise argparse.ArgumentTypeError(f"positives must be >= 1 in {text!r}")
    return name or spec, values


def caption_bank(captions: int, resolution: int = 32) -> tuple[list, torch.Tensor]:
    """The first ``captions`` five-layout training captions and their renders [C, 20, 3, R, R]."""
    groups = [
        g
        for g in caption_groups([s for s in all_scenes() if not s.held_out], ["position"]).values()
        if len(g) == 5
    ][:captions]
    renders = []
    for c, group in enumerate(groups):
        images = [
            render_scene(group[k % len(group)], resolution, seed=1000 * c + k)
            for k in range(len(group) * RENDERS_PER_LAYOUT)
        ]
        renders.append(torch.stack([torch.from_numpy(i).permute(2, 0, 1) for i in images]))
    return groups, torch.stack(renders).float() / 127.5 - 1.0


def photo_bank(captions: int, resolution: int = 32) -> tuple[None, torch.Tensor]:
    """The first ``captions`` photo subjects' crops [C, 20, 3, R, R] (no checker groups)."""
    return None, photo_crops(list(PHOTOS)[:captions], 5 * RENDERS_PER_LAYOUT, resolution)


def photo_metrics(xs: torch.Tensor, bank: torch.Tensor, mean: torch.Tensor) -> dict[str, float]:
    """``landed``, ``distinct`` and ``detail`` (see the module docstring) of samples xs [C, S, c, h, w]
    against the crops bank [C, R, c, h, w] and their mean [C, c, h, w]."""
    C, S = xs.shape[:2]
    dist = torch.cdist(xs.flatten(2), bank.flatten(2)).pow(2) / xs[0, 0].numel()  # [C, S, R]
    mean_nearest = torch.cdist(mean.flatten(1)[:, None], bank.flatten(2)).pow(2) / xs[0, 0].numel()
    landed = dist.min(-1).values <= 0.25 * mean_nearest.min(-1).values  # [C, S]
    nearest = dist.argmin(-1)  # [C, S]
    distinct = sum(len(set(row.tolist())) for row in nearest) / (C * S)
    return {"landed": landed.float().mean().item(), "distinct": distinct, "detail": detail_ratio(xs, bank)}


def mean_over_neighbour(bank: torch.Tensor) -> torch.Tensor:
    """Per caption of bank [C, R, c, h, w]: the mean squared distance of its images to their mean
    over that to their nearest other image, [C]. Below 1 the mean image is nearer to every image
    than the images are to each other: raw distances then favour a blur over any real image."""
    flat = bank.flatten(2)  # [C, R, D]
    to_mean = (flat - flat.mean(1, keepdim=True)).pow(2).mean(-1).mean(1)
    pairwise = torch.cdist(flat, flat).pow(2) / flat.shape[-1]  # [C, R, R]
    pairwise = pairwise + torch.diag(torch.full((flat.shape[1],), float("inf")))
    return to_mean / pairwise.min(-1).values.mean(1)


def run_variant(
    groups: list | None,
    bank: torch.Tensor,
    values: dict[str, float],
    samples: int,
    steps: int,
    seed: int,
    init_noise: float = 0.05,
    vae: torch.nn.Module | None = None,
    encoder: torch.nn.Module | None = None,
    shift: int = 0,
) -> list[dict[str, float]]:
    """Rows (step, all, coverage, to_mean, to_nearest) at 0, 1/4, ..., 4/4 of ``steps``; with
    ``groups`` None (photos: no checker) landed, distinct and detail instead of all and coverage.

    ``bank``: [C, R, c, h, w] renders [C, R, 3, res, res], or their latents when ``vae`` is given
    (whose decodings the checker then scores). ``encoder``: a feature encoder (key -> [N, L, D])
    instead of the flattened raw key; ``shift``: the offset range of its ShiftedEncoders."""
    C, R = bank.shape[:2]
    P = int(values["positives"])
    g = torch.Generator().manual_seed(seed)
    mean = bank.mean(1)  # [C, c, h, w]
    x = mean.repeat_interleave(samples, 0) + init_noise * torch.randn(
        C * samples, *mean.shape[1:], generator=g
    )
    x.requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.01)
    options = DriftOptions(mask_self=bool(values["mask_self"]), affinity_floor=values["affinity_floor"])

    def key(t: torch.Tensor) -> dict[str, torch.Tensor]:
        if encoder is not None:
            return encoder(t)
        return {"raw": t.flatten(1)[:, None, :]}  # one location, D = c*h*w

    rows, log_at = [], {round(i * steps / 4) for i in range(5)}
    for step in range(steps + 1):
        if step in log_at:
            with torch.no_grad():
                xs = x.detach()
                images = xs if vae is None else decode_latents(vae, xs).float()
                per = xs.view(C, samples, -1)
                nearest = torch.cdist(per, bank.view(C, R, -1)).min(-1).values.pow(2) / per.shape[-1]
                row = {
                    "step": step,
                    "to_mean": (per - mean.view(C, 1, -1)).pow(2).mean().item(),
                    "to_nearest": nearest.mean().item(),
                }
                if groups is None:
                    per_caption = xs.view(C, samples, *xs.shape[1:])
                    row.update(photo_metrics(per_caption, bank, mean))
                    row["by_caption"] = [
                        photo_metrics(per_caption[c : c + 1], bank[c : c + 1], mean[c : c + 1])
                        for c in range(C)
                    ]
                else:
                    acc = group_accuracy(images.clamp(-1, 1), [grp for grp in groups for _ in range(samples)])
                    row.update(all=acc["all_attributes"], coverage=acc["coverage"])
                rows.append(row)
        if step == steps:
            break
        pick = torch.stack([torch.randperm(R, generator=g)[:P] for _ in range(C)])  # [C, P]
        pos = bank[torch.arange(C)[:, None], pick]  # [C, P, c, h, w]
        if shift:
            set_shift(encoder, shift_offset(shift, seed, step))
        with torch.no_grad():
            pos_keys = key(pos[:, 0])
            extra = None
            if P > 1:  # key -> [C, P - 1, L, D]
                extra = {k: v.unflatten(0, (C, P - 1)) for k, v in key(pos[:, 1:].flatten(0, 1)).items()}
        loss, _ = text_to_image_drift_loss(
            key(x), pos_keys, samples, torch.ones(C), torch.arange(C), options, extra_positives=extra
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--captions",
        type=int,
        default=None,
        help="shapes: five-layout captions (default 16, at most 28); photos: subjects (default all 14)",
    )
    parser.add_argument("--samples", type=int, default=4, help="free samples per caption (G)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init-noise", type=float, default=0.05, help="std of the samples' start noise")
    parser.add_argument("--variant", type=parse_variant, action="append", help="NAME:key=value,...")
    parser.add_argument("--vae", default=None, help="probe in this AutoencoderKL's latent space (folder)")
    parser.add_argument(
        "--resolution", type=int, default=32, help="render side in pixels (the field at larger sizes)"
    )
    parser.add_argument("--mae", default=None, help="a trained ResNetMAE folder (--space mae, mae+raw)")
    parser.add_argument(
        "--space",
        choices=["raw", "mae", "mae+raw", "effnet", "effnet+raw"],
        default="raw",
        help="the field's keys",
    )
    parser.add_argument(
        "--data",
        choices=["shapes", "photos"],
        default="shapes",
        help="caption bank: shapes layouts or photo crops",
    )
    parser.add_argument(
        "--shift", type=int, default=0, help="random input shift of the MAE (features.random_shift)"
    )
    args = parser.parse_args(argv)
    if args.space.startswith("mae") != (args.mae is not None):
        parser.error("argument --space: mae and mae+raw need --mae FOLDER, and --mae needs one of them")
    if args.shift and args.space == "raw":
        parser.error("argument --shift: moves the encoder's input; use it with a --space other than raw")
    if args.shift < 0:
        parser.error(f"argument --shift: must be >= 0, got {args.shift}")
    if args.resolution < 16 or args.resolution % 8:
        parser.error(f"argument --resolution: must be a multiple of 8 and >= 16, got {args.resolution}")
    if args.vae is not None and args.mae is not None:
        parser.error("argument --mae: this probe's MAE reads pixels; drop --vae")
    most = 28 if args.data == "shapes" else len(PHOTOS)
    if args.captions is None:
        args.captions = 16 if args.data == "shapes" else most
    if not 2 <= args.captions <= most:
        parser.error(
            f"argument --captions: must be in [2, {most}] for --data {args.data}, got {args.captions}"
        )
    if args.data == "photos" and args.vae is not None:
        parser.error("argument --vae: the photos probe runs in pixels; use --data shapes")
    if args.samples < 2 or args.steps < 1:
        parser.error("arguments --samples >= 2 and --steps >= 1 are required")
    variants = args.variant or [parse_variant(v) for v in DEFAULT_VARIANTS]
    groups, bank = (caption_bank if args.data == "shapes" else photo_bank)(args.captions, args.resolution)
    vae = None
    if args.vae is not None:
        try:
            vae = load_vae(args.vae)
        except (OSError, ValueError) as err:
            parser.error(f"argument --vae: {err}")
        with torch.no_grad():
            bank = encode_latents(vae, bank.flatten(0, 1)).unflatten(0, bank.shape[:2]).float().contiguous()
    encoder = None
    if args.space != "raw":
        name = args.space.split("+")[0]
        if name == "mae":
            try:
                learned: torch.nn.Module = MAEFeatures(args.mae)
            except (OSError, ValueError) as err:
                parser.error(f"argument --mae: {err}")
        else:
            learned = EfficientNetLite0Features(blocks=(2, 4, 10), input_size=64)
        learned = ShiftedEncoder(learned) if args.shift else learned
        parts = {name: learned, "raw": RawFeatures()} if args.space.endswith("+raw") else {name: learned}
        encoder = MultiFeatureEncoder(parts).eval()
    space = f"{args.resolution} px" if vae is None else f"the latents of {args.vae} {list(bank.shape[2:])}"
    if encoder is not None:
        source = f"MAE {args.mae}" if args.mae else "EfficientNet-Lite0"
        space += f", keys of {args.space} ({source}, shift {args.shift})"
    what = "captions x 5 layouts" if groups is not None else "photo subjects x 20 crops"
    print(
        f"{bank.shape[0]} {what} in {space}, {args.samples} free samples each starting at "
        f"the mean + N(0, {args.init_noise}^2), {args.steps} Adam steps"
    )
    first = "all right | coverage" if groups is not None else "landed | distinct | detail"
    print(f"| variant | step | {first} | to mean | to nearest real |")
    print("|---|--:|--:|--:|--:|--:|" + ("" if groups is not None else "--:|"))
    for name, values in variants:
        rows = run_variant(
            groups, bank, values, args.samples, args.steps, args.seed, args.init_noise,
            vae, encoder, args.shift,
        )  # fmt: skip
        for r in rows:
            keys = ("all", "coverage") if groups is not None else ("landed", "distinct", "detail")
            first = " | ".join(f"{r[k]:.2f}" for k in keys)
            print(
                f"| {name} | {r['step']} | {first} | {r['to_mean']:.4f} | {r['to_nearest']:.4f} |", flush=True
            )
        if groups is None:  # the last step, per subject: textures and objects behave differently
            ratio = mean_over_neighbour(bank)
            print(f"\n{name}, step {rows[-1]['step']}, per subject (mean / nn: mean_over_neighbour):")
            print("| subject | mean / nn | landed | distinct | detail |\n|---|--:|--:|--:|--:|")
            for c, (caption, m) in enumerate(zip(PHOTOS, rows[-1]["by_caption"], strict=False)):
                values = f"{ratio[c]:.2f} | {m['landed']:.2f} | {m['distinct']:.2f} | {m['detail']:.2f}"
                print(f"| {caption} | {values} |")
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
