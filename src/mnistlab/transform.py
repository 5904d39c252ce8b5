"""Digits that move: whole-pixel shifts and rotations of 28x28 images, and the study's curves of
accuracy against them.

The page's "move the digit" controls and the study's shift and rotation experiment apply the
same transform to the same thing, the 28x28 image after MNIST's preprocessing (so centring
cannot undo the move): rotate about the field's centre, then shift by whole pixels.
"""

from __future__ import annotations

import json
import math
from numbers import Real
from pathlib import Path

import torch
import torch.nn.functional as F


def shift_images(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Move images (..., H, W) by whole pixels, `dx` to the right and `dy` down.

    Pixels pushed over the edge are lost; those that come in are 0 (MNIST's black). Any
    dtype; the result is a new tensor of the same dtype.
    """
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in (dx, dy)):
        raise ValueError(f"a shift is a whole number of pixels, got dx={dx!r}, dy={dy!r}")
    moved = torch.zeros_like(images)
    h, w = images.shape[-2:]
    if abs(dx) >= w or abs(dy) >= h:
        return moved
    moved[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = images[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return moved


def rotate_images(images: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate images (..., H, W) by `angle` degrees, counter-clockwise as displayed, about the centre.

    Bilinear sampling, so a rotated stroke keeps its smooth edge; what comes in from outside
    is 0. uint8 images come back as uint8 (rounded), float ones as the same float type.
    An angle of 0 returns an exact copy.
    """
    if not isinstance(angle, Real) or isinstance(angle, bool) or not math.isfinite(angle):
        raise ValueError(f"an angle is a finite number of degrees, got {angle!r}")
    if angle == 0:
        return images.clone()
    *lead, h, w = images.shape
    x = images.reshape(-1, 1, h, w)
    x = x.float() if not x.is_floating_point() else x
    rad = math.radians(angle)
    cos, sin = math.cos(rad), math.sin(rad)
    # The sampling grid maps each output pixel to the input point it comes from (the inverse
    # rotation), in pixel units about the centre, then into grid_sample's [-1, 1] (pixel centres,
    # align_corners=False). Same convention as augment.affine.
    px = torch.arange(w, dtype=x.dtype, device=x.device) + 0.5 - w / 2
    py = torch.arange(h, dtype=x.dtype, device=x.device) + 0.5 - h / 2
    py, px = torch.meshgrid(py, px, indexing="ij")
    grid = torch.stack([(cos * px - sin * py) * (2 / w), (sin * px + cos * py) * (2 / h)], dim=-1)
    rotated = F.grid_sample(
        x, grid.expand(x.shape[0], h, w, 2), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    if not images.is_floating_point():
        info = torch.iinfo(images.dtype)
        rotated = rotated.round_().clamp_(info.min, info.max)
    return rotated.to(images.dtype).reshape(*lead, h, w)


def move_images(images: torch.Tensor, dx: int = 0, dy: int = 0, angle: float = 0.0) -> torch.Tensor:
    """Rotate by `angle` degrees about the centre, then shift by (`dx`, `dy`) whole pixels."""
    return shift_images(rotate_images(images, angle), dx, dy)


# --- the study's curves ----------------------------------------------------------------------

# results.json's claims.robustness, as the study's shift and rotation experiment records it:
#   {"shift":    {"values": [0, 1, ..., 6],    "accuracy": {ARM: {"mean": [...], "std": [...]}, ...}},
#    "rotation": {"values": [0, 10, ..., 40],  "accuracy": {...}}}
# one accuracy (a fraction) per value; an arm's entry may also be a plain list of means.
ROBUSTNESS_UNITS = {"shift": "pixels", "rotation": "degrees"}


def robustness_curves(results: dict) -> dict | None:
    """The study's accuracy against shift and against rotation, as lines to draw; None without any.

    -> {kind: {"unit", "values", "lines": [{"arm", "label", "mean", "std" (or None)}]}} for
    each kind ("shift", "rotation") the results hold in the form above; a malformed kind is
    left out, as if it had not been measured.
    """
    claims = results.get("claims") if isinstance(results, dict) else None
    robustness = claims.get("robustness") if isinstance(claims, dict) else None
    if not isinstance(robustness, dict):
        return None
    variants = results.get("variants") if isinstance(results.get("variants"), dict) else {}
    curves = {}
    for kind, unit in ROBUSTNESS_UNITS.items():
        entry = robustness.get(kind)
        if (
            not isinstance(entry, dict)
            or not _numbers(entry.get("values"))
            or not isinstance(entry.get("accuracy"), dict)
        ):
            continue
        values, lines = entry["values"], []
        for arm, accuracy in entry["accuracy"].items():
            mean, std = (accuracy.get("mean"), accuracy.get("std")) if isinstance(accuracy, dict) else (accuracy, None)
            if not _numbers(mean, len(values)):
                continue
            label = variants.get(arm, {}).get("label") if isinstance(variants.get(arm), dict) else None
            lines.append(
                {"arm": arm, "label": label or arm, "mean": mean, "std": std if _numbers(std, len(values)) else None}
            )
        if lines:
            curves[kind] = {"unit": unit, "values": values, "lines": lines}
    return curves or None


def read_robustness(path: str | Path) -> dict | None:
    """`robustness_curves` of a results.json file; None when the file is absent or unreadable."""
    try:
        return robustness_curves(json.loads(Path(path).read_text()))
    except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested too deeply for the parser
        return None


def _numbers(value: object, length: int | None = None) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and (length is None or len(value) == length)
        and all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )
