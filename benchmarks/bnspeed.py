"""The cost of the speed experiment and of the limited-data runs at equal steps, on the real MNIST.

    MNISTLAB_DATA=/path/to/data python benchmarks/bnspeed.py > benchmarks/bnspeed.json

Part 1 runs the speed experiment (bnspeed.measure_seed) for 5 seeds as the default study does, in
one process with torch's own thread count, with the threshold of reports/mnist (its lowest final
validation accuracy of LeNet-5 and LeNet-5 + batch norm, less 1 point). Part 2 trains each
limited-data run of one seed (claims.plan at claims.FULL) alone on one thread, as a study worker
does (the study stacks LeNet-5's seeds, which costs less): seconds and final training accuracy.
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from mnistlab import claims
from mnistlab.bnspeed import measure_seed
from mnistlab.config import TrainConfig
from mnistlab.configurations import CONFIGURATIONS, DEFAULT_STUDY
from mnistlab.data import load_dataset
from mnistlab.engine import fit

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    arrays = load_dataset("mnist", os.environ.get("MNISTLAB_DATA"), log=lambda line: None)
    results = json.loads((REPO / "reports" / "mnist" / "results.json").read_text())
    main_runs = {a: [r for r in results["runs"] if r["variant"] == a] for a in claims.SPEED_ARMS}
    threshold = claims.speed_threshold(main_runs)
    n_train = len(arrays.train_labels) - 5000
    max_steps = claims.speed_max_steps(claims.FULL, 10, n_train, 64)
    speed = {"threads": torch.get_num_threads(), "threshold": threshold, "max_steps": max_steps, "seeds": []}
    for seed in range(5):
        configs = {a: TrainConfig(model=CONFIGURATIONS[a].model, seed=seed) for a in claims.SPEED_ARMS}
        t = time.perf_counter()
        found = measure_seed(
            configs, arrays, claims.FULL.speed_every, claims.FULL.speed_images, threshold, max_steps, "cpu"
        )
        seconds = time.perf_counter() - t
        speed["seeds"].append(
            {
                "seed": seed,
                "seconds": round(seconds, 1),
                **{
                    a: {
                        "reached": v["reached"],
                        "ms_per_step": round(1000 * sorted(v["seconds_per_step"])[len(v["seconds_per_step"]) // 2], 2),
                    }
                    for a, v in found.items()
                },
            }
        )
        print(speed["seeds"][-1], file=sys.stderr, flush=True)

    torch.set_num_threads(1)
    labels = {a: a for a in DEFAULT_STUDY}
    arms = [
        a for a in claims.plan(list(DEFAULT_STUDY), labels, 10, n_train, 64, claims.FULL) if a.experiment == "limited"
    ]
    limited = []
    for arm in arms:
        base = CONFIGURATIONS[arm.base]
        config = TrainConfig(
            **dict(base.settings), **dict(arm.settings), model=base.model, augment=base.augment, epochs=1, seed=0
        )
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            last = fit(config, arrays, out, log=lambda line: None, show_progress=False)[-1]
        limited.append(
            {
                "run": arm.name,
                "seconds": round(time.perf_counter() - t, 1),
                "train_acc": last["train_acc"],
                "test_acc": last["test_acc"],
            }
        )
        print(limited[-1], file=sys.stderr, flush=True)
    print(json.dumps({"speed": speed, "limited_one_seed_one_thread": limited}, indent=2))


if __name__ == "__main__":
    main()
