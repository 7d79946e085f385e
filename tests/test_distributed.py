"""Section-3 scalars pooled across processes: 2 CPU processes (gloo), each holding half of the
groups, give the single-process field and statistics, for several feature keys evaluated together
and in chunks."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from t2i_drift.drifting import DriftGroups, DriftOptions, evaluate_drift


def _data():
    g = torch.Generator().manual_seed(0)
    keys = {}
    for name, (n, m, p, D) in {"a": (4, 5, 2, 8), "b": (4, 5, 2, 8), "c": (3, 2, 1, 6)}.items():
        keys[name] = DriftGroups(
            gen=torch.randn(6, n, D, generator=g),
            pos=torch.randn(6, p, D, generator=g) + 0.3,
            neg=torch.randn(6, m, D, generator=g) - 0.3,
            neg_weights=torch.rand(6, m, generator=g),
        )
    return keys


def _part(keys, part):
    return {
        k: DriftGroups(g.gen[part], g.pos[part], g.neg[part], g.neg_weights[part]) for k, g in keys.items()
    }


def _flat(results):
    out = {}
    for k, r in results.items():
        out[f"{k}.field"] = r.field
        for name in ("scale", "nearest_pos", "spread"):
            out[f"{k}.{name}"] = getattr(r, name).reshape(1)
        out.update({f"{k}.v2_{t}": v.reshape(1) for t, v in r.raw_v2.items()})
    return out


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    part = slice(rank * 3, rank * 3 + 3)  # each process holds 3 of the 6 groups of every key
    results = evaluate_drift(_part(_data(), part), DriftOptions(distributed=True, chunk_groups=2))
    save_file(_flat(results), f"{out_dir}/rank{rank}.safetensors")
    dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ref = _flat(evaluate_drift(_data()))
    local = _flat(evaluate_drift(_part(_data(), slice(0, 3))))  # what rank 0 gets without pooling
    parts = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    for name, value in ref.items():
        if name.endswith(".field"):
            got = torch.cat([p[name] for p in parts])
            torch.testing.assert_close(got, value, rtol=1e-5, atol=1e-6)
        else:
            for p in parts:
                torch.testing.assert_close(p[name], value)
    assert not torch.allclose(local["a.field"], ref["a.field"][:3])  # pooling matters: the test can fail
