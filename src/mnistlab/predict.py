"""`mnistlab predict`: the digit in each image file, by a trained model.

Each file is preprocessed as MNIST was made (`preprocess.to_mnist`). A file that cannot be
read, or that holds no digit, gets its own error line; the others are still predicted, and
the exit status is 2. `--save-input DIR` also writes the 28x28 image the model saw.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from mnistlab import onnx_export
from mnistlab.checkpoint import load_model
from mnistlab.engine import predict_logits
from mnistlab.errors import UserError
from mnistlab.fileio import atomic_write
from mnistlab.preprocess import FIELD, MAX_SIDE, load_image, to_mnist

SAVED_SUFFIX = ".28x28.png"  # --save-input writes DIR/<name of the image file>.28x28.png


def predict_probabilities(model: nn.Module, images: np.ndarray) -> np.ndarray:
    """uint8 images (N, 28, 28) -> class probabilities float64 (N, 10), in eval mode."""
    logits = predict_logits(model, torch.from_numpy(np.ascontiguousarray(images)))
    return torch.softmax(logits.double(), dim=1).numpy()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?", help="a checkpoint file, or a run directory that holds checkpoint.pt (default: none; left out with --onnx)")
    parser.add_argument(
        "images", nargs="+", metavar="IMAGE",
        help=f"PNG or JPEG files, each holding one digit: dark on light or light on dark, "
             f"up to {MAX_SIDE}x{MAX_SIDE} pixels",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per image, instead of text")
    parser.add_argument(
        "--save-input", metavar="DIR", default=None,
        help=f"also write the 28x28 image the model saw for each file, white ink on black as the page "
             f"shows it, to DIR/<name>{SAVED_SUFFIX}; a file already there is replaced only if it is "
             f"such an image (default: none)",
    )  # fmt: skip
    parser.add_argument("--onnx", metavar="MODEL.onnx", help="predict with a file from `mnistlab export`, through ONNX Runtime, instead of a checkpoint (default: the checkpoint)")


def run(args: argparse.Namespace) -> int:
    save_dir = Path(args.save_input) if args.save_input is not None else None
    if save_dir is not None and save_dir.exists() and not save_dir.is_dir():
        raise UserError(f"--save-input {save_dir}: exists and is not a directory")
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
            image = to_mnist(load_image(path))
            if not image.any():
                raise UserError(f"{path}: no digit found (a blank image, or ink too faint to tell from the paper)")
            images[path] = image
        except UserError as e:
            errors[path] = str(e)
            print(f"mnistlab predict: error: {e}", file=sys.stderr)

    saved, save_errors = save_inputs(images, save_dir) if save_dir is not None else ({}, {})
    probabilities = dict(zip(images, probabilities_of(np.stack(list(images.values()))))) if images else {}
    results = []
    for path in paths:
        if path in errors:
            results.append({"image": path, "error": errors[path]})
            continue
        p = probabilities[path]
        digit = int(p.argmax())
        result = {
            "image": path,
            "digit": digit,
            "probability": round(float(p[digit]), 6),
            "probabilities": [round(float(x), 6) for x in p],
        }  # fmt: skip
        if path in saved:
            result["saved"] = saved[path]
        if path in save_errors:
            result["save_error"] = save_errors[path]
        results.append(result)

    if args.json:
        print(json.dumps(results, indent=2))
    else:
        width = max(len(r["image"]) for r in results)
        for r in results:
            if "error" not in r:
                print(f"{r['image']:<{width}}  {r['digit']}  p={r['probability']:.3f}")
    return 2 if errors or save_errors else 0


def save_inputs(images: dict[str, np.ndarray], directory: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Write each image file's 28x28 input as DIR/<its name>.28x28.png -> ({image file: saved
    file}, {image file: error}); each error is also printed on its own line."""
    saved, errors = {}, {}
    shows: dict[Path, str] = {}  # saved file -> the image file it shows
    for path, image in images.items():
        target = directory / (Path(path).stem + SAVED_SUFFIX)
        try:
            if shows.setdefault(target, path) != path:
                raise UserError(f"{target}: not written for {path}: it holds the image of {shows[target]}")
            save_input(image, target)
            saved[path] = str(target)
        except UserError as e:
            errors[path] = str(e)
            print(f"mnistlab predict: error: {e}", file=sys.stderr)
    return saved, errors


def save_input(image: np.ndarray, path: Path) -> None:
    """Write a 28x28 uint8 image as an 8-bit greyscale PNG, atomically. A file already at `path`
    is replaced only if it is such an image (one this option wrote before); anything else stays."""
    if path.is_symlink() or (path.exists() and not is_saved_input(path)):
        raise UserError(f"{path}: exists and is not a {FIELD}x{FIELD} image saved by --save-input: left as it is")
    atomic_write(path, lambda f: Image.fromarray(image).save(f, format="PNG"))


def is_saved_input(path: Path) -> bool:
    """Whether `path` is a small 28x28 8-bit greyscale PNG, the kind of file `save_input` writes."""
    try:
        if not path.is_file() or path.stat().st_size > 4096:
            return False
        with Image.open(path, formats=["PNG"]) as existing:
            return existing.size == (FIELD, FIELD) and existing.mode == "L"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False
