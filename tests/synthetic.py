"""Test data made on the spot, so tests need neither the network nor the real data: a small,
learnable stand-in for MNIST, digits drawn with PIL, and checkpoints of untrained models."""

from __future__ import annotations

import functools
import http.client
import io
import json
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import mnistlab.data
from mnistlab.checkpoint import save_checkpoint
from mnistlab.data import MnistArrays
from mnistlab.models import create_model
from mnistlab.preprocess import to_mnist


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
    arrays = make_arrays(n_train, n_test)
    monkeypatch.setattr(mnistlab.data, "load_dataset", lambda *a, **k: arrays)
    return arrays


# --- digits drawn with PIL (strokes in relative coordinates) ---------------------------------

# Strokes per digit, as polylines in a unit square (x right, y down).
STROKES = {
    1: [[(0.45, 0.25), (0.55, 0.15), (0.55, 0.85)]],
    4: [[(0.6, 0.85), (0.6, 0.15), (0.3, 0.6), (0.75, 0.6)]],
    7: [[(0.3, 0.2), (0.7, 0.2), (0.45, 0.85)]],
}


def draw_digit(digit: int, size=(300, 200), paper=255, ink=0, width=None, mode="L") -> Image.Image:
    """A digit drawn with PIL: ink strokes on plain paper, centred in a box of the image's height."""
    w, h = size
    image = Image.new(mode, size, paper)
    pen = ImageDraw.Draw(image)
    side, left = 0.8 * h, (w - 0.8 * h) / 2
    for stroke in STROKES[digit]:
        points = [(left + x * side, 0.1 * h + y * side) for x, y in stroke]
        pen.line(points, fill=ink, width=width or max(1, round(h / 16)), joint="curve")
    return image


def png_bytes(image: Image.Image, format="PNG", **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **kw)
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A PNG header for a huge image with (almost) no pixel data: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@functools.cache
def drawn_test_set() -> tuple[np.ndarray, np.ndarray]:
    """A test set of the drawn digits, as MNIST's: (uint8 images (N, 28, 28), labels)."""
    labels = np.array(sorted(STROKES), dtype=np.uint8)
    return np.stack([to_mnist(draw_digit(d)) for d in labels]), labels


# --- checkpoints of untrained models ---------------------------------------------------------


def with_batch_norm_statistics(name: str, seed: int = 0) -> torch.nn.Module:
    """A model of random weights (seeded) whose batch norms have running statistics and affine
    parameters far from 0 and 1, so that code which dropped a norm, applied it twice or used the
    batch's statistics would show (with the defaults a norm in evaluation form is nearly the identity)."""
    torch.manual_seed(seed)
    model = create_model(name)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.2, 3.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model


def write_checkpoint(path: Path, **changes) -> Path:
    """An untrained mlp-small checkpoint as `mnistlab train` writes it, with `changes` to its fields."""
    model = create_model("mlp-small")
    fields = dict(
        model_name="mlp-small",
        model_kwargs={},
        config={"model": "mlp-small", "dataset": "mnist", "epochs": 1},
        epoch=1,
        metrics=[{"epoch": 1, "val_acc": 0.1}],
        model_state=model.state_dict(),
    )
    save_checkpoint(path, **{**fields, **changes})
    return path


def save_model(run_dir: Path, model_name="lenet5", seed=0, val_acc=0.5, dataset="mnist") -> Path:
    """An untrained model saved as a run directory's checkpoint, as `mnistlab train` would."""
    torch.manual_seed(seed)
    model = create_model(model_name)
    save_checkpoint(
        run_dir / "checkpoint.pt",
        model_name=model_name,
        model_kwargs={},
        config={"model": model_name, "dataset": dataset, "seed": seed},
        epoch=1,
        metrics=[{"epoch": 1, "train_acc": 0.1, "val_acc": val_acc, "test_acc": 0.1}],
        model_state=model.state_dict(),
    )
    return run_dir


def synthetic_command(n_train: int, n_test: int) -> list[str]:
    """The start of a command line that runs `mnistlab ARGS...` in a new process on `make_arrays(n_train, n_test)`.

    The process takes SIGINT as a terminal's Ctrl-C even where the tests themselves run with it
    ignored (started in the background by a shell without job control, which Python honours).
    """
    code = (
        "import signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
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
    n_train, n_test = (int(n) for n in os.environ["MNISTLAB_SYNTHETIC"].split(","))
    arrays = make_arrays(n_train, n_test)
    mnistlab.data.load_dataset = lambda *a, **k: arrays


# --- HTTP -------------------------------------------------------------------------------------------


def request(port, method, path, body=None, headers=None, content_length=True):
    """(status, headers, parsed JSON or raw bytes) for one request on a fresh connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, path)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if body is not None and content_length:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        data = response.read()
        if response.getheader("Content-Type") == "application/json":
            data = json.loads(data)
        return response.status, response.headers, data
    finally:
        connection.close()


def save_registry_models(root: Path, seed: int = 0) -> list[Path]:
    """A run directory for every model in the registry, of random weights (`with_batch_norm_statistics`)."""
    from mnistlab.models import MODELS

    paths = []
    for name in MODELS:
        model = with_batch_norm_statistics(name, seed)
        config = {"model": name, "dataset": "mnist", "seed": seed}
        save_checkpoint(
            root / name / "checkpoint.pt",
            model_name=name,
            model_kwargs={},
            config=config,
            epoch=1,
            metrics=[{"epoch": 1, "val_acc": 0.5}],
            model_state=model.state_dict(),
        )
        paths.append(root / name)
    return paths
