"""One training run: the object every training CLI opens, so each package's train step stays short.

A package's training function reads top to bottom::

    def train(cfg: TrainConfig) -> None:
        with TrainingRun(cfg, model_config=model_cfg, name="fqgan") as run:
            model = build(model_cfg).to(run.device)
            optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
            run.track(models={"model": model}, optimizers={"model": optimizer})
            start = run.resume()                      # 0, or the step of the checkpoint
            ddp_model = run.wrap(model)
            sampler = run.sampler(len(dataset), cfg.batch_size, start_step=start)
            for step, indices in zip(run.steps(start), sampler):
                with run.precision.autocast():
                    loss = ddp_model(batch(indices))
                run.precision.backward(loss)
                run.precision.step(optimizer, max_grad_norm=1.0)
                optimizer.zero_grad(set_to_none=True)
                if run.should_log(step):
                    run.log(step, {"loss": loss})

``TrainingRun`` owns the process group, device, seeding, precision, the run
directory (``config.json``, ``metrics.jsonl``, ``train.log``, ``checkpoints/``),
checkpoint cadence and resumption, and the test-only fault injection used to
prove that torchrun restarts recover.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dgm_core.errors import UserError
from dgm_core.loader import default_num_workers, step_loader
from dgm_core.runtime.checkpoint import CheckpointError, CheckpointManager
from dgm_core.runtime.device import (
    capture_rng_state,
    restore_rng_state,
    seed_everything,
    set_deterministic_algorithms,
)
from dgm_core.runtime.distributed import (
    all_gather_object,
    all_reduce_mean,
    all_reduce_sum,
    init_distributed,
    main_process_first,
    shutdown_distributed,
    unwrap_model,
    wait_for_everyone,
    wrap_ddp,
)
from dgm_core.runtime.files import write_json_atomic
from dgm_core.runtime.logging import RunLogger
from dgm_core.runtime.precision import Precision
from dgm_core.sampler import ShardedBatchSampler
from dgm_core.training.config import TrainingConfig
from dgm_core.training.faults import maybe_crash
from dgm_core.training.resume import choose_resume_checkpoint, last_good_checkpoint_note


class TrainingDiverged(UserError):
    """A loss became NaN or infinite."""


def _normalise(data: Any) -> Any:
    """JSON round trip, so configs compare equal whether fresh or read back from disk."""
    return json.loads(json.dumps(data, default=str))


def _split_batch(batch: Any, count: int) -> list[Any]:
    """``count`` equal slices of a batch along its first dimension (nested tuples/dicts kept)."""
    if isinstance(batch, dict):
        parts = {key: _split_batch(value, count) for key, value in batch.items()}
        return [{key: parts[key][i] for key in batch} for i in range(count)]
    if isinstance(batch, tuple) and not hasattr(batch, "_fields"):
        parts = [_split_batch(value, count) for value in batch]
        return [tuple(part[i] for part in parts) for i in range(count)]
    size = len(batch)
    if size % count:
        raise ValueError(f"a batch of {size} does not split into {count} equal micro-batches")
    step = size // count
    if torch.is_tensor(batch):
        return list(batch.split(step))
    return [list(batch[i * step : (i + 1) * step]) for i in range(count)]


class RunPreempted(SystemExit):
    """SIGTERM arrived: a checkpoint of the current step was written; the process exits with 143.

    143 (128 + SIGTERM) tells a wrapper script that the run stopped early; started again with
    ``--resume auto`` it continues from that checkpoint exactly.
    """

    EXIT_CODE = 143

    def __init__(self) -> None:
        super().__init__(self.EXIT_CODE)


class TrainingRun:
    """One training run: process group, device, precision, run directory, checkpoints and logs."""

    def __init__(self, cfg: TrainingConfig, *, model_config: Mapping[str, Any], name: str):
        self.cfg = cfg
        self.name = name
        self.model_config = _normalise(dict(model_config))
        # A caller that set up the process group itself (a test harness, a notebook) keeps it.
        self._owns_process_group = not (
            torch.distributed.is_available() and torch.distributed.is_initialized()
        )
        self.dist, self.device = init_distributed(cfg.device)
        seed_everything(cfg.seed, rank=self.dist.rank, deterministic=cfg.deterministic)
        set_deterministic_algorithms(cfg.deterministic)  # both ways: no leak between runs
        self.precision = Precision(cfg.precision, self.device)
        if cfg.steps < 1:
            raise UserError(f"steps must be at least 1, got {cfg.steps}")
        if cfg.grad_accum < 1:
            raise UserError(f"grad_accum must be at least 1, got {cfg.grad_accum}")
        self.run_dir = Path(cfg.run_dir)
        self._check_run_dir()
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", cfg.keep_checkpoints)
        self.resume_from = choose_resume_checkpoint(
            cfg.resume, self.checkpoints, self.run_dir, self.model_config
        )
        wait_for_everyone()  # every rank has validated before anything is written
        self.logger = RunLogger(
            self.run_dir, name=name, is_main=self.dist.is_main, tensorboard=cfg.tensorboard
        )
        if self.dist.is_main:
            for stale in self.checkpoints.remove_stale_temporaries():
                self.logger.warning("removed %s, left by a save that was interrupted", stale)
        self.samples_dir = self.run_dir / "samples"
        if self.dist.is_main:
            self.samples_dir.mkdir(exist_ok=True)
            write_json_atomic(self.run_dir / "config.json", self.config_record())
        self.models: dict[str, torch.nn.Module] = {}
        self.stateful: dict[str, Any] = {}
        self._finished = False
        self._stop_signal: int | None = None
        self._previous_sigterm = self._catch_sigterm()

    # ------------------------------------------------------------------ setup
    def _check_run_dir(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.run_dir, prefix=".write-test-"):
                pass
        except OSError as error:
            raise UserError(
                f"run directory {self.run_dir} is not writable: {error.strerror or error}"
            ) from None

    def config_record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model_config,
            "run": _normalise(dataclasses.asdict(self.cfg)),
            "world_size": self.dist.world_size,
            "argv": sys.argv,
        }

    # ------------------------------------------------------------------ models & state
    def track(
        self,
        models: Mapping[str, torch.nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
        schedulers: Mapping[str, Any] | None = None,
        extra_state: Mapping[str, Any] | None = None,
    ) -> None:
        """Register what checkpoints save and resumes restore.

        ``models`` go to ``model.safetensors``; optimizers, schedulers and any
        ``extra_state`` object with ``state_dict()``/``load_state_dict()`` go to
        ``training_state.pt``.
        """
        self.models.update({name: unwrap_model(model) for name, model in models.items()})
        for group, objects in (("optimizer", optimizers), ("scheduler", schedulers), ("extra", extra_state)):
            for name, obj in (objects or {}).items():
                self.stateful[f"{group}/{name}"] = obj

    def main_process_first(self):
        """A context in which rank 0 runs first (one-time preparation: caches, tokenizers), then the rest.

        It exists only on a run object, i.e. after the process group is set up, so the barrier
        it relies on can never silently be skipped.
        """
        return main_process_first()

    def wrap(self, model: torch.nn.Module, **ddp_kwargs) -> torch.nn.Module:
        """DDP-wrap ``model`` when distributed (parameters are already identical: same seed/checkpoint)."""
        return wrap_ddp(model, self.device, **ddp_kwargs)

    def resume(self) -> int:
        """Restore tracked state from the checkpoint chosen by ``--resume``; return its step (0: none)."""
        if self.resume_from is None:
            # A fresh start (or a restart that crashed before its first checkpoint): the steps
            # in metrics.jsonl, if any, will be trained and logged again.
            self.logger.truncate_after(0)
            return 0
        checkpoint = self.resume_from
        CheckpointManager.load_weights(checkpoint, self.models)
        state = CheckpointManager.load_training_state(checkpoint)
        missing = [key for key in self.stateful if key not in state.get("objects", {})]
        if missing:
            raise CheckpointError(f"checkpoint {checkpoint} lacks training state for {', '.join(missing)}")
        for key, obj in self.stateful.items():
            obj.load_state_dict(state["objects"][key])
        self.precision.load_state_dict(state.get("precision", {}))
        rng_states = state.get("rng", [])
        step = int(state["step"])
        if len(rng_states) == self.dist.world_size:
            restore_rng_state(rng_states[self.dist.rank])
        else:
            # Another world size: per-rank streams cannot be matched; reseed deterministically instead.
            self.logger.warning(
                "checkpoint was written by %d rank(s), now %d: RNG streams reseeded",
                len(rng_states),
                self.dist.world_size,
            )
            seed_everything(self.cfg.seed + step * 7919, rank=self.dist.rank)
        self.logger.truncate_after(step)
        if self.dist.is_main:
            # Checkpoints newer than the one resumed from belong to the abandoned continuation;
            # left in place, pruning or a later --resume auto would pick them.
            moved = self.checkpoints.set_aside_after(step)
            if moved:
                self.logger.warning(
                    "resumed from step %d: %d newer checkpoint(s) moved to %s",
                    step,
                    len(moved),
                    moved[0].parent,
                )
        wait_for_everyone()
        self.logger.info("resumed from %s at step %d", checkpoint, step)
        return step

    def save_checkpoint(
        self, step: int, folder: str | Path | None = None, record: Mapping[str, Any] | None = None
    ) -> Path | None:
        """Save every tracked object (collective: call on all ranks). Returns the path on rank 0.

        By default into ``checkpoints/step_N`` (pruned to ``--keep-checkpoints``); with ``folder``
        (e.g. ``checkpoints/best``) into that folder instead, outside the rotation, with
        ``record`` added to its ``config.json``. Either way it can be resumed from.
        """
        rng_states = all_gather_object(capture_rng_state())
        path = None
        if self.dist.is_main:
            training_state = {
                "step": step,
                "world_size": self.dist.world_size,
                "objects": {key: obj.state_dict() for key, obj in self.stateful.items()},
                "precision": self.precision.state_dict(),
                "rng": rng_states,
            }
            config = {**self.config_record(), **dict(record or {}), "step": step}
            if folder is None:
                path = self.checkpoints.save(step, self.models, config, training_state)
            else:
                path = CheckpointManager.write(folder, self.models, config, training_state)
        wait_for_everyone()
        return path

    # ------------------------------------------------------------------ loop helpers
    def steps(self, start: int = 0) -> Iterator[int]:
        """Yield steps ``start+1 .. cfg.steps``; after each, checkpoint when due (and at the end)."""
        cfg = self.cfg
        bar = self.logger.progress(total=cfg.steps, initial=start, desc=self.name, disable=not cfg.progress)
        try:
            for step in range(start + 1, cfg.steps + 1):
                maybe_crash(step, cfg.fault_at_step, self.dist.rank, self.dist.world_size, self.logger.logger)
                yield step
                bar.update(1)
                stop = self._stop_requested()
                due = cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0
                if due or step == cfg.steps or stop:
                    self.save_checkpoint(step)
                if stop:
                    self.logger.warning(
                        "SIGTERM: stopped after step %d with a checkpoint; --resume auto continues it", step
                    )
                    raise RunPreempted()
        finally:
            bar.close()

    # ------------------------------------------------------------------ preemption
    def _catch_sigterm(self) -> Any:
        """Turn SIGTERM (a scheduler's stop, torchrun's forward of it) into a checkpoint-and-exit."""
        if threading.current_thread() is not threading.main_thread():
            return None  # signal handlers can only be set from the main thread

        def request_stop(signum: int, _frame: Any) -> None:
            self._stop_signal = signum

        return signal.signal(signal.SIGTERM, request_stop)

    def _restore_sigterm(self) -> None:
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def _stop_requested(self) -> bool:
        """Whether any rank was asked to stop (all ranks agree, so they checkpoint together)."""
        flag = torch.tensor([1.0 if self._stop_signal is not None else 0.0], device=self.device)
        if self.dist.is_distributed:
            flag = all_reduce_sum(flag)
        return bool(flag.item() > 0)

    def sampler(
        self,
        num_items: int,
        batch_size: int,
        *,
        start_step: int = 0,
        lengths: Sequence[int] | None = None,
        **kwargs,
    ) -> ShardedBatchSampler:
        """A :class:`ShardedBatchSampler` for this rank, seeded by the run's seed.

        ``batch_size`` is the micro-batch per rank; each step's indices hold ``grad_accum`` of
        them (split them with :meth:`micro_batches`), so one optimizer step sees
        ``batch_size × grad_accum × world_size`` examples whatever the accumulation.
        """
        return ShardedBatchSampler(
            num_items,
            batch_size * self.cfg.grad_accum,
            seed=self.cfg.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            start_step=start_step,
            lengths=lengths,
            **kwargs,
        )

    def loader(
        self,
        dataset: Any,
        batch_size: int,
        *,
        start_step: int = 0,
        collate_fn: Any = None,
        lengths: Sequence[int] | None = None,
        **sampler_kwargs,
    ) -> Iterator[Any]:
        """Step batches of ``dataset`` loaded by ``--num-workers`` worker processes.

        The same batches as :meth:`sampler` names (so resumes stay exact), but read, decoded
        and collated in workers: the main process never holds the dataset. Split a step's
        batch with :meth:`micro_batches` as usual.
        """
        sampler = self.sampler(
            len(dataset), batch_size, start_step=start_step, lengths=lengths, **sampler_kwargs
        )
        workers = self.cfg.num_workers
        if workers < 0:
            workers = default_num_workers(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        return step_loader(
            dataset,
            sampler,
            num_workers=workers,
            collate_fn=collate_fn,
            pin_memory=self.device.type == "cuda",
        )

    def micro_batches(
        self, model: torch.nn.Module, batch: Any
    ) -> Iterator[tuple[Any, contextlib.AbstractContextManager]]:
        """Split a step's batch into ``grad_accum`` micro-batches, each with the context to run
        its forward and backward in: DDP's ``no_sync()`` for all but the last, so gradients are
        all-reduced once per optimizer step. Scale each micro-batch's loss by ``1 / grad_accum``
        for the gradient of the whole step's (mean) loss::

                for chunk, sync in run.micro_batches(ddp_model, indices):
                with sync, run.precision.autocast():
                    loss = ddp_model(batch(chunk)) / cfg.grad_accum
                run.precision.backward(loss)

        ``batch`` is a step's index list, or a collated batch from :meth:`loader`: a tensor, or a
        tuple/list/dict of tensors (and lists), split along the first dimension.
        """
        count = self.cfg.grad_accum
        for micro, chunk in enumerate(_split_batch(batch, count)):
            last = micro == count - 1
            no_sync = getattr(model, "no_sync", None)
            context = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
            yield chunk, context

    def should_log(self, step: int) -> bool:
        return step % max(1, self.cfg.log_every) == 0 or step == self.cfg.steps

    def log(self, step: int, metrics: Mapping[str, Any], reduce: bool = True) -> dict[str, float]:
        """Average scalar metrics over ranks (collective when ``reduce``) and record them on rank 0."""
        names = list(metrics)
        values = torch.tensor(
            [float(v.detach().float().item()) if torch.is_tensor(v) else float(v) for v in metrics.values()],
            dtype=torch.float64,
        )
        if reduce and self.dist.is_distributed:
            values = all_reduce_mean(values.to(self.device)).cpu()
        result = dict(zip(names, values.tolist()))
        self.logger.log_metrics(step, result)
        return result

    def check_finite(self, step: int, losses: Mapping[str, Any]) -> None:
        """Stop with a clear message if a loss is NaN/inf; the last good checkpoint stays untouched."""
        for name, value in losses.items():
            number = float(value.detach().float().item()) if torch.is_tensor(value) else float(value)
            if not math.isfinite(number):
                raise self.diverged(f"{name} became {number} at step {step}")

    def diverged(self, message: str) -> TrainingDiverged:
        """The error that stops a diverged run, naming the last good checkpoint (raise it)."""
        return TrainingDiverged(message + last_good_checkpoint_note(self.checkpoints))

    def write_json(self, relative_path: str, data: Any) -> Path:
        """Write ``run_dir/relative_path`` atomically (rank 0 only)."""
        path = self.run_dir / relative_path
        if self.dist.is_main:
            write_json_atomic(path, data)
        return path

    # ------------------------------------------------------------------ teardown
    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._restore_sigterm()
        wait_for_everyone()
        self.logger.close()
        if self._owns_process_group:
            shutdown_distributed()

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            # Do not wait at a barrier for ranks that may be gone; just close the files.
            self._finished = True
            self._restore_sigterm()
            self.logger.close()
