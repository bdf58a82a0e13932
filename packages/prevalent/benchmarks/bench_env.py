"""Environment throughput: episode-steps/s of BatchNavEnv, distance queries, memory per scan.

Run: ``python packages/prevalent/benchmarks/bench_env.py [--quick]`` (``nox -s bench`` runs it).
Worlds: the synthetic default (64-d features) and, when present, the real sample graphs in
``../shared/data/vln`` with random 2048-d features of the standard shape. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from prevalent.data.synthetic import make_synthetic_dataset
from prevalent.env import BatchNavEnv, FeatureStore, InMemoryFeatureStore, NavGraphs

REAL_DATA = Path(
    os.environ.get("DGM_VLN_DATA") or Path(__file__).resolve().parents[3].parent / "shared" / "data" / "vln"
)


def _random_walk_rate(
    graphs: NavGraphs, features, batch: int, steps: int, observe: bool, seed: int = 0
) -> float:
    rng = np.random.default_rng(seed)
    scans = graphs.available_scans()
    chosen = [scans[int(rng.integers(len(scans)))] for _ in range(batch)]
    starts = [graphs[s].viewpoints[int(rng.integers(len(graphs[s])))] for s in chosen]
    env = BatchNavEnv(graphs, features)
    env.reset(chosen, starts, rng.uniform(0, 2 * np.pi, batch))
    for _ in range(2):  # warm the per-viewpoint caches a little, as a training loop would
        env.step([int(rng.integers(1, len(c))) if len(c) > 1 else 0 for c in env.candidates()])
    env.reset(chosen, starts, rng.uniform(0, 2 * np.pi, batch))
    start = time.perf_counter()
    for _ in range(steps):
        cands = env.candidates()
        if observe:
            env.observe()
        env.step([int(rng.integers(1, len(c))) if len(c) > 1 else 0 for c in cands])
    return batch * steps / (time.perf_counter() - start)


def _distance_rate(graphs: NavGraphs, queries: int = 200_000) -> float:
    rng = np.random.default_rng(1)
    graph = graphs[graphs.available_scans()[0]]
    pairs = [
        (graph.viewpoints[int(i)], graph.viewpoints[int(j)])
        for i, j in rng.integers(len(graph), size=(queries, 2))
    ]
    start = time.perf_counter()
    for a, b in pairs:
        graph.distance(a, b)
    return queries / (time.perf_counter() - start)


def _load_time_and_memory(graphs: NavGraphs) -> tuple[float, float, int]:
    scans = graphs.available_scans()
    fresh = NavGraphs(graphs.connectivity_dir)
    start = time.perf_counter()
    sizes = [fresh[s].memory_bytes() for s in scans]
    elapsed = (time.perf_counter() - start) / len(scans)
    return elapsed, float(np.mean(sizes)), int(np.mean([len(fresh[s]) for s in scans]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    args, _ = parser.parse_known_args()  # nox passes its posargs to every benchmark
    steps = {1: 200, 64: 50, 512: 10} if args.quick else {1: 2000, 64: 200, 512: 40}

    worlds = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_synthetic_dataset(Path(tmp) / "synthetic", seed=0)
        synthetic = NavGraphs(data / "connectivity")
        store = FeatureStore.open(data / "features")
        worlds.append(("synthetic (64-d)", synthetic, store))
        if (REAL_DATA / "connectivity").is_dir():
            real = NavGraphs(REAL_DATA / "connectivity")
            rng = np.random.default_rng(0)
            feats = {
                (s, vp): rng.normal(size=(36, 2048)).astype(np.float32)
                for s in real.available_scans()
                for vp in real[s].viewpoints
            }
            worlds.append(("real sample graphs (2048-d)", real, InMemoryFeatureStore(feats)))

        print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
        print()
        print("| world | batch | steps/s (step + candidates) | steps/s (+ observe) |")
        print("|---|---:|---:|---:|")
        for name, graphs, features in worlds:
            for batch, n in steps.items():
                plain = _random_walk_rate(graphs, features, batch, n, observe=False)
                full = _random_walk_rate(graphs, features, batch, n, observe=True)
                print(f"| {name} | {batch} | {plain:,.0f} | {full:,.0f} |")
        print()
        print("| world | viewpoints/scan | load + all-pairs s/scan | cached MiB/scan | distance queries/s |")
        print("|---|---:|---:|---:|---:|")
        for name, graphs, _ in worlds:
            seconds, memory, size = _load_time_and_memory(graphs)
            rate = _distance_rate(graphs)
            print(f"| {name} | {size} | {seconds:.4f} | {memory / 2**20:.3f} | {rate:,.0f} |")
        # a Matterport-sized scan for the O(N^3) precomputation: the largest real scans have ~350 viewpoints
        rng = np.random.default_rng(2)
        from prevalent.env import NavGraph

        pos = rng.uniform(0, 40, size=(350, 3))
        edges = [
            (i, j) for i in range(350) for j in range(i + 1, 350) if np.linalg.norm(pos[i] - pos[j]) < 4.0
        ]
        start = time.perf_counter()
        big = NavGraph("big", [f"v{i}" for i in range(350)], pos, edges)
        print()
        print(
            f"350-viewpoint scan: all-pairs shortest paths in {time.perf_counter() - start:.3f}s, "
            f"{big.memory_bytes() / 2**20:.2f} MiB cached"
        )


if __name__ == "__main__":
    main()
