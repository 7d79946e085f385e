#!/usr/bin/env python
"""The ceiling a VAE sets for latent-space generators: how well it reconstructs a built-in set.

    python scripts/evaluate_vae.py --vae outputs/vae_shapes/vae [--data shapes] [--resolution 32]
        [--max-images N] [--out report.json]

Encodes each split's real images (posterior mode, the training scaling), decodes them and prints
JSON per split: PSNR and, for ``shapes``, the analytic checker's accuracy on the reconstructions
(count, colour, shape, position, size, all attributes) on the ``train`` and ``heldout`` scenes,
for ``openmoji`` (with ``--fd``) the FD-EffNetLite0 of the reconstructions against the real images
of each split: no generator trained in this latent can draw more than its decoder can. ``--vae`` takes any
diffusers AutoencoderKL (folder or Hub id, ``--subfolder vae`` inside a pipeline).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from t2i_drift.eval.frechet import EffNetLite0Embedder
from t2i_drift.eval.reconstruction import RECONSTRUCTION_DATA, reconstruction_report
from t2i_drift.models.vae import load_vae, vae_scale_factor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vae", required=True, help="a diffusers AutoencoderKL: folder or Hub id")
    parser.add_argument("--subfolder", default=None, help="the VAE's folder inside a pipeline, e.g. vae")
    parser.add_argument("--data", choices=RECONSTRUCTION_DATA, default="shapes")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--max-images", type=int, default=None, help="per split (default: all)")
    parser.add_argument(
        "--fd",
        action="store_true",
        help="openmoji: also FD-EffNetLite0 of the reconstructions against the real images of each split",
    )
    parser.add_argument("--out", default=None, help="also write the JSON report here")
    args = parser.parse_args(argv)
    if args.fd and args.data != "openmoji":
        parser.error("argument --fd: only with --data openmoji (shapes is scored by its checker)")
    if args.max_images is not None and args.max_images < 2:
        parser.error(f"argument --max-images: must be >= 2, got {args.max_images}")
    try:
        vae = load_vae(args.vae, args.subfolder, key="--vae")
    except ValueError as err:
        parser.error(f"argument {err}")
    factor = vae_scale_factor(vae)
    if args.resolution % factor:
        parser.error(
            f"argument --resolution: {args.resolution} is not divisible by the VAE's factor {factor}"
        )
    report = {
        "vae": args.vae,
        "data": args.data,
        "resolution": args.resolution,
        "splits": reconstruction_report(
            vae, args.data, args.resolution, args.max_images, EffNetLite0Embedder() if args.fd else None
        ),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
