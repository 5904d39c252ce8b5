"""`mnistlab predict`: the digit in each image file, by a trained model.

Each file is preprocessed as MNIST was made (`preprocess.to_mnist`). A file that cannot be
read, or that holds no digit, gets its own error line; the others are still predicted, and
the exit status is 2.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
from torch import nn

from mnistlab.checkpoint import load_model
from mnistlab.engine import predict_logits
from mnistlab.errors import UserError
from mnistlab.preprocess import load_image, to_mnist


def predict_probabilities(model: nn.Module, images: np.ndarray) -> np.ndarray:
    """uint8 images (N, 28, 28) -> class probabilities float64 (N, 10), in eval mode."""
    logits = predict_logits(model, torch.from_numpy(np.ascontiguousarray(images)))
    return torch.softmax(logits.double(), dim=1).numpy()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint file, or a run directory that holds checkpoint.pt")
    parser.add_argument(
        "images", nargs="+", metavar="IMAGE",
        help="PNG or JPEG files, each holding one digit: dark on light or light on dark, any size",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per image, instead of text")


def run(args: argparse.Namespace) -> int:
    model, _ = load_model(args.checkpoint)
    images, errors = {}, {}
    for path in args.images:
        try:
            image = to_mnist(load_image(path))
            if not image.any():
                raise UserError(f"{path}: no digit found (a blank image, or ink too faint to tell from the paper)")
            images[path] = image
        except UserError as e:
            errors[path] = str(e)
            print(f"mnistlab predict: error: {e}", file=sys.stderr)

    probabilities = dict(zip(images, predict_probabilities(model, np.stack(list(images.values()))))) if images else {}
    results = []
    for path in args.images:
        if path in errors:
            results.append({"image": path, "error": errors[path]})
            continue
        p = probabilities[path]
        digit = int(p.argmax())
        results.append({
            "image": path,
            "digit": digit,
            "probability": round(float(p[digit]), 6),
            "probabilities": [round(float(x), 6) for x in p],
        })  # fmt: skip

    if args.json:
        print(json.dumps(results, indent=2))
    else:
        width = max(len(r["image"]) for r in results)
        for r in results:
            if "error" not in r:
                print(f"{r['image']:<{width}}  {r['digit']}  p={r['probability']:.3f}")
    return 2 if errors else 0
