"""Nearest-neighbour against bilinear sampling for the augmentation, judged on validation accuracy only.

    PYTHONPATH=src python benchmarks/augmentation_sampling.py [--seeds 5] [--jobs 2]

LeNet-5 + augmentation with the default training settings (10 epochs), once with each sampling
(`mnistlab.augment.SAMPLING`) for each seed, two runs at a time, one thread each. The comparison is
the final validation accuracy, paired by seed (scipy's paired t-test, through mnistlab.stats); the
test set's numbers are neither kept nor shown. Writes benchmarks/augmentation_sampling.json;
reports/augmentation.md states the result.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import tempfile
from datetime import datetime, timezone

import torch

MODES = ("nearest", "bilinear")


def train(task: tuple[str, int]) -> tuple[str, int, float]:
    mode, seed = task
    torch.set_num_threads(1)
    import mnistlab.augment
    from mnistlab.config import TrainConfig
    from mnistlab.data import load_dataset
    from mnistlab.engine import fit

    mnistlab.augment.SAMPLING = mode
    with tempfile.TemporaryDirectory() as out:
        metrics = fit(
            TrainConfig(model="lenet5", augment=True, seed=seed),
            load_dataset("mnist"),
            out,
            log=lambda line: None,
            show_progress=False,
        )
    return mode, seed, metrics[-1]["val_acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/augmentation_sampling.json")
    args = parser.parse_args()
    from mnistlab.stats import paired_difference

    tasks = [(mode, seed) for seed in range(args.seeds) for mode in MODES]
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        done = pool.map(train, tasks)
    val = {mode: {seed: 100 * acc for m, seed, acc in done if m == mode} for mode in MODES}
    difference = paired_difference(val["nearest"], val["bilinear"])
    results = {
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "model": "lenet5 + augmentation, default settings, 10 epochs",
        "val_acc_percent": {mode: [round(v[s], 2) for s in sorted(v)] for mode, v in val.items()},
        "nearest_minus_bilinear_points": difference.to_dict(),
    }
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
