"""Benchmark: dgm-core's EMAQuantizer vs vector-quantize-pytorch vs the naive reference vs the GEMM floor.

One training-mode forward (nearest codeword + EMA dictionary update + commitment loss + straight-through
output) on the same inputs for every method:

- ``dgm``       ``dgm_core.quantization.EMAQuantizer`` (chunked torch search on CPU, fused Triton on CUDA);
- ``dgm-torch`` the same module forced onto the chunked torch search (CUDA only; on CPU it is ``dgm``);
- ``vqp``       ``vector_quantize_pytorch.VectorQuantize`` in training mode (EMA, decay 0.8, straight-
                through gradients), when the package is installed;
- ``naive``     FQ-GAN's formulation: full N×K distance matrix, argmax, one-hot, ``xᵀ @ one_hot``;
- ``floor``     the bare (N×C)·(C×K) matmul followed by argmin: no method that scores every pair can
                be faster.

Timing: one subprocess per shape runs all methods interleaved (``--repeats`` rounds after a warm-up)
and reports the fastest and the median call. Memory: one subprocess per (method, shape) measures the
peak allocated by one warm call on top of the inputs (CPU: peak RSS from ``/proc/self/status`` after
resetting it through ``/proc/self/clear_refs``; CUDA: ``torch.cuda.max_memory_allocated``).

    python packages/dgm-core/benchmarks/bench_quantization.py               # N 4096, 65536 (minutes)
    python packages/dgm-core/benchmarks/bench_quantization.py --big         # adds N = 262144
    python packages/dgm-core/benchmarks/bench_quantization.py --device cuda

Prints a markdown table. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

METHODS = ("floor", "dgm", "dgm-torch", "vqp", "naive")


# ----------------------------------------------------------------------------------------------------
# the contenders (built inside the worker subprocess)


def _naive_reference(codebook_kc, decay: float = 0.8, eps: float = 1e-5) -> Callable:
    """FQ-GAN's ``Quantize.forward`` in training mode, dictionary (C, K), full distance matrix."""
    import torch
    import torch.nn.functional as F

    embed = codebook_kc.t().contiguous().clone()
    cluster_size = torch.zeros(embed.shape[1], device=embed.device)
    embed_avg = embed.clone()
    num_codes = embed.shape[1]

    def step(flat):
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ embed + embed.pow(2).sum(0, keepdim=True)
        _, index = (-dist).max(1)
        onehot = F.one_hot(index, num_codes).type(flat.dtype)
        quantize = F.embedding(index, embed.t())
        cluster_size.mul_(decay).add_(onehot.sum(0), alpha=1 - decay)
        embed_avg.mul_(decay).add_(flat.t() @ onehot, alpha=1 - decay)
        n = cluster_size.sum()
        smoothed = (cluster_size + eps) / (n + num_codes * eps) * n
        embed.copy_(embed_avg / smoothed.unsqueeze(0))
        diff = (quantize.detach() - flat).pow(2).mean()
        quantize = flat + (quantize - flat).detach()
        avg_probs = onehot.mean(0)
        perplexity = torch.exp(-torch.sum(avg_probs * torch.log(avg_probs + 1e-10)))
        return quantize, diff, perplexity

    return step


def _build(method: str, codebook, device):
    import torch

    if method == "floor":
        codebook_t = codebook.t()
        return lambda x: torch.mm(x, codebook_t).argmin(1)
    if method in ("dgm", "dgm-torch"):
        from dgm_core.quantization import EMAQuantizer

        backend = "torch" if method == "dgm-torch" else "auto"
        quantizer = EMAQuantizer(codebook.shape[1], codebook.shape[0], search_backend=backend)
        quantizer = quantizer.to(device).train()
        with torch.no_grad():
            quantizer.codebook.copy_(codebook)
            quantizer.embed_avg.copy_(codebook)
        return quantizer
    if method == "vqp":
        from vector_quantize_pytorch import VectorQuantize

        vq = VectorQuantize(
            dim=codebook.shape[1],
            codebook_size=codebook.shape[0],
            decay=0.8,
            commitment_weight=1.0,
            rotation_trick=False,  # plain straight-through, the same gradient as the others
        ).to(device)
        vq.train()
        with torch.no_grad():
            vq._codebook.embed.copy_(codebook.unsqueeze(0))
            vq._codebook.embed_avg.copy_(codebook.unsqueeze(0))
        return lambda x: vq(x.unsqueeze(0))
    if method == "naive":
        return _naive_reference(codebook)
    raise ValueError(method)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _inputs(n: int, c: int, k: int, device_name: str):
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, generator=g).to(device_name)
    codebook = torch.randn(k, c, generator=g).to(device_name)
    return x, codebook


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def time_worker(
    methods: list[str], n: int, c: int, k: int, device_name: str, repeats: int, budget_s: float
) -> dict:
    """Seconds per call for each method: one warm-up each, then ``repeats`` rounds, interleaved.

    Interleaving puts every method under the same background load (the dev box is shared), so the
    ratios hold even when absolute times drift; the minimum is the least-disturbed call. A method
    whose timed calls already took ``budget_s`` sits out the remaining rounds (at least one call each).
    """
    import torch

    device = torch.device(device_name)
    x, codebook = _inputs(n, c, k, device_name)
    runs = {method: _build(method, codebook, device) for method in methods}
    for run in runs.values():
        run(x)
    times: dict[str, list[float]] = {method: [] for method in methods}
    for _ in range(repeats):
        for method, run in runs.items():
            if times[method] and sum(times[method]) > budget_s:
                continue
            _sync(device)
            start = time.perf_counter()
            run(x)
            _sync(device)
            times[method].append(time.perf_counter() - start)
    return {method: {"min": min(t), "median": statistics.median(t)} for method, t in times.items()}


def memory_worker(method: str, n: int, c: int, k: int, device_name: str) -> float:
    """Peak bytes one warm call allocates on top of what is already there (inputs, module state)."""
    import torch

    device = torch.device(device_name)
    x, codebook = _inputs(n, c, k, device_name)
    run = _build(method, codebook, device)
    run(x)  # warm-up: lazy library pages and one-off buffers are not the op's working memory
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run(x)
        _sync(device)
        return float(torch.cuda.max_memory_allocated() - base)
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset VmHWM (peak RSS) to the current RSS
    except OSError:
        return float("nan")
    base = _rss_kib("VmRSS")
    run(x)
    return float((_rss_kib("VmHWM") - base) * 1024)


# ----------------------------------------------------------------------------------------------------
# driver


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def _subprocess(call: str, args, env_extra: dict[str, str]) -> object:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        **env_extra,
    }
    code = (
        f"import json, sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); import torch;"
        f"torch.set_num_threads({args.threads}); import bench_quantization as b;"
        f"print('RESULT' + json.dumps(b.{call}))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=args.timeout
        )
    except subprocess.TimeoutExpired:
        return f"timeout > {args.timeout}s"
    for line in done.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT") :])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return "failed: " + tail[:80]


def _machine(device: str, threads: int) -> str:
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {threads} thread{'' if threads == 1 else 's'} (torch {torch.__version__})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4096, 65536], help="feature counts N")
    parser.add_argument("--big", action="store_true", help="also run N = 262144 (slow, ~10 GB for naive)")
    parser.add_argument("--k", type=int, nargs="+", default=[256, 1024, 4096], help="codebook sizes K")
    parser.add_argument("--c", type=int, default=256, help="channels C")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per run")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per cell (median reported)")
    parser.add_argument(
        "--budget", type=float, default=10.0, help="seconds of timed calls per method and shape, at most"
    )
    parser.add_argument("--timeout", type=int, default=600, help="seconds per subprocess before giving up")
    parser.add_argument("--skip-memory", action="store_true", help="time only (no peak-memory runs)")
    args = parser.parse_args(argv)

    sizes = sorted(set(args.n + ([262144] if args.big else [])))
    methods = list(args.methods)
    if args.device == "cpu" and "dgm-torch" in methods:
        methods.remove("dgm-torch")  # on CPU dgm already is the torch path
    has_vqp = _installed("vector_quantize_pytorch")

    print(f"machine: {_machine(args.device, args.threads)}; load average at start {os.getloadavg()[0]:.1f}")
    print(f"command: python {' '.join([os.path.relpath(__file__)] + (argv or sys.argv[1:]))}")
    print()
    print("| N | K | method | time (s), min | median | × floor | dgm speed-up | extra peak memory (MiB) |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for n in sizes:
        for k in args.k:
            measured = [m for m in methods if m != "vqp" or has_vqp]
            call = (
                f"time_worker({measured!r}, {n}, {args.c}, {k}, {args.device!r}, {args.repeats}, "
                f"{args.budget})"
            )
            timings = _subprocess(call, args, {})
            for method in methods:
                if method == "vqp" and not has_vqp:
                    print(f"| {n} | {k} | vqp | not installed | | | | |")
                    continue
                if isinstance(timings, str):
                    print(f"| {n} | {k} | {method} | {timings} | | | | |")
                    continue
                seconds = timings[method]["min"]
                vs_floor = f"{seconds / timings['floor']['min']:.2f}" if "floor" in timings else ""
                ours = timings.get("dgm")
                speedup = f"{seconds / ours['min']:.2f}×" if ours and method not in ("dgm", "floor") else ""
                memory = ""
                if not args.skip_memory:
                    # Big mallocs straight from mmap, so that peak RSS sees every buffer come and go.
                    extra = _subprocess(
                        f"memory_worker({method!r}, {n}, {args.c}, {k}, {args.device!r})",
                        args,
                        {"MALLOC_MMAP_THRESHOLD_": "65536"},
                    )
                    memory = f"{extra / 2**20:.1f}" if isinstance(extra, float) else str(extra)
                print(
                    f"| {n} | {k} | {method} | {seconds:.4f} | {timings[method]['median']:.4f} | {vs_floor} "
                    f"| {speedup} | {memory} |",
                    flush=True,
                )
    print(f"\nload average at end: {os.getloadavg()[0]:.1f} (1 min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
