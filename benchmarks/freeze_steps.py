"""Seconds of a `fast` training step at batch 128 and 64, with every layer learning and with the first one frozen,
and of computing the frozen first block's outputs, an image.

    PYTHONPATH=src python benchmarks/freeze_steps.py [--rounds 5]

Each variant runs in its own process, and the variants' processes alternate, round by round,
in an order that reverses every round. Each process times 4 passes of `train_one_epoch` over
12,800 training images, on 2 threads, and keeps the median of the last 3 (the first warms up).
A frozen step starts from the first block's outputs, computed once (frozen.py) in the
first, uncounted pass. Each process first gives glibc's malloc the thresholds that a process settles at once it has
loaded the dataset, as `fit` has (cluster.plain_malloc). Without that, a lean process hands the
larger batch's buffers back to the system after every step and faults them in again: that made
a batch-128 step look 1.3-1.5x slower than it is in `fit`. Prints the medians over rounds in
ms per step. The figures and the decision they fed: benchmarks/recipes.md, third search.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

VARIANTS = [("128", "full"), ("128", "frozen"), ("64", "full"), ("64", "frozen"), ("64", "block")]
IMAGES = 12_800


def one_variant(batch: int, kind: str) -> float:
    """Seconds a step of `kind` ("full" or "frozen") at `batch`, or for "block" the seconds a training
    image of computing the frozen first block's outputs."""
    import torch

    from mnistlab.cluster import plain_malloc

    plain_malloc()
    from mnistlab.config import recipe_config
    from mnistlab.data import load_dataset
    from mnistlab.engine import build, train_one_epoch
    from mnistlab.fast.steps import frozen_first_block

    torch.set_num_threads(2)
    arrays = load_dataset("mnist")
    images = torch.from_numpy(arrays.train_images[:IMAGES])
    labels = torch.from_numpy(arrays.train_labels[:IMAGES]).long()
    config = recipe_config("fast", batch_size=batch, freeze_first_at=1.0 if kind == "full" else 0.0)
    model, optimizer = build(config, torch.device("cpu"))
    block = frozen_first_block(model, images, config)  # computed in the first pass, which is not counted
    steps = IMAGES // batch
    seconds = []
    for rep in range(4):
        start = time.perf_counter()
        if kind == "block":
            block.outputs = block.compute()
            seconds.append((time.perf_counter() - start) / IMAGES)
            continue
        train_one_epoch(
            model,
            optimizer,
            images,
            labels,
            config,
            torch.Generator().manual_seed(rep),
            rep * steps,
            4 * steps,
            frozen=block,
        )
        seconds.append((time.perf_counter() - start) / steps)
    return statistics.median(seconds[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--variant", nargs=2, help=argparse.SUPPRESS)  # one process's share
    args = p.parse_args()
    if args.variant:
        print(json.dumps(one_variant(int(args.variant[0]), args.variant[1])))
        return
    times: dict[tuple[str, str], list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for v in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
            out = subprocess.run(
                [sys.executable, __file__, "--variant", *v], capture_output=True, text=True, check=True
            )
            times[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
    for (batch, kind), t in times.items():
        if kind == "block":
            print(
                f"the frozen first block's outputs: {1e6 * statistics.median(t):.2f} µs a training image "
                f"({', '.join(f'{1e6 * x:.2f}' for x in t)})"
            )
        else:
            print(
                f"batch {batch}, {kind}: {1e3 * statistics.median(t):.2f} ms a step ({', '.join(f'{1e3 * x:.2f}' for x in t)})"
            )


if __name__ == "__main__":
    main()
