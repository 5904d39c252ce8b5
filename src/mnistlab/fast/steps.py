"""The faster steps of a run (`fast.run_steps`): from the frozen first block's cached outputs, or
replayed from CUDA graphs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.config import TrainConfig
from mnistlab.fast.frozen import FrozenFirstBlock
from mnistlab.fast.graphs import StepGraphs
from mnistlab.inputs import batch_inputs, normalize


class RunSteps:
    """The steps of one run that the wing takes faster: see `step`."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        images: torch.Tensor,
        labels: torch.Tensor,
        config: TrainConfig,
        frozen: FrozenFirstBlock | None,
        graphs: StepGraphs | None,
    ):
        self.model, self.optimizer, self.images, self.labels, self.config = model, optimizer, images, labels, config
        self.frozen, self.graphs = frozen, graphs

    def step(self, idx: torch.Tensor, draws: torch.Tensor | None, learns: bool) -> bool:
        """One optimizer step on images[idx] at the optimizer's rate, if the wing takes it; False leaves it to the engine.

        A full batch on CUDA is replayed from the graph of its kind (the first layer learning or
        frozen); after the freeze a step starts from the first block's cached outputs.
        """
        if self.graphs is not None and len(idx) == self.config.batch_size:
            inputs = (idx,) if draws is None else (idx, draws)
            self.graphs.step(learns, self.loss_of(learns), inputs, self.optimizer.param_groups[0]["lr"])
            return True
        if self.frozen is None or learns:
            return False
        loss = self.loss_of(learns)(idx)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return True

    def loss_of(self, learns: bool):
        """The training loss of a batch given by its indices (and augmentation draws)."""

        def loss(idx: torch.Tensor, draws: torch.Tensor | None = None) -> torch.Tensor:
            if learns or self.frozen is None:
                logits = self.model(batch_inputs(self.images.index_select(0, idx), draws))
            else:
                logits = self.frozen.tail(self.frozen.inputs(idx))
            target = self.labels.index_select(0, idx)
            return F.cross_entropy(logits, target, label_smoothing=self.config.label_smoothing)

        return loss


def frozen_first_block(model: nn.Module, images: torch.Tensor, config: TrainConfig) -> FrozenFirstBlock | None:
    """The first block's outputs over `images`, computed once the first layer freezes, where they can be.

    None when the first layer learns throughout, with augmentation (each step draws new images),
    with autocast (the block would run in another precision), and for a model whose first block
    is not LeNet-5's or changes with the batch (batch norm).
    """
    if config.freeze_first_at == 1 or config.augment or config.amp or not FrozenFirstBlock.fits(model):
        return None
    return FrozenFirstBlock(model, images, normalize, config.eval_batch_size)


def step_graphs(optimizer: torch.optim.Optimizer, device: torch.device, amp: bool) -> StepGraphs | None:
    """StepGraphs for a run's steps where they apply (CUDA, SGD with one parameter group, no autocast)."""
    if device.type != "cuda" or amp or not isinstance(optimizer, torch.optim.SGD) or len(optimizer.param_groups) != 1:
        return None
    return StepGraphs(optimizer)
