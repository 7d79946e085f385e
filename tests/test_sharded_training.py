"""Multi-process training on CPU for every topology of recipes/accelerate/: DDP, FSDP2 full and
hybrid shard, DeepSpeed ZeRO-2 and ZeRO-3. Each trains, checkpoints with rotation, resumes exactly
and exports. Accelerate enables FSDP and DeepSpeed only on accelerator devices;
tests/launchers/sharded_cpu.py lifts that check so the sharded code paths run on gloo."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from t2i_drift import DriftingTransformer2DModel
from t2i_drift.training.config import load_config

ROOT = Path(__file__).parent.parent
RECIPE = ROOT / "recipes" / "tiny_test.yaml"
TOPOLOGIES = ("ddp", "fsdp", "hsdp", "zero2", "zero3")
PARTS = ("transformer/diffusion_pytorch_model.safetensors", "ema.safetensors", "optimizer.safetensors")


def _launch(topology: str, out: Path, tmp: Path, *extra: str) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    processes = ["--num_machines", "1"] if topology == "hsdp" else []
    if topology == "hsdp":  # 2 groups of 2: the smallest mesh where hybrid differs from full shard
        processes += [
            "--parallelism_config_dp_replicate_size",
            "2",
            "--parallelism_config_dp_shard_size",
            "2",
        ]
    script = ROOT / ("scripts/train_t2i.py" if topology == "ddp" else "tests/launchers/sharded_cpu.py")
    command = [
        shutil.which("accelerate"),
        "launch",
        "--config_file",
        str(ROOT / "recipes" / "accelerate" / f"{topology}.yaml"),
        "--num_processes",
        "4" if topology == "hsdp" else "2",
        *processes,
        "--mixed_precision",
        "no",
        "--main_process_port",
        str(port),
        str(script),
        "--config",
        str(RECIPE),
        "--output_dir",
        str(out),
        "--max_steps",
        "3",
        "--checkpoints_total_limit",
        "2",
        *extra,
    ]
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "DS_ACCELERATOR": "cpu",
        "HF_HOME": str(tmp / "hf"),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def _tensors(checkpoint: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {part: load_file(str(checkpoint / part)) for part in PARTS}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, Path, str]]:
    """Per topology: a 3-step run, and a run resumed from its checkpoint-2 (and its log)."""
    tmp = tmp_path_factory.mktemp("topologies")
    out = {}
    for topology in TOPOLOGIES:
        full, resumed = tmp / topology, tmp / f"{topology}-resumed"
        log = _launch(topology, full, tmp)
        checkpoint = full / "checkpoints" / "checkpoint-2"
        _launch(topology, resumed, tmp, "--resume_from_checkpoint", str(checkpoint))
        out[topology] = (full, resumed, log)
    return out


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_topology_trains_rotates_resumes_exactly_and_exports(runs, topology):
    full, resumed, log = runs[topology]
    layout = {
        "ddp": "| 2 process(es)\n",
        "fsdp": "| 2 process(es), FSDP2 mesh (2,): S(0)",
        "hsdp": "| 4 process(es), FSDP2 mesh (2, 2): R, S(0)",
        "zero2": "| 2 process(es), DeepSpeed ZeRO-2",
        "zero3": "| 2 process(es), DeepSpeed ZeRO-3",
    }[topology]
    assert layout in log  # the topology the config asked for is the one that ran
    checkpoints = sorted(p.name for p in (full / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-2", "checkpoint-3"]  # rotation kept 2, nothing half-written
    processes = 4 if topology == "hsdp" else 2
    for rank in range(processes):
        assert (full / "checkpoints" / "checkpoint-3" / f"rng_state_{rank}.safetensors").is_file()
    a = _tensors(full / "checkpoints" / "checkpoint-3")
    b = _tensors(resumed / "checkpoints" / "checkpoint-3")
    before = _tensors(full / "checkpoints" / "checkpoint-2")
    for part in PARTS:
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), f"{part} differs after resume"
        assert any(not torch.equal(a[part][k], before[part][k]) for k in a[part])  # step 3 moved it
    # The exported pipeline holds the EMA weights of the last step, gathered whole.
    folder = full / "pipeline" / "transformer"
    exported = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    model = DriftingTransformer2DModel.from_config(DriftingTransformer2DModel.load_config(folder))
    names = [name for name, _ in model.named_parameters()]  # the EMA file's order
    assert len(exported) == len(a["ema.safetensors"]) == len(names)
    assert all(torch.equal(exported[n], a["ema.safetensors"][str(i)]) for i, n in enumerate(names))


@pytest.mark.parametrize("topology", ["fsdp", "zero2", "zero3"])
def test_sharding_does_not_change_the_math(runs, topology):
    """Sharded over 2 processes trains what DDP over 2 processes trains (same data per process,
    same gradient average): the gradient moments agree to 1e-3 of their scale; only the reduction
    order of floating-point sums differs. (Weights can differ by up to a learning rate per step:
    Adam's first updates are about lr * sign(g), and a gradient near 0 may change sign.)"""
    checkpoint = "checkpoints/checkpoint-2"
    ddp = _tensors(runs["ddp"][0] / checkpoint)
    sharded = _tensors(runs[topology][0] / checkpoint)
    moments = [k for k in ddp["optimizer.safetensors"] if k.endswith(":exp_avg")]
    assert moments and sharded["optimizer.safetensors"].keys() == ddp["optimizer.safetensors"].keys()
    for key in moments:
        a, b = ddp["optimizer.safetensors"][key], sharded["optimizer.safetensors"][key]
        assert (a - b).abs().max() <= 1e-3 * a.abs().max() + 1e-12, key
    lr = load_config(runs["ddp"][0] / "config.yaml").optim.learning_rate
    for key, value in ddp[PARTS[0]].items():
        assert (sharded[PARTS[0]][key] - value).abs().max() <= 2 * 2 * lr, key


@pytest.mark.parametrize("topology", ["fsdp", "zero3"])
def test_sharded_checkpoint_exports_on_one_process(runs, tmp_path, topology):
    """A checkpoint written by 2 sharded processes is whole: scripts/export_pipeline.py turns it
    into a pipeline in a plain single process, with the trainer's own EMA weights."""
    import sys

    checkpoint = runs[topology][0] / "checkpoints" / "checkpoint-3"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/export_pipeline.py"), "--checkpoint", str(checkpoint)]
        + ["--out", str(tmp_path / "pipe")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    name = "transformer/diffusion_pytorch_model.safetensors"
    ours, trainer = (
        load_file(str(tmp_path / "pipe" / name)),
        load_file(str(runs[topology][0] / "pipeline" / name)),
    )
    assert ours.keys() == trainer.keys() and all(torch.equal(ours[k], trainer[k]) for k in ours)


def test_fsdp1_is_refused_before_training():
    """FSDP1's flat parameters cannot be saved whole: a config error naming the fix."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from t2i_drift.training.config import ConfigError
    from t2i_drift.training.sharding import check_topology

    fsdp1 = SimpleNamespace(
        distributed_type=DistributedType.FSDP,
        state=SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=1)),
    )
    with pytest.raises(ConfigError, match="fsdp_version 1"):
        check_topology(fsdp1)
    for fine in (
        DistributedType.NO,
        DistributedType.MULTI_GPU,
        DistributedType.MULTI_CPU,
        DistributedType.DEEPSPEED,
    ):
        check_topology(SimpleNamespace(distributed_type=fine))


def test_deepspeed_needs_no_gradient_accumulation():
    """DeepSpeed steps inside backward: an accumulating config is refused before training."""
    from types import SimpleNamespace

    from t2i_drift.training import zero
    from t2i_drift.training.config import ConfigError

    plugin = SimpleNamespace(deepspeed_config={})
    accelerator = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin), num_processes=4)
    with pytest.raises(ConfigError, match="train.gradient_accumulation_steps must be 1 with DeepSpeed"):
        zero.configure(accelerator, batch_size=8, max_grad_norm=1.0, accumulation=2)
    zero.configure(accelerator, batch_size=8, max_grad_norm=1.0, accumulation=1)
    assert plugin.deepspeed_config == {
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": 1,
        "train_batch_size": 32,
        "gradient_clipping": 1.0,
    }


def test_name_keyed_optimizer_state_round_trips_and_legacy_checkpoints_still_load():
    """The by-name optimizer format restores AdamW exactly into a fresh optimizer; a checkpoint
    written before it (tensors keyed ``<index>.<state>``) still loads."""
    from t2i_drift.training.checkpoint import _unflatten_legacy_optimizer
    from t2i_drift.training.sharding import full_optimizer_state, load_full_optimizer_state

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    groups = [
        {"params": [p for p in model.parameters() if p.dim() == 2], "weight_decay": 0.1},
        {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=1e-2)
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    expected = optimizer.state_dict()
    tensors, meta = full_optimizer_state(model, optimizer)
    assert "0.weight:exp_avg" in tensors and meta["param_groups"][1]["params"] == [
        "0.bias",
        "1.weight",
        "1.bias",
        "2.bias",
    ]
    fresh = torch.optim.AdamW(
        [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups], lr=1e-2
    )
    load_full_optimizer_state(model, fresh, tensors, meta, "test")
    legacy_tensors = {f"{i}.{k}": v for i, state in expected["state"].items() for k, v in state.items()}
    legacy = _unflatten_legacy_optimizer(
        legacy_tensors, {"param_groups": expected["param_groups"], "scalars": {}}
    )
    for restored in (fresh.state_dict(), legacy):
        assert restored["state"].keys() == expected["state"].keys()
        for index, state in expected["state"].items():
            for key, value in state.items():
                assert torch.equal(restored["state"][index][key], value), (index, key)
    shuffled = dict(meta, param_groups=list(reversed(meta["param_groups"])))
    with pytest.raises(ValueError, match="differ between the checkpoint and this model"):
        load_full_optimizer_state(model, fresh, tensors, shuffled, "test")
