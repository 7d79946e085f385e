"""Benchmark the batched, chunked drifting field against a straightforward per-group loop.

For each size it prints, in one run: wall time (median of --repeats), speed-up over the loop, peak
extra memory, and the max abs difference relative to the loop's largest value. The reference is
written here, independently of the library: a Python loop over groups doing METHOD.md sections 2
and 3 with plain tensor ops (one group and one temperature at a time).

Peak memory on CUDA is ``torch.cuda.max_memory_allocated`` above the inputs. On CPU (Linux) each
(size, method) runs once more in a fresh subprocess and reports the growth of its peak resident
set (VmHWM, reset after the inputs exist and torch is warmed up): the allocator returns large
blocks to the OS, so this is the peak working memory of the call.

    python scripts/bench_drift.py                       # the README table (CPU, about 2 minutes)
    python scripts/bench_drift.py --device cuda --budget-mb 1024
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from t2i_drift.drifting import compute_drift
from t2i_drift.drifting.chunking import bytes_per_group, plan_chunks

# (G groups, n generated, m extra negatives, p positives, D): m + p as named in the issue.
SIZES: list[tuple[int, int, int, int, int]] = [
    (4096, 16, 31, 1, 256),  # many small groups: per-location features, one positive per prompt
    (1024, 8, 63, 1, 64),
    (256, 32, 44, 4, 512),
    (64, 64, 95, 1, 1024),  # few large groups: global features of a big batch
]
TEMPERATURES = (0.02, 0.05, 0.2)


def make_inputs(size: tuple[int, int, int, int, int], device: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    G, n, m, p, D = size
    g = torch.Generator().manual_seed(seed)
    gen = torch.randn(G, n, D, generator=g)
    pos = torch.randn(G, p, D, generator=g) + 0.1
    neg = torch.randn(G, m, D, generator=g) - 0.1
    w = torch.rand(G, m, generator=g) * 2.0
    return tuple(t.to(device) for t in (gen, pos, neg, w))


def reference_loop(
    gen: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, w: torch.Tensor, taus=TEMPERATURES
) -> torch.Tensor:
    """METHOD.md sections 2-3, one group and one temperature at a time, plain tensor ops."""
    G, n, D = gen.shape
    # Section 3 scale: weighted mean over all pairs of all groups (self pairs included).
    num = torch.zeros((), device=gen.device)
    den = torch.zeros((), device=gen.device)
    for g in range(G):
        t = torch.cat([gen[g], neg[g], pos[g]])
        wt = torch.cat([torch.ones(n, device=gen.device), w[g], torch.ones(pos.shape[1], device=gen.device)])
        d = torch.cdist(gen[g], t).clamp_min(1e-4)
        num = num + (d * wt).sum()
        den = den + wt.sum() * n
    scale = num / den
    s_in = torch.clamp(scale / D**0.5, min=1e-3)
    unit = torch.clamp(scale, min=1e-3)
    fields = {tau: [] for tau in taus}
    for g in range(G):
        x = gen[g] / s_in
        t = torch.cat([gen[g], neg[g], pos[g]]) / s_in
        wt = torch.cat([torch.ones(n, device=gen.device), w[g], torch.ones(pos.shape[1], device=gen.device)])
        is_pos = torch.arange(t.shape[0], device=gen.device) >= n + neg.shape[1]
        d = torch.cdist(gen[g], torch.cat([gen[g], neg[g], pos[g]])).clamp_min(1e-4) / unit
        d[:, :n] += 100.0 * torch.eye(n, device=gen.device)
        for tau in taus:
            logits = -d / tau
            a = torch.sqrt(torch.clamp(logits.softmax(1) * logits.softmax(0), min=1e-6)) * wt
            s_pos = (a * is_pos).sum(1, keepdim=True)
            s_neg = (a * ~is_pos).sum(1, keepdim=True)
            coeff = torch.where(is_pos, a * s_neg, -a * s_pos)
            fields[tau].append(coeff @ t - coeff.sum(1, keepdim=True) * x)
    out = torch.zeros_like(gen)
    for tau in taus:
        v = torch.stack(fields[tau])
        out += v / torch.sqrt(torch.clamp(v.square().mean(), min=1e-8))
    return out


def run_method(method: str, inputs: tuple[torch.Tensor, ...], budget: int | None, compile: bool = False):
    gen, pos, neg, w = inputs
    if method == "loop":
        return reference_loop(gen, pos, neg, w)
    return compute_drift(gen, pos, neg, w, TEMPERATURES, memory_budget=budget, compile=compile).field


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_method(method, inputs, budget, device, repeats, compile=False) -> tuple[float, torch.Tensor]:
    out = run_method(method, inputs, budget, compile)  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = run_method(method, inputs, budget, compile)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def peak_extra_bytes(size, method: str, budget: int | None, device: str, compile: bool = False) -> int:
    """Peak working memory of one call above the inputs (see the module docstring)."""
    if device.startswith("cuda"):
        inputs = make_inputs(size, device)
        run_method(method, inputs, budget, compile)  # compile/warm outside the measurement
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = run_method(method, inputs, budget, compile)
        torch.cuda.synchronize()
        # The returned field is the output, not working memory.
        return torch.cuda.max_memory_allocated() - base - out.numel() * out.element_size()
    cmd = [sys.executable, __file__, "--measure", json.dumps([list(size), method, budget, compile])]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1])


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _measure_in_this_process(spec: str) -> None:
    size, method, budget, compile = json.loads(spec)
    size = tuple(size)
    inputs = make_inputs(size, "cpu")
    # Warm torch up on a tiny problem (thread pools, allocator, kernels), then reset the high-water
    # mark of the resident set to the current size (Linux: "5" > clear_refs resets VmHWM; note that
    # ru_maxrss would carry the parent's peak across fork + exec).
    small = make_inputs((2, 4, 3, 1, 8), "cpu")
    run_method(method, small, None, compile)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _proc_status_kib("VmRSS")
    out = run_method(method, inputs, budget, compile)
    peak = _proc_status_kib("VmHWM")
    output_bytes = out.numel() * out.element_size()
    print(max(0, (peak - base) * 1024 - output_bytes))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--budget-mb", type=float, default=256.0, help="memory budget of the chunked field")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile row per size")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure:
        _measure_in_this_process(args.measure)
        return
    budget = int(args.budget_mb * 2**20)
    methods = [("loop", None, False), ("batched", None, False), ("chunked", budget, False)]
    if args.compile:
        methods.append(("chunked+compile", budget, True))
    print(
        f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} "
        f"budget={args.budget_mb:g} MiB temperatures={TEMPERATURES}"
    )
    columns = ["G", "n", "m+p", "D", "method", "chunks", "time (ms)", "speed-up vs loop", "peak extra (MiB)"]
    header = "| " + " | ".join([*columns, "max rel diff"]) + " |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for size in SIZES:
        G, n, m, p, D = size
        inputs = make_inputs(size, args.device)
        ref_time, ref = time_method("loop", inputs, None, args.device, max(1, args.repeats // 2))
        for label, method_budget, compile in methods:
            method = "loop" if label == "loop" else "field"
            if label == "loop":
                t, out = ref_time, ref
            else:
                t, out = time_method(method, inputs, method_budget, args.device, args.repeats, compile)
            plan = plan_chunks(G, n, m, p, D, len(TEMPERATURES), method_budget)
            chunks = "-" if label == "loop" else f"{plan.num_chunks}{'' if plan.cache else ' (recompute)'}"
            mem = (
                "-"
                if args.no_memory
                else f"{peak_extra_bytes(size, method, method_budget, args.device, compile) / 2**20:.0f}"
            )
            diff = (out - ref).abs().max().item() / ref.abs().max().item()
            print(
                f"| {G} | {n} | {m + p} | {D} | {label} | {chunks} | {t * 1e3:.0f} | {ref_time / t:.1f}x "
                f"| {mem} | {diff:.1e} |",
                flush=True,
            )
        est = bytes_per_group(n, m, p, D, len(TEMPERATURES)) * G / 2**20
        print(f"|  |  |  |  | (estimated unchunked working set: {est:.0f} MiB) |  |  |  |  |  |", flush=True)


if __name__ == "__main__":
    main()
