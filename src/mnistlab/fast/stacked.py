"""Several seeds of one configuration trained at once, as one stacked model: `fit_stacked`.

K models of the same architecture become one module: their images stacked along the channels,
every convolution grouped by model (each model's channels see only its own), every batch norm
over K times the channels (so each model keeps its own statistics), every fully connected layer
a batched matmul over a leading model dimension, dropout masks drawn for each model's units.
The loss is the sum of the K per-model means, so each model gets the gradient it would get
alone. Each seed keeps its own initialization (what `build` gives for that seed), validation
split, data order and augmentation draws, from its own generator as in `fit`; one optimizer
step updates all K (SGD and Adam act elementwise).

After every epoch each seed gets an ordinary run directory: config.json, metrics.csv and a
checkpoint holding the unstacked model and optimizer state, which loads as a normal model and
resumes with `fit`, or with the other seeds as a stacked run again.

How the numbers relate to a separate `fit` of the same seed: the same computation in another
order (grouped convolutions, batched matmuls), so equal in distribution, not to the last digit:
without dropout the weights agree to rounding after the first steps and drift apart slowly as
training goes on (tests/test_stacked.py). Dropout masks come from torch's global generator,
shared by the K models, so they differ from a separate run's. A stacked run is deterministic on
a CPU: the same seeds trained together twice give identical metrics.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.checkpoint import load_checkpoint
from mnistlab.config import TrainConfig, config_lr
from mnistlab.engine import (
    Run,
    build,
    epoch_draws,
    global_rng_state,
    make_optimizer,
    set_rng_state,
    train_epochs,
)
from mnistlab.fast import enabled, prepare
from mnistlab.fast.graphs import StepGraphs
from mnistlab.fast.steps import step_graphs
from mnistlab.inputs import batch_inputs, normalize
from mnistlab.models import CONVOLUTIONAL, MODELS, create_model
from mnistlab.runtime import autocast, resolve_device
from mnistlab.splits import Splits, metric_splits, split_dataset


def worth_stacking(config: TrainConfig, device: torch.device) -> bool:
    """Whether the seeds of `config` train faster stacked than one by one on `device`.

    On a CPU, a convolutional model (`stacks_on_cpu`). On a GPU, where one small model leaves most of
    the chip idle, stacking gives each kernel K models' work (the figures: benchmarks/RESULTS.md, its GPU
    section, and benchmarks/wing.md). Never with the wing switched off (MNISTLAB_PLAIN=1).
    """
    if not enabled() or config.freeze_first_at < 1:  # the stacked training loop keeps every layer learning
        return False
    if config.loss != "cross-entropy" or config.optimizer == "sdlm":  # its steps: cross-entropy, no curvature estimate
        return False
    return can_stack(config.model) and (device.type == "cuda" or stacks_on_cpu(config.model))


def can_stack(name: str) -> bool:
    """Whether every layer of model `name` has a stacked counterpart (`stacked_layer`)."""
    try:
        stacked_model(name, {}, 2)
    except ValueError:
        return False
    return True


def stacks_on_cpu(name: str) -> bool:
    """The rule on a CPU, each run on one thread beside another (the study's way), read from the
    model's declared family: a convolutional model stacks, since K grouped convolutions run faster
    than K separate ones; a fully connected one does not, since its batched matmuls are no faster
    than separate ones and they are most of its time. The figures: benchmarks/stacking.md and
    benchmarks/wing.md."""
    return MODELS[name].family == CONVOLUTIONAL


# ---------------------------------------------------------------- the stacked layers


class StackedLinear(nn.Module):
    """K linear layers as one batched matmul: input (K, N, in) -> (K, N, out); weight (K, out, in)."""

    def __init__(self, k: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, out_features, in_features))  # filled by load_stacked
        self.bias = nn.Parameter(torch.empty(k, out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight.transpose(1, 2))
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class StackedFlatten(nn.Module):
    """(N, K*C, H, W) -> (K, N, C*H*W): each model's flattened features, in the order nn.Flatten gives them."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.k, -1).transpose(0, 1)


def stacked_layer(layer: nn.Module, k: int) -> nn.Module:
    """The layer that does what `layer` does, for K models at once."""
    if isinstance(layer, nn.Sequential):
        return nn.Sequential(*(stacked_layer(child, k) for child in layer))
    if isinstance(layer, nn.Conv2d):
        return nn.Conv2d(
            layer.in_channels * k,
            layer.out_channels * k,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            groups=layer.groups * k,
            bias=layer.bias is not None,
        )
    if isinstance(layer, nn.BatchNorm2d):
        return nn.BatchNorm2d(
            layer.num_features * k, layer.eps, layer.momentum, layer.affine, layer.track_running_stats
        )
    if isinstance(layer, nn.Linear):
        return StackedLinear(k, layer.in_features, layer.out_features, layer.bias is not None)
    if isinstance(layer, nn.Flatten) and (layer.start_dim, layer.end_dim) == (1, -1):
        return StackedFlatten(k)
    if isinstance(layer, (nn.ReLU, nn.MaxPool2d, nn.Dropout)):  # elementwise, or within a channel
        return copy.deepcopy(layer)
    raise ValueError(f"cannot stack a {type(layer).__name__} layer")


def stacked_model(name: str, model_kwargs: dict, k: int) -> nn.Module:
    """Model `name` for K seeds at once: input (N, K, 28, 28), model k's images in channel k; logits (K, N, classes).

    The module tree and parameter names are the model's own (its forward runs unchanged on the
    stacked layers), so the K models' state dicts map onto it name by name; its parameters are
    empty until `load_stacked` fills them.
    """
    model = create_model(name, **model_kwargs)
    for child_name, child in list(model.named_children()):
        setattr(model, child_name, stacked_layer(child, k))
    return model


# ---------------------------------------------------------------- K states <-> one stacked state


def stack_tensors(tensors: list, like):
    """K per-model values -> the stacked value shaped `like`; a value the K share (a step count) is kept as is."""
    first = tensors[0]
    if (
        isinstance(first, torch.Tensor)
        and isinstance(like, torch.Tensor)
        and like.numel() == len(tensors) * first.numel()
    ):
        return torch.stack([t.to(like.device) for t in tensors]).reshape(like.shape)
    return first


def unstack_tensor(value, k: int, count: int, like):
    """Model k's part of a stacked value, shaped like the per-model `like`; a shared value is copied."""
    if isinstance(value, torch.Tensor) and isinstance(like, torch.Tensor) and value.numel() == count * like.numel():
        return value.detach().reshape(count, *like.shape)[k].clone()
    return value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)


def load_stacked(model: nn.Module, states: list[dict]) -> None:
    """Fill a stacked model with K per-model state dicts."""
    own = model.state_dict()
    model.load_state_dict({name: stack_tensors([s[name] for s in states], like) for name, like in own.items()})


def unstacked_states(model: nn.Module, k_count: int, reference: dict) -> list[dict]:
    """The K per-model state dicts of a stacked model; `reference` is one model's state dict (names and shapes)."""
    own = model.state_dict()
    return [
        {name: unstack_tensor(own[name], k, k_count, like) for name, like in reference.items()} for k in range(k_count)
    ]


def stack_optimizer_state(states: list[dict], stacked_params: list[torch.Tensor]) -> dict:
    """K optimizer state dicts (of the per-model optimizers) -> the stacked optimizer's: the same parameter order."""
    merged = {}
    for i, like in enumerate(stacked_params):
        per_model = [s["state"].get(i) for s in states]
        if per_model[0] is not None:
            merged[i] = {key: stack_tensors([p[key] for p in per_model], like) for key in per_model[0]}
    return {"state": merged, "param_groups": copy.deepcopy(states[0]["param_groups"])}


def unstacked_optimizer_states(state: dict, k_count: int, params: list[torch.Tensor]) -> list[dict]:
    """The stacked optimizer's state dict -> K state dicts that a per-model optimizer loads; `params`: one model's."""
    return [
        {
            "state": {
                i: {key: unstack_tensor(value, k, k_count, params[i]) for key, value in entry.items()}
                for i, entry in state["state"].items()
            },
            "param_groups": copy.deepcopy(state["param_groups"]),
        }
        for k in range(k_count)
    ]


# ---------------------------------------------------------------- training and evaluation


def stacked_inputs(batches: list[torch.Tensor], draws: list[torch.Tensor] | None = None) -> torch.Tensor:
    """K uint8 batches (B, 28, 28) -> the stacked model's input (B, K, 28, 28), each batch as `batch_inputs` makes it
    (with its model's augmentation `draws`, if any)."""
    rows = draws if draws is not None else [None] * len(batches)
    return channels_last(torch.cat([batch_inputs(images, d) for images, d in zip(batches, rows)], dim=1))


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """The K models' channels side by side in memory, where the grouped first convolution runs fastest on a CPU."""
    return x.contiguous(memory_format=torch.channels_last)


def train_one_epoch_stacked(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: list[torch.Tensor],
    labels: list[torch.Tensor],
    config: TrainConfig,
    generators: list[torch.Generator],
    first_step: int,
    total_steps: int,
    progress: Callable = iter,
    graphs: StepGraphs | None = None,
) -> int:
    """`config.passes` passes of each model over its own training split, in its own orders; returns the number of steps.

    Model k draws its permutations and its augmentation from generators[k], in the order
    `train_one_epoch` draws them, so it sees the batches a separate run of its seed would see.
    With `graphs` (graphs.py, on a GPU), each full batch's step is replayed from a CUDA graph.
    """
    model.train()
    k, n = len(images), len(labels[0])
    device = images[0].device
    orders, augmentation = [], []
    for g in generators:  # each model's draws in the order of a separate run's epoch: its orders, then its augmentation
        orders.append([torch.randperm(n, generator=g).to(device, non_blocking=True) for _ in range(config.passes)])
        augmentation.append(epoch_draws(config, n, g, device))
    batches = [(p, start) for p in range(config.passes) for start in range(0, n, config.batch_size)]

    def loss_of(*inputs: torch.Tensor) -> torch.Tensor:
        """The stacked loss of K index batches followed, with augmentation, by their K draws."""
        idx, draws = inputs[:k], inputs[k:] or None
        logits = model(stacked_inputs([im.index_select(0, j) for im, j in zip(images, idx)], draws))
        target = torch.stack([lab.index_select(0, j) for lab, j in zip(labels, idx)])
        # the mean over all K*B samples, times K: the sum of the K per-model means
        return F.cross_entropy(logits.flatten(0, 1), target.flatten(), label_smoothing=config.label_smoothing) * k

    for i, (p, start) in enumerate(progress(batches)):
        lr = config_lr(config, first_step + i, total_steps)
        optimizer.param_groups[0]["lr"] = lr
        idx = [model_orders[p][start : start + config.batch_size] for model_orders in orders]
        offset = p * n + start
        draws = [] if not config.augment else [d[offset : offset + len(idx[0])] for d in augmentation]
        if graphs is not None and len(idx[0]) == config.batch_size:
            graphs.step("stacked", loss_of, (*idx, *draws), lr)
            continue
        with autocast(device, config.amp):
            loss = loss_of(*idx, *draws)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return len(batches)


@torch.inference_mode()
def evaluate_stacked(
    model: nn.Module,
    k: int,
    images: torch.Tensor | list[torch.Tensor],
    labels: torch.Tensor | list[torch.Tensor],
    batch_size: int = 250,
    amp: bool = False,
    predicted: torch.Tensor | None = None,
) -> list[tuple[float, float]]:
    """Each model's mean cross-entropy and accuracy, in eval mode, in one pass.

    `images` and `labels` are either one set all K models are measured on (the test set: each
    batch is normalized once and shared), or K sets of one size (each model's own validation split).
    `predicted` (K x N, on their device) receives each model's predicted class of each image.
    """
    model.eval()
    shared = isinstance(images, torch.Tensor)
    n = len(labels) if shared else len(labels[0])
    device = images.device if shared else images[0].device
    loss_sum = torch.zeros(k, device=device)
    correct = torch.zeros(k, device=device, dtype=torch.long)
    for start in range(0, n, batch_size):
        end = start + batch_size
        if shared:
            x = channels_last(normalize(images[start:end]).expand(-1, k, -1, -1))
            target = labels[start:end].expand(k, -1)
        else:
            x = stacked_inputs([im[start:end] for im in images])
            target = torch.stack([lab[start:end] for lab in labels])
        with autocast(device, amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none").view(k, -1).sum(1)
        classes = logits.argmax(-1)
        correct += (classes == target).sum(1)
        if predicted is not None:
            predicted[:, start:end] = classes
    n = max(1, n)
    return [(loss / n, hits / n) for loss, hits in zip(loss_sum.tolist(), correct.tolist())]


def stacked_epoch_metrics(
    model: nn.Module,
    splits: list[Splits],
    batch_size: int,
    amp: bool = False,
    test_predicted: torch.Tensor | None = None,
) -> list[dict]:
    """`epoch_metrics` for each of the K models: its own training subset and validation split, the shared test set.
    `test_predicted` (K x N) receives each model's predicted classes of the test images.

    Each pass takes `batch_size` // K images per model, as many activations as one model's pass:
    with `batch_size` images per model the stacked passes were slower than K separate
    evaluations on a CPU (benchmarks/stacking.md).
    """
    k = len(splits)
    batch_size = max(1, batch_size // k)
    metrics = [{} for _ in range(k)]
    for split in ("train", "val", "test"):
        images = [getattr(s, f"{split}_images") for s in splits]
        labels = [getattr(s, f"{split}_labels") for s in splits]
        if not len(labels[0]):
            results = [(float("nan"), float("nan"))] * k
        elif split == "test":  # the same images for every seed: one pass, each batch normalized once
            results = evaluate_stacked(model, k, images[0], labels[0], batch_size, amp, test_predicted)
        else:
            results = evaluate_stacked(model, k, images, labels, batch_size, amp)
        for row, (loss, acc) in zip(metrics, results):
            row[f"{split}_loss"], row[f"{split}_acc"] = loss, acc
    return metrics


def check_stackable(configs: list[TrainConfig]) -> None:
    """Stacked runs share everything but the seed (one schedule, one optimizer step, one batch shape)."""
    if not configs:
        raise ValueError("fit_stacked needs at least one configuration")
    first = configs[0].to_dict()
    for config in configs[1:]:
        other = config.to_dict()
        differing = [k for k in set(first) | set(other) if k != "seed" and first.get(k) != other.get(k)]
        if differing:
            raise ValueError(
                f"stacked runs may differ only in their seed, these differ in {', '.join(sorted(differing))}"
            )
    if configs[0].freeze_first_at < 1:
        raise ValueError("stacked runs train every layer throughout; freeze_first_at needs separate runs")
    seeds = [c.seed for c in configs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"stacked runs need distinct seeds, got {seeds}")


def fit_stacked(
    configs: list[TrainConfig],
    arrays,
    out_dirs: list[Path],
    resumes: list[dict] | None = None,
    log: Callable[[str], object] = print,
    on_epoch: Callable[[int], object] = lambda k: None,
    show_progress=None,
) -> list[list[dict]]:
    """Train K configurations that differ only in their seed as one stacked model, writing each out_dirs[k].

    `resumes` are their loaded checkpoints, all after the same epoch (from a stacked run or from
    separate ones). `log` gets one line per model per epoch; `on_epoch(k)` is called once model
    k's epoch is on disk. Returns each model's per-epoch metrics. The epochs are `fit`'s loop
    (engine.train_epochs): Ctrl-C stops the run; what the last finished epoch wrote stays on disk and resumes.
    """
    check_stackable(configs)
    training = StackedTraining(configs, arrays)
    histories: list[list[dict]] = [[] for _ in configs]
    if resumes is not None:
        training.resume(resumes)
        histories = [list(r["metrics"]) for r in resumes]
    runs = [Run(c, Path(d), h, label=f"seed {c.seed}: ") for c, d, h in zip(configs, out_dirs, histories)]
    return train_epochs(training, runs, log, show_progress, on_epoch)


class StackedTraining:
    """What engine.train_epochs trains for stacked seeds: K models as one (see engine.Training)."""

    def __init__(self, configs: list[TrainConfig], arrays):
        self.configs, self.config, k = configs, configs[0], len(configs)
        config = self.config
        self.device = resolve_device(config.device)
        self.splits = [split_dataset(arrays, c.val_size, c.seed, self.device, c.train_size, c.permute) for c in configs]
        self.measured = [metric_splits(s, c.train_eval_size, c.seed) for s, c in zip(self.splits, configs)]
        self.reference = create_model(config.model, **config.model_kwargs)
        model = stacked_model(config.model, config.model_kwargs, k)
        # Each seed's initial weights are exactly what `build` gives it; the global generator is then
        # where building the last one left it (as in `fit` for one seed), and draws the dropout masks of all K.
        load_stacked(model, [build(c, self.device)[0].state_dict() for c in configs])
        self.model = prepare(model, self.device)
        self.optimizer = make_optimizer(config, self.model)
        self.generators = [torch.Generator().manual_seed(c.seed) for c in configs]
        self.train_labels = self.splits[0].train_labels  # every seed's training split has this size
        self.test_predictions: list[torch.Tensor] = []  # each seed's predicted test classes, after `metrics`
        self.graphs = step_graphs(self.optimizer, self.device, config.amp)  # on a GPU: the step captured once

    def resume(self, resumes: list[dict]) -> None:
        done = {len(r["metrics"]) for r in resumes}
        if len(resumes) != len(self.configs) or len(done) != 1:
            raise ValueError(f"stacked runs resume together from the same epoch, got epochs {sorted(done)}")
        load_stacked(self.model, [r["model_state"] for r in resumes])
        states = [r["optimizer_state"] for r in resumes]
        self.optimizer.load_state_dict(stack_optimizer_state(states, list(self.model.parameters())))
        for g, r in zip(self.generators, resumes):
            g.set_state(r["rng"]["generator"])
        set_rng_state(resumes[0]["rng"], self.device)

    def train_epoch(self, first_step: int, total_steps: int, progress) -> None:
        train_one_epoch_stacked(
            self.model,
            self.optimizer,
            [s.train_images for s in self.splits],
            [s.train_labels for s in self.splits],
            self.config,
            self.generators,
            first_step,
            total_steps,
            progress,
            self.graphs,
        )

    def metrics(self) -> list[dict]:
        """Each seed's metrics row; their predicted test classes are left in `test_predictions`."""
        test_labels = self.measured[0].test_labels
        predicted = test_labels.new_empty((len(self.configs), len(test_labels)))
        self.test_predictions = list(predicted)
        return stacked_epoch_metrics(self.model, self.measured, self.config.eval_batch_size, self.config.amp, predicted)

    def states(self) -> list[dict]:
        k = len(self.configs)
        model_states = unstacked_states(self.model, k, self.reference.state_dict())
        optimizer_states = unstacked_optimizer_states(self.optimizer.state_dict(), k, list(self.reference.parameters()))
        seeds = [c.seed for c in self.configs]
        return [
            {
                "model_state": m,
                "optimizer_state": o,
                "rng": {"generator": g.get_state(), **global_rng_state(self.device)},
                "stacked_seeds": seeds,
            }
            for m, o, g in zip(model_states, optimizer_states, self.generators)
        ]


# ---------------------------------------------------------------- for the study


def train_stacked_runs(
    runs: list[tuple[TrainConfig, Path, int]],
    arrays,
    log: Callable[[str], object] = print,
    on_epoch: Callable[[int], object] = lambda i: None,
) -> list[list[dict]]:
    """Train runs of one study arm (configs equal but for the seed), stacked; returns their metrics in order.

    Each run is (config, run directory, epochs it has finished there). Runs that finished the
    same number of epochs resume together as one stacked model (all of them, normally: Ctrl-C
    waits until every seed has written its epoch; a process killed while they were written can
    leave a run one epoch apart, and then it trains with those at its epoch). `on_epoch(i)` is
    called when run i finishes an epoch.
    """
    histories: list[list[dict] | None] = [None] * len(runs)
    for finished in sorted({f for _, _, f in runs}):
        members = [i for i, (_, _, f) in enumerate(runs) if f == finished]
        configs = [runs[i][0] for i in members]
        out_dirs = [runs[i][1] for i in members]
        resumes = [load_checkpoint(d) for d in out_dirs] if finished else None
        result = fit_stacked(
            configs, arrays, out_dirs, resumes, log=log, on_epoch=lambda j: on_epoch(members[j]), show_progress=False
        )
        for i, history in zip(members, result):
            histories[i] = history
    return histories
