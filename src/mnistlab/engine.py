"""The training engine: `build`, `train_one_epoch`, `evaluate` and `fit`, in the order a run uses them.

A run's model and optimizer are built from its TrainConfig (config.py). The whole dataset is one
uint8 tensor on the device; an epoch's batches are `images[idx]` for slices of a seeded
permutation, augmented and normalized as whole batches (inputs.py), and each step is the plain one:
forward, loss, `zero_grad`, `backward`, `step`. After every epoch the model is evaluated and the
run directory written: checkpoint, config.json, metrics.csv.

The speed wing (fast/) computes the same things faster. The engine reaches it through two calls,
`fast.prepare` (faster layers) and `fast.run_steps` (steps from cached activations, or replayed
from CUDA graphs), and runs without it when it is switched off (MNISTLAB_PLAIN=1).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mnistlab import fast
from mnistlab.augment import affine_draws
from mnistlab.checkpoint import CHECKPOINT_NAME, save_checkpoint
from mnistlab.config import RUBBISH_PENALTY, TrainConfig, config_lr
from mnistlab.data import check_arrays
from mnistlab.errors import UserError
from mnistlab.fileio import interrupts_held, write_json, write_text
from mnistlab.inputs import batch_inputs, normalize
from mnistlab.metrics import format_epoch, metrics_csv
from mnistlab.models import create_model
from mnistlab.predictions import write_test_predictions
from mnistlab.runlock import locks_run_directory
from mnistlab.runtime import autocast, resolve_device, synchronize
from mnistlab.sdlm import SDLM
from mnistlab.splits import Splits, metric_splits, split_dataset


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params, lr, wd = list(model.parameters()), config.lr, config.weight_decay
    if config.optimizer == "sgd":
        # foreach (CUDA's default already): the per-parameter loop's arithmetic, to the bit, in one call per operation
        foreach = params[0].device.type in ("cpu", "cuda") if params else None
        return torch.optim.SGD(
            params, lr=lr, momentum=config.momentum, weight_decay=wd, nesterov=config.nesterov, foreach=foreach
        )
    if config.optimizer == "sdlm":
        return SDLM(params, lr=lr)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


def build(config: TrainConfig, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A freshly initialized model (seeded) and its optimizer."""
    torch.manual_seed(config.seed)
    model = fast.prepare(create_model(config.model, **config.model_kwargs), device)
    return model, make_optimizer(config, model)


def training_loss(logits: torch.Tensor, labels: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """The loss a step minimizes: cross-entropy, or with `config.loss` "map" that of LeCun et al. 1998 (eq. 9)."""
    if config.loss == "map":  # y_D + log(e^-j + sum_i e^-y_i), penalties y = -logits: one more class, of logit -j
        rubbish = logits.new_full((len(logits), 1), -RUBBISH_PENALTY)
        return F.cross_entropy(torch.cat([logits, rubbish], 1), labels)
    return F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)


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
    fast_steps: fast.RunSteps | None = None,
) -> int:
    """`config.passes` passes over `images`, each in a fresh random order; returns the number of optimizer steps taken.

    `fast_steps` (`fast.run_steps`, made once for the run) takes the steps it can take faster;
    without it every step is the plain one below.
    """
    model.train()
    n = len(labels)
    orders = [torch.randperm(n, generator=generator).to(images.device, non_blocking=True) for _ in range(config.passes)]
    augmentation = epoch_draws(config, n, generator, images.device)
    batches = [(order, p * n, start) for p, order in enumerate(orders) for start in range(0, n, config.batch_size)]
    first_layer = list(first_layer_parameters(model))
    for i, (order, offset, start) in enumerate(progress(batches)):
        step = first_step + i
        for group in optimizer.param_groups:
            group["lr"] = config_lr(config, step, total_steps)
        learns = first_layer_learns(config, step, total_steps)
        for param in first_layer:
            param.requires_grad_(learns)  # FreezeOut: a frozen layer gets no gradient, so the optimizer leaves it
        if start == 0 and isinstance(optimizer, SDLM):  # before each pass, SDLM re-estimates its step sizes (sdlm.py)
            optimizer.estimate(model, images, labels, order, lambda out, target: training_loss(out, target, config))
        idx = order[start : start + config.batch_size]
        draws = None if augmentation is None else augmentation[offset + start : offset + start + len(idx)]
        if fast_steps is not None and fast_steps.step(idx, draws, learns):
            continue
        with autocast(images.device, config.amp):
            # index_select: the rows of images[idx], in half the time on a CPU
            logits = model(batch_inputs(images.index_select(0, idx), draws))
            loss = training_loss(logits, labels.index_select(0, idx), config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return len(batches)


def epoch_draws(config: TrainConfig, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor | None:
    """The augmentation draws of an epoch of `config.passes` passes over `n` images, a row per image in the order
    of its steps, on `device`; None without augmentation.

    Drawn at the start of the epoch, after its orders, the rows are those that drawing batch by
    batch would give (`affine_draws`), and reach the GPU in one copy.
    """
    if not config.augment:
        return None
    return affine_draws(config.passes * n, generator).to(device, non_blocking=True)


def first_layer_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The parameters of the first module, in definition order, that has parameters of its own."""
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own:
            return iter(own)
    return iter(())


def first_layer_learns(config: TrainConfig, step: int, total_steps: int) -> bool:
    """Whether the first layer still learns at optimizer step `step` (0-based) of `total_steps` (freeze_first_at)."""
    return step < round(config.freeze_first_at * total_steps)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 1000,
    amp: bool = False,
    predicted: torch.Tensor | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over all of `images`, in eval mode.

    `predicted`, a tensor of len(labels) on their device, receives each image's predicted class.
    """
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    for start in range(0, len(labels), batch_size):
        with autocast(images.device, amp):
            logits = model(normalize(images[start : start + batch_size]))
        target = labels[start : start + batch_size]
        loss_sum += F.cross_entropy(logits.float(), target, reduction="sum")
        classes = logits.argmax(1)
        correct += (classes == target).sum()
        if predicted is not None:
            predicted[start : start + batch_size] = classes
    n = max(1, len(labels))
    return loss_sum.item() / n, correct.item() / n


def epoch_metrics(
    model: nn.Module, splits: Splits, batch_size: int, amp: bool = False, test_predicted: torch.Tensor | None = None
) -> dict[str, float]:
    """Loss and accuracy on each split; `test_predicted` receives the test images' predicted classes."""
    metrics = {}
    for split, images, labels in splits.items():
        if len(labels):
            predicted = test_predicted if split == "test" else None
            metrics[f"{split}_loss"], metrics[f"{split}_acc"] = evaluate(
                model, images, labels, batch_size, amp, predicted
            )
        else:
            metrics[f"{split}_loss"] = metrics[f"{split}_acc"] = float("nan")
    return metrics


def check_fit_call(config, arrays, *args, **kwargs) -> None:
    """Refuse a call of `fit` that cannot train: not a TrainConfig, or not that dataset's arrays."""
    if not isinstance(config, TrainConfig):
        raise UserError(f"fit takes a TrainConfig (TrainConfig.from_dict for a mapping), got {type(config).__name__}")
    check_arrays(arrays, config.dataset)


@locks_run_directory(check=check_fit_call)  # one writer per run directory; a new run never replaces another
def fit(
    config: TrainConfig, arrays, out_dir: str | Path, resume: dict | None = None, log=print, show_progress=None
) -> list[dict]:
    """Train `config` on `arrays` (see data.MnistArrays), writing `out_dir` after every epoch.

    `resume` is a loaded checkpoint to continue from. Returns the per-epoch metrics. Ctrl-C
    stops the run; what the last finished epoch wrote stays on disk and can be resumed.
    """
    device = resolve_device(config.device)
    splits = split_dataset(arrays, config.val_size, config.seed, device, config.train_size, config.permute)
    model, optimizer = build(config, device)
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict] = []
    if resume is not None:
        model.load_state_dict(resume["model_state"])
        optimizer.load_state_dict(resume["optimizer_state"])
        generator.set_state(resume["rng"]["generator"])
        set_rng_state(resume["rng"], device)
        history = list(resume["metrics"])
    training = Training(config, splits, model, optimizer, generator)
    return train_epochs(training, [Run(config, Path(out_dir), history)], log, show_progress)[0]


@dataclass
class Run:
    """A run directory being written: its configuration, where it is, and its metrics so far."""

    config: TrainConfig
    out_dir: Path
    history: list[dict]
    label: str = ""  # what starts its console lines


class Training:
    """What `fit`'s epoch loop trains: one model on its splits, with its optimizer and its generator.

    fast/stacked.py trains several seeds as one stacked model through the same loop, with an
    object that has the same attributes and methods.
    """

    def __init__(self, config: TrainConfig, splits: Splits, model: nn.Module, optimizer, generator: torch.Generator):
        self.config, self.splits, self.model, self.optimizer, self.generator = (
            config,
            splits,
            model,
            optimizer,
            generator,
        )
        self.device = splits.train_images.device
        self.measured = metric_splits(splits, config.train_eval_size, config.seed)  # the same images every epoch
        self.train_labels = splits.train_labels  # what the epoch loop counts its steps and classes from
        self.test_predictions: list[torch.Tensor] = []  # each run's predicted test classes, after `metrics`
        # made once for the run: the first block's outputs once it freezes, CUDA graphs of each kind of step
        self.fast_steps = fast.run_steps(model, optimizer, splits.train_images, splits.train_labels, config)

    def train_epoch(self, first_step: int, total_steps: int, progress: Callable[[Iterator], Iterator]) -> None:
        s = self.splits
        train_one_epoch(
            self.model,
            self.optimizer,
            s.train_images,
            s.train_labels,
            self.config,
            self.generator,
            first_step,
            total_steps,
            progress,
            self.fast_steps,
        )

    def metrics(self) -> list[dict]:
        """The epoch's metrics row; the test images' predicted classes are left in `test_predictions`."""
        predicted = torch.empty_like(self.measured.test_labels)
        self.test_predictions = [predicted]
        return [epoch_metrics(self.model, self.measured, self.config.eval_batch_size, self.config.amp, predicted)]

    def states(self) -> list[dict]:
        """What each run's checkpoint holds besides its configuration and metrics."""
        rng = {"generator": self.generator.get_state(), **global_rng_state(self.device)}
        return [{"model_state": self.model.state_dict(), "optimizer_state": self.optimizer.state_dict(), "rng": rng}]


def train_epochs(
    training: Training,
    runs: list[Run],
    log=print,
    show_progress=None,
    on_epoch: Callable[[int], object] = lambda i: None,
) -> list[list[dict]]:
    """The epoch loop: train an epoch, measure it, write each run's directory; returns each run's metrics.

    Every epoch ends with one evaluation, then, for each run, its checkpoint, config.json,
    metrics.csv (after the last epoch also the test images' predicted classes, predictions.py)
    and console line, and `on_epoch(i)`. A run whose training failed stops the loop
    before its checkpoint, so the last good epoch stays on disk.
    """
    config, device = runs[0].config, training.device
    n_train, num_classes = len(training.train_labels), int(training.train_labels.max()) + 1
    steps_per_epoch = config.passes * -(-n_train // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    for run in runs:
        if not run.history:
            write_json(run.out_dir / "config.json", run.config.to_dict())
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    for epoch in range(len(runs[0].history) + 1, config.epochs + 1):
        first_step = (epoch - 1) * steps_per_epoch
        bar = (lambda it: tqdm(it, desc=f"epoch {epoch}", leave=False, unit="batch")) if show_progress else iter
        synchronize(device)
        start = time.perf_counter()
        training.train_epoch(first_step, total_steps, bar)
        synchronize(device)
        seconds = time.perf_counter() - start
        rows = [
            {
                "epoch": epoch,
                **metrics,
                "lr": config_lr(config, epoch * steps_per_epoch - 1, total_steps),
                "epoch_seconds": seconds,
                "samples_per_second": len(runs) * config.passes * n_train / seconds,
            }
            for metrics in training.metrics()
        ]
        for run, row in zip(runs, rows):
            failure = training_failure([*run.history, row], epoch * steps_per_epoch, num_classes)
            if failure:  # before the checkpoint: the last good epoch stays on disk
                message = failure_message(run.config, epoch, failure, run.out_dir)
                raise TrainingFailed(message, history=[*run.history, row])
        peak_lr = max(config_lr(config, step, total_steps) for step in range(first_step, first_step + steps_per_epoch))
        states = training.states()
        with interrupts_held():  # every run's epoch on disk, or none: stacked seeds stay at one epoch
            for i, (run, row, state) in enumerate(zip(runs, rows, states)):
                run.history.append(row)
                c = run.config
                save_checkpoint(
                    run.out_dir / CHECKPOINT_NAME,
                    model_name=c.model,
                    model_kwargs=c.model_kwargs,
                    config=c.to_dict(),
                    epoch=epoch,
                    metrics=run.history,
                    **state,
                )
                # after the checkpoint: config.json describes the epochs on disk (an extension's first epoch included)
                write_json(run.out_dir / "config.json", c.to_dict())
                write_text(run.out_dir / "metrics.csv", metrics_csv(run.history))
                if epoch == c.epochs:
                    write_test_predictions(run.out_dir, epoch, training.test_predictions[i])
        for i, (run, row) in enumerate(zip(runs, rows)):
            log(run.label + format_epoch(row, run.config.epochs, peak_lr))
            on_epoch(i)
    return [run.history for run in runs]


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
        return [
            {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()} for row in rows
        ]


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
        return (
            f"the training accuracy stays at chance ({100 * last['train_acc']:.1f}% with "
            f"{num_classes} classes) after {steps} steps"
        )
    return None


def failure_message(config: TrainConfig, epoch: int, failure: str, out_dir: Path) -> str:
    """What went wrong at `epoch`, what the run directory keeps, and the rate to lower."""
    flag, lr = "--lr", config.lr
    if config.segments and epoch > config.epochs - config.segments[-1].epochs:  # in the epochs --extend added
        flag, lr = "--extend-lr", config.segments[-1].lr
    kept = f"{out_dir} keeps epoch {epoch - 1}" if epoch > 1 else "no epoch was saved"
    return (
        f"training stopped at epoch {epoch}: {failure}; the learning rate is probably too high: "
        f"try a lower {flag} than {lr:g} (e.g. {lr / 10:g}); {kept}"
    )


def global_rng_state(device: torch.device) -> dict:
    """torch's global generators, which draw the dropout masks: the CPU's, and the GPU's on CUDA."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(rng: dict, device: torch.device) -> None:
    """Restore what `global_rng_state` saved."""
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)
