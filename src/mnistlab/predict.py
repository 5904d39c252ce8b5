"""The digit in each image file, by a trained model (`mnistlab predict`, and the page of `mnistlab serve`).

Each file is preprocessed as MNIST was made (`preprocess.to_mnist`). A file that cannot be
read, or that holds no digit, gets its own error line; the others are still predicted.
`save_dir` also writes the 28x28 image the model saw.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from mnistlab.errors import UserError
from mnistlab.fileio import atomic_write
from mnistlab.inputs import predict_logits
from mnistlab.preprocess import FIELD, load_image, to_mnist

SAVED_SUFFIX = ".28x28.png"  # --save-input writes DIR/<name of the image file>.28x28.png


def predict_probabilities(model: nn.Module, images: np.ndarray) -> np.ndarray:
    """uint8 images (N, 28, 28) -> class probabilities float64 (N, 10), in eval mode."""
    logits = predict_logits(model, torch.from_numpy(np.ascontiguousarray(images)))
    return torch.softmax(logits.double(), dim=1).numpy()


def predict_files(
    probabilities_of: Callable[[np.ndarray], np.ndarray], paths: list[str], save_dir: Path | None = None
) -> list[dict]:
    """Per image file: {image, digit, probability, probabilities} (and saved or save_error with
    `save_dir`), or {image, error}; each error is also printed on its own line.

    `probabilities_of` maps uint8 images (N, 28, 28) to class probabilities (N, classes): a
    model's (`predict_probabilities`) or an exported file's (`onnx_export.predict_probabilities`)."""
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
        if not np.isfinite(p).all():
            error = f"{path}: the model's answer is not a number (its logits are NaN or infinite)"
            print(f"mnistlab predict: error: {error}", file=sys.stderr)
            results.append({"image": path, "error": error})
            continue
        digit = int(p.argmax())
        result = {
            "image": path,
            "digit": digit,
            "probability": round(float(p[digit]), 6),
            "probabilities": [round(float(x), 6) for x in p],
        }
        if path in saved:
            result["saved"] = saved[path]
        if path in save_errors:
            result["save_error"] = save_errors[path]
        results.append(result)
    return results


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
