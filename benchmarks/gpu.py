"""The GPU path in one short call: a LeNet-5 epoch, the `fast` recipe's time to 99%, and the whole
default study (`mnistlab compare`) with and without stacked seeds.

    PYTHONPATH=src python benchmarks/gpu.py --out DIR [--device cuda] [--budget SECONDS] [--dry-run]

Writes DIR/GPU.json after every part, so that a part cut short keeps the ones before it, and
each study's output as DIR/study-stacked.log and DIR/study-separate.log. The parts, in order:
- epochs: `train_one_epoch` over the 60,000 training images, LeNet-5 at batch 64 and 256 and the
  MLP at batch 64, 3 epochs timed with eager steps (after 20 warm-up batches) and 3 with steps
  replayed from CUDA graphs (after a whole warm-up epoch, which captures them), alternating (the
  bench's engine_trainer); and one `evaluate()` pass over the test set, 5 times;
- fast: `fit` (its steps replayed from CUDA graphs) of the `fast` recipe with seeds 0, 1, 2, its training seconds (evaluation left out)
  up to the first epoch at 99% test accuracy, as `mnistlab bench` counts them;
- the default study, `mnistlab compare` in a fresh directory, first stacked (the default), then
  with `--no-stack`, each timed from the command's start to its end, in a process of its own.
Each study gets at most its share of what is left of `--budget`; one that runs out is stopped and
recorded as unfinished, with the runs it finished.

`--dry-run` checks the script on any machine in a minute: 1 fast seed and `compare --quick`.
The run of 2026-11-27 23:10 (4.5 minutes on an H200, its output in gpu-logs/) was, with the MNIST
cache in data/mnist:

    pytest -q tests/test_graphs.py tests/test_cuda_path.py > cuda-tests.txt
    python3 benchmarks/gpu.py --out OUT --budget 455
`mnistlab bench` puts GPU.json beside RESULTS.json into RESULTS.md (its GPU section).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from mnistlab.bench.measure import (
    Settings,
    engine_evaluator,
    engine_trainer,
    machine,
    recipe_run,
)
from mnistlab.config import RECIPES, recipe_config
from mnistlab.data import load_dataset
from mnistlab.runtime import resolve_device

EPOCHS = [("lenet5", 64), ("lenet5", 256), ("mlp", 64)]


def epochs(arrays, device: torch.device) -> dict:
    """Each (model, batch) an epoch at a time with eager steps and with steps replayed from CUDA graphs, alternating."""
    s = Settings(device=device.type)
    rows = []
    for model, batch_size in EPOCHS:
        trainers = {
            "eager": engine_trainer(model, batch_size, arrays, device, s),
            "graphs": engine_trainer(model, batch_size, arrays, device, s, graphs=True),
        }
        times = {name: [] for name in trainers}
        for _ in range(s.repeats):
            for name, epoch in trainers.items():
                times[name].append(epoch())
        rows.append(
            {
                "model": model,
                "batch_size": batch_size,
                "epoch_seconds": times["eager"],
                "median": statistics.median(times["eager"]),
                "graphs_epoch_seconds": times["graphs"],
                "graphs_median": statistics.median(times["graphs"]),
            }
        )
    evaluation = engine_evaluator("lenet5", arrays, device, s)
    passes = [evaluation() for _ in range(s.eval_repeats)]
    return {
        "train_images": len(arrays.train_labels),
        "train": rows,
        "evaluate_lenet5_test_seconds": passes,
        "evaluate_median": statistics.median(passes),
    }


def fast(arrays, device: torch.device, seeds: int) -> dict:
    config = recipe_config("fast", device=device.type)
    runs = [recipe_run(arrays, config, seed) for seed in range(seeds)]
    return {"recipe": RECIPES["fast"], "runs": runs}


def study(out: Path, device: torch.device, stack: bool, limit: float, dry_run: bool) -> dict:
    """`mnistlab compare` in a fresh directory, in its own process, stopped after `limit` seconds."""
    name = "stacked" if stack else "separate"
    with tempfile.TemporaryDirectory(prefix="mnistlab-gpu-") as tmp:
        command = [sys.executable, "-m", "mnistlab", "compare", "--device", device.type, "--out", tmp]
        command += (["--no-stack"] if not stack else []) + (["--quick"] if dry_run else [])
        start = time.perf_counter()
        with open(out / f"study-{name}.log", "w") as log:
            try:
                subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=limit, check=True)
                finished = True
            except subprocess.TimeoutExpired:
                finished = False
        seconds = time.perf_counter() - start
        result = {
            "command": " ".join(["mnistlab", *command[3:]]).replace(tmp, "DIR"),
            "finished": finished,
            "wall_seconds": round(seconds, 1),
            "limit_seconds": round(limit),
        }
        results = Path(tmp) / "results.json"
        if finished and results.exists():
            r = json.loads(results.read_text())
            result["runs"] = len(r["runs"])
            result["timing"] = r["claims"].get("timing")
            result["mean_test_acc"] = {
                arm: statistics.fmean(run["metrics"][-1]["test_acc"] for run in r["runs"] if run["variant"] == arm)
                for arm in r["variants"]
            }
        else:
            result["run_dirs"] = len(list(Path(tmp).glob("runs/*/checkpoint.pt")))  # finished or not
        log_text = (out / f"study-{name}.log").read_text()
        result["finished_runs"] = finished_runs(log_text)
        planned = re.search(r"^(\d+) of (\d+) runs to train", log_text, re.M)
        result["planned_arm_runs"] = int(planned.group(2)) if planned else None
    return result


FINISHED = re.compile(r"^\[\s*\d+/\d+\] (\S+) seed (\d+): test ([\d.]+)%, val [\d.]+% in (?:(\d+)m)?(\d+)s", re.M)


def finished_runs(log: str) -> list[dict]:
    """The runs that `mnistlab compare` printed as finished: arm, seed, test accuracy (%) and run seconds."""
    return [
        {"arm": arm, "seed": int(seed), "test_acc": float(acc), "seconds": 60 * int(m or 0) + int(s)}
        for arm, seed, acc, m, s in FINISHED.findall(log)
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="where GPU.json and the studies' logs go")
    p.add_argument("--device", default="cuda", help="default: cuda")
    p.add_argument("--budget", type=float, default=520.0, help="seconds for the whole script (default: 520)")
    p.add_argument("--dry-run", action="store_true", help="1 fast seed and `compare --quick`: checks the script")
    args = p.parse_args()
    start = time.perf_counter()
    device = resolve_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(device)}

    def save(part: str, value) -> None:
        result[part] = value
        (args.out / "GPU.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"{time.perf_counter() - start:6.1f} s  {part}: {json.dumps(value)[:300]}", flush=True)

    def part(name: str, measure) -> None:
        """One part; one that fails is recorded with its error, and the parts after it still run."""
        try:
            save(name, measure())
        except Exception as e:  # noqa: BLE001 - a lease is short: keep what the other parts measure
            traceback.print_exc()
            save(name, {"error": f"{type(e).__name__}: {e}"})

    arrays = load_dataset("mnist", log=lambda line: None)
    part("epochs", lambda: epochs(arrays, device))
    part("fast", lambda: fast(arrays, device, 1 if args.dry_run else 3))
    for stack, share in ((True, 0.4), (False, 1.0)):  # the stacked study first: it is the shorter
        left = args.budget - (time.perf_counter() - start) - 5
        part(
            "study_stacked" if stack else "study_separate",
            lambda: study(args.out, device, stack, max(1.0, share * left), args.dry_run),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
