"""Figures, drawn from saved metrics after training, never inside the loop."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mnistlab.configurations import declared  # noqa: E402
from mnistlab.fileio import atomic_open  # noqa: E402


def save_figure(fig, path: str | Path) -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_curves(history: list[dict], path: str | Path, title: str = "") -> None:
    """Loss and accuracy per epoch for the train, validation and test splits."""
    epochs = [row["epoch"] for row in history]
    # constrained layout spaces the panels by their labels, so the accuracy label clears the loss panel
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for split, style in (("train", "-"), ("val", "--"), ("test", ":")):
        ax_loss.plot(epochs, [row[f"{split}_loss"] for row in history], style, marker="o", ms=3, label=split)
        ax_acc.plot(epochs, [100 * row[f"{split}_acc"] for row in history], style, marker="o", ms=3, label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title=f"{title} loss".strip())
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title=f"{title} accuracy".strip())
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # no epoch 1.5
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


def plot_mistakes(
    images: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    path: str | Path,
    classes: tuple[str, ...],
    limit: int = 48,
    columns: int = 12,
) -> None:
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


def plot_study_curves(results: dict, path: str | Path) -> None:
    """Loss and accuracy per epoch, train and test, every arm of a study: mean line, min-max band over seeds."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, variant) in enumerate(declared(results).items()):
        runs = [r for r in results["runs"] if r["variant"] == name]
        epochs = [m["epoch"] for m in runs[0]["metrics"]]
        style = "--" if variant["base"] is not None else "-"  # a baseline's variations dashed
        for row, metric in enumerate(("loss", "acc")):
            for col, split in enumerate(("train", "test")):
                values = np.array([[m[f"{split}_{metric}"] for m in r["metrics"]] for r in runs])
                if metric == "acc":
                    values = 100 * values
                ax = axes[row, col]
                color = colors[i % len(colors)]
                ax.plot(epochs, values.mean(0), style, color=color, marker="o", ms=3, label=variant["label"])
                if len(runs) > 1:
                    ax.fill_between(epochs, values.min(0), values.max(0), color=color, alpha=0.15, linewidth=0)
    for col, split in enumerate(("train", "test")):
        axes[0, col].set(title=f"{split} loss", ylabel="cross-entropy", yscale="log")
        axes[1, col].set(title=f"{split} accuracy", ylabel="accuracy (%)", xlabel="epoch")
        lows = [line.get_ydata().min() for line in axes[1, col].get_lines()]
        axes[1, col].set_ylim(max(min(lows) - 0.3, 0), 100.05)
    for ax in axes.flat:
        ax.grid(alpha=0.3, which="both")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[1, 1].legend(fontsize=8, loc="lower right")
    save_figure(fig, path)


# ---------------------------------------------------------------- the claims' figures (claims.py)


def _band(ax, x, runs: np.ndarray, color, label: str, style: str = "-", marker: str = "o") -> None:
    """The mean over seeds as a line, the range between the lowest and highest seed as a band."""
    ax.plot(x, runs.mean(0), style, color=color, marker=marker, ms=3, label=label)
    if len(runs) > 1:
        ax.fill_between(x, runs.min(0), runs.max(0), color=color, alpha=0.15, linewidth=0)


def plot_robustness(
    robustness: dict, runs: dict[str, list[str]], labels: dict[str, str], path: str | Path, images: int
) -> None:
    """Test accuracy against shift and against rotation, a line per arm; `runs` maps an arm to its run dirs."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, kind, unit in (
        (axes[0], "shift", "pixels; mean of right, left, down, up"),
        (axes[1], "rotation", "degrees; mean of both ways"),
    ):
        values = robustness[kind]["values"]
        for i, (arm, dirs) in enumerate(runs.items()):
            curves = 100 * np.array([robustness["per_run"][kind][d] for d in dirs])
            _band(
                ax,
                values,
                curves,
                colors[i % len(colors)],
                labels[arm],
                "--" if "augment" in arm or arm == "lenet5-all" else "-",
            )
        ax.set(
            xlabel=f"{kind} ({unit})",
            ylabel="test accuracy (%)",
            title=f"Test digits {'shifted' if kind == 'shift' else 'rotated'}",
            xticks=values,
            ylim=(0, 100),
        )
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower left")
    fig.suptitle(
        f"Final models of every arm on {images:,} moved test images (no training); line: mean, band: seed range"
    )
    save_figure(fig, path)


def plot_limited_data(
    sizes: list[int], errors: dict[str, np.ndarray], labels: dict[str, str], steps: list[int], path: str | Path
) -> None:
    """Test error against training-set size, log-log; `errors[arm]` is (seeds, sizes) in percent."""
    fig, ax = plt.subplots(figsize=(7.5, 5), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (arm, values) in enumerate(errors.items()):
        _band(ax, sizes, values, colors[i % len(colors)], labels[arm])
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="training images (log scale)",
        ylabel="test error (%, log scale)",
        title="Limited data: test error against training-set size",
    )
    ax.set_xticks(sizes, [f"{s:,}\n{n:,} steps" for s, n in zip(sizes, steps)], fontsize=8)
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_learning_rates(
    rates: list[float],
    accuracy: dict[str, np.ndarray],
    failed: dict[str, np.ndarray],
    labels: dict[str, str],
    title: str,
    path: str | Path,
) -> None:
    """Validation accuracy against learning rate, a line per arm (`accuracy[arm]`: (seeds, rates), percent),
    a dot per run; a cross marks each run that stopped (`failed[arm]`: (seeds, rates), bool)."""
    fig, ax = plt.subplots(figsize=(7.5, 5), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (arm, values) in enumerate(accuracy.items()):
        color = colors[i % len(colors)]
        _band(ax, rates, values, color, labels[arm])
        ax.plot(
            np.broadcast_to(rates, values.shape).ravel(), values.ravel(), ".", color=color, alpha=0.6, ms=5
        )  # each run
        stopped = failed[arm]
        if stopped.any():
            ax.plot(
                np.broadcast_to(rates, values.shape)[stopped],
                values[stopped],
                "x",
                color=color,
                ms=9,
                label=f"{labels[arm]}: run stopped (loss not finite, or at chance)",
            )
    ax.set(
        xscale="log",
        xlabel="peak learning rate (log scale)",
        ylabel="validation accuracy (%)",
        title=title,
        ylim=(0, 100),
    )
    ax.set_xticks(rates, [f"{r:g}" for r in rates])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    save_figure(fig, path)


def plot_speed(
    curves: dict[str, np.ndarray], steps: np.ndarray, threshold: float, labels: dict[str, str], path: str | Path
) -> None:
    """Validation accuracy against optimizer steps (`curves[arm]`: (seeds, epochs), percent), with the threshold."""
    fig, ax = plt.subplots(figsize=(7.5, 5), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (arm, values) in enumerate(curves.items()):
        _band(ax, steps, values, colors[i % len(colors)], labels[arm])
    ax.axhline(100 * threshold, color="grey", linestyle=":", label=f"threshold {100 * threshold:.2f}%")
    lows = min(v.min() for v in curves.values())
    ax.set(
        xlabel="optimizer steps (a point after each epoch)",
        ylabel="validation accuracy (%)",
        title="Batch norm and training speed: validation accuracy against steps",
        ylim=(max(0, min(lows, 100 * threshold) - 1), 100),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, path)


def plot_measured_speed(
    runs: dict[str, list[dict]], threshold: float, every: int, labels: dict[str, str], path: str | Path
) -> None:
    """The speed experiment's validation accuracy against optimizer steps, a line per run (`runs[arm]`:
    bnspeed's records, each ending where it reached the threshold), a dot where it did."""
    fig, ax = plt.subplots(figsize=(7.5, 5), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lows = [100 * threshold]
    for i, (arm, records) in enumerate(runs.items()):
        color = colors[i % len(colors)]
        for j, r in enumerate(records):
            accuracy = 100 * np.array(r["val_acc"])
            ax.plot(r["steps"], accuracy, "-", color=color, alpha=0.7, lw=1, label=labels[arm] if j == 0 else None)
            if r["reached"] is not None:
                ax.plot(r["reached"], accuracy[r["steps"].index(r["reached"])], "o", color=color, ms=5)
            lows.append(accuracy[len(accuracy) // 4])  # the scale shows the approach, not the first steps
    ax.axhline(100 * threshold, color="grey", linestyle=":", label=f"threshold {100 * threshold:.2f}%")
    ax.set(
        xlabel=f"optimizer steps (a point every {every}; a dot where a run reached the threshold and stopped)",
        ylabel="validation accuracy (%)",
        title="Batch norm and training speed: validation accuracy against steps, a line per seed",
        ylim=(max(0, min(lows) - 1), 100),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, path)
