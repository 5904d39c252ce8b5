"""A photo or drawing of a digit -> a 28x28 uint8 image made the way MNIST's were made.

MNIST's recipe (LeCun et al.): white ink on black, the digit scaled with antialiasing to fit
a 20x20 box keeping its aspect ratio, then placed in a 28x28 field so that its centre of
mass sits at the centre. `to_mnist` follows it for any image, dark on light or light on dark.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnistlab.errors import UserError
from mnistlab.fileio import read_regular

MAX_SIDE = 4096  # larger images are refused before they are decoded
MAX_FILE_BYTES = 64 << 20  # a 4096x4096 RGBA PNG stored uncompressed; larger files are refused before they are read
FORMATS = ("PNG", "JPEG")
FIELD, BOX = 28, 20
# a fraction of the strongest ink: fainter pixels (noise, paper grain), and lone ones, do not count towards the
# bounding box
INK_THRESHOLD = 0.2
MIN_CONTRAST = 24  # grey levels between paper and the strongest ink below which the image is blank
FIT_SIDE = 64  # the paper's surface is fitted on the image shrunk to this many pixels a side
FIT_ROUNDS = 8  # refits of the paper's surface, each leaving out what stands out from the last
CLIP = 3.0  # spreads from the surface beyond which a pixel is not paper
MIN_SPREAD = 2.0  # grey levels: the least spread of the paper's pixels (a clean drawing has none)
NOISE_SIGMAS = 4.0  # ink that stands out from the paper by no more than this many noise deviations is none
NOISE_SAMPLE = 65536  # pixels sampled to measure the paper's noise
SHADE_FLOOR = 0.25  # of the brightest paper: darker shade counts as this bright, so its noise is not made ink


class ImageTooLarge(UserError):
    """An image over MAX_SIDE pixels a side (the web server answers it with 413, not 400)."""


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open a PNG or JPEG file; every way it can fail is a UserError that names the file."""
    data = read_regular(path, MAX_FILE_BYTES, "PNG or JPEG image")  # checked before it is read whole
    if len(data) > MAX_FILE_BYTES:  # it grew while being read
        raise UserError(f"{path}: too large for a PNG or JPEG image (the limit is {MAX_FILE_BYTES:,} bytes)")
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

    The paper is told from the ink by `find_ink`, which also takes out shadows and uneven
    light. When the colours show no ink but the alpha channel does (white ink on a transparent
    background), the alpha channel is the ink. A blank image (no ink stronger than
    MIN_CONTRAST grey levels) gives an all-black field.
    """
    gray, alpha = channels(image)
    ink, contrast = find_ink(gray)
    if contrast < MIN_CONTRAST and alpha is not None:
        ink, contrast = find_ink(alpha)
    if contrast < MIN_CONTRAST:
        return np.zeros((FIELD, FIELD), dtype=np.uint8)
    ink *= 255 / float(ink.max())  # the strongest ink becomes white, whatever the lighting

    strong = ink > INK_THRESHOLD * 255
    strong &= beside(strong)  # a stroke is never one lone pixel; a speck of noise often is
    rows, cols = np.flatnonzero(strong.any(axis=1)), np.flatnonzero(strong.any(axis=0))
    if rows.size == 0:
        return np.zeros((FIELD, FIELD), dtype=np.uint8)
    digit = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]

    height, width = digit.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    patch = Image.fromarray(np.rint(digit).astype(np.uint8)).resize(size, Image.Resampling.LANCZOS)
    return centre_by_mass(np.asarray(patch, dtype=np.float32))


def find_ink(gray: np.ndarray) -> tuple[np.ndarray, float]:
    """Grey levels (H, W) -> (ink, contrast): how much ink lies on each pixel (float32, 0 on
    bare paper, any scale) and, in grey levels, how far the strongest ink stands from the paper.

    The paper's brightness is fitted as a smooth surface (`fit_paper`), so a shadow or a lamp's
    falloff across the paper is not taken for ink. Dark ink is measured as the fraction of the
    paper's light it takes away, so a stroke in the shade counts as much as one in full light.
    What stands out from the paper by no more than its noise (NOISE_SIGMAS) is not ink.
    """
    coefficients, dark_ink = fit_paper(gray)
    paper = paper_surface(coefficients, gray.shape)
    ink = paper - gray if dark_ink else gray - paper
    ink[ink <= NOISE_SIGMAS * noise_level(ink)] = 0
    contrast = float(ink.max())
    if dark_ink:
        ink /= np.maximum(paper, max(SHADE_FLOOR * float(paper.max()), 1.0), out=paper)
    return ink, contrast


def noise_level(ink: np.ndarray) -> float:
    """The standard deviation of the paper's noise (grain, the camera's noise) in grey levels,
    from a sample of the pixels that fall on the far side of the paper from the ink: ink never
    does, so however much of the image it covers, it does not count."""
    step = max(1, round((ink.size / NOISE_SAMPLE) ** 0.5))
    below = ink[::step, ::step]
    below = below[below < 0]
    return 1.4826 * float(np.median(-below)) if below.size else 0.0  # the median of |normal| is 0.674 sigma


def fit_paper(gray: np.ndarray) -> tuple[list[float], bool]:
    """The paper under a digit: coefficients of a quadratic surface in x and y (`paper_surface`)
    fitted to the pixels that are not ink, and whether the ink is darker than the paper.

    The fit runs on the image shrunk to FIT_SIDE pixels a side. It starts from the border's
    median (the border is mostly paper, even when the digit fills most of the image) and
    repeatedly refits to the pixels within CLIP spreads of the surface, the spread being the
    robust standard deviation of those pixels. The ink is on the side where the pixels left
    out stand further from the paper.
    """
    height, width = gray.shape
    if max(height, width) > FIT_SIDE:
        scale = FIT_SIDE / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        gray = np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.BOX))
    values = gray.ravel()
    terms = surface_terms(*gray.shape)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    fitted = np.full_like(values, np.median(border))
    spread = max(1.4826 * float(np.median(np.abs(border - fitted[0]))), MIN_SPREAD)
    for _ in range(FIT_ROUNDS):
        paper = np.abs(values - fitted) <= CLIP * spread
        chosen = terms[paper]  # least squares by its normal equations: a 6x6 system, quick
        coefficients = np.linalg.lstsq(chosen.T @ chosen, chosen.T @ values[paper], rcond=None)[0]
        fitted = terms @ coefficients
        spread = max(1.4826 * float(np.median(np.abs(values - fitted)[paper])), MIN_SPREAD)
    beyond = values - fitted
    dark, light = np.clip(-beyond - CLIP * spread, 0, None).sum(), np.clip(beyond - CLIP * spread, 0, None).sum()
    return [float(c) for c in coefficients], bool(dark >= light)


def surface_terms(height: int, width: int) -> np.ndarray:
    """(height * width, k): the terms 1, u, v, u², uv, v² at each pixel centre, u running from -1
    to 1 across the image and v down it; just 1 (k = 1) for an image under 8 pixels a side."""
    v, u = np.meshgrid(centred_axis(height), centred_axis(width), indexing="ij")
    terms = [np.ones_like(u)] if min(height, width) < 8 else [np.ones_like(u), u, v, u * u, u * v, v * v]
    return np.stack([t.ravel() for t in terms], axis=1).astype(np.float64)


def paper_surface(coefficients: list[float], shape: tuple[int, int]) -> np.ndarray:
    """The surface of `surface_terms`' terms weighted by `coefficients`, float32 of `shape`."""
    c0, c_u, c_v, c_uu, c_uv, c_vv = (coefficients + [0.0] * 6)[:6]
    u, v = centred_axis(shape[1])[None, :], centred_axis(shape[0])[:, None]
    surface = (c_u + c_uv * v) * u
    surface += c0 + (c_v + c_vv * v) * v
    surface += c_uu * u * u
    return surface


def centred_axis(n: int) -> np.ndarray:
    """Pixel centres along an axis of n pixels, from -1 to 1 (the edges), float32."""
    return ((np.arange(n, dtype=np.float32) + 0.5) * (2 / n) - 1).astype(np.float32)


def beside(mask: np.ndarray) -> np.ndarray:
    """Where `mask` holds next to a pixel: above, below, left or right of it."""
    near = np.zeros_like(mask)
    near[1:] |= mask[:-1]
    near[:-1] |= mask[1:]
    near[:, 1:] |= mask[:, :-1]
    near[:, :-1] |= mask[:, 1:]
    return near


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
