"""Batch norm's speed, measured at short, equal step intervals: the experiment behind claims.py's batch-norm test.

For each seed, LeNet-5 and LeNet-5 + batch norm train as the study's runs of that seed did (the
settings of their config.json: initialization, learning-rate schedule, every other setting), and
each is evaluated on a fixed subset of the seed's validation split after every `every` optimizer
steps. A run stops at its first evaluation at or above the threshold (claims.speed_threshold), or
after `max_steps`: its steps to the threshold are those of a measured point, never a point drawn
between two evaluations.

The steps are those of `train_one_epoch`, which takes one pass over the images it is given: given
the next `every` batches' worth of a stream of shuffled training images, it takes `every` steps.

The two models train in turns, `every` steps each, in this one process, and each turn is timed
(the evaluation left out): their seconds per step are measured alike, each model on its own,
alternating. They are this machine's figure under whatever else it ran, and decide nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from mnistlab.config import TrainConfig
from mnistlab.engine import build, evaluate, train_one_epoch
from mnistlab.fileio import write_json
from mnistlab.runtime import resolve_device, synchronize
from mnistlab.splits import split_dataset


def reached(steps: list[int], accuracies: list[float], threshold: float) -> int | None:
    """The steps of the first evaluation whose accuracy is at or above `threshold`, or None if none is.
    Only measured points count: nothing is drawn between two evaluations, nor from an assumed start."""
    return next((s for s, acc in zip(steps, accuracies) if acc >= threshold), None)


def validation_subset(images: torch.Tensor, labels: torch.Tensor, count: int, seed: int):
    """`count` images of a validation split, the same at every evaluation, drawn by a permutation seeded
    with `seed` (its own generator); all of them when `count` is not smaller."""
    if count >= len(labels):
        return images, labels
    idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    idx = idx.to(labels.device)
    return images[idx], labels[idx]


def image_stream(n: int, steps: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of the training images that `steps` batches take, in order: fresh permutations of
    the `n` images one after another, as epoch follows epoch."""
    passes = -(-steps * batch_size // n)
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(passes)])[: steps * batch_size]


class MeasuredRun:
    """One model trained `every` steps at a time, evaluated after each turn, until it reaches a threshold."""

    def __init__(self, config: TrainConfig, splits, val_images, val_labels, max_steps: int):
        self.config, self.splits = replace(config, passes=1), splits
        self.val_images, self.val_labels = val_images, val_labels
        self.model, self.optimizer = build(config, splits.train_images.device)
        self.generator = torch.Generator().manual_seed(config.seed)
        n = len(splits.train_labels)
        self.total_steps = config.epochs * -(-n // config.batch_size)  # the schedule of the study's run
        self.stream = image_stream(n, max_steps, config.batch_size, self.generator).to(splits.train_images.device)
        self.steps: list[int] = []
        self.val_acc: list[float] = []
        self.seconds_per_step: list[float] = []

    def turn(self, first_step: int, steps: int) -> None:
        """Steps `first_step` to `first_step + steps` (timed), then one evaluation (not timed)."""
        bs, device = self.config.batch_size, self.val_images.device
        idx = self.stream[first_step * bs : (first_step + steps) * bs]
        images, labels = self.splits.train_images[idx], self.splits.train_labels[idx]
        synchronize(device)
        start = time.perf_counter()
        taken = train_one_epoch(
            self.model, self.optimizer, images, labels, self.config, self.generator, first_step, self.total_steps
        )
        synchronize(device)
        self.seconds_per_step.append((time.perf_counter() - start) / taken)
        self.steps.append(first_step + taken)
        self.val_acc.append(evaluate(self.model, self.val_images, self.val_labels, self.config.eval_batch_size)[1])


def measure_seed(
    configs: dict[str, TrainConfig], arrays, every: int, images: int, threshold: float, max_steps: int, device: str
) -> dict[str, dict]:
    """One seed: each of `configs` (arm -> that seed's run configuration) trained in turns of `every`
    steps until it reaches `threshold` on `images` validation images, or for `max_steps`."""
    first = next(iter(configs.values()))
    torch_device = resolve_device(device)
    splits = split_dataset(arrays, first.val_size, first.seed, torch_device, first.train_size, first.permute)
    val_images, val_labels = validation_subset(splits.val_images, splits.val_labels, images, first.seed)
    runs = {arm: MeasuredRun(c, splits, val_images, val_labels, max_steps) for arm, c in configs.items()}
    going = dict(runs)
    for first_step in range(0, max_steps, every):
        for arm, run in list(going.items()):
            run.turn(first_step, min(every, max_steps - first_step))
            if run.val_acc[-1] >= threshold:
                del going[arm]
        if not going:
            break
    return {
        arm: {
            "steps": run.steps,
            "val_acc": run.val_acc,
            "reached": reached(run.steps, run.val_acc, threshold),
            "seconds_per_step": run.seconds_per_step,
        }
        for arm, run in runs.items()
    }


def run_speed(
    out: Path,
    configs: dict[int, dict[str, TrainConfig]],
    arrays,
    every: int,
    images: int,
    threshold: float,
    max_steps: int,
    log=print,
    device: str = "cpu",
) -> tuple[dict, int]:
    """The experiment for every seed of `configs` ({seed: {arm: run configuration}}) -> (results.json's
    claims.speed.measured, how many runs this call trained). Each seed's result is kept in `out`/speed/,
    in a file whose name holds the experiment's settings, and reused while its configurations are the same."""
    runs: dict[str, list[dict]] = {}
    trained = 0
    for seed, by_arm in configs.items():
        path = Path(out) / "speed" / f"every{every}-v{images}-max{max_steps}-t{threshold:.4f}-s{seed}.json"
        wanted = {arm: c.to_dict() for arm, c in by_arm.items()}
        saved = read_saved(path)
        if saved is not None and saved.get("configs") == wanted:
            found = saved["arms"]
        else:
            found = measure_seed(by_arm, arrays, every, images, threshold, max_steps, device)
            found = {arm: {**v, "threads": torch.get_num_threads()} for arm, v in found.items()}
            write_json(path, {"configs": wanted, "arms": found})
            trained += len(by_arm)
        steps = ", ".join(f"{arm} {v['reached'] or 'not reached'}" for arm, v in found.items())
        log(f"batch norm's speed, seed {seed}: steps to {100 * threshold:.2f}%: {steps}")
        for arm, v in found.items():
            runs.setdefault(arm, []).append({"seed": seed, **v})
    measured = {"every": every, "val_images": images, "max_steps": max_steps, "threshold": threshold, "runs": runs}
    return measured, trained


def read_saved(path: Path) -> dict | None:
    """A seed's saved result, or None when there is none or it is damaged (it is then measured again)."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or not isinstance(saved.get("arms"), dict):
        return None
    return saved
