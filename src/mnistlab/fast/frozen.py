"""The output of LeNet-5's frozen first block, computed once for every training image (`freeze_first_at`).

Once the first convolution stops learning, its block (convolution, ReLU, max-pool) is a fixed
function of each image: without augmentation, batch norm or dropout in it, a step would compute
for its batch what the step before computed for the same images. `FrozenFirstBlock` computes it
once for the whole training split, when the first layer freezes, and each later step starts from
`outputs[idx]`. The values are those the step would have computed, to the bit (convolution and
max-pool work image by image; tests/test_frozen.py). What it saves is the block's forward pass
on every step after the freeze, for the cost of one pass over the training images and their
outputs in memory (55,000 x 864 floats, 190 MB, for MNIST's training split).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mnistlab.models import LeNet5

# The layers a cached block may hold: each a fixed function of one image, in training as in evaluation.
FIXED = (nn.Conv2d, nn.MaxPool2d, nn.ReLU)


class FrozenFirstBlock:
    """`model`'s first block over every image of `images`, computed at the first call of `inputs`.

    `prepare` makes the model's input of a batch of `images` (the engine's `normalize`). `tail` is
    the rest of the model: `tail(inputs(idx))` are the logits of `images[idx]`.
    """

    def __init__(
        self, model: LeNet5, images: torch.Tensor, prepare: Callable[[torch.Tensor], torch.Tensor], batch_size: int
    ):
        self.head, self.tail = split_lenet5(model)
        self.images, self.prepare, self.batch_size = images, prepare, batch_size
        self.outputs: torch.Tensor | None = None  # (N, H, W, C): a row per image, channels last

    @staticmethod
    def fits(model: nn.Module) -> bool:
        """Whether `model`'s first block is LeNet-5's and a fixed function of each image (not with batch norm)."""
        return isinstance(model, LeNet5) and all(isinstance(m, FIXED) for m in split_lenet5(model)[0])

    @torch.no_grad()  # not inference_mode: the next convolution keeps its input for its weight's gradient
    def compute(self) -> torch.Tensor:
        outputs = None  # filled chunk by chunk: the whole is never held twice
        for s in range(0, len(self.images), self.batch_size):
            chunk = self.head(self.prepare(self.images[s : s + self.batch_size])).permute(0, 2, 3, 1)
            if outputs is None:
                outputs = chunk.new_empty((len(self.images), *chunk.shape[1:]))
            outputs[s : s + len(chunk)] = chunk
        return outputs

    def inputs(self, idx: torch.Tensor) -> torch.Tensor:
        """The block's output for `images[idx]`, as the model's channels-last maps (N, C, H, W)."""
        if self.outputs is None:
            self.outputs = self.compute()
        return self.outputs.index_select(0, idx).permute(0, 3, 1, 2)


def split_lenet5(model: LeNet5) -> tuple[nn.Sequential, nn.Sequential]:
    """LeNet-5 as its first block and the rest, the same modules: rest(first(x)) == model(x)."""
    return model.features[:3], nn.Sequential(model.features[3:], model.classifier)
