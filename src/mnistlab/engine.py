"""The training engine: configuration, data on the device, `train_one_epoch`, `evaluate`, `fit`.

The whole dataset is one uint8 tensor on the device; a batch is `images[idx]` for a slice
of a seeded permutation; augmentation and normalization act on whole batches.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mnistlab.augment import affine_draws, random_affine
from mnistlab.checkpoint import CHECKPOINT_NAME, save_checkpoint
from mnistlab.data import check_arrays
from mnistlab.datasets import DATASET, DATASETS
from mnistlab.errors import UserError
from mnistlab.fileio import write_json, write_text
from mnistlab.frozen import FrozenFirstBlock
from mnistlab.graphs import StepGraphs, eager_step, step_graphs
from mnistlab.models import MODELS, check_model_name, create_model
from mnistlab.options import DEVICE, DEVICES, option
from mnistlab.runlock import locks_run_directory
from mnistlab.speedups import speed_up
from mnistlab.tail_step import HandTail

MEAN, STD = 0.1307, 0.3081
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "cosine", "onecycle", "linear")
METRIC_COLUMNS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
    "lr", "epoch_seconds", "samples_per_second",
)  # fmt: skip


MAX_SEED = 2**63 - 1  # torch's generators take any 64-bit seed; a non-negative int64 suits every backend

# What each field of TrainConfig holds, checked first, so that a hand-edited config or checkpoint
# gets a sentence and not a TypeError from a comparison.
_FIELD_TYPES = {
    "model": str, "dataset": str, "epochs": int, "batch_size": int, "optimizer": str, "lr": float,
    "momentum": float, "weight_decay": float, "schedule": str, "augment": bool, "dropout": float,
    "seed": int, "val_size": int, "device": str, "eval_batch_size": int, "amp": bool, "nesterov": bool,
    "label_smoothing": float, "train_eval_size": int, "permute": int, "train_size": int, "passes": int,
    "freeze_first_at": float,
}  # fmt: skip
NUM_PIXELS = 28 * 28
_KIND_NAMES = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}


def _is_a(value, kind: type) -> bool:
    if isinstance(value, bool):  # bool is an int to Python, never a count or a rate here
        return kind is bool
    return isinstance(value, (int, float) if kind is float else kind)


@dataclass(frozen=True)
class Segment:
    """A stretch of a run's learning-rate schedule: `epochs` epochs that go from `lr` by `schedule`."""

    epochs: int
    lr: float
    schedule: str

    def __post_init__(self):
        if not _is_a(self.epochs, int) or self.epochs <= 0:
            raise UserError(f"a schedule segment's epochs must be a positive whole number, got {self.epochs!r}")
        if not _is_a(self.lr, float) or not math.isfinite(self.lr) or self.lr <= 0:
            raise UserError(f"a schedule segment's learning rate must be a finite number > 0, got {self.lr!r}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"a schedule segment's schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run. Printed at the start, saved with the checkpoint.

    Each setting's help is that of its `mnistlab train` flag.
    """

    model: str = option("lenet5", f"the model: one of {', '.join(MODELS)}")
    dataset: str = DATASET.field()
    epochs: int = option(10, "number of epochs")
    batch_size: int = option(64, "training batch size")
    optimizer: str = option("sgd", "optimizer", choices=OPTIMIZERS)
    lr: float = option(0.01, "peak learning rate")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(0.0, "weight decay")
    schedule: str = option("cosine", "learning-rate schedule over all steps", choices=SCHEDULES)
    augment: bool = option(False, "random affine augmentation (rotate ±10°, shift ±2 px, scale 0.9-1.1)")
    dropout: float | None = option(None, "dropout probability after hidden FC layers", default_text="the model's own")
    seed: int = option(0, "seed for initialization, data order, split and augmentation")
    val_size: int = option(5000, "training images held out for validation")
    device: str = DEVICE.field()
    eval_batch_size: int = 1000
    amp: bool = option(False, "bf16 autocast for training and evaluation (meant for GPUs)")
    # A run extended after it finished (`train --resume DIR --extend N`): every segment of its
    # schedule, the first being (the original epochs, lr, schedule); `epochs` is then their sum.
    # Empty for a run trained in one go, whose dict then has no such key, as before extensions.
    segments: tuple[Segment, ...] = ()
    nesterov: bool = option(False, "Nesterov momentum (with --optimizer sgd and --momentum > 0)")
    label_smoothing: float = option(0.0, "label smoothing of the training loss (evaluation measures plain cross-entropy)")
    # The per-epoch training metrics are measured on a fixed subset of the training split, this many
    # images chosen by a permutation seeded with `seed` (0: all of it); validation and test are whole.
    train_eval_size: int = option(10_000, "training images, the same every epoch, on which each epoch's training "
                                  "loss and accuracy are measured (0: the whole training split)")
    # Seed of one fixed permutation of the 784 pixel positions, applied to every image of every
    # split (`pixel_permutation`); None: the images as they are.
    permute: int | None = None
    # Train on a class-balanced subset of the training split of this many images, drawn with the
    # run's seed after the validation split (`split_dataset`); 0: the whole training split.
    train_size: int = 0
    # Passes over the training images in an epoch, each in a fresh random order; an epoch ends
    # with one evaluation and one checkpoint. More than 1 gives a small training set its steps
    # without an evaluation after every pass.
    passes: int = 1
    # FreezeOut (Brock et al., 2017) for the first layer alone: after this fraction of the training
    # steps its parameters stop learning, and the backward pass stops before it. Without augmentation,
    # LeNet-5's first block (convolution, pool, ReLU) is then computed once per image (frozen.py).
    freeze_first_at: float = option(1.0, "fraction of the training steps after which the model's first layer stops "
                                     "learning; each later step skips its gradient, and LeNet-5's backward pass "
                                     "through the first convolution and, without --augment, its forward pass, "
                                     "computed once for every image (1: it learns throughout)")

    def __post_init__(self):
        for name, kind in _FIELD_TYPES.items():
            value = getattr(self, name)
            if value is None and name in ("dropout", "permute"):
                continue
            if not _is_a(value, kind):
                raise UserError(f"{name.replace('_', '-')} must be {_KIND_NAMES[kind]}, got {value!r}")
            if kind is float and not math.isfinite(value):
                raise UserError(f"{name.replace('_', '-')} must be a finite number, got {value}")
        check_model_name(self.model)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UserError(f"learning rate must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise UserError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise UserError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"seed must be in [0, 2**63-1], got {self.seed}")
        if self.val_size < 0:
            raise UserError(f"val-size must be >= 0, got {self.val_size}")
        if self.train_eval_size < 0:
            raise UserError(f"train-eval-size must be >= 0 (0: the whole training split), got {self.train_eval_size}")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise UserError(f"nesterov needs the sgd optimizer with momentum > 0, got {self.optimizer} with momentum {self.momentum}")
        if self.permute is not None and not 0 <= self.permute <= MAX_SEED:
            raise UserError(f"permute (a permutation's seed) must be in [0, 2**63-1], got {self.permute}")
        if self.train_size < 0:
            raise UserError(f"train-size must be >= 0 (0: the whole training split), got {self.train_size}")
        if self.passes <= 0:
            raise UserError(f"passes must be positive, got {self.passes}")
        if not 0 <= self.freeze_first_at <= 1:
            raise UserError(f"freeze-first-at must be in [0, 1] (a fraction of the training steps), got {self.freeze_first_at}")
        choices = (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("device", DEVICES), ("dataset", DATASETS))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise UserError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.segments:
            first = self.segments[0]
            if (
                not isinstance(self.segments, tuple) or len(self.segments) < 2
                or not all(isinstance(seg, Segment) for seg in self.segments)
                or (first.lr, first.schedule) != (self.lr, self.schedule)
                or sum(seg.epochs for seg in self.segments) != self.epochs
            ):  # fmt: skip
                raise UserError(
                    f"segments must be two or more Segments, the first with the run's lr and schedule, "
                    f"their epochs adding up to the run's {self.epochs}; got {self.segments!r}"
                )

    @property
    def model_kwargs(self) -> dict:
        return {} if self.dropout is None else {"dropout": self.dropout}

    def schedule_segments(self) -> tuple[Segment, ...]:
        """The run's schedule as segments: one for a run trained in one go."""
        return self.segments or (Segment(self.epochs, self.lr, self.schedule),)

    def extended(self, epochs: int, lr: float) -> TrainConfig:
        """This run with `epochs` more epochs, a new segment from `lr`: a cosine decay (constant for schedule none)."""
        added = Segment(epochs, lr, "none" if self.schedule == "none" else "cosine")
        return replace(self, epochs=self.epochs + epochs, segments=(*self.schedule_segments(), added))

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.segments:
            d["segments"] = [asdict(seg) for seg in self.segments]
        else:
            del d["segments"]  # a run never extended keeps the dict it always had (compare reuses runs by it)
        for name, default in OMITTED_AT_DEFAULT.items():  # likewise for the fields added since
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        if not isinstance(d, dict):
            raise UserError(f"a run configuration is a mapping of settings, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs.setdefault("train_eval_size", 0)  # a run saved before the field measured on its whole training split
        if "segments" in kwargs:
            segments = kwargs["segments"]
            if not isinstance(segments, list) or not all(isinstance(seg, dict) and set(seg) == {"epochs", "lr", "schedule"} for seg in segments):
                raise UserError(f"segments must be a list of {{epochs, lr, schedule}}, got {segments!r}")
            kwargs["segments"] = tuple(Segment(**seg) for seg in segments)
        return cls(**kwargs)


# Fields added after runs had been saved without them: at these values to_dict leaves them out,
# so that a run's dict, and compare's reuse of finished runs, stay as they were. Not
# train_eval_size: the runs saved before it measured their training metrics on the whole
# training split (from_dict reads them so), and a study does not reuse them as today's runs.
OMITTED_AT_DEFAULT = {"nesterov": False, "label_smoothing": 0.0, "permute": None, "train_size": 0, "passes": 1,
                      "freeze_first_at": 1.0}  # fmt: skip


# Named presets: overrides of TrainConfig's defaults (`mnistlab train --recipe NAME`, `mnistlab bench --recipe NAME`).
# `fast` trains LeNet-5 to about 99% test accuracy in 2 epochs, its first convolution frozen
# after 20% of the steps, chosen on validation accuracy alone; the searches and their figures:
# benchmarks/recipes.md, its timings: benchmarks/RESULTS.md.
RECIPES: dict[str, dict] = {
    "default": {},
    "fast": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.95, "nesterov": True, "weight_decay": 5e-4,
             "label_smoothing": 0.1, "schedule": "linear", "batch_size": 64, "epochs": 2, "freeze_first_at": 0.2},  # fmt: skip
}


def recipe_config(name: str, **overrides) -> TrainConfig:
    """TrainConfig for a named recipe; `overrides` (e.g. seed, device) win over the recipe."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return TrainConfig(**{**RECIPES[name], **overrides})


@dataclass
class Splits:
    """Train / validation / test tensors on one device: images uint8 (N, 28, 28), labels int64."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    def items(self) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        yield "train", self.train_images, self.train_labels
        yield "val", self.val_images, self.val_labels
        yield "test", self.test_images, self.test_labels


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available to this torch build")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: no MPS device is available")
    return torch.device(name)


MAX_THREADS = 1024  # a bound, so that a typo cannot ask torch for a million threads


def set_threads(threads: int | None) -> None:
    """Set torch's CPU thread count from a `--threads` flag; None keeps torch's choice."""
    if threads is None:
        return
    if threads <= 0:
        raise UserError(f"threads must be positive, got {threads}")
    if threads > MAX_THREADS:
        raise UserError(f"threads must be at most {MAX_THREADS}, got {threads}")
    torch.set_num_threads(threads)


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (a process pool's workers, once it has closed).

    Unlike wall time it hardly moves with what else the machine is running, so it says what a
    part of a study costs."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def split_dataset(
    arrays, val_size: int, seed: int, device: torch.device, train_size: int = 0, permute: int | None = None
) -> Splits:
    """Hold out `val_size` training images, chosen by a permutation seeded with `seed`; move all to `device`.

    `train_size` > 0 keeps a class-balanced subset of that many training images, drawn after the
    split by the same generator, so a seed gives the same validation images with or without it.
    `permute` reorders the pixels of every image of every split by `pixel_permutation(permute)`.
    """
    n = len(arrays.train_labels)
    if val_size >= n:
        raise UserError(f"val-size {val_size} leaves no training images (the training set has {n})")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    train_idx, val_idx = order[val_size:].sort().values, order[:val_size].sort().values
    images = torch.from_numpy(arrays.train_images)
    labels = torch.from_numpy(arrays.train_labels).long()
    if train_size:
        train_idx = train_idx[balanced_subset(labels[train_idx], train_size, generator)]
    pixels = None if permute is None else pixel_permutation(permute)

    def put(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous().to(device)

    def put_images(t: torch.Tensor) -> torch.Tensor:
        return put(t if pixels is None else t.flatten(1)[:, pixels].view(t.shape))

    return Splits(
        put_images(images[train_idx]), put(labels[train_idx]),
        put_images(images[val_idx]), put(labels[val_idx]),
        put_images(torch.from_numpy(arrays.test_images)), put(torch.from_numpy(arrays.test_labels).long()),
    )  # fmt: skip


def pixel_permutation(seed: int) -> torch.Tensor:
    """A fixed order of the 784 pixel positions: image.flatten()[perm] is the permuted image."""
    return torch.randperm(NUM_PIXELS, generator=torch.Generator().manual_seed(seed))


def balanced_subset(labels: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Sorted indices of `size` of `labels`, as many of each class as can be (the first classes get
    the remainder), drawn at random by `generator`."""
    classes = int(labels.max()) + 1
    if size > len(labels):
        raise UserError(f"train-size {size} is more than the {len(labels)} images of the training split")
    chosen = []
    for c in range(classes):
        members = torch.nonzero(labels == c).flatten()
        want = size // classes + (c < size % classes)
        if want > len(members):
            raise UserError(f"train-size {size} needs {want} images of class {c}; the training split has {len(members)}")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:want]])
    return torch.cat(chosen).sort().values


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) or float in [0, 1] (N, 1, 28, 28) -> standardized float (N, 1, 28, 28).

    The one place where MNIST's mean and standard deviation are applied.
    """
    if images.dtype == torch.uint8:
        # A fresh tensor, so in place: the same arithmetic as below without two more allocations.
        return images.unsqueeze(1).float().div_(255).sub_(MEAN).div_(STD)
    return (images - MEAN) / STD


def batch_inputs(images: torch.Tensor, draws: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 images -> model input; with `draws` (`affine_draws`, a row per image), randomly transformed."""
    if draws is None:
        return normalize(images)
    return normalize(random_affine(images.unsqueeze(1).float().div_(255), draws))


def epoch_draws(config: TrainConfig, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor | None:
    """The augmentation draws of an epoch of `config.passes` passes over `n` images, a row per image in the order
    of its steps, on `device`; None without augmentation.

    Drawn at the start of the epoch, after its orders, the rows are those that drawing batch by
    batch would give (`affine_draws`), and reach the GPU in one copy.
    """
    if not config.augment:
        return None
    return affine_draws(config.passes * n, generator).to(device, non_blocking=True)


def get_lr(step: int, total_steps: int, base_lr: float, schedule: str) -> float:
    """The learning rate at optimizer step `step` (0-based) of `total_steps`."""
    progress = step / max(1, total_steps)
    if schedule == "none":
        return base_lr
    if schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * progress))
    # onecycle: a linear warm-up from base_lr/25 over the first 30%, then cosine to ~0.
    # linear: the same warm-up over the first 20%, then a straight line to 0 at the end.
    warmup = 0.3 if schedule == "onecycle" else 0.2
    if progress < warmup:
        return base_lr * (0.04 + 0.96 * progress / warmup)
    if schedule == "linear":
        return base_lr * (1 - progress) / (1 - warmup)
    return base_lr * 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup)))


def config_lr(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of `config` at optimizer step `step` (0-based) of `total_steps` over all its epochs.

    A run trained in one go follows `get_lr` over all its steps; an extended run follows each
    segment's schedule over that segment's steps.
    """
    if not config.segments:
        return get_lr(step, total_steps, config.lr, config.schedule)
    start = epochs_before = 0
    for seg in config.segments[:-1]:
        epochs_before += seg.epochs
        end = epochs_before * total_steps // config.epochs
        if step < end:
            return get_lr(step - start, end - start, seg.lr, seg.schedule)
        start = end
    last = config.segments[-1]
    return get_lr(step - start, total_steps - start, last.lr, last.schedule)


class TrainingFailed(UserError):
    """A run whose loss became NaN or infinite, or whose accuracy stays at chance: more epochs will not help.

    `history` holds the metrics of every epoch it trained, the failed one last (not saved to disk).
    """

    def __init__(self, message: str, history: list[dict] | None = None):
        super().__init__(message)
        self.history = history or []

    def metrics(self) -> list[dict]:
        """`history` as a result to keep: the failed epoch marked with the message ("failed"), and a
        number that is not finite (the loss) as None, which JSON can hold."""
        rows = [*self.history[:-1], {**self.history[-1], "failed": str(self)}] if self.history else []
        return [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()} for row in rows]


CHANCE_MIN_STEPS = 500


def training_failure(history: list[dict], steps: int, num_classes: int) -> str | None:
    """Why a run with these metrics (`steps` optimizer steps so far) should stop, or None while it learns.

    "Stays at chance", stated conservatively: a training accuracy of at most 1.2 / num_classes at
    the end of this epoch and the one before, with at least CHANCE_MIN_STEPS optimizer steps taken.
    Always answering the most frequent class scores 11.2% on MNIST's training split, which is where
    a run whose rate is far too high stays (LeNet-5 at lr 0.3 or 1); the default run is near 98%
    after one epoch (860 steps), and even a rate 100 times too small (lr 1e-4) reaches 14% in one
    epoch and 15% in two. Short runs (a test's few dozen steps) are never judged at all.
    """
    last = history[-1]
    if not math.isfinite(last["train_loss"]):
        return f"the training loss is {last['train_loss']}"
    at_chance = [row["train_acc"] <= 1.2 / num_classes for row in history[-2:]]
    if steps >= CHANCE_MIN_STEPS and len(at_chance) == 2 and all(at_chance):
        return (f"the training accuracy stays at chance ({100 * last['train_acc']:.1f}% with "
                f"{num_classes} classes) after {steps} steps")  # fmt: skip
    return None


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params, lr, wd = list(model.parameters()), config.lr, config.weight_decay
    if config.optimizer == "sgd":
        # foreach (CUDA's default already): the per-parameter loop's arithmetic, to the bit, in one call per
        # operation for all the parameters; a LeNet-5 step takes 0.04 ms less on a 2-core CPU
        foreach = params[0].device.type in ("cpu", "cuda") if params else None
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=wd, nesterov=config.nesterov, foreach=foreach)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` on `device`, with the faster layers of speedups.py, ready to train or evaluate."""
    model = speed_up(model.to(device))
    # channels_last makes the small convolutions of LeNet-5 markedly faster on CPU.
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)
    return model


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    first_step: int,
    total_steps: int,
    progress: Callable[[Iterator], Iterator] = iter,
    frozen: FrozenFirstBlock | None = None,
    graphs: StepGraphs | None = None,
) -> int:
    """`config.passes` passes over `images`, each in a fresh random order; returns the number of optimizer steps taken.

    Once the first layer has frozen (`freeze_first_at`), a step starts from `frozen`'s outputs of
    the first block where it has them: pass the same `frozen` to every epoch of a run, or each
    epoch computes them anew. With `graphs` (graphs.py, on a GPU), each full batch's step is
    replayed from a CUDA graph; pass the same `graphs` to every epoch of a run.
    """
    model.train()
    n = len(labels)
    orders = [torch.randperm(n, generator=generator).to(images.device, non_blocking=True) for _ in range(config.passes)]
    augmentation = epoch_draws(config, n, generator, images.device)
    batches = [(order, p * n, start) for p, order in enumerate(orders) for start in range(0, n, config.batch_size)]
    first_layer = list(first_layer_parameters(model)) if config.freeze_first_at < 1 else []  # it learns throughout
    if first_layer and frozen is None:
        frozen = frozen_first_block(model, images, config)
    # after the freeze, on a CPU: the tail's gradients without autograd, the same to the bit
    by_hand = HandTail.of(frozen.tail) if frozen is not None and images.device.type == "cpu" else None
    for i, (order, offset, start) in enumerate(progress(batches)):
        lr = config_lr(config, first_step + i, total_steps)
        learns = first_layer_learns(config, first_step + i, total_steps)
        for param in first_layer:
            param.requires_grad_(learns)  # frozen: no gradient, so the optimizer leaves it as it is
        idx = order[start : start + config.batch_size]  # index_select: images[idx]'s rows, in half the time on CPU
        inputs = (idx,) if augmentation is None else (idx, augmentation[offset + start : offset + start + len(idx)])

        def loss_of(idx: torch.Tensor, draws: torch.Tensor | None = None, learns: bool = learns) -> torch.Tensor:
            if learns or frozen is None:
                logits = model(batch_inputs(images.index_select(0, idx), draws))
            else:
                logits = frozen.tail(frozen.inputs(idx))
            return F.cross_entropy(logits, labels.index_select(0, idx), label_smoothing=config.label_smoothing)

        if graphs is not None and len(idx) == config.batch_size:
            graphs.step(learns, loss_of, inputs, lr)
            continue
        if by_hand is not None and not learns:
            eager_step(optimizer, lambda: by_hand.gradients(frozen.inputs(idx), labels.index_select(0, idx), config.label_smoothing), lr)
            continue
        with autocast(images.device, config.amp):
            loss = loss_of(*inputs)
        eager_step(optimizer, loss.backward, lr)
    return len(batches)


def first_layer_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The parameters of the first module, in definition order, that has parameters of its own."""
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own:
            return iter(own)
    return iter(())


def frozen_first_block(model: nn.Module, images: torch.Tensor, config: TrainConfig) -> FrozenFirstBlock | None:
    """The first block's outputs over `images`, computed once the first layer freezes, where they can be.

    None when the first layer learns throughout, with augmentation (each step draws new images),
    with autocast (the block would run in another precision), and for a model whose first block
    is not LeNet-5's or changes with the batch (batch norm).
    """
    if config.freeze_first_at == 1 or config.augment or config.amp or not FrozenFirstBlock.fits(model):
        return None
    return FrozenFirstBlock(model, images, normalize, config.eval_batch_size)


def first_layer_learns(config: TrainConfig, step: int, total_steps: int) -> bool:
    """Whether the first layer still learns at optimizer step `step` (0-based) of `total_steps` (freeze_first_at)."""
    return step < round(config.freeze_first_at * total_steps)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` when `enabled` (`--amp`); nothing otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


@torch.inference_mode()
def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000, amp: bool = False
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over all of `images`, in eval mode."""
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    for start in range(0, len(labels), batch_size):
        with autocast(images.device, amp):
            logits = model(normalize(images[start : start + batch_size]))
        target = labels[start : start + batch_size]
        loss_sum += F.cross_entropy(logits.float(), target, reduction="sum")
        correct += (logits.argmax(1) == target).sum()
    n = max(1, len(labels))
    return loss_sum.item() / n, correct.item() / n


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Logits for uint8 images (N, 28, 28), in eval mode."""
    model.eval()
    return torch.cat([model(normalize(images[s : s + batch_size])) for s in range(0, len(images), batch_size)])


def build(config: TrainConfig, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A freshly initialized model (seeded) and its optimizer."""
    torch.manual_seed(config.seed)
    model = prepare_model(create_model(config.model, **config.model_kwargs), device)
    return model, make_optimizer(config, model)


def metric_splits(splits: Splits, train_eval_size: int, seed: int) -> Splits:
    """The splits the per-epoch metrics are measured on: the training split cut to `train_eval_size` images.

    The same images every epoch, chosen by a permutation seeded with `seed` (its own generator,
    so the training's draws do not move); all of it when `train_eval_size` is 0 or not smaller.
    """
    n = len(splits.train_labels)
    if train_eval_size == 0 or train_eval_size >= n:
        return splits
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    idx = order[:train_eval_size].sort().values.to(splits.train_labels.device)
    return replace(splits, train_images=splits.train_images[idx], train_labels=splits.train_labels[idx])


def epoch_metrics(model: nn.Module, splits: Splits, batch_size: int, amp: bool = False) -> dict[str, float]:
    metrics = {}
    for split, images, labels in splits.items():
        if len(labels):
            metrics[f"{split}_loss"], metrics[f"{split}_acc"] = evaluate(model, images, labels, batch_size, amp)
        else:
            metrics[f"{split}_loss"] = metrics[f"{split}_acc"] = float("nan")
    return metrics


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def check_fit_call(config, arrays, *args, **kwargs) -> None:
    """Refuse a call of `fit` that cannot train: not a TrainConfig, or not that dataset's arrays."""
    if not isinstance(config, TrainConfig):
        raise UserError(f"fit takes a TrainConfig (TrainConfig.from_dict for a mapping), got {type(config).__name__}")
    check_arrays(arrays, config.dataset)


@locks_run_directory(check=check_fit_call)  # one writer per run directory; a new run never replaces another
def fit(config: TrainConfig, arrays, out_dir: str | Path, resume: dict | None = None, log=print, show_progress=None) -> list[dict]:
    """Train `config` on `arrays` (see data.MnistArrays), writing `out_dir` after every epoch.

    `resume` is a loaded checkpoint to continue from. Returns the per-epoch metrics. Ctrl-C
    stops the run; what the last finished epoch wrote stays on disk and can be resumed.
    """
    out_dir = Path(out_dir)
    device = resolve_device(config.device)
    splits = split_dataset(arrays, config.val_size, config.seed, device, config.train_size, config.permute)
    measured = metric_splits(splits, config.train_eval_size, config.seed)  # the same images every epoch
    model, optimizer = build(config, device)
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict] = []
    if resume is not None:
        model.load_state_dict(resume["model_state"])
        optimizer.load_state_dict(resume["optimizer_state"])
        generator.set_state(resume["rng"]["generator"])
        torch.set_rng_state(resume["rng"]["torch"])
        if device.type == "cuda" and "cuda" in resume["rng"]:
            torch.cuda.set_rng_state(resume["rng"]["cuda"], device)
        history = list(resume["metrics"])
    else:
        write_json(out_dir / "config.json", config.to_dict())

    steps_per_epoch = config.passes * -(-len(splits.train_labels) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    num_classes = int(splits.train_labels.max()) + 1
    # computed once for the run, when the first layer freezes, and kept for the epochs after
    frozen = frozen_first_block(model, splits.train_images, config)
    graphs = step_graphs(optimizer, device, config.amp)  # on a GPU: each kind of step captured once for the run
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    for epoch in range(len(history) + 1, config.epochs + 1):
        bar = (lambda it: tqdm(it, desc=f"epoch {epoch}", leave=False, unit="batch")) if show_progress else iter
        synchronize(device)
        start = time.perf_counter()
        train_one_epoch(
            model, optimizer, splits.train_images, splits.train_labels, config, generator,
            (epoch - 1) * steps_per_epoch, total_steps, bar, frozen=frozen, graphs=graphs,
        )  # fmt: skip
        synchronize(device)
        seconds = time.perf_counter() - start
        row = {
            "epoch": epoch,
            **epoch_metrics(model, measured, config.eval_batch_size, config.amp),
            "lr": config_lr(config, epoch * steps_per_epoch - 1, total_steps),
            "epoch_seconds": seconds,
            "samples_per_second": config.passes * len(splits.train_labels) / seconds,
        }
        failure = training_failure([*history, row], epoch * steps_per_epoch, num_classes)
        if failure:  # before the checkpoint: the last good epoch stays on disk
            raise TrainingFailed(failure_message(config, epoch, failure, out_dir), history=[*history, row])
        history.append(row)
        rng = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        save_checkpoint(
            out_dir / CHECKPOINT_NAME,
            model_name=config.model, model_kwargs=config.model_kwargs, config=config.to_dict(),
            epoch=epoch, metrics=history, model_state=model.state_dict(),
            optimizer_state=optimizer.state_dict(), rng=rng,
        )  # fmt: skip
        # after the checkpoint: config.json describes the epochs on disk (an extension's first epoch included)
        write_json(out_dir / "config.json", config.to_dict())
        write_text(out_dir / "metrics.csv", metrics_csv(history))
        steps = range((epoch - 1) * steps_per_epoch, epoch * steps_per_epoch)
        log(format_epoch(row, config.epochs, max(config_lr(config, step, total_steps) for step in steps)))
    return history


def failure_message(config: TrainConfig, epoch: int, failure: str, out_dir: Path) -> str:
    """What went wrong at `epoch`, what the run directory keeps, and the rate to lower."""
    flag, lr = "--lr", config.lr
    if config.segments and epoch > config.epochs - config.segments[-1].epochs:  # in the epochs --extend added
        flag, lr = "--extend-lr", config.segments[-1].lr
    kept = f"{out_dir} keeps epoch {epoch - 1}" if epoch > 1 else "no epoch was saved"
    return (f"training stopped at epoch {epoch}: {failure}; the learning rate is probably too high: "
            f"try a lower {flag} than {lr:g} (e.g. {lr / 10:g}); {kept}")  # fmt: skip


def metrics_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in METRIC_COLUMNS})
    return buf.getvalue()


def read_metrics_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


def format_epoch(row: dict, epochs: int, peak_lr: float) -> str:
    """The console line of an epoch. It shows the epoch's highest learning rate, which says more
    than metrics.csv's `lr`, the rate of its last step (about 0 at the end of a cosine)."""
    width = len(str(epochs))
    parts = [f"epoch {row['epoch']:>{width}}/{epochs}"]
    for split in ("train", "val", "test"):
        parts.append(f"{split} loss {row[f'{split}_loss']:.4f} acc {100 * row[f'{split}_acc']:6.2f}%")
    parts.append(f"peak lr {peak_lr:.2e}")
    parts.append(f"{row['epoch_seconds']:5.1f}s {row['samples_per_second']:7.0f}/s")
    return " | ".join(parts)
