"""The classic write-up's explanations, each put to the experiment that could refute it.

The experiments of the default study (`mnistlab compare`), besides its arms:
  permuted     LeNet-5 and the MLPs on one fixed, seeded permutation of the 784 pixel positions
  robustness   every arm's final model on shifted and rotated test digits (no training)
  limited      LeNet-5, LeNet-5 + all three and the MLP on class-balanced subsets of the
               training split, each run given at least `min_steps` optimizer steps
  speed        steps and seconds to a validation accuracy, from the arms' recorded curves
  rates        LeNet-5 and LeNet-5 + batch norm at a few learning rates, short runs

This module plans the experiments' runs (the study trains them like any other run: study.py's
run_study hands `run_experiments` its way of training them), evaluates the shifted and rotated
digits, and turns every number into `ClaimTest`s: a difference, its seed-to-seed spread and the
sign the claim predicts. Each verdict is computed from those.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mnistlab import fast
from mnistlab.checkpoint import load_model
from mnistlab.engine import evaluate
from mnistlab.fileio import write_json
from mnistlab.runtime import cpu_seconds, resolve_device
from mnistlab.splits import pixel_permutation
from mnistlab.stats import Comparison, compare_means, mean_std

PERMUTATION_SEED = 0  # the one permutation of the pixel positions, the same for every run and split
SHIFTS = (0, 1, 2, 3, 4, 5, 6)  # pixels, each the mean over right, left, down and up
ANGLES = (0, 10, 20, 30, 40)  # degrees, each the mean over both ways
RATES = (0.01, 0.03, 0.1, 0.3)  # the tolerance test's learning rates, whatever the study's (0.01: TrainConfig's)
ROBUSTNESS_SEED = 0  # which test images the shifted and rotated digits are made from
THRESHOLD_BELOW = 0.01  # speed: the threshold is this far below the lowest final validation accuracy

SUPPORTED, CONTRADICTED, NOT_SETTLED = "supported", "contradicted", "not settled at this spread"


@dataclass(frozen=True)
class Scale:
    """How large the experiments are: the default study's sizes, or `--quick`'s toy ones."""

    subset_sizes: tuple[int, ...]  # limited data: training images of a run (the full split is the arms' runs)
    min_steps: int  # limited data: the fewest optimizer steps a run gets
    probe_size: int  # learning rates: training images of a run, which makes `epochs` passes
    test_images: int  # shifted and rotated digits: test images they are made from


# Sized so that the whole default study stays within 12 minutes on a 2-core CPU: the experiments
# add about 3 minutes to the arms' 9, two thirds of it the permuted pixels (docs/reference.md, "compare").
FULL = Scale(subset_sizes=(500, 1500, 4000), min_steps=500, probe_size=1000, test_images=500)
QUICK = Scale(subset_sizes=(100, 300), min_steps=40, probe_size=300, test_images=500)


@dataclass(frozen=True)
class ExperimentArm:
    """The runs of one experiment arm: a study configuration (`base`) with other training settings.
    Every setting it does not set is the study's (StudyConfig.train), as in the base configuration's runs."""

    experiment: str  # "permuted", "limited" or "rates"
    name: str
    base: str  # the study arm it varies (study.VARIANTS)
    label: str
    settings: tuple[tuple[str, object], ...]  # TrainConfig fields beyond the base arm's; epochs is 1
    images: int  # training images a run goes through, for its cost beside the base arm's

    @property
    def may_fail(self) -> bool:
        """Whether a run that stops (loss not finite, accuracy at chance) is a result: in the learning-rate test it is."""
        return self.experiment == "rates"


# The study arms each experiment compares with; it runs when they are all in the study.
EXPERIMENT_ARMS = {
    "permuted": ("lenet5", "mlp", "mlp-small"),
    "limited": ("lenet5", "lenet5-all", "mlp"),
    "rates": ("lenet5", "lenet5-bn"),
}


def subset_passes(size: int, epochs: int, min_steps: int, batch_size: int) -> int:
    """Passes over `size` images: `epochs` of them, as the full split gets, and more if that
    makes fewer than `min_steps` optimizer steps."""
    per_pass = -(-size // batch_size)
    return max(epochs, -(-min_steps // per_pass))


def plan(
    arms: list[str], labels: dict[str, str], epochs: int, n_train: int, batch_size: int, scale: Scale
) -> list[ExperimentArm]:
    """The experiment arms whose study arms are all in `arms`. Every run is one evaluated epoch of
    several passes: its only evaluation is at the end, which is all its experiment uses. A name
    says all that sets its runs apart (p: passes, n: training images), so that runs of other
    sizes, or of a study with other epochs, never meet in one run directory."""
    planned = []
    if all(a in arms for a in EXPERIMENT_ARMS["permuted"]):
        for base in EXPERIMENT_ARMS["permuted"]:
            settings = (("permute", PERMUTATION_SEED), ("passes", epochs))
            planned.append(
                ExperimentArm(
                    "permuted",
                    f"{base}-permuted-p{epochs}",
                    base,
                    f"{labels[base]}, permuted pixels",
                    settings,
                    epochs * n_train,
                )
            )
    if all(a in arms for a in EXPERIMENT_ARMS["limited"]):
        for size in (s for s in scale.subset_sizes if s < n_train):
            passes = subset_passes(size, epochs, scale.min_steps, batch_size)
            for base in EXPERIMENT_ARMS["limited"]:
                settings = (("train_size", size), ("passes", passes))
                planned.append(
                    ExperimentArm(
                        "limited",
                        f"{base}-n{size}-p{passes}",
                        base,
                        f"{labels[base]}, {size:,} images",
                        settings,
                        passes * size,
                    )
                )
    if all(a in arms for a in EXPERIMENT_ARMS["rates"]):
        size = scale.probe_size if scale.probe_size < n_train else 0  # 0: the whole training split
        for base in EXPERIMENT_ARMS["rates"]:
            for lr in RATES:
                settings = (("lr", lr), ("train_size", size), ("passes", epochs))
                planned.append(
                    ExperimentArm(
                        "rates",
                        f"{base}-lr{lr:g}-n{size or n_train}-p{epochs}",
                        base,
                        f"{labels[base]}, lr {lr:g}",
                        settings,
                        epochs * (size or n_train),
                    )
                )
    return planned


def run_experiments(
    results: dict,
    arrays,
    out: Path,
    scale: Scale,
    train: Callable[[list[ExperimentArm]], dict],
    log=print,
    device: str = "cpu",
) -> dict:
    """The experiments beside the study's arms, and the analysis -> results.json's "claims".

    `results` is the arms' part of results.json (study.study). `train` trains the experiments'
    runs, each one evaluated epoch, as the study trains its arms, and returns their results in
    the same form; finished runs are reused as the arms' are. Then every arm's final model is
    tested on moved digits, on `device`, and each claim gets its tests. "timing" says where the time went.
    The study's training settings are those its runs had (results["config"]).
    """
    settings = results["config"]
    n_train = len(arrays.train_labels) - settings["val_size"]
    labels = {name: v["label"] for name, v in results["variants"].items()}
    arms = plan(list(labels), labels, results["epochs"], n_train, settings["batch_size"], scale)
    timing = {
        "arms": {
            "runs": len(results["runs"]),
            "wall_seconds": results["wall_seconds_this_invocation"],
            "run_seconds": results["training_seconds_this_invocation"],
            "cpu_seconds": results["cpu_seconds_this_invocation"],
        }
    }
    runs = []
    if arms:
        trained = train(arms)
        runs = trained["runs"]
        kind = {a.name: a.experiment for a in arms}
        for name in dict.fromkeys(kind.values()):
            mine = [r for r in runs if kind[r["variant"]] == name]
            timing[name] = {"runs": len(mine), "run_seconds": round(sum(r["seconds"] or 0 for r in mine), 1)}
        timing["experiments"] = {
            "runs": len(runs),
            "wall_seconds": trained["wall_seconds_this_invocation"],
            "run_seconds": trained["training_seconds_this_invocation"],
            "cpu_seconds": trained["cpu_seconds_this_invocation"],
        }
    t, cpu = time.perf_counter(), cpu_seconds()
    robust = run_robustness(out, results["runs"], arrays, scale, log, device)
    timing["robustness"] = {
        "models": len(results["runs"]),
        "wall_seconds": round(time.perf_counter() - t, 1),
        "cpu_seconds": round(cpu_seconds() - cpu, 1),
    }
    analysis = analyze(results, runs, arms, robust, n_train, len(arrays.test_labels), len(arrays.classes), scale)
    return {**analysis, "timing": timing}


# ---------------------------------------------------------------- shifted and rotated digits


def shift_images(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Images (N, H, W) moved `dx` whole pixels to the right and `dy` down; what comes in is 0 (black)."""
    moved = torch.zeros_like(images)
    h, w = images.shape[-2:]
    if abs(dx) < w and abs(dy) < h:
        moved[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = images[
            ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
        ]
    return moved


def rotate_images(images: torch.Tensor, angle: float) -> torch.Tensor:
    """uint8 images (N, H, W) rotated by `angle` degrees, counter-clockwise as displayed, about the
    centre; bilinear sampling, rounded back to uint8, 0 (black) from outside. 0 gives an exact copy."""
    if angle == 0:
        return images.clone()
    n, h, w = images.shape
    rad = math.radians(angle)
    cos, sin = math.cos(rad), math.sin(rad)
    # Each output pixel takes the input point it comes from (the inverse rotation), in pixel
    # units about the centre, then in grid_sample's [-1, 1]; the convention of augment.affine.
    px = torch.arange(w, dtype=torch.float32) + 0.5 - w / 2
    py = torch.arange(h, dtype=torch.float32) + 0.5 - h / 2
    py, px = torch.meshgrid(py, px, indexing="ij")
    grid = torch.stack([(cos * px - sin * py) * (2 / w), (sin * px + cos * py) * (2 / h)], dim=-1)
    rotated = F.grid_sample(
        images.unsqueeze(1).float(),
        grid.expand(n, h, w, 2).to(images.device),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    return rotated.squeeze(1).round_().clamp_(0, 255).to(torch.uint8)


def moved_versions(images: torch.Tensor, kind: str, amount: int) -> list[torch.Tensor]:
    """The images shifted by `amount` pixels right, left, down and up, or rotated by +-`amount` degrees."""
    if amount == 0:
        return [images]
    if kind == "shift":
        return [shift_images(images, dx, dy) for dx, dy in ((amount, 0), (-amount, 0), (0, amount), (0, -amount))]
    return [rotate_images(images, angle) for angle in (amount, -amount)]


def robustness(
    models: dict[str, nn.Module], images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000
) -> dict[str, dict[str, list[float]]]:
    """Each model's accuracy on `images` shifted by each of SHIFTS and rotated by each of ANGLES
    (a mean over the directions) -> {key: {"shift": [...], "rotation": [...]}}."""
    accuracy = {key: {"shift": [], "rotation": []} for key in models}
    for kind, amounts in (("shift", SHIFTS), ("rotation", ANGLES)):
        for amount in amounts:
            versions = moved_versions(images, kind, amount)  # made once, for every model
            for key, model in models.items():
                accuracy[key][kind].append(
                    float(np.mean([evaluate(model, v, labels, batch_size)[1] for v in versions]))
                )
    return accuracy


def moved_digit_indices(n_test: int, count: int) -> torch.Tensor:
    """Sorted indices of the `count` test images the moved digits are made from (all when count >= n_test)."""
    if count >= n_test:
        return torch.arange(n_test)
    return torch.randperm(n_test, generator=torch.Generator().manual_seed(ROBUSTNESS_SEED))[:count].sort().values


ROBUSTNESS_NAME = "robustness.json"


def run_robustness(
    out: Path, runs: list[dict], arrays, scale: Scale, log=print, device: str = "cpu"
) -> dict[str, dict]:
    """Shifted and rotated test accuracy of every run's final model, on `device` -> {run_dir: {"shift", "rotation"}}.

    Each run's numbers are kept in its directory (robustness.json) and reused while its final
    epoch and the test images are the same.
    """
    on = resolve_device(device)
    index = moved_digit_indices(len(arrays.test_labels), scale.test_images)
    images = torch.from_numpy(arrays.test_images)[index].contiguous().to(on)
    labels = torch.from_numpy(arrays.test_labels).long()[index].to(on)
    key = {"test_images": len(index), "seed": ROBUSTNESS_SEED, "shifts": list(SHIFTS), "angles": list(ANGLES)}
    found, models = {}, {}
    for run in runs:
        run_dir = out / run["run_dir"]
        saved = _read_json(run_dir / ROBUSTNESS_NAME)
        if saved and saved.get("key") == {**key, "epoch": len(run["metrics"])}:
            found[run["run_dir"]] = saved["accuracy"]
            continue
        model, _ = load_model(run_dir, on)
        models[run["run_dir"]] = fast.prepare(model, on)  # as the engine evaluates it
    if models:
        log(
            f"shifted and rotated digits: {len(models)} models x {len(index):,} test images x "
            f"{len(SHIFTS)} shifts and {len(ANGLES)} angles"
        )
        epochs = {run["run_dir"]: len(run["metrics"]) for run in runs}
        threads = torch.get_num_threads()
        if on.type == "cpu":
            torch.set_num_threads(
                1
            )  # as the runs train: a second thread gained nothing on a busy 2-core machine, and cost up to 2x
        try:
            found_now = robustness(models, images, labels)
        finally:
            torch.set_num_threads(threads)
        for run_dir, accuracy in found_now.items():
            write_json(
                out / run_dir / ROBUSTNESS_NAME, {"key": {**key, "epoch": epochs[run_dir]}, "accuracy": accuracy}
            )
            found[run_dir] = accuracy
    return found


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- speed, from recorded curves


def steps_to(metrics: list[dict], threshold: float, steps_per_epoch: int, chance: float) -> tuple[float, float] | None:
    """(optimizer steps, training seconds) until the validation accuracy first reaches `threshold`.

    Linear between evaluations, which come after each epoch; before the first, from (0 steps,
    0 seconds, `chance`). None if it never does.
    """
    steps = seconds = 0.0
    acc = chance
    for row in metrics:
        next_steps, next_seconds = row["epoch"] * steps_per_epoch, seconds + row["epoch_seconds"]
        if row["val_acc"] >= threshold:
            part = min(1.0, max(0.0, (threshold - acc) / (row["val_acc"] - acc))) if row["val_acc"] > acc else 1.0
            return steps + part * (next_steps - steps), seconds + part * (next_seconds - seconds)
        steps, seconds, acc = next_steps, next_seconds, row["val_acc"]
    return None


# ---------------------------------------------------------------- tests and verdicts


@dataclass(frozen=True)
class ClaimTest:
    """One prediction of a claim, measured: the claim says `a` is higher than `b` (expect +1) or lower (-1)."""

    question: str  # what is compared, e.g. "test accuracy lost when the pixels are permuted"
    a: str
    b: str
    a_stat: dict  # mean_std of a
    b_stat: dict
    expect: int  # +1: the claim expects a > b; -1: a < b
    unit: str  # "points" (the stats are fractions), "steps" or "s"

    @property
    def comparison(self) -> Comparison:
        """a - b in `unit`, against the sum of the two standard deviations."""
        return compare_means(self.a_stat, self.b_stat, 100.0 if self.unit == "points" else 1.0)

    @property
    def verdict(self) -> str:
        """Decided from the numbers: a difference beyond the spread, in the claim's direction or against it."""
        c = self.comparison
        if not c.exceeds:
            return NOT_SETTLED
        return SUPPORTED if c.difference * self.expect > 0 else CONTRADICTED

    def to_dict(self) -> dict:
        c = self.comparison
        return {
            "question": self.question,
            "a": self.a,
            "b": self.b,
            "a_stat": self.a_stat,
            "b_stat": self.b_stat,
            "expect": self.expect,
            "unit": self.unit,
            "difference": c.difference,
            "spread": c.spread,
            "exceeds": c.exceeds,
            "verdict": self.verdict,
        }


def overall(tests: list[ClaimTest]) -> str:
    """A claim's verdict: supported (or contradicted) when a test says so and none says the opposite."""
    verdicts = {t.verdict for t in tests}
    if SUPPORTED in verdicts and CONTRADICTED not in verdicts:
        return SUPPORTED
    if CONTRADICTED in verdicts and SUPPORTED not in verdicts:
        return CONTRADICTED
    return NOT_SETTLED


# ---------------------------------------------------------------- the analysis


def analyze(
    results: dict,
    experiment_runs: list[dict],
    arms: list[ExperimentArm],
    robust: dict[str, dict],
    n_train: int,
    n_test: int,
    num_classes: int,
    scale: Scale,
) -> dict:
    """results.json's "claims": every experiment's numbers, and the claims with their tests and verdicts."""
    labels = {k: v["label"] for k, v in results["variants"].items()}
    batch_size, epochs = results["config"]["batch_size"], results["epochs"]
    main = {name: [r for r in results["runs"] if r["variant"] == name] for name in results["variants"]}
    spec = {a.name: a for a in arms}
    claims: dict = {}

    def runs_where(experiment: str, base: str, **settings) -> list[dict]:
        """The runs of the experiment arm of `base` with these `settings`."""
        names = {
            a.name
            for a in arms
            if a.experiment == experiment
            and a.base == base
            and all(dict(a.settings).get(k) == v for k, v in settings.items())
        }
        return [r for r in experiment_runs if r["variant"] in names]

    def runs_of(experiment: str) -> list[dict]:
        return [
            {
                **r,
                "base": spec[r["variant"]].base,
                "label": spec[r["variant"]].label,
                "settings": dict(spec[r["variant"]].settings),
            }
            for r in experiment_runs
            if spec[r["variant"]].experiment == experiment
        ]

    if any(a.experiment == "permuted" for a in arms):
        claims["permuted"] = {
            "permutation_seed": PERMUTATION_SEED,
            "permutation": pixel_permutation(PERMUTATION_SEED).tolist(),
            "arms": {
                base: {
                    "label": labels[base],
                    "original": test_acc(main[base]),
                    "permuted": test_acc(runs_where("permuted", base)),
                    "drop": differences(main[base], runs_where("permuted", base), final("test_acc")),
                }
                for base in EXPERIMENT_ARMS["permuted"]
            },
            "runs": runs_of("permuted"),
        }
    if robust:
        claims["robustness"] = robustness_summary(main, robust, min(scale.test_images, n_test))
    if any(a.experiment == "limited" for a in arms):
        claims["limited"] = {
            **limited_summary(main, runs_where, arms, labels, n_train, batch_size, epochs, scale),
            "runs": runs_of("limited"),
        }
    if "lenet5" in main and "lenet5-bn" in main:
        claims["speed"] = speed_summary(main, -(-n_train // batch_size), 1 / num_classes)
    if any(a.experiment == "rates" for a in arms):
        claims["rates"] = {**rates_summary(runs_where, arms, n_train), "runs": runs_of("rates")}
    claims["verdicts"] = [{**c, "tests": [t.to_dict() for t in c["tests"]]} for c in verdicts(main, labels, claims)]
    return claims


def final(key: str):
    return lambda run: run["metrics"][-1][key]


def test_acc(runs: list[dict]) -> dict:
    return mean_std([r["metrics"][-1]["test_acc"] for r in runs])


def differences(a: list[dict], b: list[dict], value) -> dict:
    """mean_std of value(a) - value(b) over the seeds both have: two groups of runs, matched seed by seed."""
    va, vb = {r["seed"]: value(r) for r in a}, {r["seed"]: value(r) for r in b}
    seeds = sorted(set(va) & set(vb))
    return mean_std([va[s] - vb[s] for s in seeds])


def robustness_summary(main: dict[str, list[dict]], robust: dict[str, dict], test_images: int) -> dict:
    """Per arm, mean and std over seeds at each shift and angle (the shape transform.robustness_curves
    reads); per run, the curves and the drop: the accuracy at 0 minus the mean of the others."""
    summary = {"test_images": test_images, "seed": ROBUSTNESS_SEED, "drop": {}, "per_run": {}}
    for kind, values in (("shift", SHIFTS), ("rotation", ANGLES)):
        accuracy, drop = {}, {}
        for arm, runs in main.items():
            curves = np.array([robust[r["run_dir"]][kind] for r in runs])
            accuracy[arm] = {
                "mean": curves.mean(0).tolist(),
                "std": (curves.std(0, ddof=1) if len(curves) > 1 else np.zeros(len(values))).tolist(),
            }
            drop[arm] = mean_std([c[0] - c[1:].mean() for c in curves])
        summary[kind] = {"values": list(values), "accuracy": accuracy}
        summary["drop"][kind] = drop
        summary["per_run"][kind] = {r["run_dir"]: robust[r["run_dir"]][kind] for runs in main.values() for r in runs}
    return summary


def limited_summary(main, runs_where, arms, labels, n_train, batch_size, epochs, scale) -> dict:
    """Test accuracy per arm and training-set size, the full split being the arms' own runs."""
    sizes = sorted({dict(a.settings)["train_size"] for a in arms if a.experiment == "limited"})
    steps = [subset_passes(s, epochs, scale.min_steps, batch_size) * -(-s // batch_size) for s in sizes]
    runs = {
        base: [*(runs_where("limited", base, train_size=s) for s in sizes), main[base]]
        for base in EXPERIMENT_ARMS["limited"]
    }
    return {
        "sizes": [*sizes, n_train],
        "steps": [*steps, epochs * -(-n_train // batch_size)],
        "min_steps": scale.min_steps,
        "epochs": epochs,
        "arms": {base: {"label": labels[base], "test_acc": [test_acc(rs) for rs in runs[base]]} for base in runs},
        "gain": [
            differences(all_three, plain, final("test_acc"))
            for all_three, plain in zip(runs["lenet5-all"], runs["lenet5"])
        ],
    }


def speed_summary(main: dict[str, list[dict]], steps_per_epoch: int, chance: float) -> dict:
    """Steps and training seconds to a validation accuracy that every run of both arms reaches."""
    arms = ("lenet5", "lenet5-bn")
    threshold = min(r["metrics"][-1]["val_acc"] for a in arms for r in main[a]) - THRESHOLD_BELOW
    reached = {a: [steps_to(r["metrics"], threshold, steps_per_epoch, chance) for r in main[a]] for a in arms}
    return {
        "threshold": threshold,
        "below_lowest_final": THRESHOLD_BELOW,
        "steps_per_epoch": steps_per_epoch,
        "steps": {a: mean_std([s for s, _ in reached[a]]) for a in arms},
        "seconds": {a: mean_std([t for _, t in reached[a]]) for a in arms},
        "seconds_per_step": {
            a: mean_std([m["epoch_seconds"] / steps_per_epoch for r in main[a] for m in r["metrics"]]) for a in arms
        },
    }


def rates_summary(runs_where, arms: list[ExperimentArm], n_train: int) -> dict:
    """Validation accuracy of each arm at each rate, and how many of its runs stopped (loss not finite, or at chance)."""
    settings = dict(next(a for a in arms if a.experiment == "rates").settings)
    summary = {
        "rates": list(RATES),
        "train_size": settings["train_size"] or n_train,
        "passes": settings["passes"],
        "arms": {},
    }
    for base in EXPERIMENT_ARMS["rates"]:
        runs = [runs_where("rates", base, lr=lr) for lr in RATES]
        summary["arms"][base] = {
            "val_acc": [mean_std([r["metrics"][-1]["val_acc"] for r in rs]) for rs in runs],
            "failed": [sum("failed" in r["metrics"][-1] for r in rs) for rs in runs],
        }
    return summary


# The claims, in the words of the classic write-up of this experiment.
CLAIMS = {
    "spatial": 'the CNN wins "because convolutional layers are effective at learning spatial hierarchies"',
    "parameters": 'the CNN wins "despite having fewer parameters"',
    "limited": 'regularization is crucial, "especially when working with a limited amount of training data"',
    "batch_norm": 'batch normalization "accelerates the training process"',
    "dropout": "dropout reduces overfitting",
    "augment": 'augmentation "bolstered the model\'s ability to generalize"',
}
MOVED = {"shift": "shifted by 1-6 pixels", "rotation": "rotated by 10-40 degrees"}


def verdicts(main: dict[str, list[dict]], labels: dict[str, str], claims: dict) -> list[dict]:
    """Each claim with the tests the study has numbers for, and its verdict; a claim without any is left out."""
    tests: dict[str, list[ClaimTest]] = {claim: [] for claim in CLAIMS}
    if "permuted" in claims:
        drop = {arm: v["drop"] for arm, v in claims["permuted"]["arms"].items()}
        for mlp in ("mlp", "mlp-small"):
            tests["spatial"].append(
                ClaimTest(
                    "test accuracy lost when the pixels are permuted",
                    labels["lenet5"],
                    labels[mlp],
                    drop["lenet5"],
                    drop[mlp],
                    +1,
                    "points",
                )
            )
    if "robustness" in claims and "lenet5" in main and "mlp" in main:
        drop = claims["robustness"]["drop"]
        for kind in ("shift", "rotation"):
            tests["spatial"].append(
                ClaimTest(
                    f"test accuracy lost on digits {MOVED[kind]} (mean)",
                    labels["lenet5"],
                    labels["mlp"],
                    drop[kind]["lenet5"],
                    drop[kind]["mlp"],
                    -1,
                    "points",
                )
            )
    for mlp in ("mlp", "mlp-small"):
        if "lenet5" in main and mlp in main:
            tests["parameters"].append(
                ClaimTest(
                    "test accuracy",
                    labels["lenet5"],
                    labels[mlp],
                    test_acc(main["lenet5"]),
                    test_acc(main[mlp]),
                    +1,
                    "points",
                )
            )
    if "limited" in claims:
        lim = claims["limited"]
        smallest, full = lim["sizes"][0], lim["sizes"][-1]
        tests["limited"] += [
            ClaimTest(
                f"test accuracy on {smallest:,} training images",
                labels["lenet5-all"],
                labels["lenet5"],
                lim["arms"]["lenet5-all"]["test_acc"][0],
                lim["arms"]["lenet5"]["test_acc"][0],
                +1,
                "points",
            ),
            ClaimTest(
                f"test accuracy that all three regularizers add to {labels['lenet5']}",
                f"on {smallest:,} training images",
                f"on all {full:,}",
                lim["gain"][0],
                lim["gain"][-1],
                +1,
                "points",
            ),
        ]
    if "speed" in claims:
        s = claims["speed"]
        for key, unit in (("steps", "steps"), ("seconds", "s")):
            tests["batch_norm"].append(
                ClaimTest(
                    f"training {key} to {100 * s['threshold']:.2f}% validation accuracy",
                    labels["lenet5-bn"],
                    labels["lenet5"],
                    s[key]["lenet5-bn"],
                    s[key]["lenet5"],
                    -1,
                    unit,
                )
            )
    if "rates" in claims:
        r = claims["rates"]
        for i, lr in enumerate(r["rates"]):
            tests["batch_norm"].append(
                ClaimTest(
                    f"validation accuracy after {r['passes']} passes over {r['train_size']:,} images at lr {lr:g}",
                    labels["lenet5-bn"],
                    labels["lenet5"],
                    r["arms"]["lenet5-bn"]["val_acc"][i],
                    r["arms"]["lenet5"]["val_acc"][i],
                    +1,
                    "points",
                )
            )
    if "lenet5" in main and "lenet5-dropout" in main:
        gap = {
            a: mean_std([r["metrics"][-1]["train_acc"] - r["metrics"][-1]["val_acc"] for r in main[a]])
            for a in ("lenet5", "lenet5-dropout")
        }
        tests["dropout"].append(
            ClaimTest(
                "train-validation gap",
                labels["lenet5-dropout"],
                labels["lenet5"],
                gap["lenet5-dropout"],
                gap["lenet5"],
                -1,
                "points",
            )
        )
    for aug, plain in (("lenet5-augment", "lenet5"), ("mlp-augment", "mlp")):
        if aug in main and plain in main:
            tests["augment"].append(
                ClaimTest(
                    "test accuracy",
                    labels[aug],
                    labels[plain],
                    test_acc(main[aug]),
                    test_acc(main[plain]),
                    +1,
                    "points",
                )
            )
    if "robustness" in claims and "lenet5-augment" in main and "lenet5" in main:
        per_run = claims["robustness"]["per_run"]
        for kind in ("shift", "rotation"):
            moved = {
                a: mean_std([float(np.mean(per_run[kind][r["run_dir"]][1:])) for r in main[a]])
                for a in ("lenet5-augment", "lenet5")
            }
            tests["augment"].append(
                ClaimTest(
                    f"test accuracy on digits {MOVED[kind]} (mean)",
                    labels["lenet5-augment"],
                    labels["lenet5"],
                    moved["lenet5-augment"],
                    moved["lenet5"],
                    +1,
                    "points",
                )
            )
    return [{"claim": c, "quote": CLAIMS[c], "tests": ts, "verdict": overall(ts)} for c, ts in tests.items() if ts]
