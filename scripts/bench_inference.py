#!/usr/bin/env python
"""One-step sampling cost per generator preset, against the same transformer run 25 times.

For each preset it builds a DriftingPipeline (real MiniLM text encoder, randomly initialized
generator: speed does not depend on the weights) and measures, in one process:
    latency b1       one full pipeline call for 1 prompt (encode + 1 transformer call + postprocess)
    throughput b16   images/s of one pipeline call for 16 prompts
    25 calls b1      encode once + 25 transformer calls on one image: what a 25-step sampler of the
                     same network would pay (the scheduler arithmetic is negligible and left out)
and the ratio of the last to the first. Times are medians of --repeats.

    python scripts/bench_inference.py                     # tiny..B at 32x32 pixels, patch 4
    python scripts/bench_inference.py --presets B L --sample-size 32 --channels 4 --patch-size 2 \\
        --device cuda                                      # SD-VAE latents of 256x256 images
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from t2i_drift import DriftingPipeline, DriftingTransformer2DModel
from t2i_drift.models.transformer_drifting import DRIFTING_PRESETS
from t2i_drift.text import load_text_encoder

PROMPTS = ["teapot", "red apple", "grinning face", "rocket", "dog face", "sun", "France", "pizza"] * 2


def _median_time(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_preset(name: str, args, text_encoder, tokenizer) -> dict[str, float]:
    torch.manual_seed(0)
    transformer = DriftingTransformer2DModel.from_preset(
        name,
        sample_size=args.sample_size,
        patch_size=args.patch_size,
        in_channels=args.channels,
        text_embed_dim=text_encoder.config.hidden_size,
        pooled_embed_dim=text_encoder.config.hidden_size,
    )
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    pipe = DriftingPipeline(transformer=transformer, text_encoder=text_encoder, tokenizer=tokenizer)
    pipe.to(args.device, dtype)
    pipe.set_progress_bar_config(disable=True)
    device = args.device

    def one(prompts):
        return lambda: pipe(prompts, output_type="pt", generator=torch.Generator().manual_seed(0))

    def sampler_25():
        embeds, mask, pooled = pipe.encode_prompt(PROMPTS[:1], device=torch.device(device))
        x = torch.randn(1, args.channels, args.sample_size, args.sample_size, device=device, dtype=dtype)
        style = transformer.sample_style_indices(1, device=torch.device(device))
        with torch.no_grad():
            for _ in range(25):
                x = transformer(
                    hidden_states=x,
                    encoder_hidden_states=embeds.to(dtype),
                    encoder_attention_mask=mask,
                    pooled_projections=pooled.to(dtype),
                    guidance=2.0,
                    style_indices=style,
                ).sample

    latency = _median_time(one(PROMPTS[:1]), args.repeats, device)
    batch = _median_time(one(PROMPTS[:16]), args.repeats, device)
    multi = _median_time(sampler_25, max(1, args.repeats // 2), device)
    return {
        "params_m": sum(p.numel() for p in transformer.parameters()) / 1e6,
        "latency_ms": latency * 1e3,
        "throughput": 16 / batch,
        "steps25_ms": multi * 1e3,
        "ratio": multi / latency,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--presets", nargs="+", default=["tiny", "XS", "S", "M", "B"], choices=list(DRIFTING_PRESETS)
    )
    parser.add_argument("--sample-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--channels", type=int, default=3, help="3 for pixels, 4 or 16 for VAE latents")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer, text_encoder = load_text_encoder("minilm")
    tokens = (args.sample_size // args.patch_size) ** 2
    print(
        f"device={args.device} threads={torch.get_num_threads()} dtype={'bf16' if args.bf16 else 'fp32'} "
        f"sample {args.channels}x{args.sample_size}x{args.sample_size}, "
        f"patch {args.patch_size} ({tokens} tokens)"
    )
    columns = ["preset", "params (M)", "latency b1 (ms)", "throughput b16 (img/s)", "25 calls b1 (ms)"]
    print("| " + " | ".join([*columns, "25 calls / 1 step"]) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name in args.presets:
        r = bench_preset(name, args, text_encoder, tokenizer)
        print(
            f"| {name} | {r['params_m']:.1f} | {r['latency_ms']:.1f} | {r['throughput']:.1f} "
            f"| {r['steps25_ms']:.0f} | {r['ratio']:.1f}x |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
