"""How fast `evaluate()` goes through the 10,000 test images at each evaluation batch size.

    PYTHONPATH=src python benchmarks/eval_batch_size.py [--threads 2] [--rounds 11]

For LeNet-5, LeNet-5 + batch norm and the 500-150 MLP (freshly initialized: the speed does not
depend on the weights), the batch sizes take turns round by round, the order reversed every
other round; prints each one's median seconds and its speed relative to batch 1000. The
figures and the choice they support: benchmarks/evaluation.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mnistlab.config import TrainConfig
from mnistlab.data import load_dataset
from mnistlab.engine import build, evaluate

SIZES = (125, 250, 500, 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    arrays = load_dataset("mnist", log=lambda line: None)
    images, labels = torch.from_numpy(arrays.test_images), torch.from_numpy(arrays.test_labels).long()
    print(
        f"{args.threads} thread(s), {args.rounds} rounds; seconds per pass over the test set, and x speed against batch 1000\n"
    )
    print("| model | " + " | ".join(f"batch {b}" for b in SIZES) + " |")
    print("|---|" + "---:|" * len(SIZES))
    for name in ("lenet5", "lenet5-bn", "mlp"):
        model, _ = build(TrainConfig(model=name), torch.device("cpu"))
        seconds = {b: [] for b in SIZES}
        for b in SIZES:  # warm-up
            evaluate(model, images, labels, b)
        for r in range(args.rounds):
            for b in SIZES if r % 2 == 0 else SIZES[::-1]:
                start = time.perf_counter()
                evaluate(model, images, labels, b)
                seconds[b].append(time.perf_counter() - start)
        median = {b: statistics.median(s) for b, s in seconds.items()}
        print(
            f"| {name} | " + " | ".join(f"{median[b]:.3f} s (x{median[1000] / median[b]:.2f})" for b in SIZES) + " |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
