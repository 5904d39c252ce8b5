"""`mnistlab evaluate`: test loss and accuracy, per-class accuracy and the confusion matrix of a checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mnistlab.checkpoint import load_model, resolve_checkpoint
from mnistlab.engine import DEVICES, pixel_permutation, predict_logits, resolve_device
from mnistlab.errors import UserError
from mnistlab.plots import confusion_matrix, plot_confusion

CONFUSION_NAME = "confusion.png"


def evaluate_checkpoint(path: str | Path, arrays, device: torch.device) -> dict:
    model, ckpt = load_model(path, device)
    images = torch.from_numpy(arrays.test_images)
    if ckpt["config"].get("permute") is not None:  # trained on permuted pixels: tested on them too
        images = images.flatten(1)[:, pixel_permutation(ckpt["config"]["permute"])].view(images.shape)
    images = images.to(device)
    labels = torch.from_numpy(arrays.test_labels).long().to(device)
    logits = predict_logits(model, images)
    if logits.shape[1] != len(arrays.classes):
        raise UserError(f"{resolve_checkpoint(path)}: the model has {logits.shape[1]} outputs, "
                        f"but {arrays.name} has {len(arrays.classes)} classes")  # fmt: skip
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
    p.add_argument("--out", default=None,
                   help="confusion-matrix PNG, or a directory for confusion.png; an existing file is replaced only if it "
                        "is a PNG figure drawn by matplotlib (default: confusion.png beside the checkpoint)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the results as JSON")


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
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.format == "PNG" and str(image.info.get("Software", "")).startswith("Matplotlib")
    except Exception:  # noqa: BLE001 - a file PIL cannot open (or a directory) is not a figure
        return False


def run(args: argparse.Namespace) -> int:
    from mnistlab.checkpoint import load_checkpoint
    from mnistlab.data import load_dataset

    path = resolve_checkpoint(args.checkpoint)
    dataset = load_checkpoint(path)["config"].get("dataset", "mnist")
    png = confusion_path(args.out, path)  # refused before the work, not after
    quiet = (lambda line: None) if args.json else (lambda line: print(f"data: {line}"))
    arrays = load_dataset(dataset, args.data_dir, log=quiet)
    result = evaluate_checkpoint(path, arrays, resolve_device(args.device))
    matrix = np.array(result["confusion_matrix"])
    try:  # a read-only run directory still gets its results printed
        plot_confusion(matrix, png, arrays.classes, title=f"{result['model']} on {dataset} test set")
        problem = None
    except UserError as e:
        problem = str(e)
    except OSError as e:
        problem = f"{png}: {e.strerror or e}"
    result["confusion_png"] = str(png) if problem is None else None
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['model']} (epoch {result['epoch']}) on the {dataset} test set: "
              f"loss {result['test_loss']:.4f}, accuracy {100 * result['test_acc']:.2f}%")  # fmt: skip
        print("per-class accuracy: " + "  ".join(f"{c} {100 * a:.2f}%" for c, a in result["per_class_acc"].items()))
        print(format_confusion(matrix, arrays.classes))
        if problem is None:
            print(f"wrote {png}")
    if problem is not None:
        if args.out:  # the file asked for is not there: the command failed
            raise UserError(f"confusion matrix not written: {problem}")
        print(f"mnistlab evaluate: warning: confusion matrix not written: {problem}", file=sys.stderr)
    return 0
