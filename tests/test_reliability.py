"""Nothing lost, nothing half-written: atomic checkpoints (kill mid-write, then resume exactly),
missing checkpoint parts named, output folders of other runs refused or left intact, metrics
without repeated steps after a resume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import tiny_pipeline
from safetensors.torch import load_file

from t2i_drift import DriftingPipeline
from t2i_drift.training.checkpoint import list_checkpoints
from t2i_drift.training.config import ConfigError, load_config
from t2i_drift.training.runs import train_t2i

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny_test.yaml"
WEIGHTS = ("transformer/diffusion_pytorch_model.safetensors", "ema.safetensors", "optimizer.safetensors")


def _cfg(out: Path, *extra: str):
    return load_config(RECIPE, [f"train.output_dir={out}", *extra])


def _same_checkpoints(a: Path, b: Path) -> None:
    for name in WEIGHTS:
        x, y = load_file(str(a / name)), load_file(str(b / name))
        assert x.keys() == y.keys() and all((x[k] == y[k]).all() for k in x), name


@pytest.fixture(scope="module")
def three_steps(tmp_path_factory):
    out = tmp_path_factory.mktemp("three")
    train_t2i(_cfg(out, "train.max_steps=3", "train.checkpoints_total_limit=null"))
    return out


def test_kill_during_a_checkpoint_write_then_resume_exactly(three_steps, tmp_path):
    """The process dies while checkpoint-2 is half written (SIGKILL-like exit inside the optimizer
    save): checkpoint-2 never appears, latest takes checkpoint-1, and the resumed run ends with the
    weights of an uninterrupted one."""
    out = tmp_path / "killed"
    code = textwrap.dedent(f"""
        import os
        import t2i_drift.training.checkpoint as ckpt
        from t2i_drift.training.config import load_config
        from t2i_drift.training.runs import train_t2i
        real = ckpt.save_file
        def dying(tensors, path, *a, **k):
            if ".tmp-checkpoint-2" in path and path.endswith("optimizer.safetensors"):
                os._exit(9)
            return real(tensors, path, *a, **k)
        ckpt.save_file = dying
        train_t2i(load_config({str(RECIPE)!r}, ["train.output_dir={out}", "train.max_steps=3",
                                                 "train.checkpoints_total_limit=null"]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["checkpoint-1"]
    assert (out / "checkpoints" / ".tmp-checkpoint-2").is_dir()  # the partial write, under its own name
    train_t2i(
        _cfg(
            out,
            "train.max_steps=3",
            "train.checkpoints_total_limit=null",
            "train.resume_from_checkpoint=latest",
        )
    )
    assert not (out / "checkpoints" / ".tmp-checkpoint-2").exists()
    _same_checkpoints(out / "checkpoints" / "checkpoint-3", three_steps / "checkpoints" / "checkpoint-3")
    steps = [json.loads(line)["step"] for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # the killed run's step-2 line was dropped, not repeated


def test_a_missing_checkpoint_part_is_named(three_steps, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(three_steps, out)
    (out / "checkpoints" / "checkpoint-2" / "rng_state_0.safetensors").unlink()
    with pytest.raises(ValueError, match="checkpoint-2/rng_state_0.safetensors is missing"):
        train_t2i(
            _cfg(
                out,
                "train.max_steps=3",
                f"train.resume_from_checkpoint={out / 'checkpoints' / 'checkpoint-2'}",
            )
        )


def test_latest_skips_an_incomplete_checkpoint_and_says_so(three_steps, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(three_steps, out)
    (
        out / "checkpoints" / "checkpoint-3" / "ema.safetensors"
    ).unlink()  # as a pre-atomic writer could leave it
    train_t2i(_cfg(out, "train.max_steps=3", "train.resume_from_checkpoint=latest"))
    err = capsys.readouterr().out
    assert "skipping incomplete checkpoint" in err and "ema.safetensors is missing" in err
    assert "resumed from" in err and "checkpoint-2 at step 2" in err


def test_latest_without_a_checkpoint_says_it_starts_fresh(tmp_path, capsys):
    train_t2i(_cfg(tmp_path / "new", "train.max_steps=1", "train.resume_from_checkpoint=latest"))
    assert "no complete checkpoint" in capsys.readouterr().out


def test_a_folder_of_another_run_is_refused_and_overwrite_keeps_its_checkpoints(three_steps, tmp_path):
    out = tmp_path / "reuse"
    shutil.copytree(three_steps, out)
    with pytest.raises(ConfigError, match="already holds a run"):
        train_t2i(_cfg(out, "train.max_steps=1"))
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == [
        "checkpoint-1",
        "checkpoint-2",
        "checkpoint-3",
    ]
    old_id = json.loads((out / "run.json").read_text())["run_id"]
    train_t2i(
        _cfg(out, "train.max_steps=2", "train.overwrite_output_dir=true", "train.checkpoints_total_limit=1")
    )
    # The new run replaced the old checkpoints of the steps it wrote (1, 2); its rotation (limit 1)
    # counted only its own, so the old run's checkpoint-3 stays.
    names = [p.name for p in list_checkpoints(out / "checkpoints")]
    assert names == ["checkpoint-2", "checkpoint-3"]
    new_id = json.loads((out / "run.json").read_text())["run_id"]
    assert new_id != old_id
    states = {
        n: json.loads((out / "checkpoints" / n / "trainer_state.json").read_text())["run_id"] for n in names
    }
    assert states == {"checkpoint-2": new_id, "checkpoint-3": old_id}
    assert (out / "logs" / f"metrics.{old_id}.jsonl").is_file()  # the old run's log, kept aside
    assert [
        json.loads(line)["step"] for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()
    ] == [1, 2]


def test_optimizer_overrides_apply_on_resume(three_steps, tmp_path, capsys):
    """optim.learning_rate / weight_decay given for the resume are used, not the checkpoint's
    (config.yaml records them, so the run must do what it says)."""
    out = tmp_path / "copy"
    shutil.copytree(three_steps, out)
    resume = f"train.resume_from_checkpoint={out / 'checkpoints' / 'checkpoint-2'}"
    train_t2i(_cfg(out, "train.max_steps=3", resume, "optim.learning_rate=5.0e-4", "optim.weight_decay=0.1"))
    log = capsys.readouterr().out
    assert "optimizer settings from this run's config" in log and "weight_decay: 0.01 -> 0.1" in log
    line = json.loads((out / "logs" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["step"] == 3 and line["lr"] == pytest.approx(5.0e-4)


@pytest.mark.parametrize("delta, kind", [(1, "missing_keys"), (-1, "unexpected_keys")])
def test_a_transformer_config_that_does_not_match_its_weights_is_refused(tmp_path, delta, kind):
    """diffusers would leave missing layers on the meta device or drop extra weights silently."""
    tiny_pipeline().save_pretrained(tmp_path / "pipe")
    config_path = tmp_path / "pipe" / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["num_layers"] += delta
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"transformer: the weights do not match config.json \\({kind}"):
        DriftingPipeline.from_pretrained(tmp_path / "pipe")
