"""The training engine every stage shares, on HF Accelerate (DESIGN.md, "Distributed").

A stage (MBM pretraining, contrastive learning, video tuning, co-training; paper 3.3–3.4) supplies
a model, a dataset, a loss function ``loss_fn(model, batch) -> (loss, logs)`` and an
:class:`TrainConfig`; :class:`Trainer` does the rest with one code path for one process and for
DDP: AdamW without weight decay on biases, norms and embeddings (as MAE), linear warm-up then
cosine decay, gradient clipping, gradient accumulation, mixed precision, a seeded per-epoch
shuffle, checkpoints every N steps with exact resume, metrics through accelerate trackers and a
progress bar.

Exact resume: a checkpoint holds the model, optimiser, LR scheduler and the RNG states of
python / numpy / torch / CUDA on every process (``accelerator.save_state``) plus the data position
(epoch, batches of the epoch already consumed). Resuming restores all of it and skips the consumed
batches, so an interrupted run ends with the same parameters as an uninterrupted one. This needs
every random choice of the data pipeline to be a function of (seed, epoch, index): the engine
shuffles with a generator seeded from (seed, epoch) and calls ``dataset.set_epoch(epoch)`` when the
dataset has it; randomness inside the model's forward (dropout, masking, noise) may use the global
torch RNG, which the checkpoint restores.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, Sampler

from mindvideo.config import TrainConfig
from mindvideo.training.checkpoints import (
    CHECKPOINTS_DIR,
    TrainingPosition,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)
from mindvideo.training.schedule import SCHEDULES, build_lr_scheduler
from mindvideo.training.tracking import (
    LOGS_DIR,
    METRICS_FILE,
    JsonlTracker,
    MetricWindow,
    flat_config,
    truncate_metrics,
)
from mindvideo.utils import UserError
from mindvideo.utils.threads import adapt_threads

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINTS_DIR",  # re-exported: the checkpoint layout lives in training.checkpoints
    "EpochShuffleSampler",
    "LossFn",
    "Trainer",
    "check_engine_config",
    "latest_checkpoint",
    "list_checkpoints",
    "param_groups_weight_decay",
    "reset_accelerate_state",
]

MIXED_PRECISION = ("no", "bf16", "fp16")
TRACKERS = ("tensorboard", "wandb")
"""Optional trackers; each needs the pip extra of the same name (``mindvideo[tensorboard]``)."""

LossFn = Callable[[nn.Module, Any], "tuple[torch.Tensor, Mapping[str, Any]]"]


def check_engine_config(config: TrainConfig) -> None:
    """Raise a :class:`UserError` naming the key for any setting the engine cannot run with."""
    positive = ("max_steps", "batch_size", "gradient_accumulation_steps", "log_every")
    for key in positive:
        if getattr(config, key) < 1:
            raise UserError(f"Training key {key!r} must be at least 1, not {getattr(config, key)}.")
    non_negative = (
        "warmup_steps",
        "checkpoint_every",
        "keep_checkpoints",
        "eval_every",
        "num_workers",
        "weight_decay",
        "min_lr",
        "max_grad_norm",
    )
    for key in non_negative:
        if getattr(config, key) < 0:
            raise UserError(
                f"Training key {key!r} must not be negative, not {getattr(config, key)}."
            )
    if not config.learning_rate > 0:
        raise UserError(
            f"Training key 'learning_rate' must be positive, not {config.learning_rate}."
        )
    if len(config.betas) != 2 or not all(0.0 <= b < 1.0 for b in config.betas):
        raise UserError(
            f"Training key 'betas' must be two numbers in [0, 1), not {list(config.betas)}."
        )
    if config.lr_schedule not in SCHEDULES:
        raise UserError(
            f"Training key 'lr_schedule' is {config.lr_schedule!r}; choose one of: "
            f"{', '.join(SCHEDULES)}."
        )
    if config.mixed_precision not in MIXED_PRECISION:
        raise UserError(
            f"Training key 'mixed_precision' is {config.mixed_precision!r}; choose one of: "
            f"{', '.join(MIXED_PRECISION)}."
        )
    if config.mixed_precision == "fp16" and (config.cpu or not torch.cuda.is_available()):
        raise UserError(
            "Training key 'mixed_precision' is 'fp16', which needs a CUDA GPU; "
            "use mixed_precision=bf16 (or no) on this machine."
        )
    for name in config.trackers:
        if name not in TRACKERS:
            raise UserError(
                f"Training key 'trackers' names {name!r}; choose from: {', '.join(TRACKERS)} "
                "(metrics always go to logs/metrics.jsonl)."
            )
        _check_tracker_installed(name)


def _check_tracker_installed(name: str) -> None:
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}[name]()
    if not available:
        raise UserError(
            f"Training key 'trackers' asks for {name!r}, which is not installed; install it with "
            f"pip install 'mindvideo[{name}]' or remove {name!r} from trackers."
        )


# --------------------------------------------------------------------------------------------
# Data order
# --------------------------------------------------------------------------------------------


def _seed_for(*keys: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, epoch, ...), stable across runs."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> 1)


class EpochShuffleSampler(Sampler[int]):
    """A random order of ``range(n)`` that depends only on ``(seed, epoch)``.

    The order of an epoch is the same whether the process started at epoch 0 or resumed at a later
    one, and the same on every DDP process (accelerate then deals the batches out to processes).
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(_seed_for(self.seed, self.epoch))
        yield from torch.randperm(self.n, generator=generator).tolist()

    def __len__(self) -> int:
        return self.n


# --------------------------------------------------------------------------------------------
# Optimiser parameter groups
# --------------------------------------------------------------------------------------------

_NO_DECAY_MODULES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.RMSNorm,
    nn.Embedding,
)
_NO_DECAY_NAME = re.compile(r"(token|tokens|embed|embedding|embeddings)$")


def param_groups_weight_decay(
    model: nn.Module,
    params: Iterable[nn.Parameter] | Iterable[Mapping[str, Any]] | None,
    weight_decay: float,
) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on weight matrices only (as MAE / timm).

    No decay for parameters with at most one dimension (biases, norm scales, temperatures), for
    the parameters of normalisation and ``nn.Embedding`` layers, for directly held parameters
    whose name ends in ``token(s)`` / ``embed`` / ``embedding(s)`` (position embeddings, mask and
    class tokens), and for the names the model lists in ``model.no_weight_decay()`` (the timm
    convention). ``params``: the trainable parameters (default: every parameter of ``model``
    with ``requires_grad``), or parameter-group dicts whose other keys (e.g. ``lr``) are kept.
    """
    owner: dict[int, tuple[str, nn.Module]] = {}
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            owner.setdefault(id(param), (full, module))
    listed = getattr(model, "no_weight_decay", None)
    no_decay_names = set(listed()) if callable(listed) else set()

    if params is None:
        groups_in: list[dict[str, Any]] = [
            {"params": [p for p in model.parameters() if p.requires_grad]}
        ]
    else:
        items = list(params)
        if items and isinstance(items[0], Mapping):
            groups_in = [dict(g) for g in items]  # type: ignore[arg-type]
        else:
            groups_in = [{"params": items}]

    groups_out: list[dict[str, Any]] = []
    for group in groups_in:
        decay, no_decay = [], []
        for param in group.pop("params"):
            if id(param) not in owner:
                raise ValueError("a trainable parameter is not a parameter of the model")
            name, module = owner[id(param)]
            leaf = name.rsplit(".", 1)[-1]
            skip = (
                param.ndim <= 1
                or isinstance(module, _NO_DECAY_MODULES)
                or name in no_decay_names
                or (leaf not in ("weight", "bias") and _NO_DECAY_NAME.search(leaf) is not None)
            )
            (no_decay if skip else decay).append(param)
        extra_decay = group.pop("weight_decay", weight_decay)
        if decay:
            groups_out.append({**group, "params": decay, "weight_decay": extra_decay})
        if no_decay:
            groups_out.append({**group, "params": no_decay, "weight_decay": 0.0})
    return groups_out


@dataclass
class _Run:
    """What one call of :meth:`Trainer.train` works with, after ``accelerator.prepare``."""

    accelerator: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: DataLoader
    sampler: Any  # the engine's EpochShuffleSampler or the stage's batch sampler
    loader_generator: torch.Generator
    batches_per_epoch: int  # per process
    params: list[nn.Parameter]  # the optimised ones, for gradient clipping
    n_trainable: int
    window: MetricWindow = field(default_factory=MetricWindow)
    bar: Any = None  # the progress bar


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------


class Trainer:
    """Train ``model`` on ``train_dataset`` by minimising ``loss_fn`` under HF Accelerate.

    Args:
        model: the module to train. ``loss_fn`` must call it (``model(...)``) rather than a
            method of it, so DDP can synchronise gradients.
        train_dataset: a map-style dataset. If it has ``set_epoch(epoch)`` the engine calls it at
            the start of every epoch; its randomness must come from (seed, epoch, index) for
            exact resume.
        loss_fn: ``loss_fn(model, batch) -> (loss, logs)``; ``loss`` a scalar tensor (a mean
            over the batch), ``logs`` a dict of scalars to average and log beside it.
        config: the :class:`TrainConfig`.
        out_dir: the stage's output directory; checkpoints go to ``out_dir/checkpoints`` and
            logs to ``out_dir/logs``.
        collate_fn: DataLoader collate function (default: torch's).
        batch_sampler: yields lists of dataset indices (replaces the engine's shuffled batches
            of ``batch_size``); it should have ``batch_size`` and ``drop_last`` attributes and a
            ``set_epoch(epoch)`` making its order a function of (its seed, epoch). Under DDP
            accelerate deals its batches out to the processes in turn.
        trainable_params: the parameters to optimise (or parameter-group dicts); the model's
            other parameters are frozen. Default: all parameters with ``requires_grad``.
        eval_fn: ``eval_fn(model, step) -> dict | None`` called on every process with the
            unwrapped model in eval mode under ``torch.no_grad`` every ``eval_every`` steps and at
            the end; the main process logs what it returns. It runs on forked RNG states, so it
            does not change the training run.
        save_fn: ``save_fn(model, out_dir)`` called on the main process only with the unwrapped,
            trained model before the processes finish (e.g. ``model.save_pretrained``).
        project_name: the run's name for trackers (default: the output folder's name).
    """

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Dataset,
        loss_fn: LossFn,
        config: TrainConfig,
        out_dir: str | os.PathLike,
        *,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        batch_sampler: Iterable[list[int]] | None = None,
        trainable_params: Iterable[nn.Parameter] | Iterable[Mapping[str, Any]] | None = None,
        eval_fn: Callable[[nn.Module, int], Mapping[str, Any] | None] | None = None,
        save_fn: Callable[[nn.Module, Path], None] | None = None,
        project_name: str | None = None,
    ) -> None:
        check_engine_config(config)
        if isinstance(train_dataset, IterableDataset):
            raise TypeError("the training engine needs a map-style dataset (with __len__)")
        self.model = model
        self.train_dataset = train_dataset
        self.loss_fn = loss_fn
        self.config = config
        self.out_dir = Path(out_dir)
        self.collate_fn = collate_fn
        self.batch_sampler = batch_sampler
        self.trainable_params = trainable_params
        self.eval_fn = eval_fn
        self.save_fn = save_fn
        self.project_name = project_name or self.out_dir.resolve().name or "mindvideo"
        self.is_main_process = True
        """Whether this process is the main one; valid after :meth:`train` as well."""
        self.num_processes = 1
        self.process_index = 0
        self.global_batch_size = config.batch_size * config.gradient_accumulation_steps
        """Samples per optimiser step over all processes (set when training starts)."""

    # ----------------------------------------------------------------------------------------

    def train(self, resume: str | os.PathLike | None = None) -> nn.Module:
        """Run the training loop to ``max_steps`` and return the unwrapped model (in eval mode).

        ``resume``: ``None`` starts afresh (an error if the output folder already holds
        checkpoints), ``"latest"`` continues from the newest checkpoint in ``out_dir`` (or starts
        afresh if there is none), a path continues from that checkpoint folder. The same number of
        processes, batch size and gradient accumulation are required to resume.
        """
        accelerator = self._make_accelerator()
        try:
            return self._train(accelerator, resume)
        finally:
            # Drop the DDP wrapper (its reducer holds the process group) and collect it while the
            # interpreter is alive; a gloo group freed during interpreter shutdown can abort.
            accelerator.free_memory()
            gc.collect()
            accelerator.end_training()
            reset_accelerate_state()

    def _make_accelerator(self) -> Any:
        from accelerate import Accelerator
        from accelerate.utils import (
            DistributedDataParallelKwargs,
            GradientAccumulationPlugin,
            ProjectConfiguration,
        )

        cfg = self.config
        log_with: list[Any] = [JsonlTracker(self.out_dir / LOGS_DIR / METRICS_FILE)]
        log_with += list(cfg.trackers)
        return Accelerator(
            mixed_precision=cfg.mixed_precision,
            # Without CUDA the CPU backend (gloo for DDP) is the only real one; see DESIGN.md.
            cpu=cfg.cpu or not torch.cuda.is_available(),
            # Group batches into optimiser steps across epoch ends too, so an accumulation of k
            # batches is always k full batches (matching a k-times larger batch exactly).
            gradient_accumulation_plugin=GradientAccumulationPlugin(
                num_steps=cfg.gradient_accumulation_steps, sync_with_dataloader=False
            ),
            # The schedule is in optimiser steps; accelerate would otherwise step it once per
            # process per step.
            step_scheduler_with_optimizer=False,
            log_with=log_with,
            project_config=ProjectConfiguration(
                project_dir=str(self.out_dir), logging_dir=str(self.out_dir / LOGS_DIR)
            ),
            kwargs_handlers=[
                DistributedDataParallelKwargs(find_unused_parameters=cfg.find_unused_parameters)
            ],
        )

    def _train(self, accelerator: Any, resume: str | os.PathLike | None) -> nn.Module:
        from accelerate.utils import set_seed
        from tqdm.auto import tqdm

        cfg = self.config
        self._record_processes(accelerator)
        resume_from = resolve_resume(self.out_dir, resume)
        # Dropout and masking differ between processes; resume restores each one's RNG.
        set_seed(cfg.seed, device_specific=True)
        run = self._prepare_run(accelerator)
        position = self._start_position(run, resume_from)
        run.model.train()
        run.window.reset()  # samples_per_s counts from here
        run.bar = tqdm(
            total=cfg.max_steps,
            initial=position.step,
            desc=self.project_name,
            unit="step",
            disable=not accelerator.is_local_main_process,
            dynamic_ncols=True,
        )
        try:
            step, epoch, skip = position.step, position.epoch, position.batch_in_epoch
            while step < cfg.max_steps:
                step = self._train_epoch(run, epoch, skip, step)
                epoch, skip = epoch + 1, 0
        finally:
            run.bar.close()
        return self._finish(run)

    def _record_processes(self, accelerator: Any) -> None:
        cfg = self.config
        self.is_main_process = accelerator.is_main_process
        self.num_processes = accelerator.num_processes
        self.process_index = accelerator.process_index
        self.global_batch_size = (
            cfg.batch_size * self.num_processes * cfg.gradient_accumulation_steps
        )

    def _prepare_run(self, accelerator: Any) -> _Run:
        """Freeze, build the optimiser, schedule and loader, and hand them to accelerate."""
        cfg = self.config
        model = self.model
        if cfg.gradient_checkpointing:
            _enable_gradient_checkpointing(model)
        groups = param_groups_weight_decay(model, self.trainable_params, cfg.weight_decay)
        trainable = {id(p) for g in groups for p in g["params"]}
        for param in model.parameters():
            if id(param) not in trainable:
                param.requires_grad_(False)
        optimizer = torch.optim.AdamW(
            groups, lr=cfg.learning_rate, betas=(cfg.betas[0], cfg.betas[1])
        )
        scheduler = build_lr_scheduler(
            optimizer,
            max_steps=cfg.max_steps,
            warmup_steps=cfg.warmup_steps,
            schedule=cfg.lr_schedule,
            learning_rate=cfg.learning_rate,
            min_lr=cfg.min_lr,
        )
        loader, sampler, loader_generator = self._make_loader()
        model, optimizer, loader, scheduler = accelerator.prepare(
            model, optimizer, loader, scheduler
        )
        if len(loader) == 0:
            raise UserError(
                f"The training set has {len(self.train_dataset)} samples, fewer than one batch "  # type: ignore[arg-type]
                f"on each of {self.num_processes} process(es) (batch_size {cfg.batch_size}); "
                "lower batch_size."
            )
        return _Run(
            accelerator,
            model,
            optimizer,
            scheduler,
            loader,
            sampler,
            loader_generator,
            batches_per_epoch=len(loader),
            params=[p for g in optimizer.param_groups for p in g["params"]],
            n_trainable=sum(p.numel() for g in groups for p in g["params"]),
        )

    def _start_position(self, run: _Run, resume_from: Path | None) -> TrainingPosition:
        """Resume from ``resume_from`` (or start at step 0), then start the trackers."""
        cfg, accelerator = self.config, run.accelerator
        position = TrainingPosition()
        if resume_from is not None:
            here = self._checkpoint_state(TrainingPosition())
            position = load_checkpoint(
                accelerator, resume_from, here, cfg.gradient_accumulation_steps
            )
        if accelerator.is_main_process:
            truncate_metrics(self.out_dir / LOGS_DIR / METRICS_FILE, position.step)
        accelerator.init_trackers(self.project_name, config=flat_config(cfg))
        logger.info(
            "Training %s: %d trainable parameters, %d process(es), global batch %d "
            "(%d per process × %d accumulation), %d batches per epoch per process, steps %d → %d.",
            self.project_name,
            run.n_trainable,
            self.num_processes,
            self.global_batch_size,
            cfg.batch_size,
            cfg.gradient_accumulation_steps,
            run.batches_per_epoch,
            position.step,
            cfg.max_steps,
        )
        if position.step >= cfg.max_steps:
            logger.info("Checkpoint %s is already at max_steps; nothing to train.", resume_from)
        return position

    def _train_epoch(self, run: _Run, epoch: int, skip: int, step: int) -> int:
        """Train on epoch ``epoch`` from its batch ``skip``; returns the optimiser steps done."""
        accelerator = run.accelerator
        self._set_epoch(epoch, run.sampler, run.loader_generator, accelerator.process_index)
        run.loader.set_epoch(epoch)
        epoch_loader = accelerator.skip_first_batches(run.loader, skip) if skip else run.loader
        batch_index = skip
        for batch in epoch_loader:
            adapt_threads()  # another job may have started or ended: use the CPUs now free
            self._train_batch(run, batch)
            batch_index += 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            self._after_optimizer_step(run, TrainingPosition(step, epoch, batch_index))
            if step >= self.config.max_steps:
                break
        return step

    def _train_batch(self, run: _Run, batch: Any) -> None:
        """Forward, backward and (at the end of an accumulation window) the optimiser step."""
        cfg, accelerator = self.config, run.accelerator
        with accelerator.accumulate(run.model):
            with accelerator.autocast():
                loss, logs = self.loss_fn(run.model, batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                run.window.grad_norm = accelerator.clip_grad_norm_(run.params, cfg.max_grad_norm)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        run.window.add(loss, logs)

    def _after_optimizer_step(self, run: _Run, at: TrainingPosition) -> None:
        """Step the schedule, then log, checkpoint and evaluate when their turn has come."""
        cfg, accelerator, step = self.config, run.accelerator, at.step
        lr = run.optimizer.param_groups[0]["lr"]
        run.scheduler.step()
        run.window.steps += 1
        run.bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            metrics = run.window.reduce(accelerator, self.global_batch_size)
            metrics["lr"] = lr
            metrics["epoch"] = at.epoch + at.batch_in_epoch / run.batches_per_epoch
            self._log(accelerator, metrics, step, run.bar)
        if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step == cfg.max_steps):
            if at.batch_in_epoch == run.batches_per_epoch:
                at = TrainingPosition(step, at.epoch + 1, 0)
            state = self._checkpoint_state(at)
            save_checkpoint(accelerator, self.out_dir, state, cfg.keep_checkpoints)
        if self.eval_fn is not None and (
            (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps
        ):
            self._evaluate(accelerator, run.model, step)

    def _finish(self, run: _Run) -> nn.Module:
        """The unwrapped, trained model in eval mode, saved by ``save_fn`` on the main process."""
        accelerator = run.accelerator
        accelerator.wait_for_everyone()
        trained = accelerator.unwrap_model(run.model, keep_fp32_wrapper=False)
        trained.eval()
        if self.save_fn is not None and accelerator.is_main_process:
            self.save_fn(trained, self.out_dir)
        accelerator.wait_for_everyone()
        return trained

    # ----------------------------------------------------------------------------------------

    def _log(self, accelerator: Any, metrics: dict[str, float], step: int, bar: Any) -> None:
        if not np.isfinite(metrics["loss"]):
            raise UserError(
                f"The training loss became {metrics['loss']} at step {step}; lower "
                "learning_rate (or raise warmup_steps) and restart or resume."
            )
        accelerator.log(metrics, step=step)
        bar.set_postfix(loss=f"{metrics['loss']:.4g}", lr=f"{metrics['lr']:.3g}")
        if accelerator.is_main_process:
            logger.info(
                "step %d/%d: loss %.4g, lr %.3g",
                step,
                self.config.max_steps,
                metrics["loss"],
                metrics["lr"],
            )

    def _make_loader(self) -> tuple[DataLoader, Any, torch.Generator]:
        cfg = self.config
        # Its own generator, so creating a DataLoader iterator does not draw from the global
        # torch RNG (that would shift dropout masks after a resume); reseeded every epoch.
        generator = torch.Generator()
        if self.batch_sampler is not None:
            sampler: Any = self.batch_sampler
            batches = self.batch_sampler
        else:
            sampler = EpochShuffleSampler(len(self.train_dataset), cfg.seed)  # type: ignore[arg-type]
            # Full batches only: every optimiser step then averages the same number of samples.
            batches = BatchSampler(sampler, cfg.batch_size, drop_last=True)
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=batches,  # type: ignore[arg-type]
            collate_fn=self.collate_fn,
            num_workers=cfg.num_workers,
            pin_memory=torch.cuda.is_available() and not cfg.cpu,
            generator=generator,
        )
        return loader, sampler, generator

    def _set_epoch(
        self, epoch: int, sampler: Any, generator: torch.Generator, process_index: int
    ) -> None:
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if hasattr(self.train_dataset, "set_epoch"):
            self.train_dataset.set_epoch(epoch)
        # Seeds of DataLoader workers: fixed per (seed, epoch, process).
        generator.manual_seed(_seed_for(self.config.seed, epoch, process_index, 1))

    def _checkpoint_state(self, position: TrainingPosition) -> dict[str, Any]:
        cfg = self.config
        return {
            "step": position.step,
            "epoch": position.epoch,
            "batch_in_epoch": position.batch_in_epoch,
            "num_processes": self.num_processes,
            "batch_size": cfg.batch_size,
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
            "dataset_size": len(self.train_dataset),  # type: ignore[arg-type]
            "seed": cfg.seed,
            "config": dataclasses.asdict(cfg),
        }

    def _evaluate(self, accelerator: Any, model: nn.Module, step: int) -> None:
        assert self.eval_fn is not None
        unwrapped = accelerator.unwrap_model(model)
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002 (the global RNG is what is protected)
        unwrapped.eval()
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                values = self.eval_fn(unwrapped, step)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)  # noqa: NPY002
            model.train()
        if values:
            accelerator.log({k: float(v) for k, v in values.items()}, step=step)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _enable_gradient_checkpointing(model: nn.Module) -> None:
    for method in ("enable_gradient_checkpointing", "gradient_checkpointing_enable"):
        if callable(getattr(model, method, None)):
            getattr(model, method)()
            return
    raise UserError(
        f"Training key 'gradient_checkpointing' is true but {type(model).__name__} does not "
        "support it; set gradient_checkpointing=false."
    )


def reset_accelerate_state() -> None:
    """Forget accelerate's process-wide state so a later stage in this process starts clean.

    Accelerate keeps one shared state per process and refuses a second ``Accelerator`` with,
    e.g., another mixed precision; the engine owns that state for the duration of ``train``.
    """
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
