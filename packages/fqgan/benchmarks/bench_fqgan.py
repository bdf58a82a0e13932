"""FQ-GAN speed: the FQ overhead on one discriminator step, and training throughput of the 32×32 preset.

Plain script (``nox -s bench`` runs it), prints a markdown table::

    python packages/fqgan/benchmarks/bench_fqgan.py                 # CIFAR-10 preset widths (slow on CPU)
    python packages/fqgan/benchmarks/bench_fqgan.py --ch 16 --repeats 3   # a quick CPU look

- *D step*: forward + backward + Adam step of the BigGAN 32×32 discriminator on
  a [real; fake] batch of 2 × ``--batch-size`` images, without FQ and with the
  CIFAR-10 preset's FQ (blocks 0–3, K = 1024, both modes). The issue's target is
  an overhead ≤ 10 %.
- *Train step*: one full step of ``fqgan-train --preset cifar10`` (4 D steps,
  1 G step) on random images; reported as images/s = batch × (D steps + 1) per
  second of step time, the same count as ``images_per_s`` in metrics.jsonl.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from fqgan.losses import discriminator_loss, generator_loss
from fqgan.models import build_models
from fqgan.train import PRESETS


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def model_config(ch: int, fq_mode: str) -> dict:
    preset = PRESETS["cifar10"]
    return {
        "arch": "biggan",
        "resolution": 32,
        "g_ch": ch,
        "d_ch": ch,
        "z_dim": 128,
        "num_classes": 10,
        "fq_mode": fq_mode,
        "fq_layers": preset["fq_layers"],
        "fq_codebook_size": preset["fq_codebook_size"],
        "fq_decay": preset["fq_decay"],
        "fq_commitment": preset["fq_commitment"],
    }


def bench_d_step(args, device: torch.device) -> dict[str, float]:
    results = {}
    n = args.batch_size
    images = torch.randn(2 * n, 3, 32, 32, device=device)
    labels = torch.randint(10, (2 * n,), device=device)
    for fq_mode in ("none", "loss_only", "quantize"):
        torch.manual_seed(0)
        _, discriminator = build_models(model_config(args.ch, fq_mode))
        discriminator.to(device).train()
        optimizer = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.0, 0.999))

        def step(discriminator=discriminator, optimizer=optimizer):
            scores = discriminator(images, labels)
            fq_loss = discriminator.pop_fq_loss(batch_parts=(n, n))
            loss = discriminator_loss("hinge", scores[:n], scores[n:]) + fq_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        results[fq_mode] = statistics.median(_time(step, device, args.warmup, args.repeats))
    return results


def bench_train_step(args, device: torch.device) -> float:
    torch.manual_seed(0)
    generator, discriminator = build_models(model_config(args.ch, "loss_only"))
    generator.to(device).train()
    discriminator.to(device).train()
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.0, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.0, 0.999))
    n, d_steps = args.batch_size, PRESETS["cifar10"]["d_steps"]
    real = torch.randn(n, 3, 32, 32, device=device)
    y = torch.randint(10, (n,), device=device)

    def step():
        for _ in range(d_steps):
            with torch.no_grad():
                fake = generator(torch.randn(n, 128, device=device), y)
            scores = discriminator(torch.cat([real, fake]), torch.cat([y, y]))
            fq_loss = discriminator.pop_fq_loss(batch_parts=(n, n))
            loss = discriminator_loss("hinge", scores[:n], scores[n:]) + fq_loss
            opt_d.zero_grad(set_to_none=True)
            loss.backward()
            opt_d.step()
        discriminator.requires_grad_(False)
        scores = discriminator(generator(torch.randn(n, 128, device=device), y), y)
        loss = generator_loss("hinge", scores) + discriminator.pop_fq_loss()
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        discriminator.requires_grad_(True)

    seconds = statistics.median(_time(step, device, args.warmup, args.repeats))
    return n * (d_steps + 1) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ch", type=int, default=64, help="BigGAN width (64 = the CIFAR presets)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps (default: 1 on GPU, 0 on CPU)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (default: 5 on GPU, 1 on CPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-throughput", action="store_true", help="only the D-step comparison")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.warmup is None:
        args.warmup = 1 if device.type == "cuda" else 0
    if args.repeats is None:
        args.repeats = 5 if device.type == "cuda" else 1
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    print(
        f"device: {device} ({name}), torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, ch {args.ch}"
    )
    d = bench_d_step(args, device)
    print(f"\n| D step (batch 2×{args.batch_size}) | seconds (median) | overhead vs no FQ |")
    print("|---|---|---|")
    for mode, seconds in d.items():
        overhead = "–" if mode == "none" else f"{100 * (seconds / d['none'] - 1):+.1f} %"
        print(f"| FQ {mode} | {seconds:.4f} | {overhead} |")
    if args.no_throughput:
        return
    throughput = bench_train_step(args, device)
    print(
        f"\ntraining throughput, cifar10 preset layout (ch {args.ch}, batch {args.batch_size}, 4 D + 1 G): "
    )
    print(f"{throughput:.1f} images/s")


if __name__ == "__main__":
    main()
