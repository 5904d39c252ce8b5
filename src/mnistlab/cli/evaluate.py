"""`mnistlab evaluate`: test loss and accuracy, per-class accuracy and the confusion matrix of a checkpoint."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from mnistlab import data
from mnistlab.checkpoint import load_checkpoint, resolve_checkpoint
from mnistlab.cli.flags import add_one_thread_flag, add_shared
from mnistlab.errors import UserError
from mnistlab.evaluate import confusion_path, evaluate_checkpoint, format_confusion
from mnistlab.plots import plot_confusion
from mnistlab.runtime import resolve_device, set_threads


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="DIR|CHECKPOINT", help="a run directory or a checkpoint file")
    add_shared(p, "data_dir", "device")
    add_one_thread_flag(p)
    p.add_argument(
        "--out",
        default=None,
        help="confusion-matrix PNG, or a directory for confusion.png; an existing file is replaced only if it "
        "is a PNG figure drawn by matplotlib (default: confusion.png beside the checkpoint)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    path = resolve_checkpoint(args.checkpoint)
    dataset = load_checkpoint(path)["config"].get("dataset", "mnist")
    png = confusion_path(args.out, path)  # refused before the work, not after
    quiet = (lambda line: None) if args.json else (lambda line: print(f"data: {line}"))
    arrays = data.load_dataset(dataset, args.data_dir, log=quiet)
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
        print(
            f"{result['model']} (epoch {result['epoch']}) on the {dataset} test set: "
            f"loss {result['test_loss']:.4f}, accuracy {100 * result['test_acc']:.2f}%"
        )
        print("per-class accuracy: " + "  ".join(f"{c} {100 * a:.2f}%" for c, a in result["per_class_acc"].items()))
        print(format_confusion(matrix, arrays.classes))
        if problem is None:
            print(f"wrote {png}")
    if problem is not None:
        if args.out:  # the file asked for is not there: the command failed
            raise UserError(f"confusion matrix not written: {problem}")
        print(f"mnistlab evaluate: warning: confusion matrix not written: {problem}", file=sys.stderr)
    return 0
