"""The GPU check behind scripts/gpu_check.sh: training and one-step sampling figures in one JSON.

Training: the B/2 latent recipe (SD-VAE latents of 256 px images, CLIP-L conditioning, the
paper's latent MAE of width 256 with per-location keys, bf16) on synthetic inputs with random
weights (training/synthetic.py): samples/s, peak memory, the drift field's share of the step and
the per-phase breakdown (scripts/bench_train.py). Sampling: a DriftingPipeline with the same
generator and a randomly initialized SD-VAE-shaped AutoencoderKL, images/s of one pipeline call
(generator + VAE decode, output_type="pt", from precomputed text embeddings) at batch 1 and 64,
256 and 1024 px. Nothing is downloaded.

``--tiny``: the same measurements at toy sizes, for CPU (the test suite runs it).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from t2i_drift import DriftingPipeline, DriftingTransformer2DModel  # noqa: E402

FULL = {
    "train": dict(preset="B", prompts=32, samples=8, size=32, mae_width=256, steps=10, warmup=3),
    "infer": dict(preset="B", sizes=(256, 1024), batches=(1, 64), repeats=5),
    "vae_channels": (128, 256, 512, 512),  # the SD / SDXL VAE
}
TINY = {
    "train": dict(preset="tiny", prompts=4, samples=2, size=8, mae_width=32, steps=2, warmup=1),
    "infer": dict(preset="tiny", sizes=(64, 128), batches=(1, 4), repeats=2),
    "vae_channels": (32, 32, 32, 32),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_figures(plan: dict[str, Any], mixed_precision: str) -> dict[str, Any]:
    from bench_train import measure

    from t2i_drift.training.synthetic import SyntheticSetting, synthetic_run

    setting = SyntheticSetting(
        preset=plan["preset"],
        prompts=plan["prompts"],
        samples_per_prompt=plan["samples"],
        size=plan["size"],
        mae_width=plan["mae_width"],
        mixed_precision=mixed_precision,
    )
    run, batch = synthetic_run(setting)
    result = measure(run, lambda: batch, plan["steps"], plan["warmup"])
    result["setting"] = {k: plan[k] for k in ("preset", "prompts", "samples", "size", "mae_width")}
    result["generator_params_m"] = sum(p.numel() for p in run.unwrapped.parameters()) / 1e6
    return result


def _vae(channels: tuple[int, ...]) -> Any:
    from diffusers import AutoencoderKL

    n = len(channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=channels,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=min(32, channels[0]),
        scaling_factor=0.18215,
    )


def infer_figures(plan: dict[str, Any], vae_channels: tuple[int, ...], device: torch.device) -> list[dict]:
    """images/s of one pipeline call per (size, batch); the median of ``repeats`` calls."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    vae = _vae(vae_channels)
    factor = 2 ** (len(vae_channels) - 1)
    tokens, width = 77, 768
    transformer = DriftingTransformer2DModel.from_preset(
        plan["preset"],
        sample_size=plan["sizes"][0] // factor,
        patch_size=2,
        in_channels=4,
        text_embed_dim=width,
        pooled_embed_dim=width,
    )
    pipe = DriftingPipeline(transformer=transformer, text_encoder=None, tokenizer=None, vae=vae)
    pipe.to(device, dtype)
    pipe.vae.enable_slicing()  # decode image by image: batch 64 at 1024 px would not fit at once
    pipe.set_progress_bar_config(disable=True)
    out = []
    for size in plan["sizes"]:
        for batch in plan["batches"]:
            embeds = torch.randn(batch, tokens, width, device=device, dtype=dtype)
            pooled = torch.randn(batch, width, device=device, dtype=dtype)

            def call(embeds=embeds, pooled=pooled, size=size) -> None:
                pipe(
                    prompt_embeds=embeds,
                    pooled_prompt_embeds=pooled,
                    height=size,
                    width=size,
                    output_type="pt",
                    generator=torch.Generator(device).manual_seed(0),
                )

            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            call()  # warm-up
            times = []
            for _ in range(plan["repeats"]):
                _sync(device)
                start = time.perf_counter()
                call()
                _sync(device)
                times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            row = {"size": size, "batch": batch, "seconds": seconds, "images_per_s": batch / seconds}
            if device.type == "cuda":
                row["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            print(f"sampling {size} px, batch {batch}: {row['images_per_s']:.1f} images/s", flush=True)
            out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="toy sizes (CPU, seconds)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    args = parser.parse_args(argv)
    if args.out.exists() and args.out.is_dir():
        parser.error(f"--out {args.out} is a folder; give a file name")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.tiny:
        parser.error("no GPU found: the full check needs one (--tiny runs toy sizes on the CPU)")
    plan = TINY if args.tiny else FULL
    start = time.perf_counter()
    report: dict[str, Any] = {
        "tiny": args.tiny,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "CPU",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    mixed_precision = "bf16" if device.type == "cuda" else "no"
    train = train_figures(plan["train"], mixed_precision)
    report["train"] = train
    print(
        f"training: {train['samples_per_s']:.1f} samples/s, peak {train['peak_memory_mb']:.0f} MiB, "
        f"drift field {100 * train['drift_share']:.1f}% of the step",
        flush=True,
    )
    report["sampling"] = infer_figures(plan["infer"], plan["vae_channels"], device)
    report["wall_s"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
