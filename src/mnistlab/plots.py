"""Figures, drawn from saved metrics after training, never inside the loop."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mnistlab.fileio import atomic_open  # noqa: E402


def save_figure(fig, path: str | Path) -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_curves(history: list[dict], path: str | Path, title: str = "") -> None:
    """Loss and accuracy per epoch for the train, validation and test splits."""
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-"), ("val", "--"), ("test", ":")):
        ax_loss.plot(epochs, [row[f"{split}_loss"] for row in history], style, marker="o", ms=3, label=split)
        ax_acc.plot(epochs, [100 * row[f"{split}_acc"] for row in history], style, marker="o", ms=3, label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title=f"{title} loss".strip())
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title=f"{title} accuracy".strip())
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int = 10) -> np.ndarray:
    """counts[true, predicted]."""
    return np.bincount(num_classes * labels.astype(np.int64) + predictions, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def plot_confusion(matrix: np.ndarray, path: str | Path, classes: tuple[str, ...], title: str = "") -> None:
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    shown = np.log1p(matrix)  # a log scale keeps the few errors visible beside the large diagonal
    ax.imshow(shown, cmap="Blues")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            color = "white" if shown[i, j] > shown.max() * 0.6 else "black"
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(len(classes)), classes, rotation=45 if max(map(len, classes)) > 2 else 0)
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    save_figure(fig, path)


def plot_mistakes(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray, path: str | Path,
                  classes: tuple[str, ...], limit: int = 48, columns: int = 12) -> None:  # fmt: skip
    """A grid of misclassified images, each titled 'true→predicted'."""
    wrong = np.flatnonzero(labels != predictions)[:limit]
    rows = max(1, -(-len(wrong) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.9, rows * 1.05), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        ax.imshow(images[i], cmap="gray_r")
        ax.set_title(f"{classes[labels[i]]}→{classes[predictions[i]]}", fontsize=8)
    save_figure(fig, path)
