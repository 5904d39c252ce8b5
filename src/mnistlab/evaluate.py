"""Testing a trained model: its answers on a test set, the confusion matrix, per-class accuracy.

`evaluate_on_test_set` is the one evaluation path of `mnistlab evaluate` and of REPORT.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mnistlab.checkpoint import load_model, resolve_checkpoint
from mnistlab.errors import UserError
from mnistlab.inputs import predict_logits
from mnistlab.plots import confusion_matrix
from mnistlab.splits import pixel_permutation

CONFUSION_NAME = "confusion.png"


@dataclass(frozen=True)
class Evaluation:
    """A model's answers on a dataset's test set; the tensors are on the device it ran on."""

    logits: torch.Tensor  # (N, classes)
    labels: torch.Tensor  # int64 (N,)
    predictions: torch.Tensor  # int64 (N,): the argmax of the logits
    matrix: np.ndarray  # counts[true, predicted]


def evaluate_on_test_set(
    model: nn.Module, arrays, device: torch.device, name: str = "the model", permute: int | None = None
) -> Evaluation:
    """Logits, predictions and confusion matrix of `model` on the test set of `arrays` (see data.MnistArrays).

    `name` (the checkpoint) heads the error for a model whose outputs are not the dataset's classes.
    `permute` is the seed of the pixel permutation the model was trained on (TrainConfig.permute):
    the test images are permuted the same way.
    """
    images = torch.from_numpy(arrays.test_images)
    if permute is not None:
        images = images.flatten(1)[:, pixel_permutation(permute)].view(images.shape)
    images = images.to(device)
    labels = torch.from_numpy(arrays.test_labels).long().to(device)
    logits = predict_logits(model, images)
    if logits.shape[1] != len(arrays.classes):
        raise UserError(
            f"{name}: the model has {logits.shape[1]} outputs, but {arrays.name} has {len(arrays.classes)} classes"
        )
    predictions = logits.argmax(1)
    matrix = confusion_matrix(labels.cpu().numpy(), predictions.cpu().numpy(), len(arrays.classes))
    return Evaluation(logits, labels, predictions, matrix)


def evaluate_checkpoint(path: str | Path, arrays, device: torch.device) -> dict:
    """What `mnistlab evaluate` prints of a checkpoint: test loss and accuracy, per-class accuracy, confusion matrix."""
    model, ckpt = load_model(path, device)
    result = evaluate_on_test_set(model, arrays, device, str(resolve_checkpoint(path)), ckpt["config"].get("permute"))
    per_class = result.matrix.diagonal() / np.maximum(1, result.matrix.sum(1))
    return {
        "checkpoint": str(resolve_checkpoint(path)),
        "model": ckpt["model_name"],
        "epoch": ckpt["epoch"],
        "dataset": arrays.name,
        "test_loss": F.cross_entropy(result.logits, result.labels).item(),
        "test_acc": (result.predictions == result.labels).float().mean().item(),
        "per_class_acc": {c: float(a) for c, a in zip(arrays.classes, per_class)},
        "confusion_matrix": result.matrix.tolist(),
    }


def format_confusion(matrix: np.ndarray, classes: tuple[str, ...]) -> str:
    labels = [c[:5] for c in classes]
    width = max(5, *(len(str(v)) for v in matrix.flat)) + 1
    lines = ["true\\pred".ljust(10) + "".join(c.rjust(width) for c in labels)]
    lines += [labels[i].ljust(10) + "".join(str(v).rjust(width) for v in row) for i, row in enumerate(matrix)]
    return "\n".join(lines)


def confusion_path(out: str | None, checkpoint: Path) -> Path:
    """Where the confusion-matrix PNG goes; refuses to replace a file that is not a figure.

    A file is replaced only if it is a PNG that matplotlib drew (its "Software" text says so),
    as every figure mnistlab writes is: a checkpoint, a CSV or a photograph is never overwritten.
    """
    png = Path(out) if out else checkpoint.parent / CONFUSION_NAME
    if png.is_dir():
        png = png / CONFUSION_NAME
    elif png.suffix.lower() != ".png":
        raise UserError(f"--out {out}: the confusion matrix is a PNG; give a file name ending in .png, or a directory")
    if png.exists() and not is_figure(png):
        raise UserError(f"{png} exists and is not a figure; it is left as it is (give another --out, or remove it)")
    return png


def is_figure(path: Path) -> bool:
    """Whether `path` is a PNG that matplotlib wrote."""
    try:
        with Image.open(path) as image:
            return image.format == "PNG" and str(image.info.get("Software", "")).startswith("Matplotlib")
    except Exception:  # noqa: BLE001 - a file PIL cannot open (or a directory) is not a figure
        return False
