"""The speed wing: what makes training faster without changing what it computes.

The training core (engine.py) takes every step the plain way; it reaches this wing through two
calls, and runs without it when it is switched off:

    prepare(model, device)   the model on `device`, its layers swapped for faster versions that
                             compute the same values (layers.py), in channels-last memory
    run_steps(...)           made once per run: the steps it can take faster, from the first
                             block's outputs cached once it freezes (frozen.py) or replayed from
                             CUDA graphs (graphs.py); None when neither applies

A study trains the seeds of a configuration as one stacked model where that is faster
(stacked.py). What each mechanism gains over the plain core, measured alternating with it:
benchmarks/wing.md.

Switched off by MNISTLAB_PLAIN=1 in the environment (also for a study's worker processes): the
engine then runs its plain path alone, and a study trains each seed on its own.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from mnistlab.config import TrainConfig
from mnistlab.fast.layers import speed_up
from mnistlab.fast.steps import RunSteps, frozen_first_block, step_graphs


def enabled() -> bool:
    """Whether the wing is on: unless MNISTLAB_PLAIN is set to something other than 0."""
    return os.environ.get("MNISTLAB_PLAIN", "0") in ("", "0")


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` on `device`, ready to train or evaluate: with the wing on, its faster layers, channels-last."""
    model = model.to(device)
    if not enabled():
        return model
    model = speed_up(model)
    if has_convolutions(model) and not has_batch_norm(model):
        # LeNet-5's small convolutions train faster so on a CPU; with batch norm, torch's channels-last
        # batch-norm kernel for 6 and 16 channels costs more than that gains (benchmarks/wing.md), so such a
        # model trains in NCHW memory and evaluates channels-last (`layers.FoldedSequential`)
        model = model.to(memory_format=torch.channels_last)
    return model


def has_convolutions(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def run_steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig
) -> RunSteps | None:
    """The run's faster steps, made once for the run (pass the same to every epoch); None when none apply.

    Its steps minimize cross-entropy: with another loss (`config.loss`), the engine takes every step itself.
    """
    if not enabled() or config.loss != "cross-entropy":
        return None
    frozen = frozen_first_block(model, images, config)
    graphs = step_graphs(optimizer, images.device, config.amp)
    if frozen is None and graphs is None:
        return None
    return RunSteps(model, optimizer, images, labels, config, frozen, graphs)
