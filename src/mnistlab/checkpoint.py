"""Checkpoints that describe themselves and load with `weights_only=True`.

A checkpoint holds the model's name and kwargs, the run's config, the epoch, the metrics
so far, and the optimizer and RNG state needed to resume exactly.
"""

from __future__ import annotations

import io
import os
import pickle
import reprlib
from pathlib import Path

import torch
from torch import nn

from mnistlab import __version__, fast
from mnistlab.errors import UserError
from mnistlab.fileio import atomic_open
from mnistlab.models import check_model_args, create_model

FORMAT = "mnistlab-checkpoint-1"
CHECKPOINT_NAME = "checkpoint.pt"
REQUIRED = ("format", "model_name", "model_kwargs", "config", "epoch", "metrics", "model_state")
ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


def save_checkpoint(path: str | Path, **fields) -> None:
    """Write a checkpoint atomically: a crash mid-write leaves the previous one intact."""
    payload = {"format": FORMAT, "mnistlab_version": __version__, **fields}
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise ValueError(f"checkpoint is missing {missing}")
    serialized = io.BytesIO()  # serialized first: a full disk then fails in a plain write, which says so (errno)
    torch.save(payload, serialized)
    with atomic_open(path, "wb") as f:
        f.write(serialized.getbuffer())


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory or a checkpoint file -> the checkpoint file."""
    if not isinstance(path, (str, os.PathLike)):
        raise UserError(f"a checkpoint is given by its path (a string or a Path), got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load and check a checkpoint; anything that is not an mnistlab checkpoint is a UserError.

    Every field the commands use is checked here, the model's name and arguments included,
    so a damaged or hostile file is refused before anything is built from it.
    """
    path = resolve_checkpoint(path)
    payload = read_payload(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: not an mnistlab checkpoint")
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise UserError(f"{path}: checkpoint is missing {', '.join(missing)}")
    problem = field_problem(payload)
    if problem:
        raise UserError(f"{path}: damaged checkpoint: {problem}")
    try:
        check_model_args(payload["model_name"], payload["model_kwargs"])
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return payload


def read_payload(path: Path, map_location: str | torch.device) -> object:
    """torch.load with weights_only=True, its failures told in one line of our own words."""
    try:
        with open(path, "rb") as f:
            magic = f.read(len(ZIP_MAGIC))
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not magic:
        raise UserError(f"{path}: empty file, not a checkpoint")
    if magic != ZIP_MAGIC:
        raise UserError(f"{path}: not a checkpoint (a checkpoint is a PyTorch zip archive, and this file is not one)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # the weights-only unpickler met something other than tensors and plain data
        raise UserError(f"{path}: not an mnistlab checkpoint (or unsafe content): refused") from None
    except Exception:  # noqa: BLE001 - any other failure to read a user's file is that file's problem
        raise UserError(f"{path}: damaged or incomplete checkpoint (PyTorch cannot read the archive)") from None


def field_problem(payload: dict) -> str | None:
    """What is wrong with the types of a checkpoint's fields, or None."""
    config, metrics, state = payload["config"], payload["metrics"], payload["model_state"]
    if not isinstance(config, dict):
        return f"config is a {type(config).__name__}, not a mapping"
    if not isinstance(config.get("dataset", ""), str):
        return "config's dataset is not a name"
    permute = config.get(
        "permute"
    )  # the seed of the pixel permutation the model was trained on: its test images get it too
    if permute is not None and (not isinstance(permute, int) or isinstance(permute, bool) or not 0 <= permute < 2**63):
        return "config's permute is not a seed"
    epoch = payload["epoch"]
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        return "epoch is not a count of epochs"
    if not isinstance(metrics, list) or not all(isinstance(row, dict) for row in metrics):
        return "metrics are not a list of rows"
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        return "model_state is not a mapping of names to tensors"
    return None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model from a checkpoint alone; returns (model in eval mode, checkpoint)."""
    ckpt = load_checkpoint(path, map_location=device)
    model = create_model(ckpt["model_name"], **ckpt["model_kwargs"])
    misfit = weights_misfit(model.state_dict(), ckpt["model_state"])
    if misfit:
        raise UserError(f"{resolve_checkpoint(path)}: weights do not fit model {ckpt['model_name']!r}: {misfit}")
    model.load_state_dict(ckpt["model_state"])
    return fast.prepare(model, device).eval(), ckpt  # the folded batch norm the engine evaluates with


def weights_misfit(expected: dict, state: dict) -> str | None:
    """How a state dict fails to fit a model's own, in a few words (the first name of each kind); None if it fits."""
    kinds = (
        ("missing", [k for k in expected if k not in state]),
        ("unexpected", [k for k in state if k not in expected]),
        ("of another shape", [k for k in expected if k in state and state[k].shape != expected[k].shape]),
    )
    parts = [
        f"{len(names)} {kind} ({reprlib.repr(names[0])}{', ...' if len(names) > 1 else ''})"
        for kind, names in kinds
        if names
    ]
    return ", ".join(parts) or None
