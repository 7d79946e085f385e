"""Shared builders for tests: tiny real components (each after torch.manual_seed(0))."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import torch

from t2i_drift import DriftingPipeline, DriftingTransformer2DModel
from t2i_drift.models.mae_resnet import ResNetMAE
from t2i_drift.text import load_text_encoder


def tiny_pipeline(sample_size: int = 16) -> DriftingPipeline:
    """Real MiniLM text encoder + a tiny generator with non-zero (perturbed) output weights."""
    tokenizer, text_encoder = load_text_encoder("minilm")
    torch.manual_seed(0)
    transformer = DriftingTransformer2DModel.from_preset(
        "tiny", sample_size=sample_size, patch_size=4, text_embed_dim=384, pooled_embed_dim=384
    )
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(0.02 * torch.randn_like(p))
    pipe = DriftingPipeline(
        transformer=transformer, text_encoder=text_encoder, tokenizer=tokenizer, max_sequence_length=16
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_vae(scaling_factor: float, shift_factor: float):
    """A random 2-level AutoencoderKL (factor 2, 4 latent channels) with the given config factors."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    ).eval()


def tiny_mae(**overrides) -> ResNetMAE:
    """A tiny pixel ResNetMAE (width 8) with perturbed weights; ``overrides`` change its config."""
    torch.manual_seed(0)
    args = dict(in_channels=3, sample_size=32, width=8, stem_patch_size=2, norm_num_groups=4)
    model = ResNetMAE(**{**args, **overrides})
    with torch.no_grad():  # non-zero head and residual norms, so every path carries signal
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def tiny_convnext_dir(path) -> str:
    """A 4-stage random ConvNeXt-V2 backbone (channels 8..32, one block per stage, image_size 32)
    saved to ``path``; no preprocessor config (ImageNet statistics apply)."""
    from transformers import ConvNextV2Backbone, ConvNextV2Config

    torch.manual_seed(0)
    config = ConvNextV2Config(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], image_size=32)
    ConvNextV2Backbone(config).save_pretrained(path)
    return str(path)


def run_python(code: str, timeout: int = 300, cwd: str | None = None) -> str:
    """Run ``code`` in a fresh interpreter (offline env inherited; in ``cwd`` if given); return
    stdout, raise on failure."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py imported as a module (to call its ``main(argv)`` in-process)."""
    path = Path(__file__).parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
