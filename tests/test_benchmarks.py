"""The step breakdown (training/step_timer.py, scripts/bench_train.py) and the GPU check script
(scripts/gpu_check.sh --tiny, on CPU). Figures are not asserted, only that every phase is
measured and the reports are complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from t2i_drift.training.step_timer import StepTimer

ROOT = Path(__file__).parent.parent
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _slow_square(x: torch.Tensor) -> torch.Tensor:
    class Slow(torch.autograd.Function):
        @staticmethod
        def forward(ctx, value):
            return value * value

        @staticmethod
        def backward(ctx, grad):
            import time

            time.sleep(0.05)
            return grad

    return Slow.apply(x)


def test_split_at_charges_the_backward_before_a_gradient_to_its_own_phase():
    """The backward of what comes after ``generated`` (a slow op here) is charged to the split
    phase, the rest of the backward to the phase itself; a disabled timer records nothing."""
    timer = StepTimer(enabled=True)
    x = torch.ones(4, requires_grad=True)
    generated = x * 2
    timer.split_at(generated, "features backward")
    loss = _slow_square(generated).sum()
    with timer("generator backward"):
        loss.backward()
    assert timer.seconds["features backward"] >= 0.05
    assert timer.seconds["generator backward"] < 0.05
    off = StepTimer()
    y = torch.ones(2, requires_grad=True) * 3
    off.split_at(y, "features backward")
    with off("generator backward"):
        y.sum().backward()
    assert off.seconds == {}


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=OFFLINE, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_bench_train_breaks_a_real_recipe_step_into_every_phase(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run(
        [sys.executable, "scripts/bench_train.py", "--config", "recipes/tiny_test.yaml"]
        + ["--steps", "2", "--warmup", "1", "--out", str(out)]
    )
    (result,) = json.loads(out.read_text())
    phases = result["phases_ms"]
    for name in ("data", "generator forward", "features forward", "drift field", "features backward"):
        assert phases[name] > 0, name
    for name in ("generator backward", "optimizer", "ema"):
        assert phases[name] > 0, name
    assert sum(result["share"].values()) == pytest.approx(1.0)
    assert result["samples_per_step"] == 16 and result["samples_per_s"] > 0
    assert result["step_over_generator"] > 1
    assert "drift field" in proc.stdout and "% of the step" in proc.stdout


def test_bench_train_synthetic_sweep_and_plot(tmp_path):
    out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    _run(
        [sys.executable, "scripts/bench_train.py", "--synthetic", "--preset", "tiny", "--mae-width", "32"]
        + ["--size", "8", "--samples", "2", "--steps", "1", "--warmup", "0"]
        + ["--sweep", "prompts=2,4", "--out", str(out), "--plot", str(png)]
    )
    results = json.loads(out.read_text())
    assert [r["setting"]["prompts"] for r in results] == [2, 4]
    assert [r["samples_per_step"] for r in results] == [4, 8]
    assert all(0 < r["drift_share"] < 1 for r in results)
    assert png.stat().st_size > 10_000


def test_bench_train_rejects_bad_arguments():
    for args, message in (
        (["--sweep", "prompts=4,8"], "--sweep needs --synthetic"),
        (["--synthetic", "--sweep", "heads=4"], "must be prompts, samples, size or mae_width"),
        (["--synthetic", "--text", "bert"], "--text 'bert'"),
        (["--plot", "x.png"], "--plot needs --sweep"),
    ):
        proc = subprocess.run(
            [sys.executable, "scripts/bench_train.py", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=OFFLINE,
            cwd=ROOT,
        )
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr[-500:])


def test_gpu_check_tiny_runs_on_cpu(tmp_path):
    """What CI can run of the GPU check: the same measurements at toy sizes."""
    out = tmp_path / "check.json"
    _run(["bash", "scripts/gpu_check.sh", "--tiny", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["tiny"] is True
    train = report["train"]
    assert train["samples_per_s"] > 0 and train["peak_memory_mb"] > 0 and 0 < train["drift_share"] < 1
    assert {(r["size"], r["batch"]) for r in report["sampling"]} == {(64, 1), (64, 4), (128, 1), (128, 4)}
    assert all(r["images_per_s"] > 0 for r in report["sampling"])
    bad = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--out", str(tmp_path / "full.json")],
        capture_output=True,
        text=True,
        timeout=120,
        env=OFFLINE,
        cwd=ROOT,
    )
    if not torch.cuda.is_available():
        assert bad.returncode != 0 and "no GPU found" in bad.stderr


def test_speed_options_keep_the_features():
    """features.channels_last changes the memory layout, not the features; model.attention_backend
    must name a diffusers backend (a config error otherwise)."""
    from t2i_drift.models.feature_encoders import MAEFeatures, MultiFeatureEncoder
    from t2i_drift.models.mae_resnet import ResNetMAE
    from t2i_drift.training.builders import speed_up_encoder
    from t2i_drift.training.config import ConfigError, FeaturesConfig, load_config

    torch.manual_seed(0)
    mae = ResNetMAE(width=8, depths=(1, 1), norm_num_groups=4, sample_size=16)
    plain = MultiFeatureEncoder({"mae": MAEFeatures(mae)}).eval()
    images = torch.randn(2, 3, 16, 16)
    expected = plain(images)
    fast = speed_up_encoder(plain, FeaturesConfig(channels_last=True))
    assert next(p for p in fast.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    got = fast(images)
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)
    assert (
        load_config(None, ["model.attention_backend=_native_math"]).model.attention_backend == "_native_math"
    )
    with pytest.raises(ConfigError, match="model.attention_backend"):
        load_config(None, ["model.attention_backend=fastest"])


def test_bench_train_variants_report_ratios_to_the_base_setting(tmp_path):
    """--variant measures the recipe again with the speed options on (compiled encoder, channels
    last, an explicit SDPA backend) in the same process, as a ratio to the base setting."""
    out = tmp_path / "variants.json"
    variant = "model.attention_backend=_native_math features.channels_last=true features.compile=true"
    _run(
        [sys.executable, "scripts/bench_train.py", "--config", "recipes/tiny_test.yaml"]
        + ["--steps", "1", "--warmup", "1", "--variant", variant, "--out", str(out)]
    )
    base, fast = json.loads(out.read_text())
    assert "step_ratio_to_base" not in base and fast["step_ratio_to_base"] > 0
    assert fast["setting"]["overrides"] == variant.split()


def test_bench_mode_seeking_prints_each_variant_and_rejects_bad_ones():
    proc = _run(
        [sys.executable, "scripts/bench_mode_seeking.py", "--captions", "2", "--samples", "2", "--steps", "4",
         "--variant", "a:mask_self=0,affinity_floor=0,positives=3", "--variant", "b:mask_self=1,positives=1"]
    )  # fmt: skip
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| a |") or line.startswith("| b |")]
    assert len(rows) == 10  # 5 logged steps per variant
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert 0.0 <= float(cells[2]) <= 1.0 and 0.0 <= float(cells[3]) <= 1.0 and float(cells[5]) >= 0.0
    bad = subprocess.run(
        [sys.executable, "scripts/bench_mode_seeking.py", "--variant", "x:floor=0"],
        capture_output=True, text=True, env=OFFLINE, cwd=ROOT,
    )  # fmt: skip
    assert bad.returncode == 2 and "floor" in bad.stderr


def test_bench_mode_seeking_runs_in_a_vae_latent_space(tmp_path):
    """--vae: the free samples are latents (the distances are per latent element), the checker
    scores their decodings; a folder that is not a VAE is a usage error naming --vae."""
    from helpers import tiny_vae

    tiny_vae(scaling_factor=0.7, shift_factor=0.0).save_pretrained(tmp_path / "vae")
    proc = _run(
        [sys.executable, "scripts/bench_mode_seeking.py", "--captions", "2", "--samples", "2", "--steps", "4",
         "--vae", str(tmp_path / "vae"), "--variant", "a:mask_self=0,affinity_floor=0,positives=3"]
    )  # fmt: skip
    assert "in the latents of" in proc.stdout and "[4, 16, 16]" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| a |")]
    assert len(rows) == 5
    bad = subprocess.run(
        [sys.executable, "scripts/bench_mode_seeking.py", "--vae", str(tmp_path)],
        capture_output=True, text=True, env=OFFLINE, cwd=ROOT,
    )  # fmt: skip
    assert bad.returncode == 2 and "argument --vae" in bad.stderr


def test_bench_mode_seeking_puts_mae_keys_in_the_field(tmp_path, monkeypatch, capsys):
    """--mae/--space: the field gets the MAE's keys (alone or beside raw) and --shift moves the MAE's
    input every step; without the MAE the option errors name the argument."""
    from helpers import load_script, tiny_mae

    tiny_mae().save_pretrained(tmp_path / "mae")
    module = load_script("bench_mode_seeking")
    seen: list[list[str]] = []
    offsets: list[tuple[int, int]] = []
    real_loss, real_set_shift = module.text_to_image_drift_loss, module.set_shift

    def spy_loss(feats, *args, **kwargs):
        seen.append(sorted(feats))
        return real_loss(feats, *args, **kwargs)

    def spy_shift(encoder, offset):
        offsets.append(offset)
        return real_set_shift(encoder, offset)

    monkeypatch.setattr(module, "text_to_image_drift_loss", spy_loss)
    monkeypatch.setattr(module, "set_shift", spy_shift)
    argv = ["--captions", "2", "--samples", "2", "--steps", "4", "--mae", str(tmp_path / "mae")]
    assert module.main([*argv, "--space", "mae+raw", "--shift", "2", "--variant", "a:positives=3"]) == 0
    assert "raw/flat" in seen[0] and any(k.startswith("mae.") for k in seen[0])
    assert len(offsets) == 4 and len(set(offsets)) > 1  # one offset per step, not all the same
    seen.clear()
    assert module.main([*argv, "--space", "mae", "--variant", "a:positives=1"]) == 0
    assert all(k.startswith("mae") for k in seen[0])  # mae.s1.b2/loc, ..., mae/input_rms
    for bad, word in (
        (["--space", "mae"], "--space"),
        (["--shift", "2"], "--shift"),
        (["--mae", str(tmp_path / "mae" / "missing"), "--space", "mae"], "--mae"),
    ):
        with pytest.raises(SystemExit) as err:
            module.main(["--steps", "1", *bad])
        assert err.value.code == 2 and f"argument {word}" in capsys.readouterr().err


def test_bench_mode_seeking_renders_at_the_asked_resolution(capsys):
    """--resolution renders the caption bank at that side (the distances are per pixel, so the
    start's distance to the mean stays the init noise's variance); a bad side names the argument."""
    from helpers import load_script

    module = load_script("bench_mode_seeking")
    assert module.main(["--captions", "2", "--samples", "2", "--steps", "4", "--resolution", "48",
                        "--variant", "a:positives=2"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "in 48 px" in out
    groups, bank = module.caption_bank(2, 48)
    assert bank.shape == (2, 20, 3, 48, 48) and len(groups) == 2
    first = next(line for line in out.splitlines() if line.startswith("| a | 0 |"))
    assert abs(float(first.split("|")[5]) - 0.05**2) < 5e-4  # N(0, 0.05^2) around the mean
    with pytest.raises(SystemExit) as err:
        module.main(["--resolution", "30"])
    assert err.value.code == 2 and "argument --resolution" in capsys.readouterr().err


def test_bench_augment_prints_both_rates_and_their_ratio(capsys):
    from helpers import load_script

    module = load_script("bench_augment")
    assert module.main(["--batch", "4", "--size", "8", "--repeats", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "per-image torchvision loop:" in out and "BatchAugment (batched):" in out
    assert float(out.strip().splitlines()[-1].split()[-1]) > 0  # the ratio
    with pytest.raises(SystemExit):
        module.main(["--batch", "0"])
