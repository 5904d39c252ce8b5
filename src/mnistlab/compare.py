"""`mnistlab compare`: the whole study, LeNet-5 against the MLPs and the regularization ablation.

Each run is an ordinary training run directory under OUT/runs/; a finished run is reused and
an interrupted one resumed, so a study that was stopped continues where it stopped. The
per-epoch metrics of every run go to OUT/results.json; report.py writes REPORT.md and the
figures from that file alone.
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from mnistlab.checkpoint import CHECKPOINT_NAME, load_checkpoint
from mnistlab.engine import DEVICES, TrainConfig, resolve_device, set_threads
from mnistlab.errors import UserError
from mnistlab.fileio import write_json
from mnistlab.models import count_parameters, create_model


@dataclass(frozen=True)
class Variant:
    """One arm of the study: a registered model, with or without augmentation."""

    name: str
    model: str
    augment: bool = False
    label: str = ""
    seconds: float = 60.0  # one 10-epoch run, one thread, measured on a 2-core CPU: longest runs start first


VARIANTS = {
    v.name: v
    for v in (
        Variant("lenet5", "lenet5", label="LeNet-5", seconds=55),
        Variant("mlp", "mlp", label="MLP 500-150", seconds=28),
        Variant("mlp-small", "mlp-small", label="MLP 55-17 (LeNet-5 size)", seconds=7),
        Variant("lenet5-bn", "lenet5-bn", label="LeNet-5 + batch norm", seconds=85),
        Variant("lenet5-dropout", "lenet5-dropout", label="LeNet-5 + dropout", seconds=55),
        Variant("lenet5-augment", "lenet5", augment=True, label="LeNet-5 + augmentation", seconds=59),
        Variant("lenet5-all", "lenet5-reg", augment=True, label="LeNet-5 + all three", seconds=92),
    )
}
ARCHITECTURES = ("lenet5", "mlp", "mlp-small")
ABLATION = ("lenet5", "lenet5-bn", "lenet5-dropout", "lenet5-augment", "lenet5-all")


def run_config(variant: Variant, seed: int, epochs: int, dataset: str, device: str) -> TrainConfig:
    return TrainConfig(model=variant.model, augment=variant.augment, seed=seed, epochs=epochs, dataset=dataset, device=device)


def same_run(saved: dict, config: TrainConfig) -> bool:
    """Whether a saved config describes `config`; the device does not change what is computed."""
    mine = config.to_dict()
    return all(saved.get(k) == v for k, v in mine.items() if k != "device")


def run_state(run_dir: Path, config: TrainConfig) -> int:
    """Epochs already finished in `run_dir` for this config (0 if none); a foreign run is an error."""
    if not (run_dir / CHECKPOINT_NAME).exists():
        return 0
    ckpt = load_checkpoint(run_dir)
    if not same_run(ckpt["config"], config):
        raise UserError(f"{run_dir} holds a run with another configuration; choose another --out")
    return len(ckpt["metrics"])


def study(variants: list[Variant], seeds: int, epochs: int, dataset: str, out: Path, arrays, device: str,
          jobs: int = 1) -> dict:  # fmt: skip
    """Train every (variant, seed) that has not finished yet, `jobs` at a time; return results.json's content."""
    plan = [(v, s) for v in variants for s in range(seeds)]
    width = len(str(len(plan)))
    histories, todo = {}, []
    for i, (variant, seed) in enumerate(plan):
        config = run_config(variant, seed, epochs, dataset, device)
        run_dir = out / "runs" / f"{variant.name}-e{epochs}-s{seed}"
        finished = run_state(run_dir, config)
        tag = f"[{i + 1:>{width}}/{len(plan)}] {variant.name} seed {seed}"
        if finished >= epochs:
            print(f"{tag}: finished earlier, reused")
            histories[i] = load_checkpoint(run_dir)["metrics"]
        else:
            if finished:
                print(f"{tag}: resuming after epoch {finished}")
            todo.append((i, config, run_dir, finished))
    print(f"{len(todo)} of {len(plan)} runs to train, {len(plan) - len(todo)} reused")

    todo.sort(key=lambda task: -plan[task[0]][0].seconds)  # longest first: the last runs pack the cores well
    start = time.perf_counter()
    # The time left is estimated from the measured relative cost of each arm.
    cost = {i: plan[i][0].seconds * (epochs - finished) for i, *_, finished in todo}
    cost_left, spent = sum(cost.values()), 0.0
    for i, history, seconds in execute(todo, arrays, jobs):
        histories[i] = history
        spent += seconds
        cost_left -= cost[i]
        elapsed = time.perf_counter() - start
        # seconds per unit of cost, as the finished runs took it, for what is left, `jobs` at a time
        eta = spent / (sum(cost.values()) - cost_left) * cost_left / jobs
        variant, seed = plan[i]
        last = history[-1]
        print(f"[{len(histories):>{width}}/{len(plan)}] {variant.name} seed {seed}: test {100 * last['test_acc']:.2f}%, "
              f"val {100 * last['val_acc']:.2f}% in {seconds:.0f}s | elapsed {fmt_time(elapsed)}, left ~{fmt_time(eta)}",
              flush=True)  # fmt: skip

    runs = [
        {"variant": v.name, "model": v.model, "augment": v.augment, "seed": seed,
         "parameters": count_parameters(create_model(v.model)),
         "run_dir": f"runs/{v.name}-e{epochs}-s{seed}", "metrics": histories[i]}
        for i, (v, seed) in enumerate(plan)
    ]  # fmt: skip
    return {
        "dataset": dataset,
        "epochs": epochs,
        "seeds": seeds,
        "config": {k: v for k, v in TrainConfig().to_dict().items() if k not in ("model", "augment", "seed", "epochs")},
        "variants": {v.name: {"model": v.model, "augment": v.augment, "label": v.label} for v in variants},
        "runs": runs,
        "machine": {**machine_description(resolve_device(device)), "jobs": jobs,
                    "threads_per_run": threads_per_run(jobs)},
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "mnistlab " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("mnistlab") else "mnistlab compare",
        "training_seconds_this_invocation": round(spent, 1),
        "wall_seconds_this_invocation": round(time.perf_counter() - start, 1),
    }


def train_run(config: TrainConfig, run_dir: Path, finished: int, arrays) -> tuple[list[dict], float]:
    """One run of the study, resumed if it has finished epochs; returns (metrics, seconds)."""
    import mnistlab.train

    t = time.perf_counter()
    resume = load_checkpoint(run_dir) if finished else None
    history = mnistlab.train.fit(config, arrays, run_dir, resume=resume, log=lambda line: None, show_progress=False)
    return history, time.perf_counter() - t


def execute(todo: list, arrays, jobs: int) -> Iterator[tuple[int, list[dict], float]]:
    """Yield (index, metrics, seconds) as runs finish: in this process, or in `jobs` worker processes."""
    if not todo:
        return
    if jobs == 1:
        for i, config, run_dir, finished in todo:
            yield (i, *train_run(config, run_dir, finished, arrays))
        return
    # Small models use two cores poorly: separate runs, one thread each, keep both busy.
    # Even a single run goes to a worker, so its thread count, hence its numbers, are those
    # of the other runs.
    threads = threads_per_run(jobs)
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(arrays, threads))
    try:
        futures = {pool.submit(_worker_run, config, run_dir, finished): i for i, config, run_dir, finished in todo}
        for future in as_completed(futures):
            yield (futures[future], *future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_worker_arrays = None


def _init_worker(arrays, threads: int) -> None:
    global _worker_arrays
    _worker_arrays = arrays
    torch.set_num_threads(threads)


def _worker_run(config: TrainConfig, run_dir: Path, finished: int) -> tuple[list[dict], float]:
    return train_run(config, run_dir, finished, _worker_arrays)


def threads_per_run(jobs: int) -> int:
    return max(1, torch.get_num_threads() // jobs)


def default_jobs(device: torch.device) -> int:
    return 2 if device.type == "cpu" and torch.get_num_threads() >= 2 else 1


def fmt_time(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def machine_description(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    described = {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        described["gpu"] = torch.cuda.get_device_name(device)
    return described


# ---------------------------------------------------------------- the `compare` command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"), help="dataset")
    p.add_argument("--data-dir", default=None, help="data directory (default: $MNISTLAB_DATA or ./data)")
    p.add_argument("--models", nargs="+", default=list(VARIANTS), metavar="NAME",
                   help=f"study arms to run, from: {', '.join(VARIANTS)}")  # fmt: skip
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm (0, 1, ...)")
    p.add_argument("--epochs", type=int, default=10, help="epochs per run")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 2 epochs, into reports/<dataset>-quick")
    p.add_argument("--out", default=None, help="study directory (default: reports/<dataset>)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="device")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs trained at once, in processes that share the CPU threads (default: 2 on a CPU "
                        "with 2 or more threads, where two small runs keep the cores busier than one; else 1)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from mnistlab.data import load_dataset
    from mnistlab.report import summarize, write_report

    unknown = [m for m in args.models if m not in VARIANTS]
    if unknown:
        raise UserError(f"unknown study arm {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    seeds, epochs = (1, 2) if args.quick else (args.seeds, args.epochs)
    if seeds <= 0 or epochs <= 0:
        raise UserError(f"--seeds and --epochs must be positive, got {seeds} and {epochs}")
    set_threads(args.threads)
    out = Path(args.out or f"reports/{args.dataset}{'-quick' if args.quick else ''}")
    variants = [VARIANTS[m] for m in dict.fromkeys(args.models)]
    resolve_device(args.device)  # fail before the long part

    arrays = load_dataset(args.dataset, args.data_dir, log=lambda line: print(f"data: {line}"))
    print(f"study: {len(variants)} arms x {seeds} seeds x {epochs} epochs on {args.dataset} -> {out}")
    jobs = args.jobs if args.jobs is not None else default_jobs(resolve_device(args.device))
    if jobs <= 0:
        raise UserError(f"--jobs must be positive, got {jobs}")
    results = study(variants, seeds, epochs, args.dataset, out, arrays, args.device, jobs)
    results["summary"] = summarize(results)
    write_json(out / "results.json", results)
    write_report(results, out, arrays)
    print(f"wrote {out}/results.json, {out}/REPORT.md and figures "
          f"({fmt_time(results['wall_seconds_this_invocation'])} this invocation)")  # fmt: skip
    return 0
