"""A training run's configuration: `TrainConfig`, its schedule segments, the named recipes, and the
learning-rate schedule `get_lr`.

One frozen dataclass holds everything that determines a run; it is printed at the start and saved
next to the checkpoint. Each setting declared with `option()` is also a `mnistlab train` flag.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from mnistlab.datasets import DATASET, DATASETS
from mnistlab.errors import UserError
from mnistlab.models import MODELS, check_model_name
from mnistlab.options import DEVICE, DEVICES, option

OPTIMIZERS = ("sgd", "adam", "adamw", "sdlm")  # sdlm: LeCun et al. 1998's (sdlm.py)


SCHEDULES = ("none", "cosine", "onecycle", "linear", "lecun98")

# The step sizes of LeCun et al. 1998 (appendix C), as multiples of the first (0.0005), one per pass over the
# training set: 0.0005 for 2 passes, 0.0002 for 3, 0.0001 for 3, 0.00005 for 4, then 0.00001.
LECUN98_RATES = (1, 1, 0.4, 0.4, 0.4, 0.2, 0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.02)

LOSSES = ("cross-entropy", "map")
# The constant j of the "map" loss (engine.training_loss). The paper gives no value: the loss stops pushing up
# a wrong class's penalty once it is well above j, so j is a margin; 10 is a quarter of the smallest squared
# distance between two of the output's codes (11 bits of 84 apart: 44).
RUBBISH_PENALTY = 10.0


MAX_SEED = 2**63 - 1  # torch's generators take any 64-bit seed; a non-negative int64 suits every backend


# What each field of TrainConfig holds, checked first, so that a hand-edited config or checkpoint
# gets a sentence and not a TypeError from a comparison.
_FIELD_TYPES = {
    "model": str, "dataset": str, "epochs": int, "batch_size": int, "optimizer": str, "lr": float,
    "momentum": float, "weight_decay": float, "schedule": str, "augment": bool, "dropout": float,
    "seed": int, "val_size": int, "device": str, "eval_batch_size": int, "amp": bool, "nesterov": bool,
    "label_smoothing": float, "train_eval_size": int, "permute": int, "train_size": int, "passes": int,
    "freeze_first_at": float, "loss": str,
}  # fmt: skip


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
            raise UserError(
                f"a schedule segment's schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )


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
    label_smoothing: float = option(
        0.0, "label smoothing of the training loss (evaluation measures plain cross-entropy)"
    )
    # The per-epoch training metrics are measured on a fixed subset of the training split, this many
    # images chosen by a permutation seeded with `seed` (0: all of it); validation and test are whole.
    train_eval_size: int = option(
        10_000,
        "training images, the same every epoch, on which each epoch's training "
        "loss and accuracy are measured (0: the whole training split)",
    )
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
    freeze_first_at: float = option(
        1.0,
        "fraction of the training steps after which the model's first layer stops "
        "learning; each later step skips its gradient, and LeNet-5's backward pass "
        "through the first convolution and, without --augment, its forward pass, "
        "computed once for every image (1: it learns throughout)",
    )
    loss: str = option(
        "cross-entropy",
        "the training loss: cross-entropy over the logits, or map, LeCun et al. "
        "1998's (cross-entropy with one more class of constant logit -j)",
        choices=LOSSES,
    )

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
            raise UserError(
                "nesterov needs the sgd optimizer with momentum > 0, "
                f"got {self.optimizer} with momentum {self.momentum}"
            )
        if self.permute is not None and not 0 <= self.permute <= MAX_SEED:
            raise UserError(f"permute (a permutation's seed) must be in [0, 2**63-1], got {self.permute}")
        if self.train_size < 0:
            raise UserError(f"train-size must be >= 0 (0: the whole training split), got {self.train_size}")
        if self.passes <= 0:
            raise UserError(f"passes must be positive, got {self.passes}")
        if not 0 <= self.freeze_first_at <= 1:
            raise UserError(
                f"freeze-first-at must be in [0, 1] (a fraction of the training steps), got {self.freeze_first_at}"
            )
        if self.loss == "map" and self.label_smoothing:
            raise UserError("label smoothing applies to the cross-entropy loss, not to map")
        if self.optimizer == "sdlm" and self.weight_decay:
            raise UserError("the sdlm optimizer takes no weight decay")
        choices = (
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("device", DEVICES),
            ("dataset", DATASETS),
            ("loss", LOSSES),
        )
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise UserError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.segments:
            first = self.segments[0]
            if (
                not isinstance(self.segments, tuple)
                or len(self.segments) < 2
                or not all(isinstance(seg, Segment) for seg in self.segments)
                or (first.lr, first.schedule) != (self.lr, self.schedule)
                or sum(seg.epochs for seg in self.segments) != self.epochs
            ):
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
            if not isinstance(segments, list) or not all(
                isinstance(seg, dict) and set(seg) == {"epochs", "lr", "schedule"} for seg in segments
            ):
                raise UserError(f"segments must be a list of {{epochs, lr, schedule}}, got {segments!r}")
            kwargs["segments"] = tuple(Segment(**seg) for seg in segments)
        return cls(**kwargs)


# Fields added after runs had been saved without them: at these values to_dict leaves them out,
# so that a run's dict, and compare's reuse of finished runs, stay as they were. Not
# train_eval_size: the runs saved before it measured their training metrics on the whole
# training split (from_dict reads them so), and a study does not reuse them as today's runs.
OMITTED_AT_DEFAULT = {"nesterov": False, "label_smoothing": 0.0, "permute": None, "train_size": 0, "passes": 1,
                      "freeze_first_at": 1.0, "loss": "cross-entropy"}  # fmt: skip


# Named presets: overrides of TrainConfig's defaults (`mnistlab train --recipe NAME`, `mnistlab bench --recipe NAME`).
# `fast` trains LeNet-5 to about 99% test accuracy in 2 epochs, its first convolution frozen
# after 20% of the steps, chosen on validation accuracy alone; the searches and their figures:
# benchmarks/recipes.md, its timings: benchmarks/RESULTS.md.
RECIPES: dict[str, dict] = {
    "default": {},
    "fast": {
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.95,
        "nesterov": True,
        "weight_decay": 5e-4,
        "label_smoothing": 0.1,
        "schedule": "linear",
        "batch_size": 64,
        "epochs": 2,
        "freeze_first_at": 0.2,
    },
}


def recipe_config(name: str, **overrides) -> TrainConfig:
    """TrainConfig for a named recipe; `overrides` (e.g. seed, device) win over the recipe."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return TrainConfig(**{**RECIPES[name], **overrides})


def get_lr(step: int, total_steps: int, base_lr: float, schedule: str, passes: int = 1) -> float:
    """The learning rate at optimizer step `step` (0-based) of `total_steps`, `passes` passes over the data."""
    progress = step / max(1, total_steps)
    if schedule == "none":
        return base_lr
    if schedule == "lecun98":  # one rate per pass
        return base_lr * LECUN98_RATES[min(int(progress * passes), len(LECUN98_RATES) - 1)]
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
        return get_lr(step, total_steps, config.lr, config.schedule, config.epochs * config.passes)
    start = epochs_before = 0
    for seg in config.segments[:-1]:
        epochs_before += seg.epochs
        end = epochs_before * total_steps // config.epochs
        if step < end:
            return get_lr(step - start, end - start, seg.lr, seg.schedule, seg.epochs * config.passes)
        start = end
    last = config.segments[-1]
    return get_lr(step - start, total_steps - start, last.lr, last.schedule, last.epochs * config.passes)
