"""Train / validation / test splits on one device: `split_dataset`, and the fixed subset of the
training split on which each epoch's training metrics are measured (`metric_splits`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

from mnistlab.errors import UserError

NUM_PIXELS = 28 * 28


@dataclass
class Splits:
    """Train / validation / test tensors on one device: images uint8 (N, 28, 28), labels int64."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    def items(self) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        yield "train", self.train_images, self.train_labels
        yield "val", self.val_images, self.val_labels
        yield "test", self.test_images, self.test_labels


def split_dataset(
    arrays, val_size: int, seed: int, device: torch.device, train_size: int = 0, permute: int | None = None
) -> Splits:
    """Hold out `val_size` training images, chosen by a permutation seeded with `seed`; move all to `device`.

    `train_size` > 0 keeps a class-balanced subset of that many training images, drawn after the
    split by the same generator, so a seed gives the same validation images with or without it.
    `permute` reorders the pixels of every image of every split by `pixel_permutation(permute)`.
    """
    n = len(arrays.train_labels)
    if val_size >= n:
        raise UserError(f"val-size {val_size} leaves no training images (the training set has {n})")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    train_idx, val_idx = order[val_size:].sort().values, order[:val_size].sort().values
    images = torch.from_numpy(arrays.train_images)
    labels = torch.from_numpy(arrays.train_labels).long()
    if train_size:
        train_idx = train_idx[balanced_subset(labels[train_idx], train_size, generator)]
    pixels = None if permute is None else pixel_permutation(permute)

    def put(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous().to(device)

    def put_images(t: torch.Tensor) -> torch.Tensor:
        return put(t if pixels is None else t.flatten(1)[:, pixels].view(t.shape))

    return Splits(
        put_images(images[train_idx]),
        put(labels[train_idx]),
        put_images(images[val_idx]),
        put(labels[val_idx]),
        put_images(torch.from_numpy(arrays.test_images)),
        put(torch.from_numpy(arrays.test_labels).long()),
    )


def pixel_permutation(seed: int) -> torch.Tensor:
    """A fixed order of the 784 pixel positions: image.flatten()[perm] is the permuted image."""
    return torch.randperm(NUM_PIXELS, generator=torch.Generator().manual_seed(seed))


def balanced_subset(labels: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Sorted indices of `size` of `labels`, as many of each class as can be (the first classes get
    the remainder), drawn at random by `generator`."""
    classes = int(labels.max()) + 1
    if size > len(labels):
        raise UserError(f"train-size {size} is more than the {len(labels)} images of the training split")
    chosen = []
    for c in range(classes):
        members = torch.nonzero(labels == c).flatten()
        want = size // classes + (c < size % classes)
        if want > len(members):
            raise UserError(
                f"train-size {size} needs {want} images of class {c}; the training split has {len(members)}"
            )
        chosen.append(members[torch.randperm(len(members), generator=generator)[:want]])
    return torch.cat(chosen).sort().values


def metric_splits(splits: Splits, train_eval_size: int, seed: int) -> Splits:
    """The splits the per-epoch metrics are measured on: the training split cut to `train_eval_size` images.

    The same images every epoch, chosen by a permutation seeded with `seed` (its own generator,
    so the training's draws do not move); all of it when `train_eval_size` is 0 or not smaller.
    """
    n = len(splits.train_labels)
    if train_eval_size == 0 or train_eval_size >= n:
        return splits
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    idx = order[:train_eval_size].sort().values.to(splits.train_labels.device)
    return replace(splits, train_images=splits.train_images[idx], train_labels=splits.train_labels[idx])
