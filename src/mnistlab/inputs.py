"""From uint8 images to what a model reads, and back to its answers: `normalize`, `batch_inputs`, `predict_logits`.

Training, evaluation, the page's server, prediction and the ONNX export all read this module,
so that MNIST's mean and standard deviation are applied in exactly one place.
"""

from __future__ import annotations

import torch
from torch import nn

from mnistlab.augment import random_affine

MEAN, STD = 0.1307, 0.3081


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) or float in [0, 1] (N, 1, 28, 28) -> standardized float (N, 1, 28, 28).

    The one place where MNIST's mean and standard deviation are applied.
    """
    if images.dtype == torch.uint8:
        # A fresh tensor, so in place: the same arithmetic as below without two more allocations.
        return images.unsqueeze(1).float().div_(255).sub_(MEAN).div_(STD)
    return (images - MEAN) / STD


def batch_inputs(images: torch.Tensor, draws: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 images -> model input; with `draws` (`affine_draws`, a row per image), randomly transformed."""
    if draws is None:
        return normalize(images)
    return normalize(random_affine(images.unsqueeze(1).float().div_(255), draws))


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Logits for uint8 images (N, 28, 28), in eval mode."""
    model.eval()
    return torch.cat([model(normalize(images[s : s + batch_size])) for s in range(0, len(images), batch_size)])
