"""Per study arm: K seeds trained as one stacked model against K separate runs, on the real MNIST.

    PYTHONPATH=src python benchmarks/stacking.py [--threads 1] [--seeds 3] [--rounds 9] [--steps 20]

For each arm, K separate models (`train_one_epoch`) and one stacked model of the same K
(`train_one_epoch_stacked`) each train `--steps` batches per model, the two alternating
round by round (which goes first swaps every round), then one epoch's metrics (the
10,000-image training subset, validation, test) the same way: K `epoch_metrics` against one
`stacked_epoch_metrics`. Prints a Markdown row per arm: the median over rounds of the ratio
separate / stacked of each back-to-back pair, with its range. One thread matches the study's
workers (`compare --jobs 2` on 2 cores). The figures and the decision they support:
benchmarks/stacking.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mnistlab.compare import VARIANTS
from mnistlab.config import TrainConfig
from mnistlab.data import load_dataset
from mnistlab.engine import build, epoch_metrics, train_one_epoch
from mnistlab.fast import prepare
from mnistlab.fast.stacked import (
    load_stacked,
    make_optimizer,
    stacked_epoch_metrics,
    stacked_model,
    train_one_epoch_stacked,
)
from mnistlab.splits import metric_splits, split_dataset


def alternating(pair: dict, rounds: int) -> list[float]:
    """separate / stacked for each round, the two back to back, which goes first swapping every round."""
    ratios = []
    for r in range(rounds):
        seconds = {}
        for name in list(pair) if r % 2 == 0 else list(pair)[::-1]:
            start = time.perf_counter()
            pair[name]()
            seconds[name] = time.perf_counter() - start
        ratios.append(seconds["separate"] / seconds["stacked"])
    return ratios


def arm_ratios(arm: str, arrays, k: int, rounds: int, steps: int) -> tuple[list[float], list[float]]:
    variant = VARIANTS[arm]
    device = torch.device("cpu")
    configs = [TrainConfig(model=variant.model, augment=variant.augment, seed=s) for s in range(k)]
    splits = [split_dataset(arrays, c.val_size, c.seed, device) for c in configs]
    measured = [metric_splits(s, c.train_eval_size, c.seed) for s, c in zip(splits, configs)]
    n = steps * configs[0].batch_size
    images, labels = [s.train_images[:n] for s in splits], [s.train_labels[:n] for s in splits]
    separate = [build(c, device) for c in configs]
    generators = [torch.Generator().manual_seed(c.seed) for c in configs]
    stacked = prepare(stacked_model(variant.model, configs[0].model_kwargs, k), device)
    load_stacked(stacked, [model.state_dict() for model, _ in separate])
    optimizer = make_optimizer(configs[0], stacked)

    def train_separate():
        for (model, opt), c, im, lab, g in zip(separate, configs, images, labels, generators):
            train_one_epoch(model, opt, im, lab, c, g, 0, 10**6)

    def train_stacked():
        train_one_epoch_stacked(stacked, optimizer, images, labels, configs[0], generators, 0, 10**6)

    def evaluate_separate():
        for (model, _), split in zip(separate, measured):
            epoch_metrics(model, split, configs[0].eval_batch_size)

    def evaluate_stacked():
        stacked_epoch_metrics(stacked, measured, configs[0].eval_batch_size)

    train_separate(), train_stacked()  # warm-up
    train = alternating({"separate": train_separate, "stacked": train_stacked}, rounds)
    evaluate = alternating({"separate": evaluate_separate, "stacked": evaluate_stacked}, max(3, rounds // 3))
    return train, evaluate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3, help="K, the seeds stacked")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20, help="batches per model per round")
    parser.add_argument("--arms", nargs="+", default=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    arrays = load_dataset("mnist", log=lambda line: None)
    print(f"{args.seeds} seeds, {args.threads} thread(s), {args.rounds} rounds of {args.steps} batches per model\n")
    print("| arm | training, separate / stacked | evaluation, separate / stacked |")
    print("|---|---:|---:|")
    for arm in args.arms:
        train, evaluate = arm_ratios(arm, arrays, args.seeds, args.rounds, args.steps)
        cell = lambda r: f"{statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f})"  # noqa: E731
        print(f"| {arm} | {cell(train)} | {cell(evaluate)} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
