"""End to end: a 2-step run on real data writes a loadable pipeline; checkpoints resume exactly."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import run_python
from safetensors.torch import load_file

from t2i_drift.training.checkpoint import list_checkpoints
from t2i_drift.training.config import load_config
from t2i_drift.training.objectives import PIPELINE_SUBDIR
from t2i_drift.training.runs import train_t2i

RECIPE = Path(__file__).parent.parent / "recipes" / "tiny_test.yaml"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_run")
    train_t2i(load_config(RECIPE, [f"train.output_dir={out}"]))
    return out


def test_two_step_run_writes_everything(run_dir):
    assert (run_dir / "config.yaml").is_file()
    lines = (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    assert all(torch.isfinite(torch.tensor(json.loads(line)["loss"])) for line in lines)
    assert (run_dir / "samples" / "step-2.png").is_file()
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["steps"] == 2 and summary["samples_per_s"] > 0
    ckpts = list_checkpoints(run_dir / "checkpoints")
    assert [p.name for p in ckpts] == ["checkpoint-1", "checkpoint-2"]
    files = {p.name for p in ckpts[-1].rglob("*")}
    assert {
        "optimizer.safetensors",
        "ema.safetensors",
        "trainer_state.json",
        "rng_state_0.safetensors",
    } <= files
    assert not [p for p in run_dir.rglob("*") if p.suffix in (".bin", ".pt", ".pkl", ".pth")]


def test_model_card_has_metadata_usage_and_attribution(run_dir):
    from huggingface_hub import ModelCard

    card = ModelCard.load(run_dir / PIPELINE_SUBDIR / "README.md")
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "text-to-image"
    assert card.data.license == "cc-by-sa-4.0"
    assert "OpenMoji" in card.text and "DriftingPipeline.from_pretrained" in card.text
    assert "max_steps: 2" in card.text and "<details>" in card.text
    assert "arxiv.org/abs/2602.04770" in card.text and "@article{deng2026drifting" in card.text
    # Run-dependent, not hard-coded: its own prompts, steps and device; no dataset id that is not on the Hub.
    prompts = load_config(RECIPE).eval.sample_prompts
    assert f"pipe(\n    {json.dumps(prompts[0])}," in card.text
    assert "training: 2 steps on CPU" in card.text and "minutes on a CPU" not in card.text
    assert card.data.datasets is None
    assert [w["text"] for w in card.data.widget] == prompts
    from PIL import Image

    for k, _ in enumerate(prompts):
        assert Image.open(run_dir / PIPELINE_SUBDIR / "images" / f"sample_{k}.png").size[0] >= 256
    grid = Image.open(run_dir / PIPELINE_SUBDIR / "samples.png")
    cols = load_config(RECIPE).eval.samples_per_grid_prompt
    assert grid.size[0] == cols * 128 and grid.size[1] > len(prompts) * 128  # upscaled, with label strips


def test_evaluate_update_card_renders_metrics(run_dir, tmp_path):
    import importlib.util

    from huggingface_hub import ModelCard

    folder = tmp_path / "pipe"
    shutil.copytree(run_dir / PIPELINE_SUBDIR, folder)
    assert "## Metrics" not in (folder / "README.md").read_text()
    spec = importlib.util.spec_from_file_location(
        "evaluate", Path(__file__).parent.parent / "scripts" / "evaluate.py"
    )
    evaluate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate)
    args = [
        "--model",
        str(folder),
        "--num",
        "4",
        "--num-val",
        "3",
        "--seeds",
        "2",
        "--diversity-prompts",
        "2",
    ]
    assert evaluate.main([*args, "--update-card"]) == 0
    metrics = json.loads((folder / "metrics.json").read_text())
    assert (
        metrics["command"].startswith("python scripts/evaluate.py --model")
        and "fd_gen_train" in metrics["metrics"]
    )
    card = ModelCard.load(folder / "README.md")
    assert "## Metrics" in card.text and "| fd_gen_train |" in card.text and "--update-card" in card.text
    assert f'from_pretrained("{run_dir / PIPELINE_SUBDIR}"' in card.text  # the snippets keep their target


def test_exported_pipeline_loads_in_a_fresh_process(run_dir):
    pipe_dir = run_dir / PIPELINE_SUBDIR
    out = run_python(f"""
        import torch
        from t2i_drift import DriftingPipeline
        pipe = DriftingPipeline.from_pretrained({str(pipe_dir)!r})
        images = pipe("teapot", num_images_per_prompt=4, generator=torch.Generator().manual_seed(0)).images
        print(len(images), images[0].size, pipe.config.guidance_scale_range)
    """)
    assert "4 (16, 16) [1.0, 4.0]" in out


def test_generate_script_writes_pngs(run_dir, tmp_path):
    import subprocess
    import sys

    script = Path(__file__).parent.parent / "scripts" / "generate.py"
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            "--model",
            str(run_dir / PIPELINE_SUBDIR),
            "--prompt",
            "teapot",
            "--num-images",
            "3",
            "--out",
            str(tmp_path / "png"),
            "--prompt",
            "red apple",
            "--prompt",
            "red-apple",  # the same file-name slug as "red apple": must not overwrite it
            "--grid",
            str(tmp_path / "g.png"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "png").glob("00_teapot_*.png"))) == 3
    assert len(list((tmp_path / "png").glob("01_red_apple_*.png"))) == 3
    assert len(list((tmp_path / "png").glob("02_red_apple_*.png"))) == 3
    assert len(list((tmp_path / "png").glob("*.png"))) == 9
    from PIL import Image

    assert Image.open(tmp_path / "g.png").size == (3 * 16, 3 * 16)


# Everything a checkpoint holds that a resumed run must reproduce.
CHECKPOINT_FILES = (
    "transformer/diffusion_pytorch_model.safetensors",
    "ema.safetensors",
    "optimizer.safetensors",
    "rng_state_0.safetensors",
)


@pytest.fixture(scope="module")
def one_step_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_step")
    train_t2i(load_config(RECIPE, [f"train.output_dir={out}", "train.max_steps=1"]))
    return out


def _resume_to_step_2(one_step_dir: Path, out: Path) -> Path:
    """Copy the 1-step run, resume it from checkpoint-1 for one more step; returns checkpoint-2."""
    shutil.copytree(one_step_dir, out)
    train_t2i(
        load_config(
            RECIPE, [f"train.output_dir={out}", "train.max_steps=2", "train.resume_from_checkpoint=latest"]
        )
    )
    return out / "checkpoints" / "checkpoint-2"


def _differences(a: Path, b: Path) -> list[str]:
    """Tensors that differ between two checkpoint folders (files of CHECKPOINT_FILES)."""
    differ = []
    for name in CHECKPOINT_FILES:
        left, right = load_file(str(a / name)), load_file(str(b / name))
        assert left.keys() == right.keys(), name
        differ += [f"{name}:{key}" for key in left if not torch.equal(left[key], right[key])]
    return differ


def test_resume_continues_exactly(run_dir, one_step_dir, tmp_path):
    """2 steps straight == 1 step, stop, resume from checkpoint-1, 1 more step: model, EMA,
    optimizer state and the run's RNG all bit for bit."""
    resumed = _resume_to_step_2(one_step_dir, tmp_path / "resumed")
    assert _differences(run_dir / "checkpoints" / "checkpoint-2", resumed) == []


@pytest.mark.parametrize("recorded", [1000.0, None])
def test_resumed_run_reports_its_training_time_over_all_sessions(one_step_dir, tmp_path, recorded):
    """The run summary, the last checkpoint and the card count the earlier sessions' time (what
    checkpoint-1 recorded) plus this session's; a checkpoint without the record gives no total."""
    out = tmp_path / "resumed"
    shutil.copytree(one_step_dir, out)
    state_file = out / "checkpoints" / "checkpoint-1" / "trainer_state.json"
    meta = json.loads(state_file.read_text())
    assert meta["train_wall_s"] > 0  # the first session recorded its own time
    if recorded is None:
        del meta["train_wall_s"]  # as written before the record existed
    else:
        meta["train_wall_s"] = recorded
    state_file.write_text(json.dumps(meta))
    train_t2i(
        load_config(
            RECIPE, [f"train.output_dir={out}", "train.max_steps=2", "train.resume_from_checkpoint=latest"]
        )
    )
    summary = json.loads((out / "run_summary.json").read_text())
    last = json.loads((out / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    card = (out / "pipeline" / "README.md").read_text().splitlines()
    training_line = next(line for line in card if line.startswith("- training: "))
    if recorded is None:
        assert summary["train_wall_s_total"] is None and last["train_wall_s"] is None
        assert training_line == "- training: 2 steps on CPU"
    else:
        assert summary["train_wall_s_total"] == pytest.approx(recorded + summary["train_wall_s"])
        assert recorded < last["train_wall_s"] <= summary["train_wall_s_total"]
        assert training_line == f"- training: 2 steps on CPU, {summary['train_wall_s_total'] / 60:.0f} min"


class _Ignore:
    def load_state_dict(self, *args, **kwargs) -> None:
        pass


@pytest.mark.parametrize("part", ["model", "ema", "optimizer"])
def test_resume_check_fails_when_a_part_is_not_restored(run_dir, one_step_dir, tmp_path, monkeypatch, part):
    """The check above can fail: resuming without restoring the model weights (they stay at the
    seeded init; this also needs the first optimizer step to move them), the EMA or the optimizer
    state gives a different checkpoint-2."""
    from t2i_drift.training import checkpoint

    if part == "model":
        monkeypatch.setattr(checkpoint, "load_full_state_dict", lambda *args, **kwargs: None)
    elif part == "optimizer":
        monkeypatch.setattr(checkpoint, "load_full_optimizer_state", lambda *args, **kwargs: None)
    else:
        restore = checkpoint.load_checkpoint

        def without_ema(path, **kwargs):
            return restore(path, **{**kwargs, "ema": _Ignore()})

        monkeypatch.setattr(checkpoint, "load_checkpoint", without_ema)
    resumed = _resume_to_step_2(one_step_dir, tmp_path / "resumed")
    assert _differences(run_dir / "checkpoints" / "checkpoint-2", resumed) != []


def test_cli_through_accelerate_launch(tmp_path):
    """The README's entry point: `accelerate launch scripts/train_t2i.py` with a recipe and overrides."""
    import os
    import shutil
    import subprocess

    root = Path(__file__).parent.parent
    accelerate = shutil.which("accelerate")
    assert accelerate, "accelerate CLI not on PATH"
    proc = subprocess.run(
        [
            accelerate,
            "launch",
            "--config_file",
            str(root / "recipes/accelerate/cpu.yaml"),
            str(root / "scripts/train_t2i.py"),
            "--config",
            str(RECIPE),
            "--output_dir",
            str(tmp_path / "cli"),
            "--max_steps",
            "1",
            "drift.samples_per_prompt=3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HOME": str(tmp_path / "hf")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "cli" / PIPELINE_SUBDIR / "model_index.json").is_file()
    assert "samples_per_prompt: 3" in (tmp_path / "cli" / "config.yaml").read_text()


def test_cli_bad_override_is_a_clear_error(tmp_path):
    import subprocess
    import sys

    script = Path(__file__).parent.parent / "scripts" / "train_t2i.py"
    proc = subprocess.run(
        [sys.executable, str(script), "train.batch_sise=4"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2
    assert "train.batch_sise" in proc.stderr and "Traceback" not in proc.stderr


def _load_script(name: str):
    import importlib.util

    path = Path(__file__).parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_grids_script(run_dir, tmp_path):
    from PIL import Image

    pipe = str(run_dir / PIPELINE_SUBDIR)
    out = tmp_path / "cmp.png"
    assert (
        _load_script("compare_grids").main(
            [
                "--model",
                pipe,
                "--label",
                "a",
                "--model",
                pipe,
                "--label",
                "b",
                "--prompt",
                "teapot",
                "--num-images",
                "2",
                "--scale",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert Image.open(out).size == (2 * 32 + 12, 16 + 20)


def test_export_checkpoint_ema_raw_and_bf16_variant(run_dir, tmp_path):
    """checkpoint-2's EMA weights are exactly what the trainer exported at step 2; --no-ema gives
    the raw weights; the bf16 variant loads with variant="bf16"."""
    import subprocess
    import sys

    from t2i_drift import DriftingTransformer2DModel

    ckpt = run_dir / "checkpoints" / "checkpoint-2"
    script = Path(__file__).parent.parent / "scripts" / "export_pipeline.py"
    for extra, out in (([], "ema"), (["--no-ema", "--variant", "bf16"], "raw")):
        proc = subprocess.run(
            [sys.executable, str(script), "--checkpoint", str(ckpt), "--out", str(tmp_path / out), *extra],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
    name = "diffusion_pytorch_model.safetensors"
    trained = load_file(str(run_dir / PIPELINE_SUBDIR / "transformer" / name))
    ema = load_file(str(tmp_path / "ema" / "transformer" / name))
    raw = load_file(str(tmp_path / "raw" / "transformer" / name))
    ckpt_raw = load_file(str(ckpt / "transformer" / name))
    assert trained.keys() == ema.keys()
    assert all(torch.equal(trained[k], ema[k]) for k in trained)
    assert all(torch.equal(ckpt_raw[k], raw[k]) for k in raw)
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)  # EMA and raw differ: the test can fail
    low = DriftingTransformer2DModel.from_pretrained(
        tmp_path / "raw" / "transformer", variant="bf16", torch_dtype=torch.bfloat16
    )
    assert next(low.parameters()).dtype == torch.bfloat16
    assert (tmp_path / "ema" / "samples.png").is_file() and "![samples](samples.png)" in (
        tmp_path / "ema" / "README.md"
    ).read_text()
    bad = subprocess.run(
        [sys.executable, str(script), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "not a checkpoint folder" in bad.stderr


def test_model_card_usage_snippets_run(run_dir, tmp_path):
    """Every python block of the card runs as written, in a fresh process, against the layout the
    card ships in: the standard export, and the hub layout written from it."""
    import re

    from t2i_drift.hub import write_hub_layout

    hub = tmp_path / "hub"
    write_hub_layout(run_dir / PIPELINE_SUBDIR, hub)
    for folder, expected in ((run_dir / PIPELINE_SUBDIR, "load_pipeline"), (hub, "DiffusionPipeline")):
        card = (folder / "README.md").read_text()
        blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
        assert len(blocks) == 2 and f'from_pretrained("{folder}"' in blocks[0] and expected in blocks[1]
        assert ("trust_remote_code=True" in blocks[0]) == (folder == hub)
        for block in blocks:
            out = run_python(block + "\nprint('RAN', type(pipe).__name__)\n", cwd=tmp_path)
            assert "RAN DriftingPipeline" in out


def test_scripts_load_a_hub_layout_folder(run_dir, tmp_path):
    """generate.py, compare_grids.py and evaluate_shapes.py take a hub-layout folder as --model."""
    import subprocess
    import sys

    from t2i_drift.hub import write_hub_layout

    hub = tmp_path / "hub"
    write_hub_layout(run_dir / PIPELINE_SUBDIR, hub)
    scripts = Path(__file__).parent.parent / "scripts"
    commands = [
        [
            "generate.py",
            "--model",
            str(hub),
            "--prompt",
            "teapot",
            "--num-images",
            "1",
            "--out",
            str(tmp_path / "g"),
        ],
        [
            "compare_grids.py",
            "--model",
            str(hub),
            "--prompt",
            "teapot",
            "--num-images",
            "1",
            "--out",
            str(tmp_path / "c.png"),
        ],
        ["evaluate_shapes.py", "--model", str(hub), "--max-scenes", "2", "--out", str(tmp_path / "s.json")],
    ]
    for command in commands:
        proc = subprocess.run(
            [sys.executable, str(scripts / command[0]), *command[1:]],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, (command[0], proc.stderr[-2000:])
    assert (tmp_path / "c.png").is_file() and json.loads((tmp_path / "s.json").read_text())
