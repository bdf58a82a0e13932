"""Benchmark the metric kernels and print a markdown table.

1. Fréchet distance of D-dimensional statistics (D = 2048 for FID): dgm-core's Cholesky +
   symmetric-eigenvalue route against pytorch-fid's route (``scipy.linalg.sqrtm`` of the
   non-symmetric product, real part of the trace) on the same inputs; speed-up and relative
   difference (targets: >= 10x, <= 1e-6).
2. Feature-extraction throughput of the FID Inception at batch 50 (images/s). The network runs
   with random weights (no weights ship offline); the cost is the same as with the real ones.

    python packages/dgm-core/benchmarks/bench_metrics.py [--dim 2048] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import scipy
import scipy.linalg
import torch

from dgm_core.metrics import FIDInceptionV3, extract_features, frechet_distance


def _statistics(rng: np.random.Generator, dim: int, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of correlated, non-negative features shaped like Inception pool outputs."""
    mixing = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    features = np.maximum(rng.standard_normal((samples, dim)) @ mixing + 0.3, 0.0)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance_sqrtm(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """pytorch-fid's method, restated: sqrtm(S1 S2), offset on failure, drop the imaginary part."""
    difference = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if isinstance(covmean, tuple):  # older scipy returns (sqrtm, error estimate) with disp=False
        covmean = covmean[0]
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    return float(difference @ difference + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _time(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension of the statistics")
    parser.add_argument("--samples", type=int, default=4096, help="samples behind each random covariance")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per Fréchet method (best kept)")
    parser.add_argument("--batch-size", type=int, default=50, help="images per Inception forward pass")
    parser.add_argument("--batches", type=int, default=2, help="timed Inception batches (after one warm-up)")
    parser.add_argument("--image-size", type=int, default=32, help="input side (resized to 299 inside)")
    parser.add_argument("--device", default="cpu", help="device for the Inception throughput")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--skip-inception", action="store_true", help="only benchmark the Fréchet distance")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    mu1, sigma1 = _statistics(rng, args.dim, args.samples)
    mu2, sigma2 = _statistics(rng, args.dim, args.samples)
    ours_s, ours = _time(lambda: frechet_distance(mu1, sigma1, mu2, sigma2), args.repeats)
    sqrtm_s, reference = _time(lambda: frechet_distance_sqrtm(mu1, sigma1, mu2, sigma2), args.repeats)
    relative = abs(ours - reference) / abs(reference)

    rows = [
        (
            f"Fréchet distance, {args.dim}-d, scipy sqrtm (pytorch-fid)",
            f"{sqrtm_s:.3f} s",
            f"FID {reference:.6f}",
        ),
        (
            f"Fréchet distance, {args.dim}-d, dgm-core (Cholesky + eigvalsh)",
            f"{ours_s:.3f} s",
            f"FID {ours:.6f}; {sqrtm_s / ours_s:.1f}x faster; rel. diff {relative:.1e}",
        ),
    ]

    if not args.skip_inception:
        device = torch.device(args.device)
        model = FIDInceptionV3().eval().to(device)
        images = torch.randint(
            0, 256, (args.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8
        )
        extract_features(model, images, batch_size=args.batch_size, device=device)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.batches):
            extract_features(model, images, batch_size=args.batch_size, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        rows.append(
            (
                f"FID Inception features, batch {args.batch_size}, "
                f"{args.image_size}² uint8 → 299², {device.type}",
                f"{args.batches * args.batch_size / elapsed:.1f} images/s",
                f"{elapsed / args.batches:.2f} s/batch, random weights",
            )
        )

    machine = (
        f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} logical CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}, "
        f"scipy {scipy.__version__}"
    )
    print(f"Machine: {machine}\n")
    print("| benchmark | time / rate | notes |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
