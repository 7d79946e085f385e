"""Benchmark the batched, chunked drifting field against the per-group reference implementation.

For each size it prints, in one run: wall time (median of --repeats), speed-up over the reference,
peak extra memory, and the max abs difference relative to the reference's largest value. The
reference is :mod:`t2i_drift.drifting.reference`: a Python loop over groups and temperatures doing
docs/method.md sections 2 and 3 with plain tensor ops, in float32 here by default so that the
timing compares like with like (``--reference-dtype float64`` for the accuracy column alone).

Peak memory on CUDA is ``torch.cuda.max_memory_allocated`` above the inputs. On CPU (Linux) each
(size, method) runs once more in a fresh subprocess and reports the growth of its peak resident
set (VmHWM, reset after the inputs exist and torch is warmed up): the allocator returns large
blocks to the OS, so this is the peak working memory of the call.

    python scripts/bench_drift.py                       # the docs/benchmarks.md table (CPU, about 2 minutes)
    python scripts/bench_drift.py --device cuda --budget-mb 1024
    python scripts/bench_drift.py --sizes 256,8,15,1,64 --repeats 1 --no-memory   # a quick check
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from t2i_drift.drifting import DriftGroups, DriftOptions, evaluate_drift
from t2i_drift.drifting.chunking import bytes_per_group, plan_chunks
from t2i_drift.drifting.reference import reference_drift

Size = tuple[int, int, int, int, int]  # (groups, n generated, m extra negatives, p positives, D)
SIZES: list[Size] = [
    (4096, 16, 31, 1, 256),  # many small groups: per-location features, one positive per prompt
    (1024, 8, 63, 1, 64),
    (256, 32, 44, 4, 512),
    (64, 64, 95, 1, 1024),  # few large groups: global features of a big batch
]
TEMPERATURES = (0.02, 0.05, 0.2)
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def make_inputs(size: Size, device: str, seed: int = 0) -> DriftGroups:
    """Random groups of one key: gen [groups, n, D], pos [groups, p, D], neg [groups, m, D], w."""
    num_groups, n, m, p, D = size
    g = torch.Generator().manual_seed(seed)
    gen = torch.randn(num_groups, n, D, generator=g)
    pos = torch.randn(num_groups, p, D, generator=g) + 0.1
    neg = torch.randn(num_groups, m, D, generator=g) - 0.1
    w = torch.rand(num_groups, m, generator=g) * 2.0
    gen, pos, neg, w = (t.to(device) for t in (gen, pos, neg, w))
    return DriftGroups(gen, pos, neg, w)


def run_method(
    method: str,
    inputs: DriftGroups,
    budget: int | None,
    compile: bool = False,
    reference_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The normalized field [groups, n, D] by ``method`` ("loop": the reference, "field": the library)."""
    if method == "loop":
        options = DriftOptions(temperatures=TEMPERATURES)
        return reference_drift({"": inputs}, options, dtype=reference_dtype)[""].field
    options = DriftOptions(temperatures=TEMPERATURES, memory_budget=budget, compile=compile)
    return evaluate_drift({"": inputs}, options)[""].field


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_method(
    method: str,
    inputs: DriftGroups,
    budget: int | None,
    device: str,
    repeats: int,
    compile: bool = False,
    reference_dtype: torch.dtype = torch.float32,
) -> tuple[float, torch.Tensor]:
    """Median wall time of ``repeats`` calls (after a warm-up call) and the last output."""
    out = run_method(method, inputs, budget, compile, reference_dtype)  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = run_method(method, inputs, budget, compile, reference_dtype)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def peak_extra_bytes(size: Size, method: str, budget: int | None, device: str, compile: bool = False) -> int:
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
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=None,
        metavar="GROUPS,n,m,p,D",
        help="sizes to run instead of the docs/benchmarks.md table's, e.g. 256,8,15,1,64",
    )
    parser.add_argument(
        "--reference-dtype",
        choices=list(DTYPES),
        default="float32",
        help="precision of the per-group reference (float32: a like-for-like timing baseline)",
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure:
        _measure_in_this_process(args.measure)
        return
    budget = int(args.budget_mb * 2**20)
    sizes = SIZES if args.sizes is None else [_parse_size(text, parser) for text in args.sizes]
    reference_dtype = DTYPES[args.reference_dtype]
    methods = [("loop", None, False), ("batched", None, False), ("chunked", budget, False)]
    if args.compile:
        methods.append(("chunked+compile", budget, True))
    print(
        f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} "
        f"budget={args.budget_mb:g} MiB temperatures={TEMPERATURES} reference={args.reference_dtype}"
    )
    columns = [
        "groups",
        "n",
        "m+p",
        "D",
        "method",
        "chunks",
        "time (ms)",
        "speed-up vs loop",
        "peak extra (MiB)",
    ]
    header = "| " + " | ".join([*columns, "max rel diff"]) + " |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for size in sizes:
        num_groups, n, m, p, D = size
        inputs = make_inputs(size, args.device)
        ref_repeats = max(1, args.repeats // 2)
        ref_time, ref = time_method("loop", inputs, None, args.device, ref_repeats, False, reference_dtype)
        for label, method_budget, compile in methods:
            method = "loop" if label == "loop" else "field"
            if label == "loop":
                t, out = ref_time, ref
            else:
                t, out = time_method(method, inputs, method_budget, args.device, args.repeats, compile)
            plan = plan_chunks(num_groups, n, m, p, D, len(TEMPERATURES), method_budget)
            chunks = "-" if label == "loop" else f"{plan.num_chunks}{'' if plan.cache else ' (recompute)'}"
            mem = (
                "-"
                if args.no_memory
                else f"{peak_extra_bytes(size, method, method_budget, args.device, compile) / 2**20:.0f}"
            )
            diff = (out.double() - ref.double()).abs().max().item() / ref.abs().max().item()
            print(
                f"| {num_groups} | {n} | {m + p} | {D} | {label} | {chunks} | {t * 1e3:.0f} "
                f"| {ref_time / t:.1f}x | {mem} | {diff:.1e} |",
                flush=True,
            )
        est = bytes_per_group(n, m, p, D, len(TEMPERATURES)) * num_groups / 2**20
        print(f"|  |  |  |  | (estimated unchunked working set: {est:.0f} MiB) |  |  |  |  |  |", flush=True)


def _parse_size(text: str, parser: argparse.ArgumentParser) -> Size:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 5 or min(values) < 1:
        parser.error(f"--sizes takes GROUPS,n,m,p,D with five positive integers, got {text!r}")
    return values  # type: ignore[return-value]


if __name__ == "__main__":
    main()
