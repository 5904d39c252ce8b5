"""The stochastic diagonal Levenberg-Marquardt method of LeCun et al. 1998 (appendix C): `SDLM`.

Each parameter w_k gets its own step size, lr / (mu + h_kk), where h_kk estimates the second
derivative of the loss in w_k: small steps where the loss curves sharply, and at most lr / mu
where it is flat. The estimate is re-made before each pass over the training set, on its first
SAMPLES images (the engine calls `estimate` there), and kept for the whole pass.

h_kk is the paper's: second derivatives propagated backwards like gradients, with two
approximations, the Gauss-Newton one (the squashing function's second derivative is dropped)
and the diagonal one (the terms between two units of a layer are dropped):

    d2E/da_i^2 = f'(a_i)^2 sum_k w_ki^2 d2E/da_k^2        (a_i a unit's weighted sum, f its squashing)
    h_kk = sum over the connections (i, j) that share w_k of d2E/da_i^2 x_j^2

That is a backward pass in which every weight and every input is squared: `curvatures` runs it
with autograd, as the gradient of each layer evaluated at squared weights and squared inputs.
It starts from the diagonal of the loss's second derivatives in the input of the model's fixed
head (LeNet-5 (1998)'s RBF output, whose own curvature then counts), or in the logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call

from mnistlab.errors import UserError
from mnistlab.inputs import normalize
from mnistlab.models_1998 import Squash, Subsampling, TableConv

MU = 0.02  # the paper's mu: keeps the step size bounded where the curvature is small
SAMPLES = 500  # the images on which the paper re-estimates the curvature before each pass

WEIGHTED = (nn.Conv2d, nn.Linear, TableConv, Subsampling)  # linear in their input and in each of their parameters
ELEMENTWISE = (Squash, nn.Tanh, nn.ReLU)  # a squashing function: its derivative squared
ROUTING = (nn.MaxPool2d, nn.Flatten)  # each output is one input: second derivatives go where gradients go


class SDLM(torch.optim.Optimizer):
    """SGD with a step size lr / (mu + h_kk) for each parameter w_k (see the module); h_kk starts at 0."""

    def __init__(self, params, lr: float, mu: float = MU):
        super().__init__(params, {"lr": lr, "mu": mu})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                curvature = self.state[param].setdefault("curvature", torch.zeros_like(param))
                param.addcdiv_(param.grad, curvature + group["mu"], value=-group["lr"])

    def estimate(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, loss: Callable
    ) -> None:
        """Set each parameter's h_kk from the first SAMPLES uint8 images of a pass in `order`, for `loss(logits, y)`."""
        first = order[:SAMPLES]
        found = curvatures(model, normalize(images.index_select(0, first)), labels.index_select(0, first), loss)
        for group in self.param_groups:
            for param in group["params"]:
                if param in found:
                    self.state[param]["curvature"] = found[param]


def curvatures(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, loss: Callable) -> dict:
    """{parameter: h_kk}, the paper's diagonal second derivatives averaged over the (normalized) `images`."""
    layers = [m for m in model.modules() if next(m.children(), None) is None]  # the chain forward runs, in order
    head = layers.pop() if layers and not any(True for _ in layers[-1].parameters()) else None
    inputs = []
    with torch.no_grad():
        x = images
        for layer in layers:
            inputs.append(x)
            x = layer(x)
    second = output_curvature(x, labels, loss, head)
    found = {}
    for i in reversed(range(len(layers))):
        layer, x = layers[i], inputs[i].detach().requires_grad_()
        if isinstance(layer, WEIGHTED):
            squared = {name: p.detach().square().requires_grad_() for name, p in layer.named_parameters(recurse=False)}
            squares = x.detach().square().requires_grad_()
            wanted = [squares, *squared.values()]
            grads = torch.autograd.grad(functional_call(layer, squared, (squares,)), wanted, second, allow_unused=True)
            found.update((p, g / len(images)) for p, g in zip(layer.parameters(recurse=False), grads[1:]))
            second = grads[0]
        elif isinstance(layer, ELEMENTWISE):
            (slope,) = torch.autograd.grad(layer(x), x, torch.ones_like(x))
            second = second * slope.square()
        elif isinstance(layer, ROUTING):
            (second,) = torch.autograd.grad(layer(x), x, second)
        elif i > 0:  # the first layer's input needs no second derivatives (LeNet-5 (1998)'s PaperInput)
            raise UserError(f"the sdlm optimizer cannot propagate second derivatives through a {type(layer).__name__}")
    return found


def output_curvature(
    outputs: torch.Tensor, labels: torch.Tensor, loss: Callable, head: nn.Module | None
) -> torch.Tensor:
    """Each image's d2E/dx^2 for each of its `outputs` x (the logits, or the input of a fixed `head`), as (N, ...):
    the diagonal of the loss's Hessian, negative values (curvature the Gauss-Newton step cannot use) set to 0."""
    point = outputs.detach().flatten(1).requires_grad_()
    value = loss(point.view_as(outputs) if head is None else head(point.view_as(outputs)), labels) * len(labels)
    (gradient,) = torch.autograd.grad(value, point, create_graph=True)  # each image's loss depends on its row only
    units = torch.eye(point.shape[1], dtype=point.dtype, device=point.device)
    units = units.unsqueeze(1).expand(-1, *point.shape)  # (D, N, D): unit d for every image
    (rows,) = torch.autograd.grad(gradient, point, units, is_grads_batched=True)  # (D, N, D): row d of each Hessian
    return rows.diagonal(dim1=0, dim2=2).clamp(min=0).view_as(outputs)
