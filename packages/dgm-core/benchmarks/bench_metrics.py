"""Benchmark the metric kernels and print a markdown table.

1. Fréchet distance of D-dimensional statistics (D = 2048 for FID): dgm-core's Cholesky +
   symmetric-eigenvalue route against pytorch-fid's route (``scipy.linalg.sqrtm`` of the
   non-symmetric product, real part of the trace) on the same inputs; speed-up and relative
   difference (targets: >= 10x, <= 1e-6).
2. Feature-extraction throughput of the FID Inception at batch 50 (images/s): pytorch-fid's
   network, dgm-core's with the reference structure, and dgm-core's optimized for inference (batch
   norm folded, channels-last; target >= 1.5x pytorch-fid, features within 1e-5).
   Random weights (no weights ship offline); the cost is the same as with the real ones.

    python packages/dgm-core/benchmarks/bench_metrics.py [--dim 2048] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time

import numpy as np
import scipy
import scipy.linalg
import torch

from dgm_core.metrics import FIDInceptionV3, frechet_distance


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


def _images_per_second(forward, images: torch.Tensor, batches: int, device: torch.device) -> float:
    with torch.no_grad():
        forward(images)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(batches):
            forward(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return batches * images.shape[0] / (time.perf_counter() - start)


def _inception_rows(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """Throughput of the FID Inception: pytorch-fid's network, ours as the reference, ours optimized.

    All three carry the same random weights (no weights ship offline; the cost is the same as with
    the real ones) and read the same uint8 batch, resized to 299² inside the network.
    """
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    reference = FIDInceptionV3().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so folding them is a real change
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    optimized = copy.deepcopy(reference).optimize_for_inference().to(device)
    reference = reference.to(device)
    images = torch.randint(
        0, 256, (args.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8, generator=generator
    ).to(device)
    label = f"FID Inception, batch {args.batch_size}, {args.image_size}² uint8 → 299², {device.type}"
    ours = _images_per_second(reference, images, args.batches, device)
    fast = _images_per_second(optimized, images, args.batches, device)
    with torch.no_grad():
        deviation = (optimized(images)[0] - reference(images)[0]).abs().max().item()
    rows = []
    try:
        from pytorch_fid import inception as pytorch_fid_inception
    except ImportError:
        peer = None
        rows.append((f"{label}: pytorch-fid", "not installed", "pip install pytorch-fid to compare"))
    else:
        state = reference.state_dict()
        pytorch_fid_inception.load_state_dict_from_url = lambda *a, **k: dict(state)
        network = pytorch_fid_inception.InceptionV3([3]).eval().to(device)
        peer = _images_per_second(lambda x: network(x.float() / 255), images, args.batches, device)
        rows.append((f"{label}: pytorch-fid InceptionV3", f"{peer:.1f} images/s", "the reference"))
    versus = f"{ours / peer:.2f}x pytorch-fid" if peer else "-"
    rows.append((f"{label}: dgm-core, reference structure", f"{ours:.1f} images/s", versus))
    versus = f"{fast / peer:.2f}x pytorch-fid; " if peer else ""
    rows.append(
        (
            f"{label}: dgm-core, optimized (BN folded, channels-last)",
            f"{fast:.1f} images/s",
            f"{versus}{fast / ours:.2f}x the reference structure; max |feature diff| {deviation:.1e}",
        )
    )
    return rows


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
        rows += _inception_rows(args)

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
