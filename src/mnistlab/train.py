"""`fit`: the epoch loop with metrics, checkpoints and resume; and the `mnistlab train` command."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import torch
from tqdm import tqdm

from mnistlab.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from mnistlab.engine import (
    DEVICES, METRIC_COLUMNS, OPTIMIZERS, SCHEDULES, TrainConfig, TrainingFailed, build, config_lr,
    epoch_metrics, resolve_device, set_threads, split_dataset, synchronize, train_one_epoch, training_failure,
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
    splits = split_dataset(arrays, config.val_size, config.seed, device, config.train_size, config.permute)
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
    else:
        write_json(out_dir / "config.json", config.to_dict())

    steps_per_epoch = config.passes * -(-len(splits.train_labels) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    num_classes = int(splits.train_labels.max()) + 1
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
            "lr": config_lr(config, epoch * steps_per_epoch - 1, total_steps),
            "epoch_seconds": seconds,
            "samples_per_second": config.passes * len(splits.train_labels) / seconds,
        }
        failure = training_failure([*history, row], epoch * steps_per_epoch, num_classes)
        if failure:  # before the checkpoint: the last good epoch stays on disk
            raise TrainingFailed(failure_message(config, epoch, failure, out_dir), history=[*history, row])
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
        # after the checkpoint: config.json describes the epochs on disk (an extension's first epoch included)
        write_json(out_dir / "config.json", config.to_dict())
        write_text(out_dir / "metrics.csv", metrics_csv(history))
        steps = range((epoch - 1) * steps_per_epoch, epoch * steps_per_epoch)
        log(format_epoch(row, config.epochs, max(config_lr(config, step, total_steps) for step in steps)))
    return history


def failure_message(config: TrainConfig, epoch: int, failure: str, out_dir: Path) -> str:
    """What went wrong at `epoch`, what the run directory keeps, and the rate to lower."""
    flag, lr = "--lr", config.lr
    if config.segments and epoch > config.epochs - config.segments[-1].epochs:  # in the epochs --extend added
        flag, lr = "--extend-lr", config.segments[-1].lr
    kept = f"{out_dir} keeps epoch {epoch - 1}" if epoch > 1 else "no epoch was saved"
    return (f"training stopped at epoch {epoch}: {failure}; the learning rate is probably too high: "
            f"try a lower {flag} than {lr:g} (e.g. {lr / 10:g}); {kept}")  # fmt: skip


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


def format_epoch(row: dict, epochs: int, peak_lr: float) -> str:
    """The console line of an epoch. It shows the epoch's highest learning rate, which says more
    than metrics.csv's `lr`, the rate of its last step (about 0 at the end of a cosine)."""
    width = len(str(epochs))
    parts = [f"epoch {row['epoch']:>{width}}/{epochs}"]
    for split in ("train", "val", "test"):
        parts.append(f"{split} loss {row[f'{split}_loss']:.4f} acc {100 * row[f'{split}_acc']:6.2f}%")
    parts.append(f"peak lr {peak_lr:.2e}")
    parts.append(f"{row['epoch_seconds']:5.1f}s {row['samples_per_second']:7.0f}/s")
    return " | ".join(parts)


# ---------------------------------------------------------------- the `train` command


# The flags that set a TrainConfig field of the same name. Their default is None, so that `run`
# can tell a flag given from one left out: a resumed run keeps its own settings and refuses others.
CONFIG_FLAGS = ("model", "dataset", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
                "schedule", "augment", "dropout", "seed", "val_size", "device", "amp")  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--model", default=None, help=f"one of: {', '.join(MODELS)} (default: {d.model})")
    p.add_argument("--dataset", default=None, choices=("mnist", "fashion-mnist"), help=f"dataset (default: {d.dataset})")
    p.add_argument("--data-dir", default=None, help="data directory (default: $MNISTLAB_DATA or ./data)")
    p.add_argument("--epochs", type=int, default=None, help=f"number of epochs (default: {d.epochs})")
    p.add_argument("--batch-size", type=int, default=None, help=f"training batch size (default: {d.batch_size})")
    p.add_argument("--optimizer", default=None, choices=OPTIMIZERS, help=f"optimizer (default: {d.optimizer})")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default: {d.lr})")
    p.add_argument("--momentum", type=float, default=None, help=f"SGD momentum (default: {d.momentum})")
    p.add_argument("--weight-decay", type=float, default=None, help=f"weight decay (default: {d.weight_decay})")
    p.add_argument("--schedule", default=None, choices=SCHEDULES, help=f"learning-rate schedule over all steps (default: {d.schedule})")
    p.add_argument("--augment", action="store_true", default=None,
                   help="random affine augmentation (rotate ±10°, shift ±2 px, scale 0.9-1.1) (default: off)")
    p.add_argument("--dropout", type=float, default=None, help="dropout probability after hidden FC layers (default: the model's own)")
    p.add_argument("--seed", type=int, default=None, help=f"seed for initialization, data order, split and augmentation (default: {d.seed})")
    p.add_argument("--val-size", type=int, default=None, help=f"training images held out for validation (default: {d.val_size})")
    p.add_argument("--device", default=None, choices=DEVICES, help=f"device (auto: cuda, then mps, then cpu) (default: {d.device})")
    p.add_argument("--amp", action="store_true", default=None, help="bf16 autocast for training and evaluation (meant for GPUs) (default: off)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--out", default=None, help="run directory (default: runs/<time>-<model>-s<seed>)")
    p.add_argument("--resume", metavar="DIR", default=None,
                   help="finish the interrupted run in DIR, with its own settings, to the weights it would have had "
                        "(default: a new run)")
    p.add_argument("--extend", metavar="N", type=int, default=None,
                   help="with --resume: train the finished run N more epochs, a new segment of its schedule, "
                        "recorded in config.json (default: no extension)")
    p.add_argument("--extend-lr", metavar="LR", type=float, default=None,
                   help="the added epochs' learning rate, decayed by a cosine to 0 over them (kept constant if the "
                        "run's --schedule is none) (default: a tenth of the run's --lr)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from mnistlab.data import load_dataset
    from mnistlab.plots import plot_curves

    set_threads(args.threads)
    if args.extend is not None and not args.resume:
        raise UserError("--extend adds epochs to a finished run: use it with --resume DIR")
    if args.extend_lr is not None and args.extend is None:
        raise UserError("--extend-lr is the rate of the epochs that --extend adds: give --extend N too")
    resume = None
    if args.resume:
        out_dir = Path(args.resume)
        if not (out_dir / CHECKPOINT_NAME).is_file():
            raise UserError(f"--resume {out_dir}: no {CHECKPOINT_NAME} there")
        resume = load_checkpoint(out_dir)
        if "optimizer_state" not in resume or "rng" not in resume:
            raise UserError(f"{out_dir / CHECKPOINT_NAME}: has no optimizer state; it cannot be resumed")
        config = resumed_config(args, out_dir, TrainConfig.from_dict(resume["config"]), len(resume["metrics"]))
        if config is None:
            return 0
    else:
        config = TrainConfig(**{k: getattr(args, k) for k in CONFIG_FLAGS if getattr(args, k) is not None})
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
        again = f"mnistlab train --resume {out_dir}"
        if args.extend is not None:  # the same command: it continues the extension it started
            again += f" --extend {args.extend}" + ("" if args.extend_lr is None else f" --extend-lr {args.extend_lr!r}")
        print(f"\ninterrupted: {out_dir} keeps {done} finished epoch(s); continue with {again}", file=sys.stderr)
        if done:
            plot_curves(read_metrics_csv(out_dir / "metrics.csv"), out_dir / "curves.png", title=config.model)
        return 130
    plot_curves(read_metrics_csv(out_dir / "metrics.csv"), out_dir / "curves.png", title=config.model)
    print(f"wrote {out_dir}/config.json, metrics.csv, {CHECKPOINT_NAME}, curves.png")
    return 0


def resumed_config(args: argparse.Namespace, out_dir: Path, saved: TrainConfig, done: int) -> TrainConfig | None:
    """The config that `--resume out_dir` (with `--extend`) continues; None when there is nothing to do.

    Resuming finishes the run as it was started, so that it ends with the weights it would have
    had. Training a finished run longer is a new segment of its schedule, asked for with `--extend`.
    """
    given = {k: getattr(args, k) for k in CONFIG_FLAGS if getattr(args, k) is not None and k != "device"}
    refused = {k: v for k, v in given.items() if v != getattr(saved, k)}
    if args.out is not None and Path(args.out).resolve() != out_dir.resolve():
        refused["out"] = args.out
    more = f"to train it longer once it is finished, use --resume {out_dir} --extend N (N more epochs, see --extend-lr)"
    if list(refused) == ["epochs"]:
        raise UserError(f"--epochs {args.epochs}: --resume finishes {out_dir} as the {saved.epochs}-epoch run it is; {more}")
    if refused:
        flags = ", ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in refused.items())
        own = ", ".join(f"{k.replace('_', '-')} {out_dir if k == 'out' else getattr(saved, k)}" for k in refused)
        raise UserError(f"{flags}: --resume continues {out_dir} with its own settings ({own}); for others, start a "
                        f"new run with another --out" + (f"; {more}" if "epochs" in refused else ""))  # fmt: skip
    if args.device is not None:  # where it trains, not what it computes: the run goes on there
        saved = replace(saved, device=args.device)
    if args.extend is None:
        if done >= saved.epochs:
            print(f"{out_dir}: already trained for {done} epochs; nothing to do (--extend N trains it N more)")
            return None
        return saved
    if args.extend <= 0:
        raise UserError(f"--extend must be positive, got {args.extend}")
    lr = saved.lr / 10 if args.extend_lr is None else args.extend_lr
    if not (math.isfinite(lr) and lr > 0):
        raise UserError(f"--extend-lr must be a finite number > 0, got {lr}")
    if done < saved.epochs:
        # Only the same --extend that was interrupted continues an unfinished run: the command that
        # Ctrl-C stopped, typed again, resumes it.
        if saved.segments and saved.segments[-1] == saved.extended(args.extend, lr).segments[-1]:
            print(f"{out_dir}: continuing its extension after epoch {done} of {saved.epochs}")
            return saved
        raise UserError(f"{out_dir} is unfinished (epoch {done} of {saved.epochs}): finish it first with "
                        f"--resume {out_dir}, then extend it")  # fmt: skip
    config = saved.extended(args.extend, lr)
    added = config.segments[-1]
    new = f"epoch {config.epochs}" if added.epochs == 1 else f"epochs {done + 1}-{config.epochs}"
    old = "epoch 1 stays" if done == 1 else f"epochs 1-{done} stay"
    print(f"extending {out_dir}: {new} from lr {added.lr:g}"
          f"{', constant' if added.schedule == 'none' else ' by a cosine decay to 0'}; {old} as trained")  # fmt: skip
    return config
