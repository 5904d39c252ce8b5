"""Preprocessing photos and drawings the way MNIST was made (preprocess.py).

Digits are drawn with PIL (synthetic.py); photos are drawings lit unevenly, with camera noise.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from synthetic import STROKES, draw_digit, png_bytes, png_claiming_size

from mnistlab.errors import UserError
from mnistlab.preprocess import (
    MAX_SIDE,
    ImageTooLarge,
    decode_image,
    load_image,
    to_mnist,
)


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    ys, xs = np.indices(image.shape)
    mass = image.sum()
    return (ys * image).sum() / mass, (xs * image).sum() / mass


def photo(digit: int, light: np.ndarray, paper=0.7, ink=0.08, noise=4.0) -> Image.Image:
    """A photo of a digit drawn on paper: reflectances `paper` and `ink` (0-1) lit by `light`
    (200, 300), which makes shadows, plus camera noise. Its clean version is `draw_digit(digit, width=14)`."""
    marks = np.asarray(draw_digit(digit, (300, 200), paper=0, ink=255, width=14), dtype=np.float32) / 255
    seen = (paper + (ink - paper) * marks) * light * 255 + np.random.default_rng(digit).normal(0, noise, marks.shape)
    return Image.fromarray(np.clip(seen, 0, 255).astype(np.uint8))


def similarity(image: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(correlation of the pixels, intersection over union of the ink above half brightness)."""
    correlation = np.corrcoef(image.ravel().astype(float), reference.ravel().astype(float))[0, 1]
    a, b = image > 127, reference > 127
    return float(correlation), float((a & b).sum() / (a | b).sum())


X, Y = np.linspace(0, 1, 300)[None, :], np.linspace(0, 1, 200)[:, None]
SHADOWS = {  # light falling on the paper, (200, 300): 1 is full light
    "shadow from the right": np.broadcast_to(1 - 0.7 * X, (200, 300)),
    "shadow from the left": np.broadcast_to(0.3 + 0.7 * X, (200, 300)),
    "shadow across a corner": 1 - 0.7 * (0.6 * X + 0.4 * Y),
    "lamp falling off to the edges": 1 - 1.2 * ((X - 0.5) ** 2 + (Y - 0.5) ** 2),
}


@pytest.mark.parametrize("digit", sorted(STROKES))
@pytest.mark.parametrize("size", [(300, 200), (64, 64), (150, 400)])
def test_dark_on_light_and_light_on_dark_give_the_same_image(digit, size):
    dark_ink = to_mnist(draw_digit(digit, size, paper=255, ink=0))
    light_ink = to_mnist(draw_digit(digit, size, paper=0, ink=255))
    assert np.abs(dark_ink.astype(int) - light_ink).max() <= 1


@pytest.mark.parametrize("digit", sorted(STROKES))
def test_result_is_mnist_shaped_fitted_and_centred_by_mass(digit):
    image = to_mnist(draw_digit(digit, (300, 200)))
    assert image.dtype == np.uint8 and image.shape == (28, 28)
    assert image.max() >= 250  # the strongest ink is white, as in MNIST
    rows, cols = np.flatnonzero(image.any(1)), np.flatnonzero(image.any(0))
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    assert max(height, width) == 20 and min(height, width) <= 20
    cy, cx = centre_of_mass(image.astype(float))
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1


def test_aspect_ratio_is_kept():
    one = to_mnist(draw_digit(1, (300, 200)))  # tall and thin: must not be stretched to 20x20
    cols = np.flatnonzero(one.any(0))
    assert cols[-1] - cols[0] + 1 <= 9


def test_size_lighting_and_jpeg_barely_matter():
    reference = to_mnist(draw_digit(7, (300, 200))).astype(float)
    variants = [
        draw_digit(7, (900, 600)),  # three times larger, strokes too
        draw_digit(7, (300, 200), paper=190, ink=70),  # grey paper, grey pencil
        Image.open(io.BytesIO(png_bytes(draw_digit(7, (300, 200)), "JPEG", quality=70))),
        draw_digit(7, (300, 200), paper=(255, 255, 255, 0), ink=(0, 0, 0, 255), mode="RGBA"),  # transparent
    ]
    for image in variants:
        assert np.abs(to_mnist(image) - reference).mean() < 6


def test_noise_does_not_widen_the_bounding_box():
    image = np.asarray(draw_digit(7, (300, 200)), dtype=np.int16)
    noise = np.random.default_rng(0).integers(-12, 13, image.shape)
    noisy = Image.fromarray(np.clip(image + noise, 0, 255).astype(np.uint8))
    assert np.abs(to_mnist(noisy).astype(float) - to_mnist(draw_digit(7, (300, 200)))).mean() < 6


@pytest.mark.parametrize("digit", sorted(STROKES))
@pytest.mark.parametrize("shadow", sorted(SHADOWS))
def test_a_shadow_across_grey_paper_is_not_ink(digit, shadow):
    clean = to_mnist(draw_digit(digit, (300, 200), width=14))
    for paper in (0.7, 0.85):  # grey paper in the shade gets darker than the ink in full light
        correlation, overlap = similarity(to_mnist(photo(digit, SHADOWS[shadow], paper)), clean)
        assert correlation > 0.95 and overlap > 0.85, (paper, correlation, overlap)


def test_uneven_light_on_a_dark_board_is_not_ink():
    marks = np.asarray(draw_digit(4, (300, 200), paper=0, ink=255, width=14), dtype=np.float32)
    board = (
        30 + 90 * X + 0.6 * marks + np.random.default_rng(0).normal(0, 4, marks.shape)
    )  # chalk, light from the right
    correlation, overlap = similarity(
        to_mnist(Image.fromarray(np.clip(board, 0, 255).astype(np.uint8))),
        to_mnist(draw_digit(4, (300, 200), width=14)),
    )
    assert correlation > 0.95 and overlap > 0.85


@pytest.mark.parametrize("transparency", [None, 230 * 257])
def test_16_bit_greyscale_png_is_scaled_to_8_bit(tmp_path, transparency):
    eight_bit = draw_digit(7, (300, 200), paper=230, ink=30)
    sixteen_bit = Image.fromarray(np.asarray(eight_bit, dtype=np.uint16) * 257)
    sixteen_bit.save(tmp_path / "digit.png", **({} if transparency is None else {"transparency": transparency}))
    loaded = load_image(tmp_path / "digit.png")
    assert loaded.mode == "I;16"
    assert np.abs(to_mnist(loaded).astype(int) - to_mnist(eight_bit)).max() <= 1
    older_pillow = Image.fromarray(np.asarray(eight_bit, dtype=np.int32) * 257)  # mode "I", as Pillow < 10 opened them
    assert np.abs(to_mnist(older_pillow).astype(int) - to_mnist(eight_bit)).max() <= 1


@pytest.mark.parametrize(
    "mode, paper, ink",
    [
        ("RGBA", (0, 0, 0, 0), (255, 255, 255, 255)),  # the colour under transparent pixels is black...
        ("RGBA", (255, 255, 255, 0), (255, 255, 255, 255)),  # ...or white: either way, only alpha shows the digit
        ("LA", (255, 0), (255, 255)),
    ],
)
def test_white_ink_on_a_transparent_background_is_read_from_alpha(mode, paper, ink):
    image = Image.open(io.BytesIO(png_bytes(draw_digit(7, (300, 200), paper=paper, ink=ink, mode=mode))))
    assert np.abs(to_mnist(image).astype(int) - to_mnist(draw_digit(7, (300, 200)))).max() <= 1


@pytest.mark.parametrize("paper", [0, 128, 255])
def test_blank_image_gives_an_empty_field(paper):
    noise = np.random.default_rng(0).integers(-5, 6, (120, 90))
    blank = Image.fromarray(np.clip(paper + noise, 0, 255).astype(np.uint8))
    assert not to_mnist(blank).any()
    assert not to_mnist(Image.new("RGB", (1, 1), "white")).any()


@pytest.mark.parametrize("width, height", [(MAX_SIDE + 1, 8), (8, MAX_SIDE + 1), (40000, 40000)])
def test_huge_images_are_refused_before_decoding(width, height):
    with pytest.raises(ImageTooLarge, match="too large"):
        decode_image(png_claiming_size(width, height), "bomb.png")


def test_bad_files_are_user_errors_naming_the_file(tmp_path):
    cases = {
        "missing.png": None,
        "empty.png": b"",
        "text.png": b"not an image at all",
        "truncated.png": png_bytes(draw_digit(7))[:200],
        "gif.gif": png_bytes(draw_digit(7), "GIF"),
    }
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match=name):
            load_image(tmp_path / name)
    with pytest.raises(UserError, match="directory"):
        load_image(tmp_path)
