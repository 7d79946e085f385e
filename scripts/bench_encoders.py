"""Feature-extraction cost per image of each feature encoder, measured in one process.

For each encoder: ms/image of a forward pass without gradients (how positives and negatives are
encoded) and of forward + backward to the input (how generated samples are encoded), the number of
feature keys and the total feature size per image (sum of L*D over keys), and both times as a ratio
to the raw-features baseline. Each figure is the median of --repeats timed calls after --warmup
untimed ones. Random weights wherever the real ones are not shipped offline: the cost of a network
does not depend on its weights, so the ConvNeXt-V2-tiny, MAE and SD-VAE rows use their real
architecture sizes built from configs (no download). Ratios are to the built-in EfficientNet-Lite0
at 32 px, measured in the same process.

    python scripts/bench_encoders.py                   # the table (CPU, 2 threads: about 2 minutes)
    python scripts/bench_encoders.py --batch-size 16 --no-large --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn as nn

from t2i_drift.models.feature_encoders import (
    DecodedLatentFeatures,
    EfficientNetLite0Features,
    MAEFeatures,
    RawFeatures,
)
from t2i_drift.models.hub_features import HubVisionFeatures
from t2i_drift.models.mae_resnet import ResNetMAE

BASELINE = "EfficientNet-Lite0 @32 (baseline)"

# ConvNeXt-V2 (hidden sizes, depths): a test-sized random one and the real tiny architecture.
CONVNEXT_SMALL = ((16, 32, 64, 128), (1, 1, 2, 1))
CONVNEXT_TINY = ((96, 192, 384, 768), (3, 3, 9, 3))


def convnextv2(folder: str, arch: tuple[tuple[int, ...], tuple[int, ...]], image_size: int) -> str:
    """A random ConvNeXt-V2 backbone saved in a new folder under ``folder`` (loaded back by path,
    the real route); returns that folder."""
    from transformers import ConvNextV2Backbone, ConvNextV2Config

    torch.manual_seed(0)
    sizes, depths = arch
    config = ConvNextV2Config(hidden_sizes=list(sizes), depths=list(depths), image_size=image_size)
    path = tempfile.mkdtemp(dir=folder)
    ConvNextV2Backbone(config).save_pretrained(path)
    return path


def autoencoder(block_out_channels: tuple[int, ...], layers_per_block: int, norm_groups: int) -> nn.Module:
    """A random AutoencoderKL (4 latent channels, SD-like scaling factor) of the given widths."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    n = len(block_out_channels)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=block_out_channels,
        layers_per_block=layers_per_block,
        latent_channels=4,
        norm_num_groups=norm_groups,
        scaling_factor=0.18215,
    ).eval()


def time_call(fn: Callable[[], None], warmup: int, repeats: int, device: str) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after ``warmup`` untimed ones."""
    times = []
    for i in range(warmup + repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(encoder: nn.Module, inputs: torch.Tensor, warmup: int, repeats: int, device: str) -> dict:
    """ms/image without grad and with backward to the input; keys and feature size per image."""
    encoder = encoder.to(device)
    inputs = inputs.to(device)

    def forward() -> None:
        with torch.no_grad():
            encoder(inputs)

    def forward_backward() -> None:
        x = inputs.detach().requires_grad_(True)
        feats = encoder(x)
        sum(f.float().square().mean() for f in feats.values()).backward()
        assert x.grad is not None

    with torch.no_grad():
        feats = encoder(inputs)
    batch = inputs.shape[0]
    return {
        "keys": len(feats),
        "dims": sum(f.shape[1] * f.shape[2] for f in feats.values()),
        "fwd": 1e3 * time_call(forward, warmup, repeats, device) / batch,
        "bwd": 1e3 * time_call(forward_backward, warmup, repeats, device) / batch,
    }


def encoder_rows(folder: str, batch: int, res: int, large: bool) -> list[tuple]:
    """(name, input description, encoder factory, input tensor) per table row; factories build
    lazily so only one large model is alive at a time."""
    torch.manual_seed(0)
    pixels = torch.rand(batch, 3, res, res) * 2 - 1
    px = f"3x{res}x{res}"
    effnet64 = EfficientNetLite0Features(input_size=64)
    rows = [
        ("raw output", px, RawFeatures, pixels),
        (BASELINE, px, lambda: EfficientNetLite0Features(input_size=32), pixels),
        ("EfficientNet-Lite0 @64", px, lambda: effnet64, pixels),
        (
            "ConvNeXt-V2 tiny-random (16..128, 1-1-2-1) @64",
            px,
            lambda: HubVisionFeatures(convnextv2(folder, CONVNEXT_SMALL, 64)),
            pixels,
        ),
        (
            "ResNet-MAE width 32 (recipes/mae), all 9 maps",
            px,
            lambda: MAEFeatures(ResNetMAE(sample_size=res, width=32, norm_num_groups=8)),
            pixels,
        ),
        (
            "VAE tiny_vae-size (f2) + EffNet @64",
            f"4x{res // 2}x{res // 2}",
            lambda: DecodedLatentFeatures(autoencoder((8, 16), 1, 4), effnet64),
            torch.randn(batch, 4, res // 2, res // 2),
        ),
    ]
    if large:
        rows += [
            (
                "ConvNeXt-V2-tiny size (96..768, 3-3-9-3) @64",
                px,
                lambda: HubVisionFeatures(convnextv2(folder, CONVNEXT_TINY, 64)),
                pixels,
            ),
            (
                "ConvNeXt-V2-tiny size @224",
                px,
                lambda: HubVisionFeatures(convnextv2(folder, CONVNEXT_TINY, 224)),
                pixels,
            ),
            (
                "ResNet-MAE width 256 (paper), all 9 maps",
                px,
                lambda: MAEFeatures(ResNetMAE(sample_size=res, width=256)),
                pixels,
            ),
            (
                "ResNet-MAE width 256 on SD latents of 256 px",
                "4x32x32",
                lambda: MAEFeatures(ResNetMAE(in_channels=4, sample_size=32, width=256, stem_patch_size=1)),
                torch.randn(batch, 4, 32, 32),
            ),
            (
                "VAE SD-size (f8) + EffNet @64",
                f"4x{res // 8}x{res // 8}",
                lambda: DecodedLatentFeatures(autoencoder((128, 256, 512, 512), 2, 32), effnet64),
                torch.randn(batch, 4, res // 8, res // 8),
            ),
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=64, help="pixel side of the generated images")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-large", action="store_true", help="skip ConvNeXt-V2-tiny and SD-VAE sizes")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # a shared, busy CPU times more steadily on fewer threads

    results = []
    with tempfile.TemporaryDirectory() as folder:
        for name, shape, build, inputs in encoder_rows(
            folder, args.batch_size, args.resolution, not args.no_large
        ):
            stats = measure(build(), inputs, args.warmup, args.repeats, args.device)
            results.append((name, shape, stats))
            print(f"measured {name}: {stats['fwd']:.3g} / {stats['bwd']:.3g} ms/img", flush=True)

    # Baseline: the built-in EfficientNet-Lite0 at 32 px (the raw row is a flatten, ~1 us).
    base = next(stats for name, _, stats in results if name == BASELINE)
    threads = torch.get_num_threads()
    print(f"\nbatch {args.batch_size}, {threads} threads, {args.device}, median of {args.repeats}\n")
    print("| encoder | input | keys | dims/img | fwd ms/img | fwd+bwd ms/img | fwd x base | fwd+bwd x base |")
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    for name, shape, s in results:
        print(
            f"| {name} | {shape} | {s['keys']} | {s['dims']:,} | {s['fwd']:.3g} | {s['bwd']:.3g} "
            f"| {s['fwd'] / base['fwd']:.2g} | {s['bwd'] / base['bwd']:.2g} |"
        )


if __name__ == "__main__":
    main()
