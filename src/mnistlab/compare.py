"""`mnistlab compare`: the whole study, LeNet-5 against the MLPs and the regularization ablation.

Each run is an ordinary training run directory under OUT/runs/; a finished run is reused and
an interrupted one resumed, so a study that was stopped continues where it stopped. The
per-epoch metrics of every run go to OUT/results.json; report.py writes REPORT.md and the
figures from that file alone.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import platform
import queue
import resource
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import torch

from mnistlab import claims
from mnistlab.checkpoint import CHECKPOINT_NAME, load_checkpoint
from mnistlab.engine import DEVICES, TrainConfig, TrainingFailed, resolve_device, set_threads
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
    settings: tuple[tuple[str, object], ...] = ()  # other TrainConfig fields (the experiments' runs, claims.py)
    may_fail: bool = False  # a run that stops (loss not finite, accuracy at chance) is a result, not an error


VARIANTS = {
    v.name: v
    for v in (
        Variant("lenet5", "lenet5", label="LeNet-5", seconds=52),
        Variant("mlp", "mlp", label="MLP 500-150", seconds=30),
        Variant("mlp-small", "mlp-small", label="MLP 55-17 (LeNet-5 size)", seconds=8),
        Variant("lenet5-bn", "lenet5-bn", label="LeNet-5 + batch norm", seconds=71),
        Variant("lenet5-dropout", "lenet5-dropout", label="LeNet-5 + dropout", seconds=58),
        Variant("lenet5-augment", "lenet5", augment=True, label="LeNet-5 + augmentation", seconds=60),
        Variant("lenet5-all", "lenet5-reg", augment=True, label="LeNet-5 + all three", seconds=82),
        Variant("mlp-augment", "mlp", augment=True, label="MLP 500-150 + augmentation", seconds=36),
    )
}
ARM_RUN_IMAGES = 10 * 55_000  # the training images of the run that `Variant.seconds` measures


def run_config(variant: Variant, seed: int, epochs: int, dataset: str, device: str) -> TrainConfig:
    return TrainConfig(model=variant.model, augment=variant.augment, seed=seed, epochs=epochs, dataset=dataset,
                       device=device, **dict(variant.settings))  # fmt: skip


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
          jobs: int = 1, status: TextIO | None = None) -> dict:  # fmt: skip
    """Train every (variant, seed) that has not finished yet, `jobs` at a time; return results.json's content.

    A line per finished run goes to stdout; `status` (default stderr), when it is a terminal,
    also gets a status line of the runs going, updated after every epoch.
    """
    plan = [(v, s) for v in variants for s in range(seeds)]
    histories, todo = {}, []
    for i, (variant, seed) in enumerate(plan):
        config = run_config(variant, seed, epochs, dataset, device)
        run_dir = out / "runs" / f"{variant.name}-e{epochs}-s{seed}"
        finished = run_state(run_dir, config)
        failed = recorded_failure(run_dir, config)
        tag = run_tag(i + 1, plan, i)
        if finished >= epochs or failed:
            print(f"{tag}: {'stopped' if failed else 'finished'} earlier, reused")
            histories[i] = failed or load_checkpoint(run_dir)["metrics"]
            check_failure(variant, histories[i])
        else:
            if finished:
                print(f"{tag}: resuming after epoch {finished}")
            todo.append((i, config, run_dir, finished))
    print(f"{len(todo)} of {len(plan)} runs to train, {len(plan) - len(todo)} reused")

    todo.sort(key=lambda task: -plan[task[0]][0].seconds)  # longest first: the last runs pack the cores well
    progress = Progress(plan, todo, epochs, sys.stderr if status is None else status)
    cpu = cpu_seconds()
    spent, run_seconds = 0.0, {}
    for i, history, seconds in execute(todo, arrays, jobs, progress):
        spent += seconds
        histories[i], run_seconds[i] = history, round(seconds, 2)
        progress.finished(i, history, seconds)
        check_failure(plan[i][0], history)
    progress.clear()

    runs = [
        {"variant": v.name, "model": v.model, "augment": v.augment, "seed": seed,
         "parameters": count_parameters(create_model(v.model)),
         "run_dir": f"runs/{v.name}-e{epochs}-s{seed}", "seconds": run_seconds.get(i), "metrics": histories[i]}
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
        "wall_seconds_this_invocation": round(progress.elapsed(), 1),
        "cpu_seconds_this_invocation": round(cpu_seconds() - cpu, 1),
    }


def claim_experiments(results: dict, variants: list[Variant], seeds: int, epochs: int, out: Path, arrays, device: str,
                      jobs: int, quick: bool) -> dict:  # fmt: skip
    """The experiments on the write-up's claims (claims.py): their runs, trained like the arms' but
    each as one evaluated epoch, the arms' models on moved digits, and the analysis -> results["claims"]."""
    scale = claims.QUICK if quick else claims.FULL
    defaults = TrainConfig()
    n_train = len(arrays.train_labels) - defaults.val_size
    labels = {v.name: v.label for v in variants}
    arms = claims.plan(list(labels), labels, epochs, n_train, defaults.batch_size, scale)
    experiment = [
        Variant(a.name, VARIANTS[a.base].model, VARIANTS[a.base].augment, a.label, settings=a.settings,
                seconds=VARIANTS[a.base].seconds * a.images / ARM_RUN_IMAGES, may_fail=a.experiment == "rates")
        for a in arms
    ]  # fmt: skip
    timing = {"arms": {"runs": len(results["runs"]), "wall_seconds": results["wall_seconds_this_invocation"],
                       "run_seconds": results["training_seconds_this_invocation"],
                       "cpu_seconds": results["cpu_seconds_this_invocation"]}}  # fmt: skip
    runs = []
    if experiment:
        kinds = ", ".join(dict.fromkeys(a.experiment for a in arms))
        print(f"experiments ({kinds}): {len(experiment)} arms x {seeds} seeds, one evaluated epoch each")
        trained = study(experiment, seeds, 1, results["dataset"], out, arrays, device, jobs)
        runs = trained["runs"]
        kind = {a.name: a.experiment for a in arms}
        for name in dict.fromkeys(kind.values()):
            mine = [r for r in runs if kind[r["variant"]] == name]
            timing[name] = {"runs": len(mine), "run_seconds": round(sum(r["seconds"] or 0 for r in mine), 1)}
        timing["experiments"] = {"runs": len(runs), "wall_seconds": trained["wall_seconds_this_invocation"],
                                 "run_seconds": trained["training_seconds_this_invocation"],
                                 "cpu_seconds": trained["cpu_seconds_this_invocation"]}  # fmt: skip
    t, cpu = time.perf_counter(), cpu_seconds()
    robust = claims.run_robustness(out, results["runs"], arrays, scale)
    timing["robustness"] = {"models": len(results["runs"]), "wall_seconds": round(time.perf_counter() - t, 1),
                            "cpu_seconds": round(cpu_seconds() - cpu, 1)}  # fmt: skip
    analysis = claims.analyze(results, runs, arms, robust, n_train, len(arrays.test_labels), len(arrays.classes), scale)
    return {**analysis, "timing": timing}


class Progress:
    """Which runs are going, how many have finished, and the time left.

    The time left weighs each epoch still to train by its arm's measured cost (`Variant.seconds`)
    and divides by the rate at which the epochs trained so far went, so it holds for any
    number of runs at a time and any device.
    """

    def __init__(self, plan: list[tuple[Variant, int]], todo: list, epochs: int, status: TextIO):
        self.plan, self.epochs, self.status = plan, epochs, status
        self.live = status.isatty()
        self.done = len(plan) - len(todo)
        self.epochs_done = {i: finished for i, *_, finished in todo}
        self.at_start = dict(self.epochs_done)
        self.going: list[int] = []
        self.ended_runs: set[int] = set()
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> str:
        cost = {i: self.plan[i][0].seconds for i in self.epochs_done}
        trained = sum((n - self.at_start[i]) * cost[i] for i, n in self.epochs_done.items())
        if not trained:
            return "?"
        remaining = sum((self.epochs - n) * cost[i] for i, n in self.epochs_done.items())
        return fmt_time(remaining * self.elapsed() / trained)

    def started(self, i: int) -> None:
        if i not in self.ended_runs and i not in self.going:
            self.going.append(i)
            self.draw()

    def epoch_done(self, i: int) -> None:
        if i not in self.ended_runs:
            self.epochs_done[i] += 1
            self.draw()

    def ended(self, i: int) -> None:
        """Run `i` stopped training; its result may come later (`finished`)."""
        if self.stop(i):
            self.draw()

    def finished(self, i: int, history: list[dict], seconds: float) -> None:
        self.stop(i)
        self.epochs_done[i] = len(history)
        self.done += 1
        last = history[-1]
        self.clear()
        print(f"{run_tag(self.done, self.plan, i)}: test {100 * last['test_acc']:.2f}%, val {100 * last['val_acc']:.2f}% "
              f"in {seconds:.0f}s | elapsed {fmt_time(self.elapsed())}, left ~{self.left()}", flush=True)  # fmt: skip
        self.draw()

    def stop(self, i: int) -> bool:
        """Mark run `i` as no longer training, so that late events about it are ignored; True if it was going."""
        self.ended_runs.add(i)
        if i in self.going:
            self.going.remove(i)
            return True
        return False

    def draw(self) -> None:
        if not self.going:
            self.clear()
            return
        if not self.live:
            return
        going = ", ".join(
            f"{self.plan[i][0].name} seed {self.plan[i][1]} epoch {min(self.epochs, self.epochs_done[i] + 1)}/{self.epochs}"
            for i in self.going
        )
        line = f"{self.done}/{len(self.plan)} runs done, elapsed {fmt_time(self.elapsed())}, left ~{self.left()} | going: {going}"
        columns = shutil.get_terminal_size().columns - 1
        self.status.write("\r\033[K" + line[:columns])
        self.status.flush()

    def clear(self) -> None:
        if self.live:
            self.status.write("\r\033[K")
            self.status.flush()



def run_tag(number: int, plan: list[tuple[Variant, int]], i: int) -> str:
    """The head of a line about run i of the plan, e.g. "[ 3/21] lenet5-bn seed 0"; `number` counts the lines."""
    variant, seed = plan[i]
    return f"[{number:>{len(str(len(plan)))}}/{len(plan)}] {variant.name} seed {seed}"


def train_run(config: TrainConfig, run_dir: Path, finished: int, arrays, on_epoch=lambda: None) -> tuple[list[dict], float]:
    """One run of the study, resumed if it has finished epochs; returns (metrics, seconds).

    A run that stops because it cannot learn (`TrainingFailed`) is recorded in FAILURE_NAME: its
    metrics end with the failed epoch's, marked "failed"; the study decides what that means.
    """
    import mnistlab.train

    t = time.perf_counter()
    resume = load_checkpoint(run_dir) if finished else None
    try:
        # fit logs exactly one line per finished epoch: that line is the epoch's signal here
        history = mnistlab.train.fit(
            config, arrays, run_dir, resume=resume, log=lambda line: on_epoch(), show_progress=False
        )
    except TrainingFailed as e:
        history = [*e.history[:-1], {**e.history[-1], "failed": str(e)}]
        history = [{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in row.items()} for row in history]
        write_json(run_dir / FAILURE_NAME, {"config": config.to_dict(), "metrics": history})
    return history, time.perf_counter() - t


FAILURE_NAME = "failed.json"


def recorded_failure(run_dir: Path, config: TrainConfig) -> list[dict] | None:
    """The metrics of a run of this config that stopped earlier without learning, or None (also for a
    damaged record: the run is then trained again)."""
    try:
        saved = json.loads((run_dir / FAILURE_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict) or not same_run(saved["config"], config):
        return None
    metrics = saved.get("metrics")
    if not isinstance(metrics, list) or not metrics or not all(isinstance(row, dict) for row in metrics) \
            or not isinstance(metrics[-1].get("failed"), str):  # fmt: skip
        return None
    return metrics


def check_failure(variant: Variant, history: list[dict]) -> None:
    """A stopped run ends the study, unless its arm is one whose runs may stop (the learning-rate test)."""
    if "failed" in history[-1] and not variant.may_fail:
        raise UserError(history[-1]["failed"])


def execute(todo: list, arrays, jobs: int, progress: Progress) -> Iterator[tuple[int, list[dict], float]]:
    """Yield (index, metrics, seconds) as runs finish: in this process, or in `jobs` worker processes.

    Runs report their start and each finished epoch to `progress`.
    """
    if not todo:
        return
    if jobs == 1:
        for i, config, run_dir, finished in todo:
            progress.started(i)
            yield (i, *train_run(config, run_dir, finished, arrays, lambda i=i: progress.epoch_done(i)))
        return
    # Small models use two cores poorly: separate runs, one thread each, keep both busy.
    # Even a single run goes to a worker, so its thread count, hence its numbers, are those
    # of the other runs.
    threads = threads_per_run(jobs)
    context = multiprocessing.get_context("spawn")
    events = context.Queue()  # (kind, index) from the workers: "start", "epoch", "end"
    pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(arrays, threads, events))
    try:
        futures = {pool.submit(_worker_run, i, config, run_dir, finished): i for i, config, run_dir, finished in todo}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            relay(events, progress)
            for future in done:
                yield (futures[future], *future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    relay(events, progress)  # the last words of the workers, which have now exited


def relay(events, progress: Progress) -> None:
    """Pass the workers' events, in the order each worker sent them, on to `progress`."""
    while True:
        try:
            kind, i = events.get_nowait()
        except queue.Empty:
            return
        {"start": progress.started, "epoch": progress.epoch_done, "end": progress.ended}[kind](i)


_worker_arrays = _worker_events = None


def _init_worker(arrays, threads: int, events) -> None:
    global _worker_arrays, _worker_events
    _worker_arrays, _worker_events = arrays, events
    torch.set_num_threads(threads)


def _worker_run(i: int, config: TrainConfig, run_dir: Path, finished: int) -> tuple[list[dict], float]:
    _worker_events.put(("start", i))
    try:
        return train_run(config, run_dir, finished, _worker_arrays, lambda: _worker_events.put(("epoch", i)))
    finally:
        _worker_events.put(("end", i))


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (a pool's workers, once it has closed).

    Unlike wall time it hardly moves with what else the machine is running, so it says what a
    part of the study costs."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


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
    device = resolve_device(args.device)  # fail before the long part

    arrays = load_dataset(args.dataset, args.data_dir, log=lambda line: print(f"data: {line}"))
    print(f"study: {len(variants)} arms x {seeds} seeds x {epochs} epochs on {args.dataset} -> {out}")
    jobs = args.jobs if args.jobs is not None else default_jobs(device)
    if jobs <= 0:
        raise UserError(f"--jobs must be positive, got {jobs}")
    started = time.perf_counter()
    results = study(variants, seeds, epochs, args.dataset, out, arrays, args.device, jobs)
    results["claims"] = claim_experiments(results, variants, seeds, epochs, out, arrays, args.device, jobs, args.quick)
    results["summary"] = summarize(results)
    write_json(out / "results.json", results)
    write_report(results, out, arrays)
    print(f"wrote {out}/results.json, {out}/REPORT.md and figures "
          f"({fmt_time(time.perf_counter() - started)} this invocation)")  # fmt: skip
    return 0
