"""A photo or drawing of a digit -> a 28x28 uint8 image made the way MNIST's were made.

MNIST's recipe (LeCun et al.): white ink on black, the digit scaled with antialiasing to fit
a 20x20 box keeping its aspect ratio, then placed in a 28x28 field so that its centre of
mass sits at the centre. `to_mnist` follows it for any image, dark on light or light on dark.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnistlab.errors import UserError

MAX_SIDE = 4096  # larger images are refused before they are decoded
FORMATS = ("PNG", "JPEG")
FIELD, BOX = 28, 20
INK_THRESHOLD = 0.2  # of the strongest ink: fainter pixels (noise, paper grain) do not count towards the bounding box
MIN_CONTRAST = 24  # grey levels between paper and the strongest ink below which the image is blank


class ImageTooLarge(UserError):
    """An image over MAX_SIDE pixels a side (the web server answers it with 413, not 400)."""


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open a PNG or JPEG file; every way it can fail is a UserError that names the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not an image") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    return decode_image(data, str(path))


def decode_image(data: bytes, name: str = "image") -> Image.Image:
    """PNG or JPEG bytes -> a decoded PIL image. Refuses empty data, other formats, and images
    over MAX_SIDE pixels a side (a small file can hold a huge image: a decompression bomb)."""
    if not data:
        raise UserError(f"{name}: empty file")
    bomb = f"{name}: image too large (the limit is {MAX_SIDE}x{MAX_SIDE} pixels)"  # PIL's own check, at open or load
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise ImageTooLarge(bomb) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise UserError(f"{name}: not a PNG or JPEG image") from None
    width, height = image.size
    if width > MAX_SIDE or height > MAX_SIDE:
        raise ImageTooLarge(f"{name}: image too large ({width}x{height}; the limit is {MAX_SIDE}x{MAX_SIDE} pixels)")
    try:
        image.load()
    except Image.DecompressionBombError:
        raise ImageTooLarge(bomb) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise UserError(f"{name}: damaged {image.format} image ({str(e).strip()[:120] or type(e).__name__})") from None
    return image


def channels(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Any PIL image -> float32 (H, W) grey levels in [0, 255], upright, transparency over white,
    and the alpha channel in [0, 255] (None for an image without transparency)."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):  # 16-bit greyscale PNG: 0-65535, which convert("L") clips to 255
        values = np.asarray(image, dtype=np.float32)
        alpha = None
        if isinstance(image.info.get("transparency"), int):
            alpha = np.where(values == image.info["transparency"], 0, 255).astype(np.float32)
        gray = np.clip(values / 257, 0, 255)
        if alpha is not None:
            gray = gray * (alpha / 255) + 255 * (1 - alpha / 255)
        return gray, alpha
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
        alpha = np.asarray(image.getchannel("A"), dtype=np.float32)
        paper = Image.new("RGBA", image.size, "white")
        return np.asarray(Image.alpha_composite(paper, image).convert("L"), dtype=np.float32), alpha
    return np.asarray(image.convert("L"), dtype=np.float32), None


def to_mnist(image: Image.Image) -> np.ndarray:
    """A digit in a PIL image of any size -> uint8 (28, 28), white ink on black, MNIST-style.

    The paper is told from the ink by `find_ink`. When the colours show no ink but the alpha
    channel does (white ink on a transparent background), the alpha channel is the ink. A
    blank image (no ink stronger than MIN_CONTRAST grey levels) gives an all-black field.
    """
    gray, alpha = channels(image)
    ink, contrast = find_ink(gray)
    if contrast < MIN_CONTRAST and alpha is not None:
        ink, contrast = find_ink(alpha)
    if contrast < MIN_CONTRAST:
        return np.zeros((FIELD, FIELD), dtype=np.uint8)
    ink *= 255 / float(ink.max())  # the strongest ink becomes white, whatever the lighting

    rows = np.flatnonzero((ink > INK_THRESHOLD * 255).any(axis=1))
    cols = np.flatnonzero((ink > INK_THRESHOLD * 255).any(axis=0))
    digit = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]

    height, width = digit.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    patch = Image.fromarray(np.rint(digit).astype(np.uint8)).resize(size, Image.Resampling.LANCZOS)
    return centre_by_mass(np.asarray(patch, dtype=np.float32))


def find_ink(gray: np.ndarray) -> tuple[np.ndarray, float]:
    """Grey levels (H, W) -> (ink, contrast): how much ink lies on each pixel (float32, 0 on
    bare paper) and, in grey levels, how far the strongest ink stands from the paper. The
    paper's colour is read from the border pixels: on light paper, the ink is what is darker."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    paper = float(np.median(border))
    ink = np.clip(gray - paper if paper < 128 else paper - gray, 0, None)
    return ink, float(ink.max())


def centre_by_mass(patch: np.ndarray) -> np.ndarray:
    """Place `patch` (at most 28x28) in a 28x28 field, shifted so its centre of mass lands on
    pixel (14, 14), as near as whole-pixel shifts allow without cutting the digit."""
    height, width = patch.shape
    mass = patch.sum()
    if mass <= 0:
        return np.zeros((FIELD, FIELD), dtype=np.uint8)
    ys, xs = np.indices(patch.shape)
    cy, cx = (ys * patch).sum() / mass, (xs * patch).sum() / mass
    top = min(max(round(FIELD / 2 - cy), 0), FIELD - height)
    left = min(max(round(FIELD / 2 - cx), 0), FIELD - width)
    field = np.zeros((FIELD, FIELD), dtype=np.float32)
    field[top : top + height, left : left + width] = patch
    return np.clip(np.rint(field), 0, 255).astype(np.uint8)
