"""The study: LeNet-5 against the MLPs and the regularization ablation (`mnistlab compare`).

Each run is an ordinary training run directory under OUT/runs/; a finished run is reused and
an interrupted one resumed, so a study that was stopped continues where it stopped. The
per-epoch metrics of every run go to OUT/results.json; report.py writes REPORT.md and the
figures from that file alone. `run_study(StudyConfig(...), arrays)` does all of it.
"""

from __future__ import annotations

import ast
import json
import multiprocessing
import os
import platform
import queue
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import torch

from mnistlab import claims
from mnistlab.checkpoint import CHECKPOINT_NAME, load_checkpoint
from mnistlab.config import TrainConfig
from mnistlab.configurations import (
    CONFIGURATIONS,
    DEFAULT_STUDY,
    EXPERIMENT,
    Configuration,
)
from mnistlab.data import check_arrays
from mnistlab.datasets import DATASET, DATASETS
from mnistlab.engine import TrainingFailed, fit
from mnistlab.errors import UserError
from mnistlab.fast.stacked import can_stack, train_stacked_runs, worth_stacking
from mnistlab.fileio import signal_handler, write_json, write_text
from mnistlab.metrics import metrics_csv
from mnistlab.models import count_parameters, create_model
from mnistlab.options import DEVICE, DEVICES, option, option_of
from mnistlab.predictions import PREDICTIONS_NAME, keep_test_predictions
from mnistlab.report import plural, summarize, write_report
from mnistlab.runlock import run_lock
from mnistlab.runtime import cpu_seconds, resolve_device

Variant = Configuration  # a study's runs are planned as (configuration, seed) pairs

# The TrainConfig fields that a study sets itself: from its own settings (dataset, epochs, device,
# the seeds), from each configuration's declaration (model, augment, and the model's own dropout),
# and in the claims' experiments (permute, train_size, passes). `StudyConfig.train` may set any other.
SET_BY_THE_STUDY = (
    "model",
    "dataset",
    "epochs",
    "augment",
    "dropout",
    "seed",
    "device",
    "segments",
    "permute",
    "train_size",
    "passes",
)
TRAIN_SETTINGS = tuple(f.name for f in fields(TrainConfig) if f.name not in SET_BY_THE_STUDY)


def experiment_variant(arm: claims.ExperimentArm) -> Configuration:
    """An experiment arm of claims.py as a configuration: its base configuration's, with the experiment's settings."""
    base = CONFIGURATIONS[arm.base]
    settings = (*base.settings, *arm.settings)
    return Configuration(arm.name, base.model, arm.label, EXPERIMENT, base.augment, arm.base, settings, arm.may_fail)


@dataclass(frozen=True)
class StudyConfig:
    """What a study trains, and where: every configuration with every seed for `epochs` epochs, each
    run with TrainConfig's defaults except the settings in `train`. Each setting's help is that of
    its `mnistlab compare` flag."""

    dataset: str = DATASET.field()
    models: tuple[str, ...] = option(
        DEFAULT_STUDY,
        f"the study's configurations, from: {', '.join(CONFIGURATIONS)} (`mnistlab models` shows each)",
        metavar="NAME",
        default_text="the default study: " + " ".join(DEFAULT_STUDY),
    )
    seeds: int = option(5, "seeds per configuration (0, 1, ...)")
    epochs: int = option(TrainConfig.epochs, "epochs per run")
    out: str | None = option(
        None,
        "study directory",
        default_text="reports/<dataset>, then the epochs and training settings given: reports/mnist-e20-lr-0.1",
    )
    device: str = DEVICE.field()
    jobs: int | None = option(
        None,
        "runs trained at once, in processes that share the CPU threads",
        default_text=("2 on a CPU with 2 or more threads, where two small runs keep the cores busier than one; else 1"),
    )
    no_stack: bool = option(
        False,
        "train every seed as a separate run",
        default_text=("the seeds of a configuration that trains faster stacked train as one stacked model"),
    )
    # The sizes of the experiments on the claims (claims.py); `compare --quick` gives claims.QUICK.
    experiments: claims.Scale = claims.FULL
    # Training settings of every run, over TrainConfig's defaults, e.g. {"batch_size": 128, "lr": 0.02}:
    # any of TRAIN_SETTINGS. A configuration's own settings win, and so do an experiment's (the
    # learning-rate test sets the rate). `mnistlab compare` takes them as `mnistlab train` does.
    train: dict = field(default_factory=dict)

    def __post_init__(self):
        if (
            isinstance(self.models, str)
            or not isinstance(self.models, (tuple, list))
            or not self.models
            or not all(isinstance(m, str) for m in self.models)
        ):
            raise UserError(
                f"models must be a non-empty tuple of study configurations, e.g. ('lenet5', 'mlp'), got {self.models!r}"
            )
        for name in ("seeds", "epochs", "jobs"):
            value = getattr(self, name)
            if not (value is None and name == "jobs") and (not isinstance(value, int) or isinstance(value, bool)):
                raise UserError(f"{name} must be a whole number, got {value!r}")
        if self.dataset not in DATASETS:
            raise UserError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.out is not None and not isinstance(self.out, (str, os.PathLike)):
            raise UserError(f"out must be a directory's path (a string or a Path), got {self.out!r}")
        if not isinstance(self.no_stack, bool):
            raise UserError(f"no_stack must be true or false, got {self.no_stack!r}")
        unknown = [m for m in self.models if m not in CONFIGURATIONS]
        if unknown:
            raise UserError(f"unknown configuration {unknown[0]!r}; known: {', '.join(CONFIGURATIONS)}")
        if self.seeds <= 0 or self.epochs <= 0:
            raise UserError(f"seeds and epochs must be positive, got {self.seeds} and {self.epochs}")
        if self.jobs is not None and self.jobs <= 0:
            raise UserError(f"jobs must be positive, got {self.jobs}")
        if self.device not in DEVICES:
            raise UserError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if not isinstance(self.experiments, claims.Scale):
            raise UserError(f"experiments must be a claims.Scale (claims.FULL, claims.QUICK), got {self.experiments!r}")
        if not isinstance(self.train, Mapping):
            raise UserError(f"train must be a mapping of training settings to values, got {self.train!r}")
        for name in self.train:
            if name not in TRAIN_SETTINGS:
                why = "the study sets it" if name in SET_BY_THE_STUDY else "TrainConfig has no such field"
                takes = ", ".join(TRAIN_SETTINGS)
                raise UserError(f"train: a study takes no setting {name!r} ({why}); it takes {takes}")
        object.__setattr__(self, "train", dict(self.train))
        TrainConfig(**self.train)  # each value checked as a run's

    @property
    def directory(self) -> Path:
        epochs = "" if self.epochs == StudyConfig.epochs else f"-e{self.epochs}"  # another study: its own report
        return Path(self.out or f"reports/{self.dataset}{epochs}{settings_suffix(self.train)}")

    @property
    def variants(self) -> list[Configuration]:
        return [CONFIGURATIONS[m] for m in dict.fromkeys(self.models)]

    def command(self) -> str:
        """The `mnistlab compare` command that trains this study: its settings, not their defaults."""
        words = ["mnistlab", "compare"]
        quick = self.experiments == claims.QUICK  # --quick: this size, and its own seeds and epochs unless told
        if quick:
            words.append("--quick")
        if self.dataset != DATASET.default:
            words += ["--dataset", self.dataset]
        if tuple(self.models) != DEFAULT_STUDY:
            words += ["--models", *self.models]
        for name in ("seeds", "epochs"):
            if quick or getattr(self, name) != getattr(StudyConfig, name):
                words += [f"--{name}", str(getattr(self, name))]
        if self.out is not None:
            words += ["--out", self.out]
        if self.device != DEVICE.default:
            words += ["--device", self.device]
        if self.jobs is not None:
            words += ["--jobs", str(self.jobs)]
        if self.no_stack:
            words.append("--no-stack")
        no_flag = {}
        for name, value in self.train.items():
            if option_of(TRAIN_FIELDS[name]) is None:
                no_flag[name] = value
            elif value is True:
                words.append(flag_name(name))
            elif value is not False:
                words += [flag_name(name), str(value)]
        command = shlex.join(words)
        if not quick and self.experiments != claims.FULL:
            command += f", with experiments={self.experiments} from Python"
        if no_flag:
            command += f", with train={no_flag} from Python (no flag sets {', '.join(no_flag)})"
        return command


TRAIN_FIELDS = {f.name: f for f in fields(TrainConfig)}


def flag_name(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def settings_suffix(train: dict) -> str:
    """The training settings given, for a directory's name: "-batch-size-128-lr-0.02"; "" for none."""
    parts = []
    for setting, value in train.items():
        words = setting.replace("_", "-")
        if value is not False:
            parts.append(words if value is True else f"{words}-{value}")
    return "".join(f"-{part}" for part in parts)


def run_study(config: StudyConfig, arrays, cluster=None) -> dict:
    """The study of `config` on `arrays` (see data.MnistArrays): trains the runs not finished yet
    (a stopped study continues where it stopped), then writes results.json, REPORT.md and the
    figures into `config.directory`; returns what results.json holds. With a `cluster`
    (mnistlab.cluster.connect), its Dask workers train the runs. One study at a time writes a
    directory (runlock.py)."""
    if not isinstance(config, StudyConfig):
        raise UserError(f"run_study takes a StudyConfig, got {type(config).__name__}")
    check_arrays(arrays, config.dataset)
    with run_lock(config.directory):
        return study_in_directory(config, arrays, cluster)


def study_in_directory(config: StudyConfig, arrays, cluster=None) -> dict:
    """run_study, its directory locked."""
    out, variants = config.directory, config.variants
    device = resolve_device(config.device)
    given = f", {', '.join(f'{k} {v}' for k, v in config.train.items())}" if config.train else ""
    print(
        f"study: {plural(len(variants), 'configuration')} x {plural(config.seeds, 'seed')} x "
        f"{plural(config.epochs, 'epoch')} on {config.dataset}{given} -> {out}"
    )
    jobs = config.jobs if config.jobs is not None else default_jobs(device)
    stack = not config.no_stack

    def train(variants: list[Variant], epochs: int) -> dict:
        """The study's runs of `variants` for `epochs`, with the study's seeds, data, device and workers."""
        return study(
            variants,
            config.seeds,
            epochs,
            config.dataset,
            out,
            arrays,
            config.device,
            jobs,
            cluster=cluster,
            stack=stack,
            train=config.train,
        )

    results = train(variants, config.epochs)
    results["command"] = config.command()

    def train_experiments(arms: list[claims.ExperimentArm]) -> dict:
        kinds = ", ".join(dict.fromkeys(a.experiment for a in arms))
        print(
            f"experiments ({kinds}): {plural(len(arms), 'arm')} x {plural(config.seeds, 'seed')}, "
            "one evaluated epoch each, trained as the configurations are"
        )
        return train([experiment_variant(a) for a in arms], 1)

    results["claims"] = claims.run_experiments(
        results, arrays, out, config.experiments, train_experiments, device=config.device
    )
    results["summary"] = summarize(results)
    write_json(out / "results.json", results)
    write_report(results, out, arrays)
    return results


def run_config(
    variant: Configuration, seed: int, epochs: int, dataset: str, device: str, train: dict | None = None
) -> TrainConfig:
    """The TrainConfig of one run: the study's `train` settings, then the configuration's own."""
    settings = {**(train or {}), **dict(variant.settings)}
    run = {"model": variant.model, "augment": variant.augment, "seed": seed, "epochs": epochs, "dataset": dataset}
    return TrainConfig(**settings, **run, device=device)


def config_differences(saved: dict, config: TrainConfig) -> list[str]:
    """How a saved config differs from `config`, e.g. "epochs 4 there, 2 in this study".

    The device does not change what is computed. A setting that `config`'s dict leaves out at its
    default (TrainConfig.to_dict) counts with that default.
    """
    mine = config.to_dict()
    mine |= {k: getattr(config, k) for k in saved if k not in mine and hasattr(config, k)}
    return [
        f"{k} {saved.get(k)!r} there, {v!r} in this study"
        for k, v in mine.items()
        if k != "device" and saved.get(k) != v
    ]


def study(
    variants: list[Configuration],
    seeds: int,
    epochs: int,
    dataset: str,
    out: Path,
    arrays,
    device: str,
    jobs: int = 1,
    status: TextIO | None = None,
    cluster=None,
    stack: bool = True,
    train: dict | None = None,
) -> dict:
    """Train every (configuration, seed) that has not finished yet, `jobs` at a time; return results.json's content.

    Each run has the training settings `train` (over TrainConfig's defaults), then its configuration's
    own. With `stack`, the seeds of a configuration that trains faster stacked (stacked.worth_stacking)
    train as one stacked model, one task among the `jobs`; a line says which do not. With a `cluster`
    (mnistlab.cluster.Cluster), its workers train the same tasks instead, so the numbers are the same.
    results.json's runs say how each trained ("stacked": how many seeds together, 1 for a run alone).

    A line per finished run goes to stdout; `status` (default stderr), when it is a terminal,
    also gets a status line of the runs going, updated after every epoch. A run directory that
    holds a run with another configuration is an error, before anything is trained.
    """
    plan = [(v, s) for v in variants for s in range(seeds)]
    histories, todo, foreign, saved_metrics, reused = {}, [], [], {}, {}
    for i, (variant, seed) in enumerate(plan):
        config = run_config(variant, seed, epochs, dataset, device, train)
        run_dir = out / "runs" / f"{variant.name}-e{epochs}-s{seed}"
        saved = saved_run(run_dir)
        failed = recorded_failure(run_dir)
        differences = config_differences((failed or saved)["config"], config) if failed or saved else []
        finished = len(saved["metrics"]) if saved else 0
        if saved:
            saved_metrics[i] = saved["metrics"]
        if differences:
            foreign.append((run_dir, differences))
        elif failed:
            check_failure(variant, failed["metrics"])
            histories[i], reused[i] = failed["metrics"], {}  # a run that may stop trains alone
        elif finished >= epochs:
            histories[i], reused[i] = saved["metrics"], saved
            restore_run_files(run_dir, saved)
        else:
            todo.append((i, config, run_dir, finished))
    if foreign:
        raise foreign_runs_error(foreign)
    for number, i in enumerate(histories, 1):  # the runs trained go on counting from here (Progress.done)
        print(
            f"{run_tag(number, plan, i)}: {'stopped' if 'failed' in histories[i][-1] else 'finished'} earlier, reused"
        )
    for i, _, _, finished in todo:
        if finished:
            print(f"{run_tag(None, plan, i)}: resuming after epoch {finished}")
    print(f"{len(todo)} of {len(plan)} runs to train, {len(plan) - len(todo)} reused")
    if stack and seeds > 1:
        for line in unstacked_lines(todo, plan, resolve_device(device)):
            print(line)

    # Each configuration's cost, from the epochs its runs have trained (saved with their metrics);
    # the longest first, where that is known, so that the last runs pack the cores well.
    cost = epoch_seconds(plan, {**histories, **{i: saved_metrics[i] for i, *_ in todo if i in saved_metrics}})
    todo.sort(key=lambda task: -cost.get(plan[task[0]][0].name, 0.0))
    progress = Progress(plan, todo, epochs, sys.stderr if status is None else status, cost)
    tasks = {i: (config, run_dir) for i, config, run_dir, _ in todo}
    spent, run_seconds, cpu = 0.0, {}, cpu_seconds()
    together = {i: len(saved.get("stacked_seeds", [None])) for i, saved in reused.items()}  # how each run trained
    try:
        units = work_units(todo, plan, resolve_device(device), stack)
        for unit in units:
            for i, *_ in unit:
                together[i] = len(unit)
        with closing(execute(units, arrays, jobs, progress, cluster)) as results:
            for i, history, seconds in results:
                spent += seconds
                histories[i], run_seconds[i] = history, round(seconds, 2)
                if "failed" in history[-1]:
                    record_failure(*tasks[i], history)
                progress.finished(i, history, seconds)
                check_failure(plan[i][0], history)
    finally:
        progress.clear()
    keep_predictions(out, plan, histories, epochs, arrays, device)

    runs = [
        {
            "variant": v.name,
            "model": v.model,
            "augment": v.augment,
            "seed": seed,
            "parameters": count_parameters(create_model(v.model)),
            "run_dir": f"runs/{v.name}-e{epochs}-s{seed}",
            "seconds": run_seconds.get(i),
            "stacked": together.get(i),
            "metrics": histories[i],
        }
        for i, (v, seed) in enumerate(plan)
    ]
    shared, own = trained_settings(out, runs)
    return {
        "dataset": dataset,
        "epochs": epochs,
        "seeds": seeds,
        "config": shared,
        "variants": {v.name: {**v.declaration(), "settings": own[v.name]} for v in variants},
        "runs": runs,
        "machine": {
            **machine_description(resolve_device(device)),
            **(
                {"jobs": jobs, "threads_per_run": threads_per_run(jobs), "stack": stack}
                if cluster is None
                else cluster.describe()
            ),
        },
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "training_seconds_this_invocation": round(spent, 1),
        "wall_seconds_this_invocation": round(progress.elapsed(), 1),
        "cpu_seconds_this_invocation": round(cpu_seconds() - cpu, 1),
    }


def keep_predictions(
    out: Path, plan: list[tuple[Variant, int]], histories: dict[int, list[dict]], epochs: int, arrays, device: str
) -> None:
    """Every finished run keeps its final model's predicted test classes (predictions.py): the epoch loop writes
    them, and a run that lacks them (finished by an older version, or its file damaged) has them made again from
    its checkpoint, with a line that says so. A run that stopped has no final model."""
    for i, history in histories.items():
        if "failed" in history[-1]:
            continue
        run_dir = out / "runs" / f"{plan[i][0].name}-e{epochs}-s{plan[i][1]}"
        if keep_test_predictions(run_dir, len(history), arrays, resolve_device(device)):
            print(f"{run_dir / PREDICTIONS_NAME}: missing or damaged; made again from {CHECKPOINT_NAME}")


# The settings that set one run apart from the other runs of its configuration, or that are the
# study's own (results.json's "epochs", "dataset"), or that do not change what is computed (device).
RUN_KEYS = ("model", "augment", "seed", "epochs", "dataset", "device", "segments")


def trained_settings(out: Path, runs: list[dict]) -> tuple[dict, dict[str, dict]]:
    """What the runs were trained with, read from their config.json (failed.json for a run that
    stopped): (the settings most runs share, per configuration those where its runs differ from them)."""
    settings = {}
    for run in runs:
        run_dir = out / run["run_dir"]
        saved = _read_json(run_dir / "config.json") or (recorded_failure(run_dir) or {}).get("config")
        if saved is None:
            raise UserError(f"{run_dir} has no config.json: the study cannot tell what it trained")
        config = TrainConfig.from_dict(saved)
        settings[run["run_dir"]] = {name: getattr(config, name) for name in TRAIN_FIELDS if name not in RUN_KEYS}
    shared = {}
    for name in TRAIN_FIELDS:
        if name not in RUN_KEYS:
            values = [s[name] for s in settings.values()]
            shared[name] = max(values, key=values.count)  # the first of the most common: the study's own
    own = {}
    for run in runs:
        differ = {k: v for k, v in settings[run["run_dir"]].items() if v != shared[k]}
        own.setdefault(run["variant"], {}).update(differ)
    return shared, own


def _read_json(path: Path) -> dict | None:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def epoch_seconds(plan: list[tuple[Configuration, int]], metrics: dict[int, list[dict]]) -> dict[str, float]:
    """Each configuration's mean seconds per epoch, over the epochs that its runs in `metrics`
    (index in the plan -> metric rows) trained."""
    found: dict[str, list[float]] = {}
    for i, rows in metrics.items():
        seconds = [float(row["epoch_seconds"]) for row in rows if "epoch_seconds" in row]
        found.setdefault(plan[i][0].name, []).extend(seconds)
    return {name: sum(values) / len(values) for name, values in found.items() if values}


def unstacked_lines(todo: list, plan: list[tuple[Configuration, int]], device: torch.device) -> list[str]:
    """A line for each reason why the seeds of some configurations will train one by one rather than
    stacked (stacked.worth_stacking), naming them."""
    reasons: dict[str, dict[str, None]] = {}
    for i, config, *_ in todo:
        variant = plan[i][0]
        if variant.may_fail:
            why = "a run that stops is its own result"
        elif worth_stacking(config, device):
            continue
        elif config.freeze_first_at < 1:
            why = "freeze-first-at needs separate runs"
        elif not can_stack(config.model):
            why = f"model {config.model} has a layer that stacked.py cannot stack"
        else:
            why = f"a {variant.family} model trains no faster stacked on a {device.type.upper()}"
        reasons.setdefault(why, {})[variant.name] = None
    return [f"not stacked, seeds trained one by one ({why}): {', '.join(names)}" for why, names in reasons.items()]


def saved_run(run_dir: Path) -> dict | None:
    """The checkpoint of the run in `run_dir`, or None; a damaged one is an error that says what to remove."""
    if not (run_dir / CHECKPOINT_NAME).exists():
        return None
    try:
        return load_checkpoint(run_dir)
    except UserError as e:
        raise UserError(f"{e}; remove {run_dir} to train this run again") from None


def restore_run_files(run_dir: Path, saved: dict) -> None:
    """Rewrite a finished run's config.json and metrics.csv from its checkpoint where they differ from it
    (damaged, or edited): they describe the checkpoint, which a study reuses."""
    for name, text in (
        ("config.json", json.dumps(saved["config"], indent=2) + "\n"),
        ("metrics.csv", metrics_csv(saved["metrics"])),
    ):
        try:
            if (run_dir / name).read_text() == text:
                continue
        except (OSError, UnicodeDecodeError):
            pass
        write_text(run_dir / name, text)
        print(f"{run_dir / name}: did not match {CHECKPOINT_NAME}; rewritten from it")


FAILURE_NAME = "failed.json"


def record_failure(config: TrainConfig, run_dir: Path, metrics: list[dict]) -> None:
    """Keep a run that stopped without learning (`TrainingFailed.metrics`) as a result, in FAILURE_NAME."""
    write_json(run_dir / FAILURE_NAME, {"config": config.to_dict(), "metrics": metrics})


def recorded_failure(run_dir: Path) -> dict | None:
    """{"config", "metrics"} of the run that stopped earlier in `run_dir`, or None; also None for a
    damaged record: the run is then trained again."""
    try:
        saved = json.loads((run_dir / FAILURE_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        return None
    metrics = saved.get("metrics")
    if (
        not isinstance(metrics, list)
        or not metrics
        or not all(isinstance(row, dict) for row in metrics)
        or not isinstance(metrics[-1].get("failed"), str)
    ):
        return None
    return saved


def check_failure(variant: Variant, history: list[dict]) -> None:
    """A stopped run ends the study, unless its arm is one whose runs may stop (the learning-rate test)."""
    if "failed" in history[-1] and not variant.may_fail:
        raise UserError(history[-1]["failed"])


def foreign_runs_error(foreign: list[tuple[Path, list[str]]]) -> UserError:
    """The error for run directories whose run is not the study's (extended by hand, say): which, how, and what to
    do."""
    (run_dir, differences), more = foreign[0], [d.name for d, _ in foreign[1:]]
    also = f", and so do {len(more)} more in {run_dir.parent} ({', '.join(more)})" if more else ""
    return UserError(
        f"{run_dir} holds a run with another configuration ({'; '.join(differences)}){also}; "
        f"move or remove {'them' if more else 'it'} to train this study's run{'s' if more else ''} there, "
        "or choose another --out"
    )


class Progress:
    """Which runs are going, how many have finished, and the time left.

    The time left weighs each epoch still to train by its configuration's measured seconds per
    epoch (`cost`, from its runs' recorded epochs, and from each run as it finishes; while a
    configuration has none, the mean of the others, or all epochs alike) and divides by the
    rate at which the epochs trained so far went, so it holds for any number of runs at a time
    and any device.
    """

    def __init__(
        self, plan: list[tuple[Variant, int]], todo: list, epochs: int, status: TextIO, cost: dict | None = None
    ):
        self.plan, self.epochs, self.status = plan, epochs, status
        self.cost = dict(cost or {})
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
        known = list(self.cost.values())
        fallback = sum(known) / len(known) if known else 1.0
        cost = {i: self.cost.get(self.plan[i][0].name, fallback) for i in self.epochs_done}
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
        name = self.plan[i][0].name
        if name not in self.cost:
            self.cost |= epoch_seconds(self.plan, {i: history})
        self.epochs_done[i] = len(history)
        self.done += 1
        last = history[-1]
        self.clear()
        stopped = f"stopped at epoch {last['epoch']}, " if "failed" in last else ""
        print(
            f"{run_tag(self.done, self.plan, i)}: {stopped}test {100 * last['test_acc']:.2f}%, "
            f"val {100 * last['val_acc']:.2f}% "
            f"in {seconds:.0f}s | elapsed {fmt_time(self.elapsed())}, left ~{self.left()}",
            flush=True,
        )
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
            f"{self.plan[i][0].name} seed {self.plan[i][1]} "
            f"epoch {min(self.epochs, self.epochs_done[i] + 1)}/{self.epochs}"
            for i in self.going
        )
        line = (
            f"{self.done}/{len(self.plan)} runs done, elapsed {fmt_time(self.elapsed())}, "
            f"left ~{self.left()} | going: {going}"
        )
        columns = shutil.get_terminal_size().columns - 1
        self.status.write("\r\033[K" + line[:columns])
        self.status.flush()

    def clear(self) -> None:
        if self.live:
            self.status.write("\r\033[K")
            self.status.flush()


def run_tag(number: int | None, plan: list[tuple[Variant, int]], i: int) -> str:
    """The head of a line about run i of the plan, e.g. "[ 3/21] lenet5-bn seed 0".

    `number` counts the runs done, reused or trained, in the order their lines come; None
    leaves its place blank, for a line about a run that is not done.
    """
    variant, seed = plan[i]
    width = len(str(len(plan)))
    count = " " * (2 * width + 3) if number is None else f"[{number:>{width}}/{len(plan)}]"
    return f"{count} {variant.name} seed {seed}"


def train_run(
    config: TrainConfig, run_dir: Path, finished: int, arrays, on_epoch=lambda: None
) -> tuple[list[dict], float]:
    """One run of the study, resumed if it has finished epochs; returns (metrics, seconds).

    A run that stops because it cannot learn returns its metrics up to the failed epoch, which
    is marked "failed" (`TrainingFailed.metrics`); the study decides what that means.
    """
    t = time.perf_counter()
    resume = load_checkpoint(run_dir) if finished else None
    try:
        # fit logs exactly one line per finished epoch: that line is the epoch's signal here
        history = fit(config, arrays, run_dir, resume=resume, log=lambda line: on_epoch(), show_progress=False)
    except TrainingFailed as e:
        history = e.metrics()
    return history, time.perf_counter() - t


def work_units(todo: list, plan: list[tuple[Variant, int]], device: torch.device, stack: bool) -> list[list]:
    """The study's tasks: the runs of an arm that stacks, together; every other run alone. In `todo`'s order.

    An arm whose runs may stop (Variant.may_fail) trains its seeds alone: each run's stop is its own result.
    """
    units: dict = {}
    for task in todo:
        config, variant = task[1], plan[task[0]][0]
        stacks = stack and not variant.may_fail and worth_stacking(config, device)
        key = replace(config, seed=0) if stacks else task[0]
        units.setdefault(key, []).append(task)
    return list(units.values())


def train_unit(unit: list, arrays, on_epoch) -> list[tuple[int, list[dict], float]]:
    """Train one task of work_units; (index, metrics, seconds) per run, a stacked run's seconds shared evenly."""
    if len(unit) == 1:
        i, config, run_dir, finished = unit[0]
        return [(i, *train_run(config, run_dir, finished, arrays, lambda: on_epoch(i)))]
    t = time.perf_counter()
    histories = train_stacked_runs(
        [task[1:] for task in unit], arrays, log=lambda line: None, on_epoch=lambda j: on_epoch(unit[j][0])
    )
    share = (time.perf_counter() - t) / len(unit)
    return [(task[0], history, share) for task, history in zip(unit, histories)]


def execute(
    units: list[list], arrays, jobs: int, progress: Progress, cluster=None
) -> Iterator[tuple[int, list[dict], float]]:
    """Yield (index, metrics, seconds) as runs finish: in this process, in `jobs` worker processes, or on a `cluster`.

    `units` are the tasks of work_units: one run, or an arm's seeds trained stacked.

    Runs report their start and each finished epoch to `progress`. Ctrl-C stops the runs going
    at once (each keeps its finished epochs), starts no other, and raises KeyboardInterrupt.
    A caller that stops early closes the generator, which stops the workers the same way.
    """
    if not units:
        return
    if cluster is not None:
        yield from cluster.execute(units, progress)
        return
    if jobs == 1:
        for unit in units:
            for task in unit:
                progress.started(task[0])
            yield from train_unit(unit, arrays, progress.epoch_done)
        return
    # Small models use two cores poorly: separate runs, one thread each, keep both busy.
    # Even a single run goes to a worker, so its thread count, hence its numbers, are those
    # of the other runs.
    check_main_guard()
    threads = threads_per_run(jobs)
    context = multiprocessing.get_context("spawn")
    events = context.Queue()  # (kind, index) from the workers: "start", "epoch", "end"
    others = (set(multiprocessing.active_children()), child_pids())
    pool = ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_init_worker, initargs=(arrays, threads, events, os.getpid())
    )
    submission = Submission(pool, units)
    try:
        submission.start()
        futures = submission.result()
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            relay(events, progress)
            for future in done:
                yield from future.result()
        pool.shutdown(wait=True)
    except BaseException:  # Ctrl-C, a run that failed, or a caller that stopped early
        stop_workers(pool, submission, others)
        raise
    relay(events, progress)  # the last words of the workers, which have now exited


def check_main_guard() -> None:
    """Refuse to start worker processes from a script's top level, outside `if __name__ == "__main__":`.

    Each worker starts by running the script again ("spawn"): there, the study would start
    workers of its own, which fails, and the study would wait for workers that never come.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None:  # an interactive session or `python -c`: a worker has nothing to run again
        return
    frame = sys._getframe()
    while frame is not None and not (frame.f_globals is vars(main) and frame.f_code.co_name == "<module>"):
        frame = frame.f_back
    if frame is None:  # not called from the script's top level, and so from code its guard runs
        return
    try:
        tree = ast.parse(Path(path).read_text(), path)
    except (OSError, SyntaxError, ValueError):
        return
    guarded = any(is_main_guard(node) and node.lineno <= frame.f_lineno <= node.end_lineno for node in ast.walk(tree))
    if not guarded:
        raise UserError(
            f"{path}, line {frame.f_lineno}: the study starts worker processes, and each runs this "
            'script again: put the code that runs it under `if __name__ == "__main__":` '
            "(or pass StudyConfig(jobs=1))"
        )


def is_main_guard(node: ast.AST) -> bool:
    """Whether `node` is `if __name__ == "__main__":` (either way round)."""
    if not (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and len(node.test.ops) == 1
        and isinstance(node.test.ops[0], ast.Eq)
    ):
        return False
    sides = [node.test.left, node.test.comparators[0]]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    values = [s.value for s in sides if isinstance(s, ast.Constant)]
    return names == ["__name__"] and values == ["__main__"]


class Submission(threading.Thread):
    """Submits the runs to a process pool from a thread that blocks SIGINT.

    submit() starts the worker processes, and a process starts with the signal mask of the
    thread that started it: so the workers hold Ctrl-C back until their handler is in place
    (`_init_worker`) instead of dying in the middle of an import, while the main thread still
    takes it at once.
    """

    def __init__(self, pool: ProcessPoolExecutor, units: list[list]):
        super().__init__(daemon=True)
        self.pool, self.units = pool, units
        self.futures: dict = {}  # Future -> its unit's runs' indices in the plan
        self.error: BaseException | None = None

    def run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for unit in self.units:
                self.futures[self.pool.submit(_worker_unit, unit)] = [task[0] for task in unit]
        except BaseException as e:  # raised again in the main thread, unless the pool was shut down meanwhile
            self.error = e

    def result(self) -> dict:
        self.join()
        if self.error is not None:
            raise self.error
        return self.futures


GRACE_SECONDS = 3.0  # for the runs going to stop after Ctrl-C; they stop within one batch, so this is a backstop


def stop_workers(pool: ProcessPoolExecutor, submission: Submission, others: tuple[set, set[int]]) -> None:
    """Stop the runs going at once and start no other; no worker outlives this call.

    Each worker gets SIGINT (a second time, when it came from the terminal): the run it trains
    raises KeyboardInterrupt inside `fit`, which keeps the last finished epoch, and it refuses
    the runs already queued to it. Once their runs have stopped, or GRACE_SECONDS have passed,
    the workers are terminated: they have nothing left to write, and leaving the interpreter
    takes torch seconds. Ctrl-C meanwhile kills them and exits at once. `others` are the
    child processes that are not the pool's: multiprocessing's, and every child's pid.
    """
    other_processes, other_pids = others

    def workers() -> list[multiprocessing.Process]:
        return [p for p in multiprocessing.active_children() if p not in other_processes]

    def exit_now(signum, frame):
        for worker in workers():
            worker.kill()
        # A worker that is still starting is not among multiprocessing's children yet; it holds
        # Ctrl-C back while it imports torch, so it would outlive this process by seconds.
        for pid in child_pids() - other_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.write(sys.stderr.fileno(), b"\ninterrupted again: stopped now; rerun the same command to resume\n")
        os._exit(130)

    with signal_handler(signal.SIGINT, exit_now):
        pool.shutdown(wait=False, cancel_futures=True)  # waits for a submit() under way; none can follow
        if submission.is_alive():
            submission.join()
        # The runs not yet sent to a worker never start; wait() would not notice their cancellation.
        going = [future for future in submission.futures if not future.cancel()]
        started = workers()
        for worker in started:
            try:
                os.kill(worker.pid, signal.SIGINT)
            except ProcessLookupError:  # it has left already
                pass
        wait(going, timeout=GRACE_SECONDS)
        for worker in started:
            worker.terminate()
        for worker in started:
            worker.join()
        pool.shutdown(wait=True)  # cannot block now: its workers are gone


def child_pids() -> set[int]:
    """The pids of this process's children, from /proc; empty where there is no /proc."""
    me, found = os.getpid(), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if ppid == me:
            found.add(int(stat.parent.name))
    return found


def relay(events, progress: Progress) -> None:
    """Pass the workers' events, in the order each worker sent them, on to `progress`."""
    while True:
        try:
            kind, i = events.get_nowait()
        except queue.Empty:
            return
        {"start": progress.started, "epoch": progress.epoch_done, "end": progress.ended}[kind](i)


_worker_arrays = _worker_events = None
_worker_training = False  # a run is going in this worker: SIGINT interrupts it
_worker_stopping = False  # SIGINT came: this worker starts no other run


def _init_worker(arrays, threads: int, events, parent: int) -> None:
    global _worker_arrays, _worker_events
    _worker_arrays, _worker_events = arrays, events
    torch.set_num_threads(threads)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    signal.signal(signal.SIGINT, _worker_sigint)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked since the parent started this process


def _worker_sigint(signum, frame) -> None:
    """Ctrl-C in a worker: interrupt the run going, once (a second one would cut short the first's clean-up)."""
    global _worker_stopping
    if _worker_stopping:
        return
    _worker_stopping = True
    if _worker_training:
        raise KeyboardInterrupt


def _exit_with_parent(parent: int) -> None:
    """End this worker when the study's process is gone (killed with SIGKILL, say), instead of waiting for work
    forever."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _worker_unit(unit: list) -> list[tuple[int, list[dict], float]]:
    global _worker_training
    _worker_training = True
    try:
        if _worker_stopping:  # SIGINT came before this task started: it stays unstarted
            raise KeyboardInterrupt
        for task in unit:
            _worker_events.put(("start", task[0]))
        try:
            return train_unit(unit, _worker_arrays, lambda i: _worker_events.put(("epoch", i)))
        finally:
            for task in unit:
                _worker_events.put(("end", task[0]))
    finally:
        _worker_training = False


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
