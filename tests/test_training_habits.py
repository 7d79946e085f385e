"""The diffusers example-trainer habits: the CLI (every config key in --help, diffusers flag names),
the launcher's mixed precision, trackers, validation grids, checkpoint messages, gradient
accumulation (exact resume included) and the metrics plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from t2i_drift.training.cli import run_training_cli
from t2i_drift.training.config import Config, load_config
from t2i_drift.training.config_docs import config_keys
from t2i_drift.training.runs import train_t2i

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny_test.yaml"


# ----------------------------------------------------------------------------------------------
#                                              CLI
# ----------------------------------------------------------------------------------------------


def test_help_lists_every_config_key_with_type_default_and_doc():
    keys = config_keys(Config)
    assert len(keys) > 80 and all(k.doc for k in keys), [k.key for k in keys if not k.doc]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_t2i.py"), "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    for k in keys:
        assert f"  {k.key}  ({k.type}; default {k.default})" in proc.stdout, k.key
    for flag in (
        "--resume_from_checkpoint",
        "--report_to",
        "--dataset_name",
        "--push_to_hub",
        "--max_train_steps",
    ):
        assert flag in proc.stdout


def test_diffusers_flag_names_become_overrides_in_any_order():
    seen = []
    argv = [
        "train.log_every=5",
        "--max_train_steps",
        "3",
        "--mixed_precision",
        "bf16",
        "train.seed=7",
        "--report_to",
        "tensorboard",
        "--gradient_accumulation_steps",
        "2",
        "--dataset_name",
        "someone/cats",
        "--image_column",
        "img",
        "--caption_column",
        "alt",
        "title",
        "--validation_prompts",
        "a red cat",
        "a dog",
        "--resume_from_checkpoint",
        "latest",
        "--push_to_hub",
        "--hub_model_id",
        "me/drift",
    ]
    assert run_training_cli("doc", load_config, seen.append, argv, config_cls=Config) == 0
    (cfg,) = seen
    t, d = cfg.train, cfg.data
    assert (t.max_steps, t.mixed_precision, t.seed, t.log_every) == (3, "bf16", 7, 5)
    assert t.report_to == ["tensorboard"] and t.gradient_accumulation_steps == 2
    assert (d.name, d.path, d.image_column, d.caption_columns) == (
        "hf",
        "someone/cats",
        "img",
        ["alt", "title"],
    )
    assert t.validation_prompts == ["a red cat", "a dog"] and t.resume_from_checkpoint == "latest"
    assert t.push_to_hub and t.hub_model_id == "me/drift"


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--push_to_hub"], "train.hub_model_id"),
        (["--gradient_accumulation_steps", "0"], "train.gradient_accumulation_steps"),
        (["train.checkpoints_total_limit=0"], "train.checkpoints_total_limit"),
        (["--validation_prompts", " "], "train.validation_prompts"),
        (["--report_to", "comet"], "invalid choice"),
    ],
)
def test_bad_training_flags_are_clear_errors(argv, match, capsys):
    with pytest.raises(SystemExit) as err:
        run_training_cli("doc", load_config, lambda cfg: None, argv, config_cls=Config)
    assert err.value.code == 2 and match in capsys.readouterr().err


def test_a_tracker_that_is_not_installed_is_a_clear_error(monkeypatch, capsys, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    argv = ["--config", str(RECIPE), "--output_dir", str(tmp_path / "x"), "--report_to", "wandb"]
    with pytest.raises(SystemExit):
        run_training_cli("doc", load_config, train_t2i, argv, config_cls=Config)
    assert (
        "train.report_to: ['wandb'] not installed" in capsys.readouterr().err
        and not (tmp_path / "x").exists()
    )


def test_push_to_hub_without_a_token_fails_before_training(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("t2i_drift.training.runs.get_token", lambda: None)
    argv = [
        "--config",
        str(RECIPE),
        "--output_dir",
        str(tmp_path / "x"),
        "--push_to_hub",
        "--hub_model_id",
        "me/m",
    ]
    with pytest.raises(SystemExit):
        run_training_cli("doc", load_config, train_t2i, argv, config_cls=Config)
    assert "no Hugging Face token" in capsys.readouterr().err and not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------------
#                    a tracked run: tensorboard, validation, launcher precision
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tracked")
    overrides = [
        f"train.output_dir={out}",
        "train.report_to=[tensorboard]",
        "train.validation_prompts=[teapot, a red apple]",
        "train.validation_steps=1",
        "train.num_validation_images=2",
        "train.gradient_accumulation_steps=2",
    ]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_t2i.py"), "--config", str(RECIPE), *overrides],
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "ACCELERATE_MIXED_PRECISION": "bf16"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout + proc.stderr


def test_mixed_precision_follows_the_launcher_unless_the_config_sets_it(tracked_run):
    out, _ = tracked_run
    assert Config().train.mixed_precision is None
    assert json.loads((out / "run_summary.json").read_text())["mixed_precision"] == "bf16"


def test_tensorboard_receives_scalars_and_validation_grids(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, log = tracked_run
    events_dir = out / "logs" / "t2i_drift"  # the tracker project; hparams go to a sub-run
    assert list(events_dir.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for tag in (
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "drift/v2",
        "drift/raw/spread",
        "drift/effnet/spread",
    ):
        assert tag in scalars, sorted(scalars)
    assert any(t.startswith("drift/raw/v2/tau=") for t in scalars)
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
    assert [e.step for e in acc.Images("validation")] == [1, 2]
    from PIL import Image

    grid = Image.open(out / "validation" / "step-2.png")
    assert grid.size[0] == 2 * 128 and grid.size[1] > 2 * 128  # 2 prompts x 2 images, upscaled, labelled
    assert "saved checkpoint-1" in log and "saved checkpoint-2" in log and "V2=" in log


def test_gradient_accumulation_consumes_k_batches_and_resumes_exactly(tracked_run, tmp_path):
    out, _ = tracked_run
    state = json.loads((out / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    per_epoch = 48 // 8  # tiny recipe: 48 pairs, batch 8 -> 6 micro-batches an epoch
    assert state["epoch"] * per_epoch + state["batches_in_epoch"] == 4  # 2 steps x 2 micro-batches
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["samples_per_s"] > 0

    # Separate processes: Accelerate's precision is per process (the tracked run's was bf16).
    resumed = tmp_path / "resumed"
    base = [str(ROOT / "scripts" / "train_t2i.py"), "--config", str(RECIPE), "--output_dir", str(resumed)]
    base += ["--gradient_accumulation_steps", "2", "--mixed_precision", "bf16"]
    for extra in (["--max_steps", "1"], ["--max_steps", "2", "--resume_from_checkpoint", "latest"]):
        proc = subprocess.run([sys.executable, *base, *extra], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("transformer/diffusion_pytorch_model.safetensors", "ema.safetensors"):
        a = load_file(str(out / "checkpoints" / "checkpoint-2" / name))
        b = load_file(str(resumed / "checkpoints" / "checkpoint-2" / name))
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), name


def test_plot_metrics_draws_the_curves(tracked_run, tmp_path):
    out, _ = tracked_run
    png = tmp_path / "curves.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "plot_metrics.py"), "--run", str(out), "--out", str(png)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    from PIL import Image

    assert Image.open(png).size[0] > 400
    bad = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "plot_metrics.py"),
            "--run",
            str(tmp_path),
            "--out",
            str(png),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "metrics.jsonl" in bad.stderr
