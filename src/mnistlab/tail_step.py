"""The gradients of LeNet-5's tail, with the backward pass written out: a frozen step without autograd.

After the first layer freezes (`freeze_first_at`), each step trains the rest of LeNet-5
(convolution 16@5x5, max-pool, ReLU, FC 120, 84, 10) on the first block's cached outputs
(frozen.py). Such a step does little arithmetic, so autograd's own work (recording the graph,
running its nodes, accumulating the gradients) is a visible part of it: at batch 64 on the
bench's CPU a frozen step took 1.09 ms written out against 1.21 ms with autograd (0.89x; the two
alternating in one process, 10 rounds of 300 steps).
`HandTail.gradients` makes the calls autograd makes, in the same order, with the same arguments,
so each gradient is the same to the bit (tests/test_tail_step.py compares them with autograd's).

Written for a CPU and the loss the engine trains with (cross-entropy, label smoothing or not);
`HandTail.of` gives None for any other tail (dropout, batch norm), which then trains with autograd.
"""

from __future__ import annotations

import torch
from torch import nn

from mnistlab.speedups import is_plain_2x2

MEAN = 1  # torch's Reduction::Mean, for the loss's aten calls
IGNORE_INDEX = -100  # F.cross_entropy's default


class HandTail:
    """The layers of a LeNet-5 tail: one convolution, its 2x2 max-pool and ReLU, then Linear layers with ReLUs between."""

    def __init__(self, conv: nn.Conv2d, linears: list[nn.Linear]):
        self.conv, self.linears = conv, linears

    @staticmethod
    def of(tail: nn.Module) -> HandTail | None:
        """`tail`'s layers if it is exactly Conv2d, MaxPool2d(2), ReLU, Flatten, then Linear (ReLU, Linear)...; else None."""
        layers = [m for m in tail.modules() if not isinstance(m, nn.Sequential)]
        if len(layers) < 5 or len(layers) % 2 == 0:
            return None
        conv, pool, relu, flatten, *rest = layers
        plain_conv = isinstance(conv, nn.Conv2d) and conv.bias is not None and conv.padding_mode == "zeros" and (
            conv.stride, conv.padding, conv.dilation, conv.groups) == ((1, 1), (0, 0), (1, 1), 1)  # fmt: skip
        plain_pool = isinstance(pool, nn.MaxPool2d) and is_plain_2x2(pool)
        plain_flatten = type(flatten) is nn.Flatten and (flatten.start_dim, flatten.end_dim) == (1, -1)
        linears, relus = rest[0::2], rest[1::2]
        if not (plain_conv and plain_pool and type(relu) is nn.ReLU and plain_flatten):
            return None
        if not all(type(m) is nn.Linear and m.bias is not None for m in linears) or not all(type(m) is nn.ReLU for m in relus):
            return None
        return HandTail(conv, linears)

    @torch.no_grad()
    def gradients(self, x: torch.Tensor, labels: torch.Tensor, label_smoothing: float) -> None:
        """Set each parameter's `.grad` to that of `F.cross_entropy(tail(x), labels, label_smoothing=...)`."""
        conv = self.conv
        maps = torch.ops.aten.convolution(x, conv.weight, conv.bias, [1, 1], [0, 0], [1, 1], False, [0, 0], 1)
        pooled, indices = torch.ops.aten.max_pool2d_with_indices(maps, [2, 2], [2, 2], [0, 0], [1, 1], False)
        relu = torch.relu(pooled)
        inputs = [relu.flatten(1)]  # each Linear's input
        for linear in self.linears[:-1]:
            inputs.append(torch.relu(torch.addmm(linear.bias, inputs[-1], linear.weight.t())))
        last = self.linears[-1]
        log_probs = torch.log_softmax(torch.addmm(last.bias, inputs[-1], last.weight.t()), 1)

        grad = torch.ops.aten._log_softmax_backward_data(loss_gradient(log_probs, labels, label_smoothing), log_probs, 1, log_probs.dtype)
        for i in reversed(range(len(self.linears))):
            linear = self.linears[i]
            linear.weight.grad = grad.t().mm(inputs[i])
            linear.bias.grad = grad.sum(0)
            grad = grad.mm(linear.weight)
            if i > 0:
                grad = torch.ops.aten.threshold_backward(grad, inputs[i], 0)
        grad = torch.ops.aten.threshold_backward(grad.view(relu.shape), relu, 0)
        grad = torch.ops.aten.max_pool2d_with_indices_backward(grad, maps, [2, 2], [2, 2], [0, 0], [1, 1], False, indices)
        _, conv.weight.grad, conv.bias.grad = torch.ops.aten.convolution_backward(
            grad, x, conv.weight, [conv.out_channels], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, True])  # fmt: skip


def loss_gradient(log_probs: torch.Tensor, labels: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """The gradient of `F.cross_entropy`'s mean loss with respect to the log-probabilities, computed as autograd does.

    With label smoothing e over C classes the loss is (1 - e) * nll + e / C * (the mean of -sum log p),
    and autograd scales and divides in float32 in this order.
    """
    one = log_probs.new_ones(())
    total_weight = log_probs.new_tensor(float(len(labels)))  # no label is ignored: the engine's are classes
    if label_smoothing <= 0:
        return torch.ops.aten.nll_loss_backward(one, log_probs, labels, None, MEAN, IGNORE_INDEX, total_weight)
    nll = torch.ops.aten.nll_loss_backward(one * (1 - label_smoothing), log_probs, labels, None, MEAN, IGNORE_INDEX, total_weight)
    counted = (labels != IGNORE_INDEX).sum()
    smooth = (one * (label_smoothing / log_probs.shape[1])).div(counted).expand(len(labels)).neg()
    return nll + smooth.unsqueeze(1).expand_as(log_probs)
