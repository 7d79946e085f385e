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
