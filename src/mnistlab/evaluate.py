"""`mnistlab evaluate`: test loss and accuracy, per-class accuracy and the confusion matrix of a checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mnistlab.checkpoint import load_model, resolve_checkpoint
from mnistlab.engine import DEVICES, predict_logits, resolve_device
from mnistlab.plots import confusion_matrix, plot_confusion


def evaluate_checkpoint(path: str | Path, arrays, device: torch.device) -> dict:
    model, ckpt = load_model(path, device)
    images = torch.from_numpy(arrays.test_images).to(device)
    labels = torch.from_numpy(arrays.test_labels).long().to(device)
    logits = predict_logits(model, images)
    predictions = logits.argmax(1)
    matrix = confusion_matrix(labels.cpu().numpy(), predictions.cpu().numpy(), len(arrays.classes))
    per_class = matrix.diagonal() / np.maximum(1, matrix.sum(1))
    return {
        "checkpoint": str(resolve_checkpoint(path)),
        "model": ckpt["model_name"],
        "epoch": ckpt["epoch"],
        "dataset": arrays.name,
        "test_loss": F.cross_entropy(logits, labels).item(),
        "test_acc": (predictions == labels).float().mean().item(),
        "per_class_acc": {c: float(a) for c, a in zip(arrays.classes, per_class)},
        "confusion_matrix": matrix.tolist(),
    }


def format_confusion(matrix: np.ndarray, classes: tuple[str, ...]) -> str:
    labels = [c[:5] for c in classes]
    width = max(5, *(len(str(v)) for v in matrix.flat)) + 1
    lines = ["true\\pred".ljust(10) + "".join(c.rjust(width) for c in labels)]
    lines += [labels[i].ljust(10) + "".join(str(v).rjust(width) for v in row) for i, row in enumerate(matrix)]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="DIR|CHECKPOINT", help="a run directory or a checkpoint file")
    p.add_argument("--data-dir", default=None, help="data directory (default: $MNISTLAB_DATA or ./data)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="device")
    p.add_argument("--out", default=None, help="confusion-matrix PNG (default: confusion.png beside the checkpoint)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    from mnistlab.checkpoint import load_checkpoint
    from mnistlab.data import load_dataset

    path = resolve_checkpoint(args.checkpoint)
    dataset = load_checkpoint(path)["config"].get("dataset", "mnist")
    quiet = (lambda line: None) if args.json else (lambda line: print(f"data: {line}"))
    arrays = load_dataset(dataset, args.data_dir, log=quiet)
    result = evaluate_checkpoint(path, arrays, resolve_device(args.device))
    matrix = np.array(result["confusion_matrix"])
    png = Path(args.out) if args.out else path.parent / "confusion.png"
    plot_confusion(matrix, png, arrays.classes, title=f"{result['model']} on {dataset} test set")
    result["confusion_png"] = str(png)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['model']} (epoch {result['epoch']}) on the {dataset} test set: "
          f"loss {result['test_loss']:.4f}, accuracy {100 * result['test_acc']:.2f}%")  # fmt: skip
    print("per-class accuracy: " + "  ".join(f"{c} {100 * a:.2f}%" for c, a in result["per_class_acc"].items()))
    print(format_confusion(matrix, arrays.classes))
    print(f"wrote {png}")
    return 0
