"""Faster CPU versions of the models' layers, swapped in by `speed_up` (from `fast.prepare`).

models.py writes each model as the textbook does. Each layer here subclasses the torch layer it
replaces and only overrides `forward`, so parameters, buffers and state_dict keys stay, and
checkpoints load either way. Each gives exactly the numbers of the layer it replaces, except the
folded batch norm, which reorders the arithmetic (tests/test_speedups.py).

`speed_up` also moves each ReLU that precedes a 2x2 max-pool to after it: ReLU is monotonic, so
pool(relu(x)) == relu(pool(x)) exactly, and the gradient goes to the same element (the first
maximum of the window when it is positive, nowhere otherwise), but the ReLU then touches a
quarter of the values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MaxPool2x2(nn.MaxPool2d):
    """Without autograd, pools channels-last CPU maps as two elementwise maxima, faster than max_pool2d.

    The maxima of each pair of rows, then of each pair of columns: identical values. With
    autograd it is max_pool2d itself, so gradients (which go to the first maximum of each
    window) are untouched.
    """

    def __init__(self):
        super().__init__(kernel_size=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if (
            torch.is_grad_enabled()
            or x.device.type != "cpu"
            or h % 2
            or w % 2
            or not x.is_contiguous(memory_format=torch.channels_last)
        ):
            return super().forward(x)
        rows = x.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w * c)  # (N, H/2, row pair, W*C), a view
        rows = torch.maximum(rows[:, :, 0], rows[:, :, 1])
        columns = rows.view(n, h // 2, w // 2, 2 * c)  # (N, H/2, W/2, column pair * C)
        return torch.maximum(columns[..., :c], columns[..., c:]).permute(0, 3, 1, 2)


class FoldedSequential(nn.Sequential):
    """Without autograd in eval mode, runs each Conv2d + BatchNorm2d as one convolution: the norm's pass is free.

    A batch norm in eval mode is a fixed per-channel scale and shift, a whole extra pass over
    the largest activations of LeNet-5; folded into the convolution's weights it costs
    nothing. It only reorders the arithmetic: the logits agree to about 1e-6, not bit for bit.
    On a CPU it runs in channels-last memory, where these small convolutions are fastest (a model
    with batch norm trains in the usual NCHW memory: see `prepare`).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or torch.is_grad_enabled():
            return super().forward(x)
        on_cpu = x.device.type == "cpu"
        layers = list(self)
        i = 0
        while i < len(layers):
            layer = layers[i]
            if isinstance(layer, nn.Conv2d) and i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm2d):
                weight, bias = fold_batch_norm(layer, layers[i + 1])
                if on_cpu:  # a channels-last weight makes the convolution channels-last, whatever its input
                    weight = torch.empty_like(weight, memory_format=torch.channels_last).copy_(weight)
                x = F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
                i += 2
            else:
                x = layer(x)
                i += 1
        return x


def fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of one convolution equal to `conv` followed by `norm` in eval mode."""
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    bias = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale.view(-1, 1, 1, 1), bias


def speed_up(model: nn.Module) -> nn.Module:
    """Swap the layers above into `model`, in place, and return it.

    Each swap changes only the module's class (the subclasses add no state), so the model
    keeps its parameters, buffers and state_dict keys, and an optimizer made before still
    holds the right tensors.
    """
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            pool_before_relu(module)
        if type(module) is nn.MaxPool2d and is_plain_2x2(module):
            module.__class__ = MaxPool2x2
        elif type(module) is nn.Sequential and has_conv_then_norm(module):
            module.__class__ = FoldedSequential
    return model


def pool_before_relu(layers: nn.Sequential) -> None:
    """Swap, in place, each ReLU that is followed by a plain 2x2 max-pool: the same values, a quarter of the
    ReLU's work."""
    for i in range(len(layers) - 1):
        relu, pool = layers[i], layers[i + 1]
        if type(relu) is nn.ReLU and isinstance(pool, nn.MaxPool2d) and is_plain_2x2(pool):
            layers[i], layers[i + 1] = pool, relu


def is_plain_2x2(pool: nn.MaxPool2d) -> bool:
    settings = (pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode, pool.return_indices)
    return settings == (2, 2, 0, 1, False, False)


def has_conv_then_norm(layers: nn.Sequential) -> bool:
    pairs = zip(layers, list(layers)[1:])
    return any(isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) for a, b in pairs)
