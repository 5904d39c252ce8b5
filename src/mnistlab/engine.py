"""The training engine: configuration, data on the device, `train_one_epoch`, `evaluate`, `fit`.

The whole dataset is one uint8 tensor on the device; a batch is `images[idx]` for a slice
of a seeded permutation; augmentation and normalization act on whole batches.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.augment import random_affine
from mnistlab.errors import UserError
from mnistlab.models import MODELS, create_model
from mnistlab.speedups import speed_up

MEAN, STD = 0.1307, 0.3081
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "cosine", "onecycle")
DEVICES = ("auto", "cpu", "cuda", "mps")
METRIC_COLUMNS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
    "lr", "epoch_seconds", "samples_per_second",
)  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run. Printed at the start, saved with the checkpoint."""

    model: str = "lenet5"
    dataset: str = "mnist"
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    augment: bool = False
    dropout: float | None = None  # None: the model's own default
    seed: int = 0
    val_size: int = 5000
    device: str = "auto"
    eval_batch_size: int = 1000
    amp: bool = False  # bf16 autocast in training and evaluation

    def __post_init__(self):
        if self.model not in MODELS:
            raise UserError(f"unknown model {self.model!r}; known models: {', '.join(MODELS)}")
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
        if self.val_size < 0:
            raise UserError(f"val-size must be >= 0, got {self.val_size}")
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("device", DEVICES)):
            if getattr(self, name) not in allowed:
                raise UserError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    @property
    def model_kwargs(self) -> dict:
        return {} if self.dropout is None else {"dropout": self.dropout}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# Named presets: overrides of TrainConfig's defaults (`mnistlab bench --recipe NAME`).
# `fast` trains LeNet-5 to about 99% test accuracy in 3 epochs, chosen on validation accuracy
# alone; the search and its figures: benchmarks/recipes.md, its timings: benchmarks/RESULTS.md.
RECIPES: dict[str, dict] = {
    "default": {},
    "fast": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "onecycle",
             "batch_size": 128, "epochs": 3},  # fmt: skip
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


def set_threads(threads: int | None) -> None:
    """Set torch's CPU thread count from a `--threads` flag; None keeps torch's choice."""
    if threads is None:
        return
    if threads <= 0:
        raise UserError(f"threads must be positive, got {threads}")
    torch.set_num_threads(threads)


def split_dataset(arrays, val_size: int, seed: int, device: torch.device) -> Splits:
    """Hold out `val_size` training images, chosen by a permutation seeded with `seed`; move all to `device`."""
    n = len(arrays.train_labels)
    if val_size >= n:
        raise UserError(f"val-size {val_size} leaves no training images (the training set has {n})")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train_idx, val_idx = order[val_size:].sort().values, order[:val_size].sort().values
    images = torch.from_numpy(arrays.train_images)
    labels = torch.from_numpy(arrays.train_labels).long()

    def put(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous().to(device)

    return Splits(
        put(images[train_idx]), put(labels[train_idx]),
        put(images[val_idx]), put(labels[val_idx]),
        put(torch.from_numpy(arrays.test_images)), put(torch.from_numpy(arrays.test_labels).long()),
    )  # fmt: skip


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) or float in [0, 1] (N, 1, 28, 28) -> standardized float (N, 1, 28, 28).

    The one place where MNIST's mean and standard deviation are applied.
    """
    if images.dtype == torch.uint8:
        # A fresh tensor, so in place: the same arithmetic as below without two more allocations.
        return images.unsqueeze(1).float().div_(255).sub_(MEAN).div_(STD)
    return (images - MEAN) / STD


def batch_inputs(images: torch.Tensor, augment: bool, generator: torch.Generator | None) -> torch.Tensor:
    """uint8 images -> model input, with random affine augmentation when asked."""
    if not augment:
        return normalize(images)
    return normalize(random_affine(images.unsqueeze(1).float().div_(255), generator))


def get_lr(step: int, total_steps: int, base_lr: float, schedule: str) -> float:
    """The learning rate at optimizer step `step` (0-based) of `total_steps`."""
    progress = step / max(1, total_steps)
    if schedule == "none":
        return base_lr
    if schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * progress))
    # onecycle: a linear warm-up from base_lr/25 over the first 30%, then cosine to ~0.
    warmup = 0.3
    if progress < warmup:
        return base_lr * (0.04 + 0.96 * progress / warmup)
    return base_lr * 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup)))


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params, lr, wd = model.parameters(), config.lr, config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=wd)
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
) -> int:
    """One pass over `images` in a random order; returns the number of optimizer steps taken."""
    model.train()
    n = len(labels)
    order = torch.randperm(n, generator=generator).to(images.device, non_blocking=True)
    starts = range(0, n, config.batch_size)
    for i, start in enumerate(progress(starts)):
        lr = get_lr(first_step + i, total_steps, config.lr, config.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = order[start : start + config.batch_size]
        with autocast(images.device, config.amp):
            logits = model(batch_inputs(images[idx], config.augment, generator))
            loss = F.cross_entropy(logits, labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return len(starts)


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
