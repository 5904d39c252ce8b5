"""The models, looked up by name: LeNet-5 (with optional batch norm and dropout), MLPs, and LeNet-5
as published in 1998 (models_1998.py).

Every model is a plain `nn.Module` that takes normalized images (N, 1, 28, 28) and returns
logits (N, num_classes); the loss stays outside. Each is written as the textbook draws it;
the faster versions of some layers, and a reordering that computes the same values, live in
the speed wing (fast/layers.py), which `fast.prepare` applies.
"""

from __future__ import annotations

import inspect
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from mnistlab.errors import UserError
from mnistlab.models_1998 import LeNet5_1998, parameter_table_1998


class LeNet5(nn.Module):
    """LeNet-5 on 28x28 input without padding: conv 6@5x5, ReLU, pool, conv 16@5x5, ReLU, pool, FC 120, 84, 10.

    `channels` are the two convolutions' output channels, (6, 16) in LeNet-5. `batch_norm` puts
    a BatchNorm2d after each conv, before its ReLU (the conv then has no bias, which the norm's
    shift would cancel). `dropout` > 0 adds dropout after each hidden FC layer (FC 120 and FC 84).
    """

    def __init__(
        self, num_classes: int = 10, batch_norm: bool = False, dropout: float = 0.0, channels: tuple[int, int] = (6, 16)
    ):
        super().__init__()
        check_dropout(dropout)
        c1, c2 = channels
        self.features = nn.Sequential(
            *conv_block(1, c1, batch_norm),  # 28 -> 24 -> 12
            *conv_block(c1, c2, batch_norm),  # 12 -> 8 -> 4
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            *fc_block(c2 * 4 * 4, 120, dropout),
            *fc_block(120, 84, dropout),
            nn.Linear(84, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))


class MLP(nn.Module):
    """A fully connected network on the flattened image: 784 -> hidden... -> num_classes, ReLU."""

    def __init__(self, hidden: tuple[int, ...] = (500, 150), num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        check_dropout(dropout)
        widths = (28 * 28, *hidden)
        layers: list[nn.Module] = [nn.Flatten()]
        for n_in, n_out in zip(widths, widths[1:]):
            layers += fc_block(n_in, n_out, dropout)
        layers.append(nn.Linear(widths[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def conv_block(n_in: int, n_out: int, batch_norm: bool) -> list[nn.Module]:
    conv = nn.Conv2d(n_in, n_out, kernel_size=5, bias=not batch_norm)
    norm = [nn.BatchNorm2d(n_out)] if batch_norm else []
    return [conv, *norm, nn.ReLU(), nn.MaxPool2d(2)]


def fc_block(n_in: int, n_out: int, dropout: float) -> list[nn.Module]:
    return [nn.Linear(n_in, n_out), nn.ReLU(), *([nn.Dropout(dropout)] if dropout > 0 else [])]


def check_dropout(p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise UserError(f"dropout must be in [0, 1), got {p}")


CONVOLUTIONAL, FULLY_CONNECTED = "convolutional", "fully connected"  # the families of models


@dataclass(frozen=True)
class Registered:
    """A model of the registry: how to build it, and what it is. The study's report compares and
    picks models by `family`, and the page and the report name them by `label`."""

    build: Callable[..., nn.Module]  # a constructor with its defaults: its signature names the arguments it takes
    label: str  # its name for a learner
    family: str  # CONVOLUTIONAL or FULLY_CONNECTED

    def __post_init__(self):
        if self.family not in (CONVOLUTIONAL, FULLY_CONNECTED):
            raise UserError(f"a model's family is {CONVOLUTIONAL!r} or {FULLY_CONNECTED!r}, got {self.family!r}")


# mlp-small keeps the 500-150 MLP's two hidden layers and roughly its 10:3 width ratio,
# scaled down until the count matches LeNet-5: 784-55-17-10 has 44,307 parameters, 0.3%
# fewer than LeNet-5's 44,426 (a one-layer 784-56-10 would also fit, but changes the depth).
MODELS: dict[str, Registered] = {
    "lenet5": Registered(LeNet5, "LeNet-5", CONVOLUTIONAL),
    "lenet5-bn": Registered(partial(LeNet5, batch_norm=True), "LeNet-5 + batch norm", CONVOLUTIONAL),
    "lenet5-dropout": Registered(partial(LeNet5, dropout=0.5), "LeNet-5 + dropout", CONVOLUTIONAL),
    "lenet5-reg": Registered(
        partial(LeNet5, batch_norm=True, dropout=0.5), "LeNet-5 + batch norm + dropout", CONVOLUTIONAL
    ),
    "mlp": Registered(partial(MLP, hidden=(500, 150)), "MLP 500-150", FULLY_CONNECTED),
    "mlp-small": Registered(partial(MLP, hidden=(55, 17)), "MLP 55-17", FULLY_CONNECTED),
    "lenet5-1998": Registered(LeNet5_1998, "LeNet-5 (1998)", CONVOLUTIONAL),
    # the road from 1998 to today, one change at a time (models_1998.LeNet5_1998's switches); its last step,
    # 28x28 inputs, is lenet5 itself
    "lenet5-1998-relu": Registered(partial(LeNet5_1998, relu=True), "LeNet-5 (1998), ReLU", CONVOLUTIONAL),
    "lenet5-1998-maxpool": Registered(
        partial(LeNet5_1998, relu=True, max_pool=True), "LeNet-5 (1998), ReLU, max-pooling", CONVOLUTIONAL
    ),
    "lenet5-1998-fullc3": Registered(
        partial(LeNet5_1998, relu=True, max_pool=True, full_c3=True),
        "LeNet-5 (1998), ReLU, max-pooling, full C3",
        CONVOLUTIONAL,
    ),
    "lenet5-1998-linear": Registered(
        partial(LeNet5_1998, relu=True, max_pool=True, full_c3=True, linear_output=True),
        "LeNet-5 (1998), ReLU, max-pooling, full C3, linear output",
        CONVOLUTIONAL,
    ),
}

# Model arguments come from checkpoint files too, so they are bounded: a file must not make us
# allocate any amount of memory. The largest model these allow, an MLP 784-2048-2048-2048-2048-1000,
# has 16.2M parameters (65 MB); the study's largest, the MLP 784-500-150-10, has 0.47M.
MAX_CLASSES = 1000
MAX_HIDDEN_LAYERS = 4
MAX_WIDTH = 2048
MAX_CHANNELS = 256


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# argument name -> (what it must be, check); every constructor argument in MODELS has an entry
ARGUMENTS: dict[str, tuple[str, Callable[[object], bool]]] = {
    "num_classes": (f"an integer from 1 to {MAX_CLASSES}", lambda v: _is_int(v) and 1 <= v <= MAX_CLASSES),
    "batch_norm": ("true or false", lambda v: isinstance(v, bool)),
    **{switch: ("true or false", lambda v: isinstance(v, bool)) for switch in ("relu", "max_pool", "full_c3")},
    "linear_output": ("true or false", lambda v: isinstance(v, bool)),
    "dropout": ("a number in [0, 1)", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1),
    "hidden": (
        f"a list of at most {MAX_HIDDEN_LAYERS} layer widths, each an integer from 1 to {MAX_WIDTH}",
        lambda v: (
            isinstance(v, (list, tuple))
            and len(v) <= MAX_HIDDEN_LAYERS
            and all(_is_int(w) and 1 <= w <= MAX_WIDTH for w in v)
        ),
    ),
    "channels": (
        f"two channel counts, each an integer from 1 to {MAX_CHANNELS}",
        lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(c) and 0 < c <= MAX_CHANNELS for c in v),
    ),
}


def check_model_name(name: object) -> None:
    """Refuse a name that is not in MODELS, with the list of those that are."""
    if not isinstance(name, str) or name not in MODELS:
        raise UserError(f"unknown model {reprlib.repr(name)}; known models: {', '.join(MODELS)}")


def check_model_args(name: object, kwargs: object) -> None:
    """Refuse, before anything is built, a model name or arguments that `create_model` should not take.

    The argument names allowed are those of the model's constructor; each value's type and
    size is checked. Names and values may come from a file, so messages show them shortened.
    """
    check_model_name(name)
    if not isinstance(kwargs, dict):
        raise UserError(
            f"model {name!r}: its arguments must be a mapping of names to values, got a {type(kwargs).__name__}"
        )
    allowed = inspect.signature(MODELS[name].build).parameters
    for key, value in kwargs.items():
        if key not in allowed:
            raise UserError(f"model {name!r} takes no argument {reprlib.repr(key)}; it takes {', '.join(allowed)}")
        expected, ok = ARGUMENTS[key]
        if not ok(value):
            raise UserError(f"model {name!r}: {key} must be {expected}, got {reprlib.repr(value)}")


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; an unknown name or a bad argument is a UserError that says what is allowed."""
    check_model_args(name, kwargs)
    return MODELS[name].build(**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_table(model: nn.Module) -> list[tuple[str, str, int]]:
    """One row per layer with parameters: (name, hand calculation from the layer's shape, count).

    The hand calculation is built from the layer's hyperparameters, the count from its
    tensors, so a row whose two numbers disagree would expose a mistake in either.
    """
    if isinstance(model, LeNet5_1998):
        return parameter_table_1998(model)  # its rows under the paper's names, C1 to F6
    rows = []
    conv = fc = 0
    for module in model.modules():
        count = sum(p.numel() for p in module.parameters(recurse=False))
        if isinstance(module, nn.Conv2d):
            conv += 1
            k = module.kernel_size
            bias = "+1" if module.bias is not None else ""
            formula = f"({module.in_channels}x{k[0]}x{k[1]}{bias})x{module.out_channels}"
            rows.append((f"conv{conv}", formula, count))
        elif isinstance(module, nn.Linear):
            fc += 1
            bias = "+1" if module.bias is not None else ""
            rows.append((f"fc{fc}", f"({module.in_features}{bias})x{module.out_features}", count))
        elif isinstance(module, nn.BatchNorm2d):
            rows.append((f"bn{conv}", f"2x{module.num_features}", count))
    return rows


def hand_count(formula: str) -> int:
    """Evaluate a parameter_table formula such as "(1x5x5+1)x6" or "(3x5x5+1)x6+(4x5x5+1)x9" without eval():
    whole numbers, "+", "x" and parentheses."""
    terms, depth, start = [], 0, 0
    for i, char in enumerate(formula + "+"):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "+" and depth == 0:
            terms.append(formula[start:i])
            start = i + 1
    if len(terms) > 1:
        return sum(hand_count(term) for term in terms)
    if formula.startswith("("):
        inner, _, outer = formula[1:].rpartition(")")
        return hand_count(inner) * (hand_count(outer.removeprefix("x")) if outer else 1)
    product = 1
    for factor in formula.split("x"):
        product *= int(factor)
    return product
