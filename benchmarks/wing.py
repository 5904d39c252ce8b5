"""What each mechanism of the speed wing (src/mnistlab/fast/) gains over the plain core, on the work it exists for.

    PYTHONPATH=src python benchmarks/wing.py [--rounds 7] [--threads 1] [--out benchmarks/wing.json]

Each mechanism is timed against the plain core in one process, the two alternating round by
round (which goes first swaps every round); a round's ratio is plain / wing seconds of the pair,
and the figure kept is the median ratio over rounds, with its range. On the real MNIST:

  layers    `fast.prepare` (the layer swaps and channels-last memory) against the model as
            models.py writes it: 150 training steps at batch 64, and an evaluation of the
            10,000 test images, for LeNet-5 and LeNet-5 with batch norm
  frozen    `fast.run_steps`' cached first block against the plain step, both with the layer swaps:
            150 steps of the `fast` recipe after its first layer froze (the block computed once before)
  stacking  3 seeds of LeNet-5 as one stacked model (fast/stacked.py) against 3 separate models:
            100 steps of each seed; and the same for LeNet-5 with batch norm
  fast      the whole `fast` recipe (2 epochs), the wing on against MNISTLAB_PLAIN=1

A mechanism stays in the wing with a median of 1.15x or more. CUDA graphs need a GPU: their
figures come from benchmarks/gpu.py (GPU.json). The results: benchmarks/wing.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone

import torch

from mnistlab import fast
from mnistlab.config import TrainConfig, recipe_config
from mnistlab.data import load_dataset
from mnistlab.engine import build, evaluate, fit, make_optimizer, train_one_epoch
from mnistlab.fast.stacked import load_stacked, stacked_model, train_one_epoch_stacked
from mnistlab.splits import split_dataset

CPU = torch.device("cpu")


@contextmanager
def wing(on: bool):
    """The wing on or off (MNISTLAB_PLAIN) for the block."""
    before = os.environ.get("MNISTLAB_PLAIN")
    os.environ["MNISTLAB_PLAIN"] = "0" if on else "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["MNISTLAB_PLAIN"]
        else:
            os.environ["MNISTLAB_PLAIN"] = before


def alternating(plain, faster, rounds: int) -> dict:
    """plain / faster seconds per round, the two back to back, which goes first swapping every round."""
    ratios, seconds = [], {"plain": [], "wing": []}
    for r in range(rounds):
        pair = [("plain", plain), ("wing", faster)]
        timed = {}
        for name, work in pair if r % 2 == 0 else pair[::-1]:
            start = time.perf_counter()
            work()
            timed[name] = time.perf_counter() - start
            seconds[name].append(round(timed[name], 4))
        ratios.append(timed["plain"] / timed["wing"])
    return {
        "median": round(statistics.median(ratios), 3),
        "min": round(min(ratios), 3),
        "max": round(max(ratios), 3),
        "seconds": seconds,
    }


def steps_of(config: TrainConfig, splits, steps: int, on: bool, first_step: int = 0, total_steps: int | None = None):
    """A function that trains `steps` batches of `config` from its initial weights, the wing `on` or off."""
    images, labels = splits.train_images[: steps * config.batch_size], splits.train_labels[: steps * config.batch_size]
    with wing(on):
        model, optimizer = build(config, CPU)
        fast_steps = fast.run_steps(model, optimizer, images, labels, config)
    total = total_steps or steps

    def work():
        with wing(on):
            train_one_epoch(
                model,
                optimizer,
                images,
                labels,
                config,
                torch.Generator().manual_seed(0),
                first_step,
                total,
                fast_steps=fast_steps,
            )

    return work


def layers(splits, rounds: int) -> dict:
    results = {}
    for name in ("lenet5", "lenet5-bn"):
        config = TrainConfig(model=name)
        results[f"{name} training"] = alternating(
            steps_of(config, splits, 150, False), steps_of(config, splits, 150, True), rounds
        )
        models = {}
        for on in (False, True):
            with wing(on):
                models[on] = build(config, CPU)[0]

        def evaluation(on: bool):
            return lambda: evaluate(models[on], splits.test_images, splits.test_labels)

        results[f"{name} evaluation"] = alternating(evaluation(False), evaluation(True), rounds)
    return results


def frozen(splits, rounds: int, steps: int = 150) -> dict:
    config = recipe_config("fast")  # its first layer frozen after 20% of the steps
    images, labels = splits.train_images[: steps * config.batch_size], splits.train_labels[: steps * config.batch_size]
    runs = {}
    for cached in (False, True):
        model, optimizer = build(config, CPU)
        runs[cached] = model, optimizer, fast.run_steps(model, optimizer, images, labels, config) if cached else None

    def work(cached: bool):
        model, optimizer, fast_steps = runs[cached]
        # steps 40 to 189 of 200: every one after the freeze at step 40
        return lambda: train_one_epoch(
            model, optimizer, images, labels, config, torch.Generator().manual_seed(0), 40, 200, fast_steps=fast_steps
        )

    work(True)()  # computes the block's outputs, once, as a run does at the freeze
    return {f"fast recipe, {steps} steps after the freeze": alternating(work(False), work(True), rounds)}


def stacking(splits_by_seed, rounds: int, steps: int = 100) -> dict:
    results = {}
    for name in ("lenet5", "lenet5-bn"):
        k = len(splits_by_seed)
        configs = [TrainConfig(model=name, seed=s) for s in range(k)]
        n = steps * configs[0].batch_size
        images = [s.train_images[:n] for s in splits_by_seed]
        labels = [s.train_labels[:n] for s in splits_by_seed]
        separate = [build(c, CPU) for c in configs]
        model = stacked_model(name, {}, k)
        load_stacked(model, [m.state_dict() for m, _ in separate])
        model = fast.prepare(model, CPU)
        optimizer = make_optimizer(configs[0], model)

        def alone(separate=separate, configs=configs, images=images, labels=labels):
            for (m, opt), c, x, y in zip(separate, configs, images, labels):
                train_one_epoch(m, opt, x, y, c, torch.Generator().manual_seed(c.seed), 0, steps)

        def together(model=model, optimizer=optimizer, configs=configs, images=images, labels=labels):
            generators = [torch.Generator().manual_seed(c.seed) for c in configs]
            train_one_epoch_stacked(model, optimizer, images, labels, configs[0], generators, 0, steps)

        results[f"{k} seeds of {name}, {steps} steps each"] = alternating(alone, together, rounds)
    return results


def fast_recipe(arrays, rounds: int) -> dict:
    config = recipe_config("fast", device="cpu")

    def run(on: bool):
        def work():
            with wing(on), tempfile.TemporaryDirectory() as out:
                fit(config, arrays, out, log=lambda line: None, show_progress=False)

        return work

    return {"fast recipe, whole run (2 epochs)": alternating(run(False), run(True), rounds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per mechanism (default: 7)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as a study's runs)")
    parser.add_argument("--fast-rounds", type=int, default=3, help="rounds of the whole fast recipe (default: 3)")
    parser.add_argument("--out", default="benchmarks/wing.json", help="where to write the figures")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    arrays = load_dataset("mnist")
    splits = [split_dataset(arrays, 5000, s, CPU) for s in range(3)]
    results = {
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "threads": args.threads,
        "rounds": args.rounds,
    }
    for part, measure in [
        ("layers", lambda: layers(splits[0], args.rounds)),
        ("frozen", lambda: frozen(splits[0], args.rounds)),
        ("stacking", lambda: stacking(splits, args.rounds)),
        ("fast", lambda: fast_recipe(arrays, args.fast_rounds)),
    ]:
        results[part] = measure()
        for work, figure in results[part].items():
            print(f"{part:9} {work:45} {figure['median']:.2f}x ({figure['min']:.2f}-{figure['max']:.2f})", flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
