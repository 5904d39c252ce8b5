"""`mnistlab predict`: the digit in each image file, by a trained model.

A file that cannot be read, or that holds no digit, gets its own error line; the others are
still predicted, and the exit status is 2. `--save-input DIR` also writes the 28x28 image the
model saw.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mnistlab import onnx_export
from mnistlab.checkpoint import load_model
from mnistlab.errors import UserError
from mnistlab.predict import SAVED_SUFFIX, predict_files, predict_probabilities
from mnistlab.preprocess import MAX_SIDE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        nargs="?",
        help="a checkpoint file, or a run directory that holds checkpoint.pt (default: none; left out with --onnx)",
    )
    parser.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help=f"PNG or JPEG files, each holding one digit: dark on light or light on dark, "
        f"up to {MAX_SIDE}x{MAX_SIDE} pixels",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per image, instead of text")
    parser.add_argument(
        "--save-input",
        metavar="DIR",
        default=None,
        help=f"also write the 28x28 image the model saw for each file, white ink on black as the page "
        f"shows it, to DIR/<name>{SAVED_SUFFIX}; a file already there is replaced only if it is "
        f"such an image (default: none)",
    )
    parser.add_argument(
        "--onnx",
        metavar="MODEL.onnx",
        help="predict with a file from `mnistlab export`, through ONNX Runtime, instead of a checkpoint (default: the checkpoint)",
    )


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
    results = predict_files(probabilities_of, paths, save_dir)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        width = max(len(r["image"]) for r in results)
        for r in results:
            if "error" not in r:
                print(f"{r['image']:<{width}}  {r['digit']}  p={r['probability']:.3f}")
    return 2 if any("error" in r or "save_error" in r for r in results) else 0
