"""torch's CPU threads, 1 against 2, on an idle machine and beside one other CPU-bound process.

    PYTHONPATH=src python benchmarks/threads.py RUN_DIR [--rounds 3] [--out benchmarks/threads.json]

For each load (idle; one busy-looping process beside it), the two thread counts alternate round
by round (which goes first swaps every round), each a command of its own process:
  train     `mnistlab train --model lenet5 --epochs 1`: the wall seconds of the command
  evaluate  `mnistlab evaluate RUN_DIR`: the wall seconds of the command
  serve     what a request of the page computes, the inside view of one drawn digit through
            LeNet-5 (inside.layer_outputs), 300 times in a process: ms per digit
Prints the medians. The default that follows (README, "Threads") must not collapse when
anything else runs. The figures: benchmarks/threads.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

SERVE = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from mnistlab.checkpoint import load_model
from mnistlab.inside import layer_outputs
model, _ = load_model(sys.argv[2])
digit = torch.zeros(1, 28, 28, dtype=torch.uint8)
digit[0, 6:22, 12:16] = 255
for _ in range(20):
    layer_outputs(model, digit)
start = time.perf_counter()
for _ in range(300):
    layer_outputs(model, digit)
print((time.perf_counter() - start) / 300 * 1000)
"""


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def commands(run_dir: str, threads: int, out: str) -> dict:
    mnistlab = [sys.executable, "-m", "mnistlab"]
    return {
        "train": lambda: timed(
            [
                *mnistlab,
                "train",
                "--model",
                "lenet5",
                "--epochs",
                "1",
                "--threads",
                str(threads),
                "--out",
                os.path.join(out, f"t{threads}-{time.monotonic_ns()}"),
            ]
        ),
        "evaluate": lambda: timed([*mnistlab, "evaluate", run_dir, "--threads", str(threads)]),
        "serve": lambda: float(
            subprocess.run(
                [sys.executable, "-c", SERVE, str(threads), run_dir], check=True, capture_output=True, text=True
            ).stdout
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a trained LeNet-5 run, for evaluate and serve")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: 3)")
    parser.add_argument("--out", default="benchmarks/threads.json", help="where to write the figures")
    args = parser.parse_args()
    results = {
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "rounds": args.rounds,
        "units": {"train": "s", "evaluate": "s", "serve": "ms per digit"},
    }
    with tempfile.TemporaryDirectory() as out:
        for load in ("idle", "loaded"):
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "loaded" else None
            try:
                samples = {(work, t): [] for work in ("train", "evaluate", "serve") for t in (1, 2)}
                for r in range(args.rounds):
                    for t in (1, 2) if r % 2 == 0 else (2, 1):
                        for work, measure in commands(args.run_dir, t, out).items():
                            samples[work, t].append(round(measure(), 3))
                for (work, t), values in samples.items():
                    results.setdefault(load, {}).setdefault(work, {})[f"{t} thread{'s' if t > 1 else ''}"] = {
                        "median": statistics.median(values),
                        "all": values,
                    }
                    print(f"{load:6} {work:8} {t} thread(s): {statistics.median(values):.3f}", flush=True)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
