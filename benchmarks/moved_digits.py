"""The moved digits' cost per model at 500, 2,000 and 10,000 test images, to size claims.FULL.test_images.

    PYTHONPATH=src python benchmarks/moved_digits.py [--rounds 3] [--out benchmarks/moved_digits.json]

The eight configurations of the default study, untrained (the cost is the forward passes, the
same for any weights), each prepared as the engine evaluates it, on one CPU thread as
claims.run_robustness runs them: `claims.moved_predictions` of all eight at once (the moved
images are made once for all), seconds divided by eight. The sizes alternate round by round
(the order rotates), and so does the evaluate()-based accuracy loop that the study ran before it
kept the classes, at 500 images. Prints the medians and their ratios; the figures:
benchmarks/moved_digits.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime, timezone

import numpy as np
import torch

from mnistlab import claims, fast
from mnistlab.configurations import CONFIGURATIONS, DEFAULT_STUDY
from mnistlab.engine import evaluate
from mnistlab.models import create_model

SIZES = (500, 2000, 10000)


def before(models, images, labels):
    """The accuracy loop of claims.robustness before the classes were kept: evaluate() on each moved version."""
    for kind, amounts in claims.MOVES:
        for amount in amounts:
            versions = claims.moved_versions(images, kind, amount)
            for model in models.values():
                np.mean([evaluate(model, v, labels)[1] for v in versions])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/moved_digits.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    models = {name: fast.prepare(create_model(CONFIGURATIONS[name].model), cpu).eval() for name in DEFAULT_STUDY}
    images = torch.randint(0, 256, (10000, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (10000,))
    tasks = {
        **{f"kept {n}": (lambda n=n: claims.moved_predictions(models, images[:n])) for n in SIZES},
        "before 500": lambda: before(models, images[:500], labels[:500]),
    }
    seconds = {name: [] for name in tasks}
    names = list(tasks)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            tasks[name]()
            seconds[name].append((time.perf_counter() - start) / len(models))
            print(f"round {r}: {name}: {seconds[name][-1]:.3f} s per model", flush=True)
    medians = {name: statistics.median(v) for name, v in seconds.items()}
    base = medians["kept 500"]
    for name, m in medians.items():
        print(f"{name:>12}: {m:.3f} s per model (median), {m / base:.2f}x the 500 images'")
    record = {
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "threads": 1,
        "models": list(DEFAULT_STUDY),
        "rounds": args.rounds,
        "seconds_per_model": seconds,
        "median_seconds_per_model": medians,
    }
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
