"""What happens inside a network for one digit: each stage's output, computed by the model's own layers.

`layer_outputs` runs a model's layers one at a time, in the order the model runs them (tests
check that its last stage is the model's own logits, and its other stages the tensors that
forward hooks see), and keeps each stage's output under a name:

  LeNet-5   input 1x28x28 -> conv1 6x24x24 -> pool1 6x12x12 -> conv2 16x8x8 -> pool2 16x4x4
            -> flatten 256 -> fc1 120 -> fc2 84 -> fc3 10 (the logits)
  MLP       input 1x28x28 -> flatten 784 -> fc1 500 -> fc2 150 -> fc3 10 (the logits)
  LeNet-5 (1998), whose stages are its named layers (its `stages`): input 1x28x28 -> field 1x32x32
            (its `input` layer's) -> C1 6x28x28 -> S2 6x14x14 -> C3 16x10x10 -> S4 16x5x5 -> C5 120
            -> F6 84 -> output 10, each after its squashing function, and the output the logits -y_i

A conv stage is the convolution's feature maps (after batch norm where the model has it) after
ReLU, at full size; a pool stage is the max-pool of those, which is what the model passes on
(it applies ReLU after the pool, which gives the same values). An fc stage is after its ReLU,
except the last, the logits. `look_inside` turns one image's stages into the page's JSON, with
the first convolution's learned filters, or the first-layer weights of an MLP's most active units.
"""

from __future__ import annotations

import base64

import numpy as np
import torch
from torch import nn

from mnistlab.inputs import normalize
from mnistlab.models import MODELS

TOP_UNITS = 10  # first-layer units of an MLP whose weights are shown


def layers_in_order(model: nn.Module) -> list[nn.Module]:
    """The model's leaf layers in the order they were registered: for mnistlab's models, stacks of
    nn.Sequential, the order in which forward runs them."""
    return [m for m in model.modules() if next(m.children(), None) is None]


@torch.no_grad()
def layer_outputs(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """uint8 images (N, 28, 28) -> {stage name: its output (N, ...)}, in order, in eval mode (see the module)."""
    model.eval()
    x = normalize(images)
    if hasattr(model, "stages"):  # a model that names its own stages, in the order forward runs them
        outputs = {"input": x}
        for name in model.stages:
            x = outputs[name if name != "input" else "field"] = getattr(model, name)(x)
        return outputs
    outputs, name, convs, fcs = {"input": x}, "input", 0, 0
    for layer in layers_in_order(model):
        if isinstance(layer, nn.Conv2d):
            convs += 1
            name = f"conv{convs}"
        elif isinstance(layer, nn.MaxPool2d):
            outputs[name] = torch.relu(
                x
            )  # the maps after ReLU, whether the model's ReLU comes before the pool or after
            name = f"pool{convs}"
        elif isinstance(layer, nn.Linear):
            fcs += 1
            name = f"fc{fcs}"
        elif isinstance(layer, nn.Flatten):
            name = "flatten"
        x = layer(x)
        outputs[name] = x
    return outputs


def layer_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    """Each stage's shape for one image, input first: LeNet-5's (1, 28, 28), (6, 24, 24), ... (10,)."""
    return [tuple(t.shape[1:]) for t in layer_outputs(model, torch.zeros(1, 28, 28, dtype=torch.uint8)).values()]


def format_shapes(model: nn.Module) -> str:
    """'1x28x28 -> 6x24x24 -> ... -> 10'."""
    return " -> ".join("x".join(map(str, shape)) for shape in layer_shapes(model))


def stage_title(name: str, last: str, has_convs: bool) -> str:
    """A stage's heading on the page, saying what the values are."""
    if name == last:
        return "output: the 10 logits (before softmax)" if name != "output" else "output: the 10 logits, -RBF penalties"
    if name.startswith("conv"):
        return f"{name} + ReLU: feature maps"
    if name.startswith("pool"):
        return f"max-pool {name[4:]} (2x2) + ReLU"
    if name.startswith("fc"):
        return f"{name} + ReLU" if has_convs else f"hidden layer {name[2:]} + ReLU"
    return {"input": "input (normalized)", "flatten": "flattened", **TITLES_1998}.get(name, name)


TITLES_1998 = {
    "field": "the 32x32 field (background -0.1, ink 1.175)",
    "C1": "C1: convolution + squashing",
    "S2": "S2: 2x2 sums, coefficient and bias + squashing",
    "C3": "C3: convolution over Table I's maps + squashing",
    "S4": "S4: 2x2 sums, coefficient and bias + squashing",
    "C5": "C5: convolution + squashing",
    "F6": "F6 + squashing",
}


def look_inside(model: nn.Module, image: torch.Tensor | np.ndarray) -> dict:
    """One uint8 image (28, 28) -> what the page shows inside the model, as JSON-ready data:

    {"shapes": [[1, 28, 28], [6, 24, 24], ...],
     "layers": [{"name", "title", "shape", "values"}, ...]    every stage after the input,
     "filters": {"layer", "shape": [6, 5, 5], "values"}        when the first layer is a convolution,
     "units": {"layer", "indices", "activations", "shape": [10, 28, 28], "weights"}}
                                                               when it is a linear layer on the 784 pixels
    Every array of numbers ("values", "activations", "weights") is `encode`d: the exact float32
    values, which also write and read several times faster than JSON numbers.
    """
    image = torch.as_tensor(image)
    outputs = {name: t[0] for name, t in layer_outputs(model, image[None]).items()}
    names = list(outputs)
    has_convs = any(isinstance(m, nn.Conv2d) for m in model.modules())
    answer: dict = {
        "shapes": [list(t.shape) for t in outputs.values()],
        "layers": [
            {
                "name": name,
                "title": stage_title(name, names[-1], has_convs),
                "shape": list(outputs[name].shape),
                "values": encode(outputs[name]),
            }
            for name in names[1:]
        ],
    }
    first = next(m for m in layers_in_order(model) if isinstance(m, (nn.Conv2d, nn.Linear)))
    if isinstance(first, nn.Conv2d) and first.in_channels == 1:
        answer["filters"] = {
            "layer": "conv1",
            "shape": list(first.weight[:, 0].shape),
            "values": encode(first.weight[:, 0]),
        }
    elif isinstance(first, nn.Linear) and first.in_features == 28 * 28:
        activations = outputs["fc1"]
        units = torch.argsort(activations, descending=True, stable=True)[:TOP_UNITS]
        answer["units"] = {
            "layer": "fc1",
            "indices": units.tolist(),
            "activations": encode(activations[units]),
            "shape": [len(units), 28, 28],
            "weights": encode(first.weight[units]),
        }
    return answer


def encode(t: torch.Tensor) -> str:
    """A tensor's values, row-major, as base64 of little-endian float32."""
    return base64.b64encode(t.detach().cpu().numpy().astype("<f4").tobytes()).decode("ascii")


def decode(text: str, shape: list[int] | tuple[int, ...]) -> np.ndarray:
    """`encode`'s inverse: float32 values of the given shape."""
    return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(shape)


# --- names for learners --------------------------------------------------------------------------


def model_label(model_name: str, augment: bool = False) -> str:
    """A trained model's name for a learner: its declared label (models.MODELS), and how it was
    trained: "LeNet-5 + batch norm", "MLP 500-150 + augmentation"."""
    label = MODELS[model_name].label
    return f"{label} + augmentation" if augment else label
