"""Agent throughput: pretraining triplets/s, fine-tuning episodes/s, and the encoder's share of a step.

Run: ``python packages/prevalent/benchmarks/bench_agent.py [--quick]`` (``nox -s bench`` runs it).
World: a small synthetic dataset (64-d features) generated into a temporary folder. Model: the
CLIs' default sizes (hidden 64, 2 language + 2 cross-modal layers). Prints a Markdown table that
names the machine; numbers depend heavily on how loaded the CPU is.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from prevalent.data.synthetic import make_synthetic_dataset
from prevalent.model.agent import NavigationAgent
from prevalent.model.encoder import EncoderConfig
from prevalent.model.heads import PrevalentPretrainingModel
from prevalent.model.masking import MaskingRule
from prevalent.model.tokenizer import InstructionTokenizer
from prevalent.pretrain import TripletBatcher, teacher_triplets
from prevalent.rollout import EpisodeRunner, open_world
from prevalent.tasks import TaskOptions, get_task


def _config(tokenizer: InstructionTokenizer, feature_size: int) -> EncoderConfig:
    return EncoderConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
        text_layers=2,
        cross_layers=2,
        image_feature_size=feature_size,
        angle_feature_size=128,
    )


def bench_pretraining(world, tokenizer, steps: int, batch_size: int = 32) -> dict[str, float]:
    episodes = get_task("r2r").load(world.data_dir, "train", TaskOptions())
    triplets = teacher_triplets(episodes, world)
    rule = MaskingRule(tokenizer.mask_id, tokenizer.vocab_size, tokenizer.special_ids)
    batcher = TripletBatcher(episodes, triplets, world, tokenizer, 80, 128, rule)
    model = PrevalentPretrainingModel(_config(tokenizer, world.feature_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    batch_time = model_time = 0.0
    for step in range(steps + 1):
        t0 = time.perf_counter()
        batch = batcher.batch([(step * batch_size + i) % len(batcher) for i in range(batch_size)], generator)
        t1 = time.perf_counter()
        out = model(**batch.model_inputs())
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        t2 = time.perf_counter()
        if step:  # the first step warms caches and allocators
            batch_time += t1 - t0
            model_time += t2 - t1
    return {
        "triplets/s": steps * batch_size / (batch_time + model_time),
        "batching share": batch_time / (batch_time + model_time),
    }


def bench_finetuning(world, tokenizer, steps: int, task_name: str, batch_size: int = 16) -> dict[str, float]:
    task = get_task(task_name)
    episodes = task.load(world.data_dir, "train", TaskOptions())
    agent = NavigationAgent(_config(tokenizer, world.feature_size))
    runner = EpisodeRunner(task, world, tokenizer, 80, 128, task.max_steps, 2, torch.device("cpu"))
    optimizer = torch.optim.AdamW(agent.parameters(), lr=1e-4)
    # Time the encoder's cross-modal pass (run every navigation step) inside the rollouts.
    encoder_time = [0.0]
    original = agent.encoder.cross_encode

    def timed_cross_encode(*args, **kwargs):
        t = time.perf_counter()
        out = original(*args, **kwargs)
        encoder_time[0] += time.perf_counter() - t
        return out

    agent.encoder.cross_encode = timed_cross_encode
    total = 0.0
    for step in range(steps):
        chosen = [episodes[(step * batch_size + i) % len(episodes)] for i in range(batch_size)]
        t = time.perf_counter()
        rollout = runner.run(agent, chosen, "sample")
        rollout.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        total += time.perf_counter() - t
    return {
        "episodes/s": steps * batch_size / total,
        "encoder forward share": encoder_time[0] / total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Fewer steps (a smoke run).")
    args = parser.parse_args()
    steps = 3 if args.quick else 20
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        data = make_synthetic_dataset(Path(folder) / "world", seed=0, houses=4, unseen_houses=1)
        world = open_world(str(data), "")
        tokenizer = InstructionTokenizer.train((data / "instructions.txt").read_text().splitlines(), 1000)
        print(
            f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch thread(s)"
        )
        print("| benchmark | value |\n|---|---|")
        for name, value in bench_pretraining(world, tokenizer, steps).items():
            print(f"| pretraining {name} | {value:.3f} |")
        for task in ("r2r", "hanna"):
            for name, value in bench_finetuning(world, tokenizer, max(2, steps // 4), task).items():
                print(f"| fine-tuning {task} {name} | {value:.3f} |")


if __name__ == "__main__":
    main()
