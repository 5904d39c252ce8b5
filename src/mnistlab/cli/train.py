"""`mnistlab train`: train one model and write its run directory; `--resume` finishes or extends a run."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import torch

from mnistlab import data
from mnistlab.checkpoint import CHECKPOINT_NAME, load_checkpoint
from mnistlab.cli.flags import add_config_flags, add_one_thread_flag, add_shared, given_settings
from mnistlab.config import RECIPES, TrainConfig, recipe_config
from mnistlab.engine import fit
from mnistlab.errors import UserError
from mnistlab.fileio import DiskFull
from mnistlab.metrics import read_metrics_csv
from mnistlab.plots import plot_curves
from mnistlab.runlock import run_lock
from mnistlab.runtime import resolve_device, set_threads

MAX_EXTEND = 10_000  # more epochs than that are a typo, and an extension once started cannot be taken back


def add_arguments(p: argparse.ArgumentParser) -> None:
    # A flag per TrainConfig setting. Their value is None unless given, so that `run` can tell a
    # flag given from one left out: a resumed run keeps its own settings and refuses others.
    p.add_argument(
        "--recipe",
        default=None,
        choices=tuple(RECIPES),
        help="start from a named preset (fast: LeNet-5 to about 99%% test accuracy in 2 epochs, "
        "benchmarks/recipes.md); the flags given win over it (default: none)",
    )
    add_config_flags(p, TrainConfig, given_only=True)
    add_shared(p, "data_dir")
    add_one_thread_flag(p)
    p.add_argument("--out", default=None, help="run directory (default: runs/<time>-<model>-s<seed>)")
    p.add_argument(
        "--resume",
        metavar="DIR",
        default=None,
        help="finish the interrupted run in DIR, with its own settings, to the weights it would have had "
        "(default: a new run)",
    )
    p.add_argument(
        "--extend",
        metavar="N",
        type=int,
        default=None,
        help="with --resume: train the finished run N more epochs, a new segment of its schedule, "
        "recorded in config.json (default: no extension)",
    )
    p.add_argument(
        "--extend-lr",
        metavar="LR",
        type=float,
        default=None,
        help="the added epochs' learning rate, decayed by a cosine to 0 over them (kept constant if the "
        "run's --schedule is none) (default: a tenth of the run's --lr)",
    )


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    directory = args.resume or args.out
    if directory is None or not Path(directory).is_dir():  # nothing there yet: `fit` takes the lock as it creates it
        return train(args)
    with run_lock(directory):  # before the checkpoint is read: a second writer would train from a stale one
        return train(args)


def train(args: argparse.Namespace) -> int:
    if args.extend is not None and not args.resume:
        raise UserError("--extend adds epochs to a finished run: use it with --resume DIR")
    if args.extend_lr is not None and args.extend is None:
        raise UserError("--extend-lr is the rate of the epochs that --extend adds: give --extend N too")
    if args.recipe is not None and args.resume:
        raise UserError(
            f"--recipe {args.recipe}: --resume continues a run with its own settings; a recipe starts a new run"
        )
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
        config = recipe_config(args.recipe or "default", **given_settings(args, TrainConfig))
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out_dir = Path(args.out or f"runs/{stamp}-{config.model}-s{config.seed}")
        if (out_dir / CHECKPOINT_NAME).exists():
            raise UserError(
                f"{out_dir} already holds a run; continue it with --resume {out_dir} or choose another --out"
            )

    arrays = data.load_dataset(config.dataset, args.data_dir, log=lambda line: print(f"data: {line}"))
    print(f"config: {json.dumps(config.to_dict())}")
    print(f"device: {resolve_device(config.device)}, threads: {torch.get_num_threads()}, out: {out_dir}")
    try:
        fit(config, arrays, out_dir, resume=resume)
        plot_curves(read_metrics_csv(out_dir / "metrics.csv"), out_dir / "curves.png", title=config.model)
    except DiskFull as e:
        raise DiskFull(
            f"{e}; {kept_epochs(out_dir)}; free some space, then continue with mnistlab train --resume {out_dir}"
        ) from None
    except KeyboardInterrupt:
        done = len(read_metrics_csv(out_dir / "metrics.csv")) if (out_dir / "metrics.csv").exists() else 0
        again = f"mnistlab train --resume {out_dir}"
        if args.extend is not None:  # the same command: it continues the extension it started
            again += f" --extend {args.extend}" + ("" if args.extend_lr is None else f" --extend-lr {args.extend_lr!r}")
        print(f"\ninterrupted: {out_dir} keeps {done} finished epoch(s); continue with {again}", file=sys.stderr)
        if done:
            plot_curves(read_metrics_csv(out_dir / "metrics.csv"), out_dir / "curves.png", title=config.model)
        return 130
    print(f"wrote {out_dir}/config.json, metrics.csv, {CHECKPOINT_NAME}, curves.png")
    return 0


def kept_epochs(out_dir: Path) -> str:
    """What a run directory keeps after a failed write: the epoch of its checkpoint."""
    try:
        return f"epoch {load_checkpoint(out_dir)['epoch']} is kept"
    except UserError:
        return "no epoch was saved"


def resumed_config(args: argparse.Namespace, out_dir: Path, saved: TrainConfig, done: int) -> TrainConfig | None:
    """The config that `--resume out_dir` (with `--extend`) continues; None when there is nothing to do.

    Resuming finishes the run as it was started, so that it ends with the weights it would have
    had. Training a finished run longer is a new segment of its schedule, asked for with `--extend`.
    """
    given = {k: v for k, v in given_settings(args, TrainConfig).items() if k != "device"}
    refused = {k: v for k, v in given.items() if v != getattr(saved, k)}
    if args.out is not None and Path(args.out).resolve() != out_dir.resolve():
        refused["out"] = args.out
    more = f"to train it longer once it is finished, use --resume {out_dir} --extend N (N more epochs, see --extend-lr)"
    if list(refused) == ["epochs"]:
        raise UserError(
            f"--epochs {args.epochs}: --resume finishes {out_dir} as the {saved.epochs}-epoch run it is; {more}"
        )
    if refused:
        flags = ", ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in refused.items())
        own = ", ".join(f"{k.replace('_', '-')} {out_dir if k == 'out' else getattr(saved, k)}" for k in refused)
        raise UserError(
            f"{flags}: --resume continues {out_dir} with its own settings ({own}); for others, start a "
            f"new run with another --out" + (f"; {more}" if "epochs" in refused else "")
        )
    if args.device is not None:  # where it trains, not what it computes: the run goes on there
        saved = replace(saved, device=args.device)
    if args.extend is None:
        if done >= saved.epochs:
            print(f"{out_dir}: already trained for {done} epochs; nothing to do (--extend N trains it N more)")
            return None
        return saved
    if not 0 < args.extend <= MAX_EXTEND:
        raise UserError(f"--extend must be in 1..{MAX_EXTEND:,} (epochs added to the run), got {args.extend}")
    lr = saved.lr / 10 if args.extend_lr is None else args.extend_lr
    if not (math.isfinite(lr) and lr > 0):
        raise UserError(f"--extend-lr must be a finite number > 0, got {lr}")
    if done < saved.epochs:
        # Only the same --extend that was interrupted continues an unfinished run: the command that
        # Ctrl-C stopped, typed again, resumes it.
        if saved.segments and saved.segments[-1] == saved.extended(args.extend, lr).segments[-1]:
            print(f"{out_dir}: continuing its extension after epoch {done} of {saved.epochs}")
            return saved
        raise UserError(
            f"{out_dir} is unfinished (epoch {done} of {saved.epochs}): finish it first with "
            f"--resume {out_dir}, then extend it"
        )
    config = saved.extended(args.extend, lr)
    added = config.segments[-1]
    new = f"epoch {config.epochs}" if added.epochs == 1 else f"epochs {done + 1}-{config.epochs}"
    old = "epoch 1 stays" if done == 1 else f"epochs 1-{done} stay"
    print(
        f"extending {out_dir}: {new} from lr {added.lr:g}"
        f"{', constant' if added.schedule == 'none' else ' by a cosine decay to 0'}; {old} as trained"
    )
    return config
