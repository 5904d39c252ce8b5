"""What a run records after each epoch: the columns of its metrics, metrics.csv, and the console line."""

from __future__ import annotations

import csv
import io
from pathlib import Path

METRIC_COLUMNS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
    "lr", "epoch_seconds", "samples_per_second",
)  # fmt: skip


def metrics_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in METRIC_COLUMNS})
    return buf.getvalue()


def read_metrics_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


def format_epoch(row: dict, epochs: int, peak_lr: float) -> str:
    """The console line of an epoch. It shows the epoch's highest learning rate, which says more
    than metrics.csv's `lr`, the rate of its last step (about 0 at the end of a cosine)."""
    width = len(str(epochs))
    parts = [f"epoch {row['epoch']:>{width}}/{epochs}"]
    for split in ("train", "val", "test"):
        parts.append(f"{split} loss {row[f'{split}_loss']:.4f} acc {100 * row[f'{split}_acc']:6.2f}%")
    parts.append(f"peak lr {peak_lr:.2e}")
    parts.append(f"{row['epoch_seconds']:5.1f}s {row['samples_per_second']:7.0f}/s")
    return " | ".join(parts)
