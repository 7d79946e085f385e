#!/usr/bin/env python
"""FD-EffNetLite0 of an exported pipeline on the built-in OpenMoji data, with the real-vs-real floor.

    python scripts/evaluate.py --model outputs/default/pipeline [--num 1000] [--out metrics.json]

Prints (and writes) JSON with
    fd_gen_train:        N generated images (one per training caption, seed-fixed) vs the same N real images
    fd_real_train_val:   the N real training images vs all validation images (the floor: two real sets)
    fd_gen_val:          generated images for the validation captions vs the validation images
    retrieval_top1/5:    paired retrieval accuracy of the generated training images among the N real
                         ones (prompt adherence; chance = k/N; t2i_drift/eval/retrieval.py)
FD-EffNetLite0 is a Frechet distance in EfficientNet-Lite0 features, not FID (see t2i_drift/eval/frechet.py).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from t2i_drift import DriftingPipeline
from t2i_drift.data import OpenMojiDataset
from t2i_drift.eval import EffNetLite0Embedder, frechet_distance, paired_retrieval_accuracy


def generate(
    pipe: DriftingPipeline, captions: list[str], seed: int, batch_size: int, guidance: float
) -> torch.Tensor:
    """One image per caption, [N, 3, H, W] in [-1, 1]."""
    out = []
    g = torch.Generator().manual_seed(seed)
    for i in tqdm(range(0, len(captions), batch_size), desc="generate"):
        images = pipe(
            captions[i : i + batch_size], generator=g, guidance_scale=guidance, output_type="pt"
        ).images
        out.append(images * 2 - 1)
    return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="exported pipeline folder")
    parser.add_argument("--num", type=int, default=1000, help="training captions to generate for")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--out", default=None, help="write the JSON here too")
    args = parser.parse_args(argv)
    if not (Path(args.model) / "model_index.json").is_file():
        parser.error(f"--model {args.model!r} is not a pipeline folder (no model_index.json)")
    pipe = DriftingPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    res = pipe.transformer.config.sample_size
    train = OpenMojiDataset("train", resolution=res)
    val = OpenMojiDataset("validation", resolution=res)
    if not 2 <= args.num <= len(train):
        parser.error(f"--num must be in [2, {len(train)}], got {args.num}")
    # A fixed, evenly spread subset of training captions (deterministic, covers the sorted list).
    idx = torch.linspace(0, len(train) - 1, args.num).round().long().unique()
    real_train = torch.stack([train[int(i)]["pixel_values"] for i in idx])
    real_val = torch.stack([val[i]["pixel_values"] for i in range(len(val))])
    t0 = time.perf_counter()
    gen_train = generate(
        pipe, [train.captions[int(i)] for i in idx], args.seed, args.batch_size, args.guidance_scale
    )
    gen_val = generate(pipe, val.captions, args.seed + 1, args.batch_size, args.guidance_scale)
    gen_s = time.perf_counter() - t0
    embed = EffNetLite0Embedder()
    f_gen_train, f_real_train = (
        embed.embed(gen_train, desc="gen train"),
        embed.embed(real_train, desc="real train"),
    )
    f_gen_val, f_real_val = embed.embed(gen_val, desc="gen val"), embed.embed(real_val, desc="real val")
    result = {
        "metric": "FD-EffNetLite0 (Frechet distance in EfficientNet-Lite0 pooled features; not FID)",
        "num_train": len(idx),
        "num_val": len(val),
        "guidance_scale": args.guidance_scale,
        "fd_gen_train": frechet_distance(f_gen_train, f_real_train),
        "fd_real_train_val": frechet_distance(f_real_train, f_real_val),
        "fd_gen_val": frechet_distance(f_gen_val, f_real_val),
        "generation_images_per_s": (len(idx) + len(val)) / gen_s,
    }
    retrieval = paired_retrieval_accuracy(f_gen_train, f_real_train, ks=(1, 5))
    result.update({f"retrieval_top{k}": acc for k, acc in retrieval.items()})
    result["retrieval_chance_top1"] = 1 / len(idx)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
