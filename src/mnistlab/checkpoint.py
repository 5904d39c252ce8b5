"""Checkpoints that describe themselves and load with `weights_only=True`.

A checkpoint holds the model's name and kwargs, the run's config, the epoch, the metrics
so far, and the optimizer and RNG state needed to resume exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mnistlab import __version__
from mnistlab.errors import UserError
from mnistlab.fileio import atomic_open
from mnistlab.models import create_model
from mnistlab.speedups import speed_up

FORMAT = "mnistlab-checkpoint-1"
CHECKPOINT_NAME = "checkpoint.pt"
REQUIRED = ("format", "model_name", "model_kwargs", "config", "epoch", "metrics", "model_state")


def save_checkpoint(path: str | Path, **fields) -> None:
    """Write a checkpoint atomically: a crash mid-write leaves the previous one intact."""
    payload = {"format": FORMAT, "mnistlab_version": __version__, **fields}
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise ValueError(f"checkpoint is missing {missing}")
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory or a checkpoint file -> the checkpoint file."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load and check a checkpoint; anything that is not an mnistlab checkpoint is a UserError."""
    path = resolve_checkpoint(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read a user's file is that file's problem
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a readable checkpoint ({first_line[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: not an mnistlab checkpoint")
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise UserError(f"{path}: checkpoint is missing {', '.join(missing)}")
    return payload


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model from a checkpoint alone; returns (model in eval mode, checkpoint)."""
    ckpt = load_checkpoint(path, map_location=device)
    model = create_model(ckpt["model_name"], **ckpt["model_kwargs"])
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as e:
        raise UserError(f"{resolve_checkpoint(path)}: weights do not fit model {ckpt['model_name']!r} ({str(e).splitlines()[0]})") from None
    return speed_up(model.to(device)).eval(), ckpt  # the folded batch norm the engine evaluates with
