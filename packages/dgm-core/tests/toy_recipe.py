"""A tiny but complete training CLI built only from dgm-core, used to test the runtime end to end.

It regresses a random linear map with a dropout MLP (dropout makes RNG restoration
matter for bit-identical resumes) through the same TrainingRun loop the model
packages use. Run as ``python -m toy_recipe`` (tests put this folder on PYTHONPATH).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch

from dgm_core import cli
from dgm_core.cli import option
from dgm_core.training import TrainingConfig, TrainingRun


@dataclass
class ToyConfig(TrainingConfig):
    hidden: int = option(16, help="Hidden width.")
    dataset_size: int = option(64, help="Number of training pairs.")
    batch_size: int = option(8, help="Batch size per rank.")
    lr: float = option(1e-2, help="Adam learning rate.")
    nan_at_step: int = option(0, help="Make the loss NaN at this step (tests the divergence stop).")
    step_delay: float = option(0.0, help="Sleep this many seconds per step (tests stopping a live run).")


PRESETS = {"tiny": {"hidden": 4, "steps": 3}}


def build_model(hidden: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(hidden, 2)
    )


def train(cfg: ToyConfig) -> None:
    with TrainingRun(cfg, model_config={"hidden": cfg.hidden}, name="toy") as run:
        data_gen = torch.Generator().manual_seed(1234)  # the data is fixed; only the run seed varies
        inputs = torch.randn(cfg.dataset_size, 4, generator=data_gen)
        targets = inputs @ torch.randn(4, 2, generator=data_gen)
        model = build_model(cfg.hidden).to(run.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
        run.track(models={"model": model}, optimizers={"model": optimizer}, schedulers={"model": scheduler})
        start = run.resume()
        ddp_model = run.wrap(model)
        sampler = run.sampler(cfg.dataset_size, cfg.batch_size, start_step=start)
        for step, indices in zip(run.steps(start), sampler):
            if cfg.step_delay:
                time.sleep(cfg.step_delay)
            for chunk, sync in run.micro_batches(ddp_model, indices):
                x, y = inputs[chunk].to(run.device), targets[chunk].to(run.device)
                with sync:
                    with run.precision.autocast():
                        loss = torch.nn.functional.mse_loss(ddp_model(x).float(), y)
                    if step == cfg.nan_at_step:
                        loss = loss * float("nan")
                    run.check_finite(step, {"loss": loss})
                    run.precision.backward(loss / cfg.grad_accum)
            run.precision.step(optimizer, max_grad_norm=1.0)
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if run.should_log(step):
                run.log(step, {"loss": loss, "lr": scheduler.get_last_lr()[0]})
        if run.dist.is_main:
            run.write_json(
                "final.json", {"param_sum": float(sum(p.detach().double().sum() for p in model.parameters()))}
            )


def main(argv: list[str] | None = None) -> int:
    return cli.run(
        train, ToyConfig, argv, prog="toy-train", description=__doc__, presets=PRESETS, module="toy_recipe"
    )


if __name__ == "__main__":
    sys.exit(main())
