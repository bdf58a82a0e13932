"""Benchmark the metric kernels and print a markdown table.

1. Fréchet distance of D-dimensional statistics (D = 2048 for FID): dgm-core's Cholesky +
   symmetric-eigenvalue route against pytorch-fid's route (``scipy.linalg.sqrtm`` of the
   non-symmetric product, real part of the trace) on the same inputs; speed-up and relative
   difference (targets: >= 10x, <= 1e-6).
2. Feature-extraction throughput of the FID Inception at batch 50 (images/s): pytorch-fid's
   network, dgm-core's with the reference structure, and dgm-core's optimized for inference (batch
   norm folded, channels-last; target >= 1.5x pytorch-fid, features within 1e-5).
   Random weights (no weights ship offline); the cost is the same as with the real ones.
3. The opt-in bf16 mode: FID of a fixed pair of image sets with features in fp32 and under bf16
   autocast, the deviation and each one's throughput (``--bf16-images``, 0 to skip). With random
   weights this measures bf16's rounding through this network, not the deviation with the real
   weights, which is for a machine that has them.

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


def _random_fid_inception() -> FIDInceptionV3:
    """The FID Inception with its random initial weights and non-trivial batch-norm statistics
    (so folding them is a real change), the same on every call."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    network = FIDInceptionV3().eval()
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    return network


def _inception_rows(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """Throughput of the FID Inception: pytorch-fid's network, ours as the reference, ours optimized.

    All three carry the same random weights (no weights ship offline; the cost is the same as with
    the real ones) and read the same uint8 batch, resized to 299² inside the network.
    """
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    reference = _random_fid_inception()
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


def _bf16_rows(args: argparse.Namespace, network: torch.nn.Module) -> list[tuple[str, str, str]]:
    """The opt-in bf16 mode (features under ``autocast(bfloat16)``, e.g. ``fqgan-eval --precision bf16``):
    FID between a fixed pair of image sets in fp32 and in bf16, and the throughput of each.

    The two sets: ``--bf16-images`` random smooth colour fields each (4×4 colours blown up to
    ``--image-size``), the second set brighter and more saturated, so the FID is far from zero.
    """
    from dgm_core.metrics import extract_features

    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(1)

    def image_set(gain: float, offset: float) -> torch.Tensor:
        coarse = torch.randn(args.bf16_images, 3, 4, 4, generator=generator)
        fields = torch.nn.functional.interpolate(coarse, size=args.image_size, mode="bilinear")
        return ((fields * gain + offset).sigmoid() * 255).round().to(torch.uint8)

    first, second = image_set(1.0, 0.0), image_set(2.0, 0.7)

    def fid_and_rate(precision: str) -> tuple[float, float, torch.Tensor]:
        context = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if precision == "bf16"
            else torch.autocast(device.type, enabled=False)
        )
        start = time.perf_counter()
        with context:
            a, _ = extract_features(network, first, args.batch_size, device)
            b, _ = extract_features(network, second, args.batch_size, device)
        rate = 2 * args.bf16_images / (time.perf_counter() - start)
        statistics = [(f.double().mean(0).numpy(), np.cov(f.double().numpy(), rowvar=False)) for f in (a, b)]
        return frechet_distance(*statistics[0], *statistics[1]), rate, a

    fid32, rate32, features32 = fid_and_rate("fp32")
    fid16, rate16, features16 = fid_and_rate("bf16")
    feature_error = ((features16 - features32).norm(dim=1) / features32.norm(dim=1)).mean().item()
    label = f"FID Inception (optimized), {args.bf16_images} vs {args.bf16_images} images, {device.type}"
    return [
        (f"{label}: fp32", f"{rate32:.1f} images/s", f"FID {fid32:.4g}"),
        (
            f"{label}: bf16 autocast (opt-in)",
            f"{rate16:.1f} images/s",
            f"FID {fid16:.4g}: deviation {fid16 - fid32:+.3g}"
            f"{f' ({(fid16 - fid32) / fid32:+.2%})' if fid32 > 1e-3 else ' (the sets are not told apart)'}; "
            f"mean relative feature error {feature_error:.1e}; {rate16 / rate32:.2f}x fp32's speed",
        ),
    ]


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
    parser.add_argument(
        "--bf16-images", type=int, default=500, help="images per set for the bf16 FID deviation (0: skip)"
    )
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
    if args.bf16_images:
        network = _random_fid_inception().optimize_for_inference().to(args.device)
        rows += _bf16_rows(args, network)

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
