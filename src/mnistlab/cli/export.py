"""`mnistlab export`: a checkpoint -> one self-contained ONNX file, checked by ONNX Runtime on the test set.

The work is done by `onnx_export`; this module only reads flags and prints the outcome.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mnistlab import data, onnx_export
from mnistlab.checkpoint import load_model
from mnistlab.cli.flags import add_shared
from mnistlab.errors import UserError
from mnistlab.fileio import DiskFull

EPILOG = f"""\
The file takes `images`, float32 (N, 1, 28, 28) for any batch size N, normalized as in
training: (pixels / 255 - {onnx_export.MEAN}) / {onnx_export.STD}, where pixels are uint8, a white digit on black
(as in MNIST; `mnistlab predict` makes such images from photos). It returns `logits`
(N, classes). The mean, the std and the class names are in the file's metadata.

The export is checked: ONNX Runtime runs the file on the whole test set, and a largest
logit difference from PyTorch above {onnx_export.TOLERANCE:g} fails the export; no file is written then.
Needs the optional extra: {onnx_export.INSTALL}."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT", help="a run directory or a checkpoint file")
    p.add_argument(
        "--onnx", required=True, metavar="OUT.onnx", default=argparse.SUPPRESS, help="the ONNX file to write (required)"
    )
    p.add_argument("--force", action="store_true", help="replace OUT.onnx if it exists and is an ONNX model")
    add_shared(p, "data_dir")


def run(args: argparse.Namespace) -> int:
    onnx_export.require_extra()
    out = output_path(args.onnx, args.force)
    model, ckpt = load_model(args.checkpoint)
    dataset = ckpt["config"].get("dataset", "mnist")
    arrays = data.load_dataset(dataset, args.data_dir, log=lambda line: print(f"data: {line}"))
    props = onnx_export.metadata(ckpt["model_name"], dataset, arrays.classes)
    try:
        result = onnx_export.export(model, out, arrays.test_images, arrays.test_labels, props)
    except DiskFull as e:
        left = "the file there is left as it was" if out.exists() else "nothing was written"
        raise DiskFull(f"{e}; {left}") from None
    except onnx_export.VerificationFailed as e:
        print(f"mnistlab export: verification failed: {e}", file=sys.stderr)
        return 1
    check = result.verification
    print(
        f"exported {ckpt['model_name']} (epoch {ckpt['epoch']}) to {out}: {result.size:,} bytes, "
        f"opset {onnx_export.OPSET}, {result.export_s:.1f} s"
    )
    print(
        f"verified with ONNX Runtime on the {dataset} test set ({check.images:,} images): "
        f"largest logit difference {check.max_abs_diff:.2g} (tolerance {onnx_export.TOLERANCE:g}), "
        f"{check.differing} differing predictions, accuracy {100 * check.accuracy:.2f}%"
    )
    return 0


def output_path(text: str, force: bool) -> Path:
    """The file to write. Only an ONNX model is ever replaced (with `force`): never a checkpoint, a
    run's config.json or metrics.csv, a directory, or what a symbolic link points to."""
    out = Path(text)
    if text.endswith(("/", os.sep)) or out.is_dir():
        raise UserError(f"{text}: is a directory; give the path of the .onnx file to write")
    if out.is_symlink():
        raise UserError(f"{out}: is a symbolic link; left as it is: give the path of a file to write")
    if out.exists():
        if not force:
            raise UserError(f"{out} exists; pass --force to replace it")
        if not (out.is_file() and onnx_export.is_onnx_model(out)):
            raise UserError(
                f"{out}: exists and is not an ONNX model; --force replaces only an ONNX file, so it is left as it is"
            )
    return out
