"""`mnistlab predict`: the digit in each image file, by a trained model.

Each file is preprocessed as MNIST was made (`preprocess.to_mnist`). A file that cannot be
read gets its own error line; the others are still predicted, and the exit status is 2.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
from torch import nn

from mnistlab import onnx_export
from mnistlab.checkpoint import load_model
from mnistlab.engine import predict_logits
from mnistlab.errors import UserError
from mnistlab.preprocess import load_image, to_mnist


def predict_probabilities(model: nn.Module, images: np.ndarray) -> np.ndarray:
    """uint8 images (N, 28, 28) -> class probabilities float64 (N, 10), in eval mode."""
    logits = predict_logits(model, torch.from_numpy(np.ascontiguousarray(images)))
    return torch.softmax(logits.double(), dim=1).numpy()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?", help="a checkpoint file, or a run directory that holds checkpoint.pt (default: none; left out with --onnx)")
    parser.add_argument(
        "images", nargs="+", metavar="IMAGE",
        help="PNG or JPEG files, each holding one digit: dark on light or light on dark, any size",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per image, instead of text")
    parser.add_argument("--onnx", metavar="MODEL.onnx", help="predict with a file from `mnistlab export`, through ONNX Runtime, instead of a checkpoint (default: the checkpoint)")


def run(args: argparse.Namespace) -> int:
    paths = args.images
    if args.onnx:
        session = onnx_export.load_session(args.onnx)
        paths = [args.checkpoint, *paths] if args.checkpoint else paths  # with --onnx, every positional is an image
        probabilities_of = lambda images: onnx_export.predict_probabilities(session, images)  # noqa: E731
    elif args.checkpoint is None:
        raise UserError("give a checkpoint or run directory (or --onnx MODEL.onnx), then the images")
    else:
        model, _ = load_model(args.checkpoint)
        probabilities_of = lambda images: predict_probabilities(model, images)  # noqa: E731
    images, errors = {}, {}
    for path in paths:
        try:
            images[path] = to_mnist(load_image(path))
        except UserError as e:
            errors[path] = str(e)
            print(f"mnistlab predict: error: {e}", file=sys.stderr)

    probabilities = dict(zip(images, probabilities_of(np.stack(list(images.values()))))) if images else {}
    results = []
    for path in paths:
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
            "blank": not images[path].any(),
        })  # fmt: skip

    if args.json:
        print(json.dumps(results, indent=2))
    else:
        width = max(len(r["image"]) for r in results)
        for r in results:
            if "error" not in r:
                note = "  (blank image)" if r["blank"] else ""
                print(f"{r['image']:<{width}}  {r['digit']}  p={r['probability']:.3f}{note}")
    return 2 if errors else 0
