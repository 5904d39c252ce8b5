"""The pipeline people usually write for MNIST: torchvision's recipe done by hand (torchvision is no dependency).

A Dataset that makes a PIL image of each sample, then ToTensor (float / 255, CHW) and
Normalize, fed by `DataLoader(shuffle=True)` with its default `num_workers=0`; the model is
used as created and the optimizer with torch's defaults. `mnistlab bench` times it against
mnistlab's engine.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mnistlab.bench.timing import timed_once
from mnistlab.config import TrainConfig
from mnistlab.inputs import MEAN, STD
from mnistlab.models import create_model


class UsualMNIST(Dataset):
    """torchvision's `MNIST(transform=Compose([ToTensor(), Normalize((0.1307,), (0.3081,))]))`, by hand.

    The same steps as torchvision's code: uint8 tensors indexed per sample, a PIL image of
    each, ToTensor's conversion, then Normalize (an nn.Module) with its checks.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.data, self.targets = torch.from_numpy(images), torch.from_numpy(labels)
        self.transforms = [to_tensor, UsualNormalize((MEAN,), (STD,))]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, target = self.data[index], int(self.targets[index])
        image = Image.fromarray(image.numpy(), mode="L")
        for transform in self.transforms:  # Compose
            image = transform(image)
        return image, target


def to_tensor(image: Image.Image) -> torch.Tensor:
    """ToTensor for a mode-"L" PIL image: HWC uint8 -> CHW float in [0, 1]."""
    x = torch.from_numpy(np.array(image, np.uint8, copy=True))
    x = x.view(image.size[1], image.size[0], len(image.getbands())).permute(2, 0, 1).contiguous()
    return x.to(dtype=torch.get_default_dtype()).div(255)


class UsualNormalize(torch.nn.Module):
    """torchvision's Normalize: out of place, with the same checks on every call."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 3:
            raise TypeError(f"expected a float image tensor (..., C, H, W), got {type(x)}")
        x = x.clone()
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device)
        if (std == 0).any():
            raise ValueError(f"std evaluated to zero after conversion to {x.dtype}, leading to division by zero.")
        return x.sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))


def usual_loader(images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool) -> DataLoader:
    return DataLoader(UsualMNIST(images, labels), batch_size=batch_size, shuffle=shuffle)


def usual_model(name: str, device: torch.device):
    torch.manual_seed(0)
    model = create_model(name).to(device)
    return model, torch.optim.SGD(model.parameters(), lr=TrainConfig.lr, momentum=TrainConfig.momentum)


def endless(loader: DataLoader):
    while True:
        yield from loader


def usual_trainer(
    name: str, batch_size: int, arrays, device: torch.device, samples: int, warmup_batches: int
) -> Callable[[], float]:
    """After a warm-up, a function that trains on `samples` samples the usual way and returns seconds per sample."""
    model, optimizer = usual_model(name, device)
    model.train()
    batches = endless(usual_loader(arrays.train_images, arrays.train_labels, batch_size, shuffle=True))
    n_batches = max(1, samples // batch_size)

    def train(n: int) -> None:
        for images, labels in itertools.islice(batches, n):
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()

    train(warmup_batches)
    return lambda: timed_once(lambda: train(n_batches), device) / (n_batches * batch_size)


def usual_evaluator(name: str, arrays, device: torch.device) -> Callable[[], float]:
    """After a warm-up, a function that evaluates the test set the usual way (per-batch `.item()`) and returns
    seconds."""
    model, _ = usual_model(name, device)
    loader = usual_loader(arrays.test_images, arrays.test_labels, 1000, shuffle=False)

    def one_pass() -> tuple[float, int]:
        model.eval()
        loss_sum, correct = 0.0, 0
        with torch.no_grad():
            for images, labels in loader:
                images, labels = images.to(device), labels.to(device)
                logits = model(images)
                loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
                correct += (logits.argmax(1) == labels).sum().item()
        return loss_sum, correct

    one_pass()
    return lambda: timed_once(one_pass, device)
