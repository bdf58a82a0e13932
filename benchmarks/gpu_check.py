"""The GPU check (`nox -s gpu`): what only a CUDA machine can show, in one short run.

1. The fused Triton nearest-codeword kernel against dgm-core's torch search on CUDA (same indices,
   same distances), then EMAQuantizer against vector-quantize-pytorch (when installed).
2. A few training steps of each package's paper-size model in bf16 and in fp16 (with GradScaler):
   BigGAN-32 (ch 64, batch 64) with FQ; Optimus with BERT-base / GPT-2-small sizes from random
   initialisation; the PREVALENT encoder with 9 text + 4 cross-modal layers. Step time and the
   achieved TFLOP/s (FLOPs counted by torch.utils.flop_counter over one step).
3. A 2-GPU NCCL DDP step when two GPUs exist.

Prints a markdown table naming the GPU. Without CUDA it says so and exits 0.

    python benchmarks/gpu_check.py [--steps 5] [--skip-ddp]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from dgm_core.runtime.precision import Precision

Row = tuple[str, str, str]


def _timed(step: Callable[[], None], steps: int) -> float:
    step()  # warm-up (kernels compiled, memory allocated)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def _flops(step: Callable[[], None]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def quantizer_rows() -> list[Row]:
    from dgm_core.quantization import EMAQuantizer
    from dgm_core.quantization.ops import nearest_codeword

    rows: list[Row] = []
    generator = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(65536, 256, device="cuda", generator=generator)
    codebook = torch.randn(1024, 256, device="cuda", generator=generator)
    torch_idx, torch_dist = nearest_codeword(x, codebook, backend="torch")
    try:
        triton_idx, triton_dist = nearest_codeword(x, codebook, backend="triton")
    except Exception as error:  # report, do not hide: the kernel is the thing under test
        return [("Triton nearest codeword vs torch (CUDA)", "FAILED", f"{type(error).__name__}: {error}")]
    agree = (triton_idx == torch_idx).float().mean().item()
    max_diff = (triton_dist - torch_dist).abs().max().item()
    rows.append(
        (
            "Triton nearest codeword vs torch, N=65536 C=256 K=1024",
            f"{agree:.6f} same index",
            f"max |distance diff| {max_diff:.2e}",
        )
    )
    for backend in ("torch", "triton"):
        seconds = _timed(lambda b=backend: nearest_codeword(x, codebook, backend=b), 10)
        rows.append((f"nearest codeword, {backend}", f"{seconds * 1e3:.2f} ms", ""))
    ours = EMAQuantizer(256, 1024).cuda().train()
    ours_s = _timed(lambda: ours(x), 10)
    rows.append(("EMAQuantizer forward+EMA update, N=65536", f"{ours_s * 1e3:.2f} ms", "dgm-core"))
    try:
        from vector_quantize_pytorch import VectorQuantize
    except ImportError:
        rows.append(("vector-quantize-pytorch", "not installed", ""))
    else:
        peer = VectorQuantize(dim=256, codebook_size=1024, decay=0.99).cuda().train()
        peer_s = _timed(lambda: peer(x.view(64, 1024, 256)), 10)
        rows.append(
            (
                "vector-quantize-pytorch VectorQuantize, same shape",
                f"{peer_s * 1e3:.2f} ms",
                f"dgm-core is {peer_s / ours_s:.2f}x faster",
            )
        )
    return rows


def biggan_step(precision: Precision) -> Callable[[], None]:
    from fqgan.models import build_models

    config = {
        "arch": "biggan",
        "resolution": 32,
        "g_ch": 64,
        "d_ch": 64,
        "z_dim": 128,
        "num_classes": 10,
        "fq_mode": "quantize",
        "fq_layers": "2",
        "fq_codebook_size": 1024,
    }
    generator, discriminator = (m.cuda().train() for m in build_models(config))
    opt_g = torch.optim.Adam(generator.parameters(), 2e-4, betas=(0.0, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), 2e-4, betas=(0.0, 0.999))
    real = torch.rand(64, 3, 32, 32, device="cuda") * 2 - 1
    labels = torch.randint(0, 10, (64,), device="cuda")

    def step() -> None:
        z = torch.randn(64, 128, device="cuda")
        with precision.autocast():
            fake = generator(z, labels)
            d_loss = (
                F.relu(1 - discriminator(real, labels)).mean()
                + F.relu(1 + discriminator(fake.detach(), labels)).mean()
            )
        precision.backward(d_loss.float())
        precision.step(opt_d)
        opt_d.zero_grad(set_to_none=True)
        with precision.autocast():
            g_loss = -discriminator(generator(z, labels), labels).mean()
        precision.backward(g_loss.float())
        precision.step(opt_g)
        opt_g.zero_grad(set_to_none=True)

    return step


def optimus_step(precision: Precision) -> Callable[[], None]:
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    from optimus.vae import OptimusConfig, OptimusVAE

    encoder = BertModel(BertConfig())  # BERT-base sizes
    decoder = GPT2LMHeadModel(GPT2Config())  # GPT-2 small sizes
    model = OptimusVAE(OptimusConfig(latent_size=32), encoder=encoder, decoder=decoder).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), 5e-5)
    batch, length = 16, 64
    enc_ids = torch.randint(1000, 30000, (batch, length), device="cuda")
    dec_ids = torch.randint(1000, 50000, (batch, length), device="cuda")
    mask = torch.ones(batch, length, dtype=torch.long, device="cuda")

    def step() -> None:
        with precision.autocast():
            out = model(enc_ids, mask, dec_ids, mask)
            loss = out.reconstruction_nll.float().mean() + 0.5 * (out.mean.float() ** 2).mean()
        precision.backward(loss)
        precision.step(optimizer, max_grad_norm=1.0)
        optimizer.zero_grad(set_to_none=True)

    return step


def prevalent_step(precision: Precision) -> Callable[[], None]:
    from prevalent.model.encoder import EncoderConfig
    from prevalent.model.heads import IGNORE_INDEX, PrevalentPretrainingModel

    config = EncoderConfig.paper()
    config.max_text_length = 80
    model = PrevalentPretrainingModel(config).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), 5e-5)
    batch, length, views, candidates = 32, 80, 36, 8
    ids = torch.randint(1000, 30000, (batch, length), device="cuda")
    text_mask = torch.ones(batch, length, dtype=torch.long, device="cuda")
    feats = torch.randn(batch, views + candidates, 2048 + 128, device="cuda")
    vision_mask = torch.ones(batch, views + candidates, dtype=torch.long, device="cuda")
    mlm = torch.full((batch, length), IGNORE_INDEX, device="cuda")
    mlm[:, 5:17] = ids[:, 5:17]
    actions = torch.randint(0, candidates + 1, (batch,), device="cuda")

    def step() -> None:
        with precision.autocast():
            loss = model(ids, text_mask, feats, vision_mask, candidates, mlm, actions).loss
        precision.backward(loss.float())
        precision.step(optimizer, max_grad_norm=1.0)
        optimizer.zero_grad(set_to_none=True)

    return step


def training_rows(steps: int) -> list[Row]:
    rows: list[Row] = []
    builders = {
        "BigGAN-32 ch64 batch64 + FQ (D and G step)": biggan_step,
        "Optimus BERT-base/GPT-2-small, batch 16 x 64 tokens": optimus_step,
        "PREVALENT 9+4 layers, batch 32 x 80 tokens + 44 views": prevalent_step,
    }
    for name, build in builders.items():
        for mode in ("bf16", "fp16"):
            try:
                precision = Precision(mode, torch.device("cuda"))
                step = build(precision)
                flops = _flops(step)
                seconds = _timed(step, steps)
                rows.append(
                    (
                        f"{name}, {mode}",
                        f"{seconds * 1e3:.1f} ms/step",
                        f"{flops / seconds / 1e12:.1f} TFLOP/s",
                    )
                )
            except Exception as error:
                rows.append((f"{name}, {mode}", "FAILED", f"{type(error).__name__}: {str(error)[:120]}"))
            torch.cuda.empty_cache()
    return rows


def ddp_rows() -> list[Row]:
    if torch.cuda.device_count() < 2:
        return [("2-GPU NCCL DDP step", "skipped", f"{torch.cuda.device_count()} GPU(s)")]
    code = (
        "import torch, torch.distributed as dist, os\n"
        "dist.init_process_group('nccl'); r = dist.get_rank(); torch.cuda.set_device(r)\n"
        "m = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(64, 64).cuda(), device_ids=[r])\n"
        "m(torch.randn(8, 64, device='cuda')).sum().backward()\n"
        "g = [torch.zeros_like(m.module.weight.grad) for _ in range(2)]\n"
        "dist.all_gather(g, m.module.weight.grad)\n"
        "assert torch.equal(g[0], g[1]); dist.destroy_process_group()\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
    )
    status = "ok: gradients equal on both ranks" if result.returncode == 0 else result.stderr[-200:]
    return [("2-GPU NCCL DDP step", "passed" if result.returncode == 0 else "FAILED", status)]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per model and precision")
    parser.add_argument("--skip-ddp", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu check: no CUDA device on this machine; nothing to check (exit 0)")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = quantizer_rows() + training_rows(args.steps) + ([] if args.skip_ddp else ddp_rows())
    print(
        f"GPU: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}\n"
    )
    print("| check | result | notes |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 1 if any(row[1] == "FAILED" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
