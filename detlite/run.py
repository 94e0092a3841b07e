"""A training run's state and how it is built from its config.

`build(cfg, world)` gathers everything a run holds — data, parameters, optimizer, EMA, loss
scaler, the compiled steps, the checkpointer and the dashboard — restoring it from `--resume`
when asked. `Run.step` is one optimizer step; `detlite.trainer` runs the loop around it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from . import checkpoint, distributed, model, run_outputs, rundir
from .checkpoint import Checkpointer, TrainingState, TrainingTensors
from .config import ModelConfig
from .dashboard import Dashboard
from .data import (
    Augment,
    CategoryMap,
    CocoDetection,
    DevicePrefetcher,
    TrainLoader,
    train_split,
    uses_builtin,
    val_split,
)
from .errors import ConfigError
from .evaluate import EvalSplit
from .init_weights import initial_params, model_config
from .layers import Params
from .metrics import metrics_table, write_results
from .optim import ema_decay_at, ema_update, make_sgd, peak_lr, scaled_step, set_lr, trainable_names
from .parallel import LossOverRanks
from .resume import describe_changes, run_dir_of
from .steps import Predictor, StepOptions, TrainingLoss, parameter_dtype
from .stopping import StopRequest
from .train_config import BENCHMARK_WARMUP_STEPS, TrainConfig, train_config_from_dict


@dataclass
class Run:
    """Everything a training run holds; built by `build`."""

    cfg: TrainConfig
    world: distributed.World
    model_cfg: ModelConfig
    category_map: CategoryMap
    loader: TrainLoader
    val: EvalSplit | None
    params: Params
    trainable: list[str]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: Params | None
    state: TrainingState
    loss: TrainingLoss
    net: LossOverRanks
    """The loss of this rank's micro-batch, through DDP when there are several ranks."""
    predictor: Predictor
    checkpointer: Checkpointer
    dash: Dashboard
    total_steps: int
    peak_lr: float
    stop: StopRequest
    unreadable: set[str] = dataclasses.field(default_factory=set)
    """Training images found unreadable so far (each is reported once)."""
    skipped_fp16_steps: int = 0
    """Steps the fp16 loss scaler skipped since this process started (inf/NaN gradients)."""

    @property
    def global_batch(self) -> int:
        """Images per optimizer step, over all ranks and micro-batches."""
        return self.cfg.batch_size * self.world.world_size * self.cfg.grad_accum_steps

    def batches(self) -> Iterator[list[dict]]:
        """The micro-batches of each step (on the device), from the current step on."""
        epochs = self.loader.iterate(self.state.step)
        micro = iter(DevicePrefetcher((b for _, _, b in epochs), self.world.device))
        while group := list(itertools.islice(micro, self.cfg.grad_accum_steps)):
            yield group

    def step(
        self, micro_batches: list[dict], lr: float, step: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Optimizer step number `step` (0-based) on its micro-batches at learning rate `lr`;
        returns the (total, class, box) loss of this rank's share of the global batch (not
        synchronised).

        Targets first, for the positive count of the whole global batch (summed over ranks):
        every part of the loss is normalised by it, so the parts add up to the loss of the
        whole. Gradients are all-reduced (by DDP) after the last micro-batch only."""
        set_lr(self.optimizer, lr)
        assigned = [self.loss.assign(b["boxes"], b["labels"]) for b in micro_batches]
        total = torch.stack([t.positives.sum() for t in assigned]).sum()
        positives = distributed.all_reduce_sum(total)
        parts = []
        for i, (batch, targets) in enumerate(zip(micro_batches, assigned, strict=True)):
            last = i == len(micro_batches) - 1
            with nullcontext() if last else self.net.no_sync():
                losses = self.net(batch["images"], targets, positives)
                self.scaler.scale(losses[0] * self.net.gradient_scale).backward()
            parts.append(torch.stack(losses).detach())
        tensors = [self.params[k] for k in self.trainable]
        self.scaler.unscale_(self.optimizer)
        if self.cfg.optim.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(tensors, self.cfg.optim.clip_grad_norm, foreach=True)
        if not scaled_step(self.scaler, self.optimizer):
            self.skipped_fp16_steps += 1
            self.dash.warn_count("skipped fp16 steps", self.skipped_fp16_steps)
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            ema_update(self.ema, self.params, ema_decay_at(step, self.cfg.optim))
        return tuple(torch.stack(parts).sum(dim=0).unbind())

    def close(self) -> None:
        """Stop the data-loading worker processes."""
        self.loader.close()
        if self.val is not None:
            self.val.close()

    def stop_agreed(self) -> bool:
        """Whether a stop signal arrived (on any rank: all ranks stop at the same step)."""
        return distributed.any_rank(self.stop.requested)

    def report_unreadable(self, reasons: list[str]) -> None:
        """Say once per image that an undecodable training image was replaced."""
        for reason in reasons:
            if reason not in self.unreadable:
                self.unreadable.add(reason)
                self.dash.warn_count("unreadable images", len(self.unreadable))
                self.dash.log(
                    f"warning: {reason}; replaced by the next readable image "
                    f"({len(self.unreadable)} so far; --data.bad-images error stops instead)"
                )

    def evaluate(self, step: int) -> dict[str, float]:
        """COCO metrics of the evaluated weights (EMA when there is one) on the val split;
        rank 0 writes the detections to `eval-step<N>.json` and shows the metrics."""
        assert self.val is not None, "no val split to evaluate on"
        weights = self.ema if self.ema is not None else self.params
        progress = self.dash.evaluating
        metrics, results, per_class = self.val.evaluate(
            self.predictor, weights, self.stop, progress
        )
        if self.world.is_main:
            write_results(rundir.eval_results(Path(self.cfg.output), step), results)
            kind = "EMA" if self.ema is not None else "raw"
            self.dash.print(
                metrics_table(metrics, title=f"COCO bbox, val, step {step} ({kind} weights)")
            )
            self.dash.record({"step": step, "eval": metrics}, per_class)  # the plots read it
            run_dir, val_set = Path(self.cfg.output), self.val.dataset
            run_outputs.after_evaluation(
                run_dir, step, per_class, val_set, results, self.category_map
            )
        return metrics

    def save(self, step: int, metric: float | None = None, final: bool = False) -> Path:
        """The training checkpoint of `step` (see `Checkpointer.save`); returns its path."""
        self.state.scaler = self.scaler.state_dict() if self.scaler.is_enabled() else {}
        # Every rank's generators (drop path draws from them), gathered on every rank.
        rng = distributed.all_gather_objects(checkpoint.training.rng_states())
        tensors = TrainingTensors(self.params, self.ema, self.optimizer, self.trainable, rng)
        path = self.checkpointer.save(
            step,
            tensors,
            self.model_cfg,
            self.state,
            self.category_map,
            metric=metric,
            best_if_unevaluated=final,
        )
        self.dash.checkpoint(step)
        return path


def build(cfg: TrainConfig, world: distributed.World, stop: StopRequest) -> Run:
    """The run `cfg` describes, resumed from `cfg.resume` when set. Nothing is written before
    every input has been read and checked."""
    _configure_torch(cfg, world)
    _check_run_dir(cfg, world)
    notes = _deprecation_notes(cfg)  # said once the dashboard exists
    restored = _restore(cfg, notes)
    train_paths = train_split(cfg.data)
    val_paths = val_split(cfg.data, builtin_default=uses_builtin(cfg.data))
    stored_map = restored.category_map if restored is not None else None
    train_set = CocoDetection(train_paths.annotations, train_paths.images, stored_map)
    category_map = train_set.category_map
    notes += [line for line in [train_set.stats.report("train")] if line]
    model_cfg = restored.cfg if restored is not None else model_config(cfg, category_map)
    params = restored.params if restored is not None else initial_params(cfg, model_cfg, notes)
    dtype = parameter_dtype(_step_options(cfg, world))
    params, trainable = _on_device(params, world.device, dtype, cfg.model.freeze)
    loader = _train_loader(cfg, world, train_set, model_cfg)
    lr = peak_lr(cfg.optim, cfg.batch_size * world.world_size * cfg.grad_accum_steps)
    optimizer, scaler, ema, state = _optimization(cfg, world, params, trainable, lr, restored)
    total_steps = _total_steps(cfg, loader)
    val = None if cfg.benchmark else _open_val(cfg, val_paths, world, model_cfg, category_map)
    notes += [line for line in [val and val.dataset.stats.report("val")] if line]
    if cfg.overwrite and _writes(cfg, world) and (removed := rundir.clear(Path(cfg.output))):
        notes.append(f"--overwrite: removed the {len(removed)} files of the earlier run")
    dash, checkpointer = _dashboard_and_checkpointer(cfg, world, total_steps, state.step)
    options = _step_options(cfg, world)
    loss = TrainingLoss(model_cfg, options, world.device)
    run = Run(
        cfg=cfg,
        world=world,
        model_cfg=model_cfg,
        category_map=category_map,
        loader=loader,
        val=val,
        params=params,
        trainable=trainable,
        optimizer=optimizer,
        scaler=scaler,
        ema=ema,
        state=state,
        loss=loss,
        net=LossOverRanks(loss, params, world.world_size, world.device, cfg.grad_accum_steps),
        predictor=Predictor(model_cfg, options, world.device),
        checkpointer=checkpointer,
        dash=dash,
        total_steps=total_steps,
        peak_lr=lr,
        stop=stop,
    )
    for line in [*notes, _summary_line(run, len(train_set), restored is not None)]:
        dash.log(line)
    run_outputs.dashboard_start(dash, run, train_set)
    if _writes(cfg, world):
        run_outputs.at_start(Path(cfg.output), cfg, train_set)
    return run


def _dashboard_and_checkpointer(cfg: TrainConfig, world, total_steps: int, start_step: int):
    writes = _writes(cfg, world)
    dash = Dashboard(
        Path(cfg.output),
        total_steps,
        start_step,
        writes,
        compiling=cfg.compile != "off",
        tensorboard=cfg.log.tensorboard,
    )
    checkpointer = Checkpointer(
        Path(cfg.output), cfg.checkpoint_every, cfg.keep_checkpoints, writer=writes, log=dash.log
    )
    checkpointer.prepare()  # stale temporary files of a killed write
    return dash, checkpointer


def _check_run_dir(cfg: TrainConfig, world: distributed.World) -> None:
    """A new run never replaces another: refused here, before anything is loaded. Rank 0
    decides (it is the one that writes; the others might see its first files already) and
    every rank stops with it."""
    problem = None
    if world.is_main and not cfg.benchmark:
        output = Path(cfg.output).resolve()
        resuming_it = cfg.resume is not None and output in (
            Path(cfg.resume).resolve(),
            run_dir_of(Path(cfg.resume)).resolve(),
        )
        try:
            rundir.check_free(Path(cfg.output), overwrite=cfg.overwrite, resuming_it=resuming_it)
        except ConfigError as error:
            problem = error
    if distributed.any_rank(problem is not None):
        raise problem or ConfigError(f"--output {cfg.output}: refused by rank 0 (see its message)")


def _writes(cfg: TrainConfig, world: distributed.World) -> bool:
    """Rank 0 talks to the person and writes files; a benchmark writes nothing."""
    return world.is_main and not cfg.benchmark


def _deprecation_notes(cfg: TrainConfig) -> list[str]:
    if cfg.model.fused_ops:
        return []
    return [
        "--model.no-fused-ops has no effect any more: the detlite ops are the one focal-loss "
        "and NMS implementation (their reference kernels run where no compiled kernel does)"
    ]


def _configure_torch(cfg: TrainConfig, world: distributed.World) -> None:
    torch.manual_seed(cfg.seed + world.rank)
    if world.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.precision.tf32
        torch.backends.cudnn.allow_tf32 = cfg.precision.tf32
        torch.backends.cudnn.benchmark = True


def _restore(cfg: TrainConfig, notes: list[str]) -> checkpoint.Restored | None:
    if cfg.resume is None:
        return None
    path, restored = checkpoint.restore(Path(cfg.resume), notes.append)
    notes.append(f"resuming from {path} (step {restored.state.step})")
    stored = restored.state.extra.get("train_config")
    if stored is not None:
        changes = describe_changes(train_config_from_dict(json.loads(stored)), cfg)
        notes += [f"changed on resume: {', '.join(changes)}"] if changes else []
    return restored


def _optimization(cfg: TrainConfig, world, params: Params, trainable: list[str], lr, restored):
    """SGD, the loss scaler, the EMA and the training state, fresh or restored."""
    optimizer = make_sgd(params, trainable, cfg.optim, lr)
    scaler = torch.amp.GradScaler(world.device.type, enabled=cfg.precision.dtype == "fp16")
    ema = {k: v.detach().clone() for k, v in params.items()} if cfg.optim.ema_decay > 0 else None
    state = TrainingState()
    if restored is not None:
        state, ema = _resume_into(restored, optimizer, params, scaler, ema, world.device)
    state.extra["train_config"] = json.dumps(dataclasses.asdict(cfg), default=str)
    return optimizer, scaler, ema, state


def _resume_into(restored, optimizer, params, scaler, ema, device):
    """Load optimizer, EMA, scaler and RNG state from a checkpoint; returns (state, ema)."""
    checkpoint.training.restore_optimizer(optimizer, params, restored.optimizer_state)
    if ema is not None and restored.ema is not None:
        ema = {k: v.to(device) for k, v in restored.ema.items()}
    if restored.state.scaler:
        scaler.load_state_dict(restored.state.scaler)
    checkpoint.training.restore_rng(restored.rng, distributed.rank())
    return restored.state, ema


def _on_device(
    params: Params, device: torch.device, dtype: torch.dtype, freeze: str
) -> tuple[Params, list[str]]:
    """Params on the device in `dtype`, and the names of those the optimizer trains."""
    params = {k: v.to(device, dtype) for k, v in params.items()}
    names = trainable_names(params, ("backbone.",) if freeze == "backbone" else ())
    for name in names:
        params[name] = torch.nn.Parameter(params[name])  # what DDP's reducer hooks into
    return params, names


def _step_options(cfg: TrainConfig, world: distributed.World) -> StepOptions:
    batch_stats = "local"
    if cfg.model.frozen_bn:
        batch_stats = "frozen"
    elif cfg.dist.sync_bn and world.world_size > 1:
        batch_stats = "sync"
    return StepOptions(cfg.compile, cfg.precision.dtype, cfg.precision.channels_last, batch_stats)


def _train_loader(cfg: TrainConfig, world, train_set, model_cfg: ModelConfig) -> TrainLoader:
    data = cfg.data
    return TrainLoader(
        train_set,
        image_size=model_cfg.image_size,
        batch_size=cfg.batch_size,
        max_boxes=data.max_boxes,
        seed=cfg.seed,
        rank=world.rank,
        world_size=world.world_size,
        augment=Augment(scale_range=(data.scale_min, data.scale_max), hflip=data.hflip),
        num_workers=data.num_workers,
        bad_images=data.bad_images,
        accum_steps=cfg.grad_accum_steps,
    )


def _total_steps(cfg: TrainConfig, loader: TrainLoader) -> int:
    if cfg.benchmark:
        return cfg.benchmark + BENCHMARK_WARMUP_STEPS
    return cfg.steps if cfg.steps is not None else cfg.epochs * loader.steps_per_epoch


def _open_val(cfg: TrainConfig, paths, world, model_cfg, category_map) -> EvalSplit | None:
    if paths is None:
        return None
    return EvalSplit.open(
        paths,
        category_map,
        image_size=model_cfg.image_size,
        batch_size=cfg.eval_batch_size or cfg.batch_size,
        world=world,
        num_workers=cfg.data.num_workers,
    )


def _summary_line(run: Run, num_images: int, resumed: bool) -> str:
    mcfg = run.model_cfg
    return (
        f"{mcfg.name} at {mcfg.image_size}, {mcfg.num_classes} classes, "
        f"{model.num_parameters(run.params):,} parameters; {num_images} train images "
        f"({run.loader.steps_per_epoch} steps/epoch at global batch {run.global_batch}); "
        f"{run.total_steps} steps, peak lr {run.peak_lr:.4g}; device {run.world.device}, "
        f"world {run.world.world_size}" + (f"; resumed at step {run.state.step}" if resumed else "")
    )
