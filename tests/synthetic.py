"""A small, learnable stand-in for MNIST, so tests need neither the network nor the real data."""

from __future__ import annotations

import numpy as np

from mnistlab.data import MnistArrays


def make_arrays(n_train: int = 600, n_test: int = 200, seed: int = 0) -> MnistArrays:
    """Class c is a bright 6x6 square at one of ten places, jittered by a pixel, plus noise."""
    rng = np.random.default_rng(seed)

    def draw(n: int):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            row, col = 3 + 6 * (c // 4) + rng.integers(-1, 2), 3 + 6 * (c % 4) + rng.integers(-1, 2)
            images[i, row : row + 6, col : col + 6] = 255
        return images, labels

    train_images, train_labels = draw(n_train)
    test_images, test_labels = draw(n_test)
    classes = tuple(str(d) for d in range(10))
    return MnistArrays("mnist", "synthetic", train_images, train_labels, test_images, test_labels, classes)


def use_synthetic_data(monkeypatch, n_train: int, n_test: int) -> MnistArrays:
    """Make `mnistlab.data.load_dataset` return `make_arrays(n_train, n_test)`, whatever it is asked for."""
    import mnistlab.data

    arrays = make_arrays(n_train, n_test)
    monkeypatch.setattr(mnistlab.data, "load_dataset", lambda *a, **k: arrays)
    return arrays


def synthetic_command(n_train: int, n_test: int) -> list[str]:
    """The start of a command line that runs `mnistlab ARGS...` in a new process on `make_arrays(n_train, n_test)`."""
    import sys
    from pathlib import Path

    import mnistlab

    code = (
        "import sys\n"
        f"sys.path[:0] = [{str(Path(mnistlab.__file__).parents[1])!r}, {str(Path(__file__).parent)!r}]\n"
        "import mnistlab.data, synthetic\n"
        f"arrays = synthetic.make_arrays({n_train}, {n_test})\n"
        "mnistlab.data.load_dataset = lambda *a, **k: arrays\n"
        "from mnistlab.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return [sys.executable, "-c", code]


def dask_setup(worker) -> None:
    """`dask worker --preload synthetic`: the worker's `load_dataset` returns `make_arrays(N_TRAIN, N_TEST)`,
    the sizes read from $MNISTLAB_SYNTHETIC ("N_TRAIN,N_TEST")."""
    import os

    import mnistlab.data

    n_train, n_test = (int(n) for n in os.environ["MNISTLAB_SYNTHETIC"].split(","))
    arrays = make_arrays(n_train, n_test)
    mnistlab.data.load_dataset = lambda *a, **k: arrays
