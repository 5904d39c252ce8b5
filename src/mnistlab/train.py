"""`fit`: the epoch loop with metrics, checkpoints and resume; and the `mnistlab train` command."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import torch
from tqdm import tqdm

from mnistlab.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from mnistlab.engine import (
    DEVICES, METRIC_COLUMNS, OPTIMIZERS, SCHEDULES, TrainConfig, build, epoch_metrics,
    get_lr, resolve_device, set_threads, split_dataset, synchronize, train_one_epoch,
)  # fmt: skip
from mnistlab.errors import UserError
from mnistlab.fileio import write_json, write_text
from mnistlab.models import MODELS


def fit(config: TrainConfig, arrays, out_dir: Path, resume: dict | None = None, log=print, show_progress=None) -> list[dict]:
    """Train `config` on `arrays` (see data.MnistArrays), writing `out_dir` after every epoch.

    `resume` is a loaded checkpoint to continue from. Returns the per-epoch metrics. Ctrl-C
    stops the run; what the last finished epoch wrote stays on disk and can be resumed.
    """
    device = resolve_device(config.device)
    splits = split_dataset(arrays, config.val_size, config.seed, device)
    model, optimizer = build(config, device)
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict] = []
    if resume is not None:
        model.load_state_dict(resume["model_state"])
        optimizer.load_state_dict(resume["optimizer_state"])
        generator.set_state(resume["rng"]["generator"])
        torch.set_rng_state(resume["rng"]["torch"])
        if device.type == "cuda" and "cuda" in resume["rng"]:
            torch.cuda.set_rng_state(resume["rng"]["cuda"], device)
        history = list(resume["metrics"])
    write_json(out_dir / "config.json", config.to_dict())

    steps_per_epoch = -(-len(splits.train_labels) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    for epoch in range(len(history) + 1, config.epochs + 1):
        bar = (lambda it: tqdm(it, desc=f"epoch {epoch}", leave=False, unit="batch")) if show_progress else iter
        synchronize(device)
        start = time.perf_counter()
        train_one_epoch(
            model, optimizer, splits.train_images, splits.train_labels, config, generator,
            (epoch - 1) * steps_per_epoch, total_steps, bar,
        )  # fmt: skip
        synchronize(device)
        seconds = time.perf_counter() - start
        row = {
            "epoch": epoch,
            **epoch_metrics(model, splits, config.eval_batch_size, config.amp),
            "lr": get_lr(epoch * steps_per_epoch - 1, total_steps, config.lr, config.schedule),
            "epoch_seconds": seconds,
            "samples_per_second": len(splits.train_labels) / seconds,
        }
        history.append(row)
        rng = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        save_checkpoint(
            out_dir / CHECKPOINT_NAME,
            model_name=config.model, model_kwargs=config.model_kwargs, config=config.to_dict(),
            epoch=epoch, metrics=history, model_state=model.state_dict(),
            optimizer_state=optimizer.state_dict(), rng=rng,
        )  # fmt: skip
        write_text(out_dir / "metrics.csv", metrics_csv(history))
        log(format_epoch(row, config.epochs))
    return history


def metrics_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in METRIC_COLUMNS})
    return buf.getvalue()


def read_metrics_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


def format_epoch(row: dict, epochs: int) -> str:
    width = len(str(epochs))
    parts = [f"epoch {row['epoch']:>{width}}/{epochs}"]
    for split in ("train", "val", "test"):
        parts.append(f"{split} loss {row[f'{split}_loss']:.4f} acc {100 * row[f'{split}_acc']:6.2f}%")
    parts.append(f"lr {row['lr']:.2e}")
    parts.append(f"{row['epoch_seconds']:5.1f}s {row['samples_per_second']:7.0f}/s")
    return " | ".join(parts)


# ---------------------------------------------------------------- the `train` command


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--model", default=d.model, help=f"one of: {', '.join(MODELS)}")
    p.add_argument("--dataset", default=d.dataset, choices=("mnist", "fashion-mnist"), help="dataset")
    p.add_argument("--data-dir", default=None, help="data directory (default: $MNISTLAB_DATA or ./data)")
    p.add_argument("--epochs", type=int, default=None, help=f"number of epochs (default: {d.epochs}; with --resume: the run's own, or a new total)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="training batch size")
    p.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS, help="optimizer")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="weight decay")
    p.add_argument("--schedule", default=d.schedule, choices=SCHEDULES, help="learning-rate schedule over all steps")
    p.add_argument("--augment", action="store_true", help="random affine augmentation (rotate ±10°, shift ±2 px, scale 0.9-1.1)")
    p.add_argument("--dropout", type=float, default=None, help="dropout probability after hidden FC layers (default: the model's own)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed for initialization, data order, split and augmentation")
    p.add_argument("--val-size", type=int, default=d.val_size, help="training images held out for validation")
    p.add_argument("--device", default=d.device, choices=DEVICES, help="device (auto: cuda, then mps, then cpu)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for training and evaluation (meant for GPUs)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--out", default=None, help="run directory (default: runs/<time>-<model>-s<seed>)")
    p.add_argument("--resume", metavar="DIR", default=None, help="continue the run in DIR (its config, new --epochs)")


def run(args: argparse.Namespace) -> int:
    from mnistlab.data import load_dataset
    from mnistlab.plots import plot_curves

    set_threads(args.threads)
    resume = None
    if args.resume:
        out_dir = Path(args.resume)
        if not (out_dir / CHECKPOINT_NAME).is_file():
            raise UserError(f"--resume {out_dir}: no {CHECKPOINT_NAME} there")
        resume = load_checkpoint(out_dir)
        if "optimizer_state" not in resume or "rng" not in resume:
            raise UserError(f"{out_dir / CHECKPOINT_NAME}: has no optimizer state; it cannot be resumed")
        config = replace(TrainConfig.from_dict(resume["config"]), epochs=resume["config"]["epochs"] if args.epochs is None else args.epochs)
        done = len(resume["metrics"])
        if config.epochs <= done:
            print(f"{out_dir}: already trained for {done} epochs; nothing to do (raise --epochs to continue)")
            return 0
        if config.epochs != resume["config"]["epochs"] and config.schedule != "none":
            print(f"note: --epochs {config.epochs} differs from the run's {resume['config']['epochs']}; "
                  f"the {config.schedule} schedule is stretched to the new total")  # fmt: skip
    else:
        d = TrainConfig()
        config = TrainConfig(
            model=args.model, dataset=args.dataset, epochs=d.epochs if args.epochs is None else args.epochs, batch_size=args.batch_size,
            optimizer=args.optimizer, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
            schedule=args.schedule, augment=args.augment, dropout=args.dropout, seed=args.seed,
            val_size=args.val_size, device=args.device, amp=args.amp,
        )  # fmt: skip
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out_dir = Path(args.out or f"runs/{stamp}-{config.model}-s{config.seed}")
        if (out_dir / CHECKPOINT_NAME).exists():
            raise UserError(f"{out_dir} already holds a run; continue it with --resume {out_dir} or choose another --out")

    arrays = load_dataset(config.dataset, args.data_dir, log=lambda line: print(f"data: {line}"))
    print(f"config: {json.dumps(config.to_dict())}")
    print(f"device: {resolve_device(config.device)}, threads: {torch.get_num_threads()}, out: {out_dir}")
    try:
        fit(config, arrays, out_dir, resume=resume)
    except KeyboardInterrupt:
        done = len(read_metrics_csv(out_dir / "metrics.csv")) if (out_dir / "metrics.csv").exists() else 0
        print(f"\ninterrupted: {out_dir} keeps {done} finished epoch(s); continue with "
              f"mnistlab train --resume {out_dir} --epochs {config.epochs}", file=sys.stderr)  # fmt: skip
        if done:
            plot_curves(read_metrics_csv(out_dir / "metrics.csv"), out_dir / "curves.png", title=config.model)
        return 130
    plot_curves(read_metrics_csv(out_dir / "metrics.csv"), out_dir / "curves.png", title=config.model)
    print(f"wrote {out_dir}/config.json, metrics.csv, {CHECKPOINT_NAME}, curves.png")
    return 0
