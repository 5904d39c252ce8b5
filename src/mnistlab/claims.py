"""The classic write-up's explanations, each put to the experiment that could refute it.

The experiments of the default study (`mnistlab compare`), besides its arms:
  permuted     LeNet-5 and the MLPs on one fixed, seeded permutation of the 784 pixel positions
  robustness   every arm's final model on shifted and rotated test digits (no training)
  limited      LeNet-5, LeNet-5 + all three and the MLP on class-balanced subsets of the
               training split, every size given the same `subset_steps` optimizer steps; at the
               smallest, each regularizer alone as well (batch norm, dropout, augmentation)
  speed        LeNet-5 and LeNet-5 + batch norm trained again for their early steps, evaluated on a
               fixed validation subset every `speed_every` steps (bnspeed.py): steps to a threshold
  rates        LeNet-5 and LeNet-5 + batch norm at a few learning rates, short runs

This module plans the experiments' runs (the study trains them like any other run: study.py's
run_study hands `run_experiments` its way of training them; the speed experiment's runs, which
are evaluated every few steps, bnspeed.py trains), evaluates the shifted and rotated digits, and
turns every number into `ClaimTest`s: a difference paired by seed, its 95% confidence interval and
p-value, and the sign the claim predicts. Each claim's verdict is decided by its one
primary test (PRIMARY), Holm-corrected over the claims; the other tests are shown, never decide.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mnistlab import fast
from mnistlab.bnspeed import run_speed
from mnistlab.checkpoint import load_model
from mnistlab.config import TrainConfig
from mnistlab.fileio import atomic_write, write_json
from mnistlab.predictions import predict_classes, read_npz, read_test_predictions
from mnistlab.runtime import cpu_seconds, resolve_device
from mnistlab.splits import pixel_permutation
from mnistlab.stats import Difference, holm, mcnemar, mean_std, paired_difference, welch_difference

PERMUTATION_SEED = 0  # the one permutation of the pixel positions, the same for every run and split
SHIFTS = (0, 1, 2, 3, 4, 5, 6)  # pixels, each the mean over right, left, down and up
ANGLES = (0, 10, 20, 30, 40)  # degrees, each the mean over both ways
RATES = (0.01, 0.03, 0.1, 0.3)  # the tolerance test's learning rates, whatever the study's (0.01: TrainConfig's)
ROBUSTNESS_SEED = 0  # which test images the shifted and rotated digits are made from
THRESHOLD_BELOW = 0.01  # speed: the threshold is this far below the lowest final validation accuracy

SUPPORTED, CONTRADICTED, NOT_SETTLED = "supported", "contradicted", "not settled"


@dataclass(frozen=True)
class Scale:
    """How large the experiments are: the default study's sizes, or `--quick`'s toy ones."""

    subset_sizes: tuple[int, ...]  # limited data: training images of a run (the full split is the arms' runs)
    subset_steps: int  # limited data: the optimizer steps of every run, whatever its size (`subset_passes`)
    probe_size: int  # learning rates: training images of a run, which makes `epochs` passes
    test_images: int  # shifted and rotated digits: test images they are made from
    speed_every: int  # batch norm's speed: optimizer steps between two evaluations
    speed_images: int  # batch norm's speed: validation images of each evaluation, the same ones every time


# Sized so that the whole default study stays within 15 minutes on a 2-core CPU (docs/reference.md, "compare";
# the cost of the limited-data runs and of the speed experiment: benchmarks/bnspeed.md).
# The moved digits: 2,000 test images halve the images' sampling error of 500 for about 4x their cost, a
# fraction of a 5-seed study's 15 minutes; all 10,000 would cost 20x, a quarter of them (benchmarks/moved_digits.md).
# subset_steps: 1,008 = 2 x 504, a whole number of passes at every size (8, 24 and 63 steps a pass of
# batches of 64), so that every size gets exactly the same steps; enough for plain LeNet-5 to fit 4,000
# images (99.5-99.8% training accuracy, where 630 steps left it at 98.2-98.5%), and 1,512 would cost half
# as much again for the last few images.
FULL = Scale(
    subset_sizes=(500, 1500, 4000),
    subset_steps=1008,
    probe_size=1000,
    test_images=2000,
    speed_every=50,
    speed_images=2000,
)
QUICK = Scale(
    subset_sizes=(100, 300),
    subset_steps=40,
    probe_size=300,
    test_images=500,
    speed_every=2,
    speed_images=200,
)


@dataclass(frozen=True)
class ExperimentArm:
    """The runs of one experiment arm: a study configuration (`base`) with other training settings.
    Every setting it does not set is the study's (StudyConfig.train), as in the base configuration's runs."""

    experiment: str  # "permuted", "limited", "rates" or "speed"
    name: str
    base: str  # the study arm it varies (study.VARIANTS)
    label: str
    settings: tuple[tuple[str, object], ...]  # TrainConfig fields beyond the base arm's; epochs is 1 (speed: none)
    images: int  # training images a run goes through, for its cost beside the base arm's

    @property
    def may_fail(self) -> bool:
        """Whether a run that stops (loss not finite, accuracy at chance) is a result: in the learning-rate test it
        is."""
        return self.experiment == "rates"


# The study arms each experiment compares with; it runs when they are all in the study.
EXPERIMENT_ARMS = {
    "permuted": ("lenet5", "mlp", "mlp-small"),
    "limited": ("lenet5", "lenet5-all", "mlp"),
    "rates": ("lenet5", "lenet5-bn"),
    "speed": ("lenet5", "lenet5-bn"),
}
# Limited data: each regularizer alone, at the smallest size, where the study has its arm.
ALONE = ("lenet5-bn", "lenet5-dropout", "lenet5-augment")


def subset_passes(size: int, steps: int, batch_size: int) -> int:
    """Passes over `size` images that make `steps` optimizer steps: exactly `steps` when they are
    a whole number of passes, else the fewest passes that make at least `steps`."""
    per_pass = -(-size // batch_size)
    return -(-steps // per_pass)


def plan(
    arms: list[str], labels: dict[str, str], epochs: int, n_train: int, batch_size: int, scale: Scale
) -> list[ExperimentArm]:
    """The experiment arms whose study arms are all in `arms`. Every run is one evaluated epoch of
    several passes: its only evaluation is at the end, which is all its experiment uses. A name
    says all that sets its runs apart (p: passes, n: training images), so that runs of other
    sizes, or of a study with other epochs, never meet in one run directory. The speed
    experiment's arms are the exception: bnspeed.py trains them, evaluated every `speed_every` steps."""
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
        sizes = [s for s in scale.subset_sizes if s < n_train]
        for size in sizes:
            passes = subset_passes(size, scale.subset_steps, batch_size)
            alone = [a for a in ALONE if a in arms] if size == sizes[0] else []
            for base in (*EXPERIMENT_ARMS["limited"], *alone):
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
    if all(a in arms for a in EXPERIMENT_ARMS["speed"]):
        steps = speed_max_steps(scale, epochs, n_train, batch_size)
        for base in EXPERIMENT_ARMS["speed"]:
            planned.append(
                ExperimentArm(
                    "speed",
                    f"{base}-speed-every{scale.speed_every}",
                    base,
                    f"{labels[base]}, evaluated every {scale.speed_every} steps",
                    (),
                    steps * batch_size,
                )
            )
    return planned


def speed_max_steps(scale: Scale, epochs: int, n_train: int, batch_size: int) -> int:
    """The most steps a run of the speed experiment trains: all the study's `epochs`, the training its arms had,
    in whole turns of evaluation. A run stops at the threshold, which its arm's runs reached by their last epoch
    (speed_threshold): on MNIST LeNet-5's runs stop after 750 to 1,800 of 8,600 steps (benchmarks/bnspeed.md);
    on Fashion-MNIST plain LeNet-5 needs more than three epochs."""
    steps = epochs * -(-n_train // batch_size)
    return max(scale.speed_every, steps // scale.speed_every * scale.speed_every)


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
    trained_arms = [a for a in arms if a.experiment != "speed"]  # the study trains these; bnspeed.py the others
    if trained_arms:
        trained = train(trained_arms)
        runs = trained["runs"]
        kind = {a.name: a.experiment for a in trained_arms}
        for name in dict.fromkeys(kind.values()):
            mine = [r for r in runs if kind[r["variant"]] == name]
            timing[name] = {"runs": len(mine), "run_seconds": round(sum(r["seconds"] or 0 for r in mine), 1)}
        timing["experiments"] = {
            "runs": len(runs),
            "wall_seconds": trained["wall_seconds_this_invocation"],
            "run_seconds": trained["training_seconds_this_invocation"],
            "cpu_seconds": trained["cpu_seconds_this_invocation"],
        }
    measured = None
    if any(a.experiment == "speed" for a in arms):
        t, cpu = time.perf_counter(), cpu_seconds()
        main = {a: [r for r in results["runs"] if r["variant"] == a] for a in EXPERIMENT_ARMS["speed"]}
        measured, count = run_speed(
            out,
            speed_configs(out, results["runs"], device),
            arrays,
            scale.speed_every,
            scale.speed_images,
            speed_threshold(main),
            speed_max_steps(scale, results["epochs"], n_train, settings["batch_size"]),
            log,
            device,
        )
        timing["speed"] = {
            "runs": count,
            "wall_seconds": round(time.perf_counter() - t, 1),
            "cpu_seconds": round(cpu_seconds() - cpu, 1),
        }
    t, cpu = time.perf_counter(), cpu_seconds()
    robust = run_robustness(out, results["runs"], arrays, scale, log, device)
    timing["robustness"] = {
        "models": len(results["runs"]),
        "wall_seconds": round(time.perf_counter() - t, 1),
        "cpu_seconds": round(cpu_seconds() - cpu, 1),
    }
    images = image_level(out, results["runs"], runs, arms, arrays, scale)
    analysis = analyze(
        results, runs, arms, robust, n_train, len(arrays.test_labels), len(arrays.classes), scale, images, measured
    )
    return {**analysis, "timing": timing}


# ---------------------------------------------------------------- image by image

# The tests of two configurations' test accuracy, each run on the same test images: (claim, test key, a, b),
# as `verdicts` names them. Their image-level McNemar tests are shown beside them, one per seed, never deciding.
SAME_IMAGES = (
    ("parameters", "test-mlp", "lenet5", "mlp"),
    ("parameters", "test-mlp-small", "lenet5", "mlp-small"),
    ("limited", "smallest", "lenet5-all", "lenet5"),  # on the smallest training subset
    ("augment", "test-lenet5", "lenet5-augment", "lenet5"),
    ("augment", "test-mlp", "mlp-augment", "mlp"),
)
# The moved-digit tests: (claim, test key prefix, a, b, the per-image value of per_image_moved).
MOVED_TESTS = (("spatial", "moved", "lenet5", "mlp", "drop"), ("augment", "moved", "lenet5-augment", "lenet5", "moved"))


def image_level(
    out: Path, main_runs: list[dict], experiment_runs: list[dict], arms: list[ExperimentArm], arrays, scale: Scale
) -> dict[str, dict]:
    """results.json's "claims"/"image_level", keyed "claim/test key": what the runs' kept classes
    (predictions.py, run_robustness) say image by image.

    "mcnemar" (SAME_IMAGES): per seed, stats.mcnemar of the two configurations' final models on the
    test set. "image_variance" (MOVED_TESTS): the moved digits are made from the same test images
    for every seed, so the spread over seeds leaves out which images were drawn; this is the
    sampling variance of that choice, in squared percentage points: the variance over images of
    each image's difference (a - b, the mean over the seeds), divided by the number of images.
    `verdicts` adds it to the seed-paired test's squared standard error (stats.paired_difference).
    A run whose classes are not kept is left out.
    """
    labels = arrays.test_labels
    smallest = min((dict(a.settings)["train_size"] for a in arms if a.experiment == "limited"), default=None)
    limited = {a.name: a.base for a in arms if a.experiment == "limited" and dict(a.settings)["train_size"] == smallest}
    groups = {"main": {}, "smallest": {}}
    for run in main_runs:
        groups["main"].setdefault(run["variant"], {})[run["seed"]] = run
    for run in experiment_runs:
        if run["variant"] in limited:
            groups["smallest"].setdefault(limited[run["variant"]], {})[run["seed"]] = run
    found: dict[str, dict] = {}
    for claim, key, a, b in SAME_IMAGES:
        group = groups["smallest" if key == "smallest" else "main"]
        tests = {}
        for seed in sorted(set(group.get(a, {})) & set(group.get(b, {}))):
            classes = [
                read_test_predictions(out / r["run_dir"], len(r["metrics"]), len(labels))
                for r in (group[a][seed], group[b][seed])
            ]
            if all(c is not None for c in classes):
                tests[str(seed)] = mcnemar(classes[0] == labels, classes[1] == labels).to_dict()
        if tests:
            found[f"{claim}/{key}"] = {"mcnemar": tests}
    index = moved_digit_indices(len(labels), scale.test_images).numpy()
    key = robustness_key(len(index))
    values = {}
    for run in main_runs:
        classes = read_moved_predictions(out / run["run_dir"], {**key, "epoch": len(run["metrics"])})
        if classes is not None:
            values[run["run_dir"]] = per_image_moved(classes, labels[index])
    for claim, prefix, a, b, value in MOVED_TESTS:
        main = groups["main"]
        seeds = [
            s
            for s in sorted(set(main.get(a, {})) & set(main.get(b, {})))
            if main[a][s]["run_dir"] in values and main[b][s]["run_dir"] in values
        ]
        if len(seeds) < 2:
            continue
        for kind in ("shift", "rotation"):
            per_image = np.mean(
                [
                    values[main[a][s]["run_dir"]][kind][value] - values[main[b][s]["run_dir"]][kind][value]
                    for s in seeds
                ],
                axis=0,
            )
            variance = float(np.var(100 * per_image, ddof=1) / len(per_image)) if len(per_image) > 1 else 0.0
            found[f"{claim}/{prefix}-{kind}"] = {"image_variance": variance, "images": len(per_image)}
    return found


def speed_configs(out: Path, runs: list[dict], device: str) -> dict[int, dict[str, TrainConfig]]:
    """{seed: {arm: its run's configuration}} for the speed experiment's arms, read from the study's run
    directories (config.json), on `device`; the seeds that every one of the arms has."""
    configs: dict[int, dict[str, TrainConfig]] = {}
    for arm in EXPERIMENT_ARMS["speed"]:
        for r in runs:
            if r["variant"] == arm:
                saved = json.loads((Path(out) / r["run_dir"] / "config.json").read_text())
                configs.setdefault(r["seed"], {})[arm] = replace(TrainConfig.from_dict(saved), device=device)
    return {seed: c for seed, c in sorted(configs.items()) if len(c) == len(EXPERIMENT_ARMS["speed"])}


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
    predicted = moved_predictions(models, images, batch_size)
    return {key: moved_accuracy(classes, labels.cpu().numpy()) for key, classes in predicted.items()}


WAYS = {"shift": 4, "rotation": 2}  # right, left, down and up; both ways round


def moved_predictions(
    models: dict[str, nn.Module], images: torch.Tensor, batch_size: int = 1000
) -> dict[str, dict[str, np.ndarray]]:
    """Each model's predicted class of each of `images` shifted by each of SHIFTS and rotated by each of ANGLES
    -> {key: {"shift": uint8 (len(SHIFTS), 4, N), "rotation": uint8 (len(ANGLES), 2, N)}}, the directions in
    moved_versions' order; at 0 the one unmoved version fills every direction."""
    n = len(images)
    found = {key: {kind: np.empty((len(a), WAYS[kind], n), np.uint8) for kind, a in MOVES} for key in models}
    for kind, amounts in MOVES:
        for j, amount in enumerate(amounts):
            versions = moved_versions(images, kind, amount)  # made once, for every model
            for key, model in models.items():
                classes = [predict_classes(model, v, batch_size).cpu().numpy() for v in versions]
                found[key][kind][j] = np.stack(classes) if len(classes) > 1 else classes[0]
    return found


MOVES = (("shift", SHIFTS), ("rotation", ANGLES))


def moved_correct(classes: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    """Per amount, whether each direction's prediction of each image is right: (directions, N) booleans; one
    direction at 0, where nothing moved."""
    return [c[:1] == labels if j == 0 else c == labels for j, c in enumerate(classes)]


def moved_accuracy(predicted: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, list[float]]:
    """A model's accuracy at each shift and angle, the mean over the directions, from moved_predictions' classes."""
    n = len(labels)
    return {
        kind: [float(np.mean([int(right.sum()) / n for right in c])) for c in moved_correct(predicted[kind], labels)]
        for kind, _ in MOVES
    }


def per_image_moved(predicted: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Per image, what a run's moved-digit numbers are the means of over the images: for each kind "drop" (right
    unmoved, minus the share of its moved versions that are right, each amount weighing the same) and "moved"
    (that share)."""
    values = {}
    for kind, _ in MOVES:
        per_amount = np.stack([right.mean(0) for right in moved_correct(predicted[kind], labels)])  # (amounts, N)
        moved = per_amount[1:].mean(0)
        values[kind] = {"drop": per_amount[0] - moved, "moved": moved}
    return values


def moved_digit_indices(n_test: int, count: int) -> torch.Tensor:
    """Sorted indices of the `count` test images the moved digits are made from (all when count >= n_test)."""
    if count >= n_test:
        return torch.arange(n_test)
    return torch.randperm(n_test, generator=torch.Generator().manual_seed(ROBUSTNESS_SEED))[:count].sort().values


ROBUSTNESS_NAME = "robustness.json"
MOVED_PREDICTIONS_NAME = "moved_predictions.npz"  # the classes behind robustness.json, image by image


def run_robustness(
    out: Path, runs: list[dict], arrays, scale: Scale, log=print, device: str = "cpu"
) -> dict[str, dict]:
    """Shifted and rotated test accuracy of every run's final model, on `device` -> {run_dir: {"shift", "rotation"}}.

    Each run's numbers are kept in its directory (robustness.json), and the predicted classes they
    come from (moved_predictions.npz, as moved_predictions gives them: read them with
    `read_moved_predictions`); both are reused while the run's final epoch and the test images
    are the same, and made again when either is missing, damaged or of another key.
    """
    on = resolve_device(device)
    index = moved_digit_indices(len(arrays.test_labels), scale.test_images)
    images = torch.from_numpy(arrays.test_images)[index].contiguous().to(on)
    labels = torch.from_numpy(arrays.test_labels).long()[index]
    key = robustness_key(len(index))
    found, models = {}, {}
    for run in runs:
        run_dir = out / run["run_dir"]
        saved = _read_json(run_dir / ROBUSTNESS_NAME)
        run_key = {**key, "epoch": len(run["metrics"])}
        if saved and saved.get("key") == run_key and read_moved_predictions(run_dir, run_key) is not None:
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
            # as the runs train: a second thread gained nothing on a busy 2-core machine, and cost up to 2x
            torch.set_num_threads(1)
        try:
            predicted = moved_predictions(models, images)
        finally:
            torch.set_num_threads(threads)
        for run_dir, classes in predicted.items():
            run_key = {**key, "epoch": epochs[run_dir]}
            accuracy = moved_accuracy(classes, labels.numpy())
            atomic_write(
                out / run_dir / MOVED_PREDICTIONS_NAME,
                lambda f: np.savez_compressed(f, key=np.array(json.dumps(run_key)), **classes),
            )
            write_json(out / run_dir / ROBUSTNESS_NAME, {"key": run_key, "accuracy": accuracy})
            found[run_dir] = accuracy
    return found


def robustness_key(test_images: int) -> dict:
    """What the moved digits of a run's final model depend on, besides its epoch."""
    return {"test_images": test_images, "seed": ROBUSTNESS_SEED, "shifts": list(SHIFTS), "angles": list(ANGLES)}


def read_moved_predictions(run_dir: Path, key: dict) -> dict[str, np.ndarray] | None:
    """The classes that run_robustness kept in `run_dir` for `key` (robustness_key with the epoch), or None when
    they are missing, damaged or of another key."""
    saved = read_npz(Path(run_dir) / MOVED_PREDICTIONS_NAME)
    if saved is None or set(saved) != {"key", "shift", "rotation"} or saved["key"].shape != ():
        return None
    try:
        if json.loads(str(saved["key"])) != key:
            return None
    except ValueError:
        return None
    n = key["test_images"]
    if saved["shift"].shape != (len(SHIFTS), WAYS["shift"], n) or saved["rotation"].shape != (
        len(ANGLES),
        WAYS["rotation"],
        n,
    ):
        return None
    return {"shift": saved["shift"], "rotation": saved["rotation"]}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- speed, from recorded curves


def steps_to(metrics: list[dict], threshold: float, steps_per_epoch: int) -> tuple[int, float] | None:
    """(optimizer steps, training seconds) at the first evaluation whose validation accuracy reaches
    `threshold`, or None if none does. Only measured points count: nothing is drawn between two
    evaluations, or from an assumed starting accuracy, so the answer is always a step at which the
    model was evaluated."""
    seconds = 0.0
    for row in metrics:
        seconds += row["epoch_seconds"]
        if row["val_acc"] >= threshold:
            return row["epoch"] * steps_per_epoch, seconds
    return None


# ---------------------------------------------------------------- failed runs


AT_CHANCE = 0.02  # a run whose last validation accuracy is within this of chance (1 / classes) has failed


def run_failed(run: dict, chance: float) -> bool:
    """Whether a run failed: it stopped (its loss was not finite), or its loss is not finite, or its
    last validation accuracy is at chance, however often it was evaluated."""
    last = run["metrics"][-1]
    if "failed" in last:
        return True
    losses = [last.get("train_loss"), last.get("val_loss")]
    if any(loss is None or not math.isfinite(loss) for loss in losses):
        return True
    return last["val_acc"] <= chance + AT_CHANCE


# ---------------------------------------------------------------- tests and verdicts


@dataclass(frozen=True)
class ClaimTest:
    """One prediction of a claim, measured: the claim says `a` is higher than `b` (expect +1) or lower (-1).

    `a_values` and `b_values` are one number per seed ({seed: value}). When both have the same seeds
    the two configurations were trained with them (the same validation split, initialization and
    data order), so the difference is paired by seed; otherwise it is Welch's comparison of two groups.
    """

    key: str  # names the test in PRIMARY
    question: str  # what is compared, e.g. "test accuracy lost when the pixels are permuted"
    a: str
    b: str
    a_values: dict[int, float]
    b_values: dict[int, float]
    expect: int  # +1: the claim expects a > b; -1: a < b
    unit: str  # "points" (the values are fractions, shown in percentage points) or "steps"
    # Measured on `images` test images shared by every seed: the variance their choice adds to the mean
    # difference (image_level), added to the paired test's; 0 images: none added.
    image_variance: float = 0.0
    images: int = 0

    @property
    def scale(self) -> float:
        return 100.0 if self.unit == "points" else 1.0

    @property
    def difference(self) -> Difference:
        """a - b in `unit`, with its 95% confidence interval and p-value."""
        a = {seed: self.scale * v for seed, v in self.a_values.items()}
        b = {seed: self.scale * v for seed, v in self.b_values.items()}
        if set(a) == set(b):
            return paired_difference(a, b, self.image_variance)
        return welch_difference(list(a.values()), list(b.values()))

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "question": self.question,
            "a": self.a,
            "b": self.b,
            "a_stat": mean_std(list(self.a_values.values())),
            "b_stat": mean_std(list(self.b_values.values())),
            "expect": self.expect,
            "unit": self.unit,
            **self.difference.to_dict(),
            **({"images": self.images} if self.images else {}),
        }


# Each claim's primary test, chosen before the runs: the one comparison that decides its verdict.
# The claim's other tests are shown beside it as secondary evidence and never decide.
PRIMARY = {
    "spatial": "permuted-mlp",  # accuracy lost to permuted pixels: LeNet-5 against the MLP
    "parameters": "test-mlp",  # test accuracy: LeNet-5 against the MLP with about 10x its parameters
    # what all three regularizers add to LeNet-5: on the smallest subset against the largest, the same steps at each
    "limited": "gain-smallest-vs-largest",
    # optimizer steps to a validation accuracy, read at measured evaluations: every `speed_every` steps (the speed
    # experiment), paired by seed over the seeds whose runs both reached it
    "batch_norm": "steps",
    "dropout": "gap",  # train-validation gap: with dropout against without
    "augment": "test-lenet5",  # test accuracy: LeNet-5 with augmentation against without
}
# The primary test of a study without PRIMARY's: those run before it existed, whose limited-data subsets
# were trained for different steps (gain-smallest-vs-largest needs the same), or with a single subset.
PRIMARY_BEFORE = {"limited": "gain-smallest-vs-full"}
ALPHA = 0.05  # the family-wise error rate of the six primary tests, held by Holm's correction


def verdict_of(test: dict, corrected_p: float | None) -> str:
    """Supported when the corrected test rejects in the claim's direction, contradicted when it
    rejects the other way, not settled otherwise."""
    if corrected_p is None or corrected_p >= ALPHA:
        return NOT_SETTLED
    return SUPPORTED if test["difference"] * test["expect"] > 0 else CONTRADICTED


def primary_of(claim: dict) -> dict | None:
    """The claim's test that decides: PRIMARY's, or in a study without it (run before it existed), PRIMARY_BEFORE's."""
    tests = {t["key"]: t for t in claim["tests"]}
    key = PRIMARY[claim["claim"]]
    if key not in tests:
        key = PRIMARY_BEFORE.get(claim["claim"], key)
    return tests.get(key)


def decide(claims: list[dict]) -> list[dict]:
    """Each claim (its tests as dicts) with its primary test's Holm-corrected p-value and its verdict.
    The correction runs over the primary tests of all the claims here; secondary tests never decide."""
    primaries = [primary_of(c) for c in claims]
    corrected = holm([t["p"] if t else None for t in primaries])
    decided = []
    for claim, primary, p in zip(claims, primaries, corrected):
        tests = [{**t, "primary": t is primary} for t in claim["tests"]]
        for t in tests:
            if t["primary"]:
                t["holm_p"], t["verdict"] = p, verdict_of(t, p)
        decided.append({**claim, "tests": tests, "verdict": verdict_of(primary, p) if primary else NOT_SETTLED})
    return decided


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
    images: dict | None = None,
    measured: dict | None = None,
) -> dict:
    """results.json's "claims": every experiment's numbers, and the claims with their tests and verdicts.
    `images` is what `image_level` found (absent from older studies); `measured`: the speed experiment's
    (bnspeed.run_speed), when it ran."""
    labels = {k: v["label"] for k, v in results["variants"].items()}
    batch_size, epochs = results["config"]["batch_size"], results["epochs"]
    main = {name: [r for r in results["runs"] if r["variant"] == name] for name in results["variants"]}
    spec = {a.name: a for a in arms}
    claims: dict = {"image_level": images} if images else {}

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
        claims["speed"] = {"steps_per_epoch": -(-n_train // batch_size)}
        if measured is not None:
            claims["speed"]["measured"] = measured
    if any(a.experiment == "rates" for a in arms):
        settings = dict(next(a for a in arms if a.experiment == "rates").settings)
        claims["rates"] = {
            "rates": list(RATES),
            "train_size": settings["train_size"] or n_train,
            "passes": settings["passes"],
            "runs": runs_of("rates"),
        }
    return judge(results, claims, 1 / num_classes)


def judge(results: dict, claims: dict, chance: float) -> dict:
    """The analysis that reads only recorded metrics: batch norm's speed, the learning-rate test's
    failed runs, and every claim's tests and verdict. `claims` is results.json's "claims" with the
    experiments' runs; a study's committed results.json can be judged again with new rules, no training."""
    main = {name: [r for r in results["runs"] if r["variant"] == name] for name in results["variants"]}
    labels = {k: v["label"] for k, v in results["variants"].items()}
    claims = dict(claims)
    if "speed" in claims:
        speed = speed_summary(main, claims["speed"]["steps_per_epoch"])
        if "measured" in claims["speed"]:
            speed["measured"] = measured_summary(claims["speed"]["measured"])
        claims["speed"] = speed
    if "rates" in claims:
        claims["rates"] = {**claims["rates"], **rates_summary(claims["rates"]["runs"], chance)}
    tests = verdicts(main, labels, claims)
    claims["verdicts"] = decide([{**c, "tests": [t.to_dict() for t in c["tests"]]} for c in tests])
    return claims


def rejudge(results: dict, num_classes: int = 10) -> dict:
    """A committed results.json's "claims" judged again by this module's rules (MNIST and
    Fashion-MNIST both have 10 classes); its timing is kept."""
    return judge(results, results["claims"], 1 / num_classes)


def final(key: str):
    return lambda run: run["metrics"][-1][key]


def test_acc(runs: list[dict]) -> dict:
    return mean_std([r["metrics"][-1]["test_acc"] for r in runs])


def differences(a: list[dict], b: list[dict], value) -> dict:
    """mean_std of value(a) - value(b) over the seeds both have: two groups of runs, matched seed by seed."""
    va, vb = {r["seed"]: value(r) for r in a}, {r["seed"]: value(r) for r in b}
    seeds = sorted(set(va) & set(vb))
    return mean_std([va[s] - vb[s] for s in seeds])


def by_seed(runs: list[dict], value) -> dict[int, float]:
    """{seed: value(run)} for a group of runs."""
    return {r["seed"]: value(r) for r in runs}


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
    """Test accuracy per arm and training-set size, the full split being the arms' own runs (with
    their own steps, `epochs` passes); at the smallest size, each regularizer alone ("alone")."""
    sizes = sorted({dict(a.settings)["train_size"] for a in arms if a.experiment == "limited"})
    steps = [subset_passes(s, scale.subset_steps, batch_size) * -(-s // batch_size) for s in sizes]
    runs = {
        base: [*(runs_where("limited", base, train_size=s) for s in sizes), main[base]]
        for base in EXPERIMENT_ARMS["limited"]
    }
    plain = runs["lenet5"][0]
    alone = [a.base for a in arms if a.experiment == "limited" and a.base in ALONE]
    return {
        "sizes": [*sizes, n_train],
        "steps": [*steps, epochs * -(-n_train // batch_size)],
        "subset_steps": scale.subset_steps,
        "epochs": epochs,
        "arms": {base: {"label": labels[base], "test_acc": [test_acc(rs) for rs in runs[base]]} for base in runs},
        "gain": [
            differences(all_three, plain, final("test_acc"))
            for all_three, plain in zip(runs["lenet5-all"], runs["lenet5"])
        ],
        "alone": {
            base: {
                "label": labels[base],
                "test_acc": test_acc(runs_where("limited", base)),
                "gain": differences(runs_where("limited", base), plain, final("test_acc")),
            }
            for base in alone
        },
    }


SPEED_ARMS = ("lenet5", "lenet5-bn")


def speed_threshold(main: dict[str, list[dict]]) -> float:
    """A validation accuracy every run of both arms reaches: the lowest final one, less THRESHOLD_BELOW."""
    return min(r["metrics"][-1]["val_acc"] for a in SPEED_ARMS for r in main[a]) - THRESHOLD_BELOW


def speed_summary(main: dict[str, list[dict]], steps_per_epoch: int) -> dict:
    """Steps and training seconds to a validation accuracy that every run of both arms reaches,
    read at the evaluations (one after each epoch). The seconds are shown, never tested: they
    move with whatever else the machine runs."""
    threshold = speed_threshold(main)
    reached = {a: {r["seed"]: steps_to(r["metrics"], threshold, steps_per_epoch) for r in main[a]} for a in SPEED_ARMS}
    return {
        "threshold": threshold,
        "below_lowest_final": THRESHOLD_BELOW,
        "steps_per_epoch": steps_per_epoch,
        "steps": {a: mean_std([s for s, _ in reached[a].values()]) for a in SPEED_ARMS},
        "seconds": {a: mean_std([t for _, t in reached[a].values()]) for a in SPEED_ARMS},
        "seconds_per_step": {
            a: mean_std([m["epoch_seconds"] / steps_per_epoch for r in main[a] for m in r["metrics"]])
            for a in SPEED_ARMS
        },
    }


def measured_summary(measured: dict) -> dict:
    """The speed experiment's runs (bnspeed.run_speed) with, per arm, the steps to its threshold
    (mean_std over the runs that reached it), how many did not, and the median seconds per step over
    all the timed turns of all its runs."""
    runs = measured["runs"]
    return {
        **measured,
        "steps": {a: mean_std([r["reached"] for r in rs if r["reached"] is not None]) for a, rs in runs.items()},
        "not_reached": {a: sum(r["reached"] is None for r in rs) for a, rs in runs.items()},
        "seconds_per_step": {
            a: float(np.median([t for r in rs for t in r["seconds_per_step"]])) for a, rs in runs.items()
        },
    }


def rates_summary(runs: list[dict], chance: float) -> dict:
    """Validation accuracy of each arm at each rate, and how many of its runs failed (`run_failed`)."""
    arms = {}
    for base in EXPERIMENT_ARMS["rates"]:
        at = [[r for r in runs if r["base"] == base and r["settings"]["lr"] == lr] for lr in RATES]
        arms[base] = {
            "val_acc": [mean_std([r["metrics"][-1]["val_acc"] for r in rs]) for rs in at],
            "failed": [sum(run_failed(r, chance) for r in rs) for rs in at],
        }
    return {"arms": arms, "chance": chance, "at_chance_within": AT_CHANCE}


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
    """Each claim with the tests the study has numbers for (its primary test, PRIMARY, among them);
    a claim without any is left out. The verdicts are `decide`'s."""
    tests: dict[str, list[ClaimTest]] = {claim: [] for claim in CLAIMS}
    test_acc_of = final("test_acc")
    image_level = claims.get("image_level", {})

    def over_images(name: str) -> dict:
        """The images' sampling variance of test `name` ("claim/key"), where image_level measured it."""
        found = image_level.get(name, {})
        return {"image_variance": found["image_variance"], "images": found["images"]} if "images" in found else {}

    if "permuted" in claims:
        permuted = {
            base: [r for r in claims["permuted"]["runs"] if r["base"] == base] for base in EXPERIMENT_ARMS["permuted"]
        }
        drop = {
            base: {
                s: v - by_seed(permuted[base], test_acc_of).get(s, math.nan)
                for s, v in by_seed(main[base], test_acc_of).items()
            }
            for base in permuted
        }
        for mlp in ("mlp", "mlp-small"):
            tests["spatial"].append(
                ClaimTest(
                    f"permuted-{mlp}",
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
        per_run = claims["robustness"]["per_run"]
        for kind in ("shift", "rotation"):
            drop = {
                a: by_seed(
                    main[a], lambda r: per_run[kind][r["run_dir"]][0] - float(np.mean(per_run[kind][r["run_dir"]][1:]))
                )
                for a in ("lenet5", "mlp")
            }
            tests["spatial"].append(
                ClaimTest(
                    f"moved-{kind}",
                    f"test accuracy lost on digits {MOVED[kind]} (mean)",
                    labels["lenet5"],
                    labels["mlp"],
                    drop["lenet5"],
                    drop["mlp"],
                    -1,
                    "points",
                    **over_images(f"spatial/moved-{kind}"),
                )
            )
    for mlp in ("mlp", "mlp-small"):
        if "lenet5" in main and mlp in main:
            tests["parameters"].append(
                ClaimTest(
                    f"test-{mlp}",
                    "test accuracy",
                    labels["lenet5"],
                    labels[mlp],
                    by_seed(main["lenet5"], test_acc_of),
                    by_seed(main[mlp], test_acc_of),
                    +1,
                    "points",
                )
            )
    if "limited" in claims:
        lim = claims["limited"]
        smallest, full = lim["sizes"][0], lim["sizes"][-1]
        at = {
            a: [r for r in lim["runs"] if r["base"] == a and r["settings"]["train_size"] == smallest]
            for a in ("lenet5", "lenet5-all")
        }
        small = {a: by_seed(at[a], test_acc_of) for a in at}
        whole = {a: by_seed(main[a], test_acc_of) for a in at}
        gain_small, gain_full = (
            {s: v - by[s] for s, v in with_all.items() if s in by}
            for with_all, by in ((small["lenet5-all"], small["lenet5"]), (whole["lenet5-all"], whole["lenet5"]))
        )
        if "subset_steps" in lim and len(lim["sizes"]) > 2:  # two subsets or more, trained for the same steps
            largest = lim["sizes"][-2]
            at_largest = {
                a: by_seed(
                    [r for r in lim["runs"] if r["base"] == a and r["settings"]["train_size"] == largest], test_acc_of
                )
                for a in at
            }
            gain_largest = {
                s: v - at_largest["lenet5"][s] for s, v in at_largest["lenet5-all"].items() if s in at_largest["lenet5"]
            }
            tests["limited"].append(
                ClaimTest(
                    "gain-smallest-vs-largest",
                    f"test accuracy that all three regularizers add to {labels['lenet5']}, "
                    f"{lim['subset_steps']:,} steps at each size",
                    f"on {smallest:,} training images",
                    f"on {largest:,}",
                    gain_small,
                    gain_largest,
                    +1,
                    "points",
                )
            )
        tests["limited"] += [
            ClaimTest(
                "gain-smallest-vs-full",
                f"test accuracy that all three regularizers add to {labels['lenet5']}",
                f"on {smallest:,} training images",
                f"on all {full:,}",
                gain_small,
                gain_full,
                +1,
                "points",
            ),
            ClaimTest(
                "smallest",
                f"test accuracy on {smallest:,} training images",
                labels["lenet5-all"],
                labels["lenet5"],
                small["lenet5-all"],
                small["lenet5"],
                +1,
                "points",
            ),
        ]
        for base in ALONE:
            runs = [r for r in lim["runs"] if r["base"] == base and r["settings"]["train_size"] == smallest]
            if runs:
                tests["limited"].append(
                    ClaimTest(
                        f"smallest-{base}",
                        f"test accuracy on {smallest:,} training images",
                        labels[base],
                        labels["lenet5"],
                        by_seed(runs, test_acc_of),
                        small["lenet5"],
                        +1,
                        "points",
                    )
                )
    if "speed" in claims and "measured" in claims["speed"]:
        m = claims["speed"]["measured"]
        steps = {a: {r["seed"]: r["reached"] for r in m["runs"][a]} for a in SPEED_ARMS}
        both = [s for s in steps["lenet5"] if steps["lenet5"][s] is not None and steps["lenet5-bn"].get(s) is not None]
        tests["batch_norm"].append(
            ClaimTest(
                "steps",
                f"optimizer steps to {100 * m['threshold']:.2f}% validation accuracy, measured every {m['every']} "
                f"steps on {m['val_images']:,} validation images",
                labels["lenet5-bn"],
                labels["lenet5"],
                {seed: steps["lenet5-bn"][seed] for seed in both},
                {seed: steps["lenet5"][seed] for seed in both},
                -1,
                "steps",
            )
        )
    elif "speed" in claims:  # studies before the speed experiment: at the arms' evaluations, one an epoch
        s = claims["speed"]
        steps = {
            a: by_seed(main[a], lambda r: steps_to(r["metrics"], s["threshold"], s["steps_per_epoch"])[0])
            for a in SPEED_ARMS
        }
        tests["batch_norm"].append(
            ClaimTest(
                "steps",
                f"optimizer steps to {100 * s['threshold']:.2f}% validation accuracy",
                labels["lenet5-bn"],
                labels["lenet5"],
                steps["lenet5-bn"],
                steps["lenet5"],
                -1,
                "steps",
            )
        )
    if "rates" in claims:
        r = claims["rates"]
        for lr in r["rates"]:
            val = {
                a: by_seed([x for x in r["runs"] if x["base"] == a and x["settings"]["lr"] == lr], final("val_acc"))
                for a in EXPERIMENT_ARMS["rates"]
            }
            tests["batch_norm"].append(
                ClaimTest(
                    f"rate-{lr:g}",
                    f"validation accuracy after {r['passes']} passes over {r['train_size']:,} images at lr {lr:g}",
                    labels["lenet5-bn"],
                    labels["lenet5"],
                    val["lenet5-bn"],
                    val["lenet5"],
                    +1,
                    "points",
                )
            )
    if "lenet5" in main and "lenet5-dropout" in main:
        gap = {
            a: by_seed(main[a], lambda r: r["metrics"][-1]["train_acc"] - r["metrics"][-1]["val_acc"])
            for a in ("lenet5", "lenet5-dropout")
        }
        tests["dropout"].append(
            ClaimTest(
                "gap",
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
                    f"test-{plain}",
                    "test accuracy",
                    labels[aug],
                    labels[plain],
                    by_seed(main[aug], test_acc_of),
                    by_seed(main[plain], test_acc_of),
                    +1,
                    "points",
                )
            )
    if "robustness" in claims and "lenet5-augment" in main and "lenet5" in main:
        per_run = claims["robustness"]["per_run"]
        for kind in ("shift", "rotation"):
            moved = {
                a: by_seed(main[a], lambda r: float(np.mean(per_run[kind][r["run_dir"]][1:])))
                for a in ("lenet5-augment", "lenet5")
            }
            tests["augment"].append(
                ClaimTest(
                    f"moved-{kind}",
                    f"test accuracy on digits {MOVED[kind]} (mean)",
                    labels["lenet5-augment"],
                    labels["lenet5"],
                    moved["lenet5-augment"],
                    moved["lenet5"],
                    +1,
                    "points",
                    **over_images(f"augment/moved-{kind}"),
                )
            )
    return [{"claim": c, "quote": CLAIMS[c], "tests": ts} for c, ts in tests.items() if ts]
