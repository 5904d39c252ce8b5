"""Each run's final model's predicted class for every test image, kept in its run directory.

With them two single models can be compared image by image (stats.mcnemar). The classes are
those of the test set's evaluation that ends the run's last epoch (engine.train_epochs), so they
cost no extra pass; a file that is missing, damaged or of another epoch is made again from the
checkpoint (`keep_test_predictions`).

The file is a compressed NumPy archive (np.savez_compressed): the classes as uint8 and the epoch
they belong to. It loads without pickle (np.load(allow_pickle=False)), and 10,000 classes take a
few kilobytes.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from mnistlab.checkpoint import load_model
from mnistlab.config import TrainConfig
from mnistlab.fileio import atomic_write
from mnistlab.inputs import predict_logits
from mnistlab.splits import pixel_permutation

PREDICTIONS_NAME = "test_predictions.npz"


def write_test_predictions(run_dir: Path, epoch: int, predicted: torch.Tensor | np.ndarray) -> None:
    """Keep the classes `predicted` for the test images by the model of `epoch` in `run_dir`."""
    classes = np.asarray(predicted.cpu() if isinstance(predicted, torch.Tensor) else predicted).astype(np.uint8)
    atomic_write(Path(run_dir) / PREDICTIONS_NAME, lambda f: np.savez_compressed(f, epoch=epoch, predicted=classes))


def read_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a .npz file, or None when it is missing or damaged."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None


def read_test_predictions(run_dir: Path, epoch: int, n_test: int) -> np.ndarray | None:
    """The test classes kept in `run_dir` for `epoch`, or None when the file is missing, damaged or of another
    epoch, or holds another number of images than `n_test`."""
    saved = read_npz(Path(run_dir) / PREDICTIONS_NAME)
    if saved is None or set(saved) != {"epoch", "predicted"}:
        return None
    predicted = saved["predicted"]
    if saved["epoch"].shape != () or int(saved["epoch"]) != epoch or predicted.shape != (n_test,):
        return None
    return predicted


@torch.inference_mode()
def predict_classes(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The predicted class of each of `images` (uint8, N x H x W), in eval mode."""
    return predict_logits(model, images, batch_size).argmax(1)


def keep_test_predictions(run_dir: Path, epoch: int, arrays, device: str | torch.device = "cpu") -> bool:
    """Make sure `run_dir` keeps the test classes of its model of `epoch` (its checkpoint's); True when they had
    to be made again from the checkpoint (a run of an older version, or a file damaged since)."""
    if read_test_predictions(run_dir, epoch, len(arrays.test_labels)) is not None:
        return False
    model, checkpoint = load_model(run_dir, device)
    images = torch.from_numpy(arrays.test_images)
    permute = TrainConfig.from_dict(checkpoint["config"]).permute
    if permute is not None:  # the run's test images are permuted as its training images were (splits.split_dataset)
        images = images.flatten(1)[:, pixel_permutation(permute)].view(images.shape)
    write_test_predictions(run_dir, checkpoint["epoch"], predict_classes(model, images.contiguous().to(device)))
    return True
