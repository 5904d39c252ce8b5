"""Preprocessing photos and drawings the way MNIST was made, and `mnistlab predict`.

Digits are drawn with PIL (strokes in relative coordinates), so no real data is needed;
checkpoints hold untrained models, whose answers are arbitrary but must be well formed.
`draw_digit` and `save_model` are used by test_serve.py and test_browser.py too.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mnistlab import cli
from mnistlab.checkpoint import load_model, save_checkpoint
from mnistlab.engine import normalize
from mnistlab.errors import UserError
from mnistlab.models import create_model
from mnistlab.predict import predict_probabilities
from mnistlab.preprocess import MAX_SIDE, ImageTooLarge, decode_image, load_image, to_mnist

# Strokes per digit, as polylines in a unit square (x right, y down).
STROKES = {
    1: [[(0.45, 0.25), (0.55, 0.15), (0.55, 0.85)]],
    4: [[(0.6, 0.85), (0.6, 0.15), (0.3, 0.6), (0.75, 0.6)]],
    7: [[(0.3, 0.2), (0.7, 0.2), (0.45, 0.85)]],
}


def draw_digit(digit: int, size=(300, 200), paper=255, ink=0, width=None, mode="L") -> Image.Image:
    """A digit drawn with PIL: ink strokes on plain paper, centred in a box of the image's height."""
    w, h = size
    image = Image.new(mode, size, paper)
    pen = ImageDraw.Draw(image)
    side, left = 0.8 * h, (w - 0.8 * h) / 2
    for stroke in STROKES[digit]:
        points = [(left + x * side, 0.1 * h + y * side) for x, y in stroke]
        pen.line(points, fill=ink, width=width or max(1, round(h / 16)), joint="curve")
    return image


def png_bytes(image: Image.Image, format="PNG", **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **kw)
    return buffer.getvalue()


def save_model(run_dir: Path, model_name="lenet5", seed=0, val_acc=0.5, dataset="mnist") -> Path:
    """An untrained model saved as a run directory's checkpoint, as `mnistlab train` would."""
    torch.manual_seed(seed)
    model = create_model(model_name)
    save_checkpoint(
        run_dir / "checkpoint.pt", model_name=model_name, model_kwargs={},
        config={"model": model_name, "dataset": dataset, "seed": seed}, epoch=1,
        metrics=[{"epoch": 1, "train_acc": 0.1, "val_acc": val_acc, "test_acc": 0.1}],
        model_state=model.state_dict(),
    )  # fmt: skip
    return run_dir


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


# --- preprocessing ---------------------------------------------------------------------------


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
    board = 30 + 90 * X + 0.6 * marks + np.random.default_rng(0).normal(0, 4, marks.shape)  # chalk, light from the right
    correlation, overlap = similarity(to_mnist(Image.fromarray(np.clip(board, 0, 255).astype(np.uint8))),
                                      to_mnist(draw_digit(4, (300, 200), width=14)))  # fmt: skip
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


@pytest.mark.parametrize("mode, paper, ink", [
    ("RGBA", (0, 0, 0, 0), (255, 255, 255, 255)),  # the colour under transparent pixels is black...
    ("RGBA", (255, 255, 255, 0), (255, 255, 255, 255)),  # ...or white: either way, only alpha shows the digit
    ("LA", (255, 0), (255, 255)),
])  # fmt: skip
def test_white_ink_on_a_transparent_background_is_read_from_alpha(mode, paper, ink):
    image = Image.open(io.BytesIO(png_bytes(draw_digit(7, (300, 200), paper=paper, ink=ink, mode=mode))))
    assert np.abs(to_mnist(image).astype(int) - to_mnist(draw_digit(7, (300, 200)))).max() <= 1


@pytest.mark.parametrize("paper", [0, 128, 255])
def test_blank_image_gives_an_empty_field(paper):
    noise = np.random.default_rng(0).integers(-5, 6, (120, 90))
    blank = Image.fromarray(np.clip(paper + noise, 0, 255).astype(np.uint8))
    assert not to_mnist(blank).any()
    assert not to_mnist(Image.new("RGB", (1, 1), "white")).any()


def png_claiming_size(width: int, height: int) -> bytes:
    """A PNG header for a huge image with (almost) no pixel data: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height", [(MAX_SIDE + 1, 8), (8, MAX_SIDE + 1), (40000, 40000)])
def test_huge_images_are_refused_before_decoding(width, height):
    with pytest.raises(ImageTooLarge, match="too large"):
        decode_image(png_claiming_size(width, height), "bomb.png")


def test_bad_files_are_user_errors_naming_the_file(tmp_path):
    cases = {"missing.png": None, "empty.png": b"", "text.png": b"not an image at all",
             "truncated.png": png_bytes(draw_digit(7))[:200], "gif.gif": png_bytes(draw_digit(7), "GIF")}  # fmt: skip
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match=name):
            load_image(tmp_path / name)
    with pytest.raises(UserError, match="directory"):
        load_image(tmp_path)


# --- the command ------------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    return save_model(tmp_path / "run", "lenet5-dropout")  # dropout: a model left in train mode would not repeat


@pytest.fixture
def digit_files(tmp_path) -> list[Path]:
    paths = []
    for digit, paper, ink, suffix in [(7, 255, 0, "png"), (1, 0, 255, "jpg"), (4, 230, 30, "png")]:
        path = tmp_path / f"digit{digit}.{suffix}"
        draw_digit(digit, (300, 200), paper, ink).save(path)
        paths.append(path)
    return paths


def test_predict_prints_digit_and_probability_per_file(checkpoint, digit_files, capsys):
    assert cli.main(["predict", str(checkpoint), *map(str, digit_files)]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert out.err == "" and len(lines) == len(digit_files)
    for path, line in zip(digit_files, lines):
        name, digit, probability = line.split()
        assert name == str(path) and digit in "0123456789"
        assert probability.startswith("p=") and 0.1 <= float(probability[2:]) <= 1


def test_predict_json_matches_the_model_applied_by_hand(checkpoint, digit_files, capsys):
    assert cli.main(["predict", str(checkpoint / "checkpoint.pt"), *map(str, digit_files), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    model = create_model("lenet5-dropout")
    model.load_state_dict(torch.load(checkpoint / "checkpoint.pt", weights_only=True)["model_state"])
    model.eval()
    for path, result in zip(digit_files, results):
        image = to_mnist(load_image(path))
        expected = torch.softmax(model(normalize(torch.from_numpy(image)[None])).double(), 1)[0].detach().numpy()
        assert result["image"] == str(path)
        assert result["digit"] == int(expected.argmax()) and result["probability"] == max(result["probabilities"])
        assert np.allclose(result["probabilities"], expected, atol=1e-5)
        assert abs(sum(result["probabilities"]) - 1) < 1e-4


def test_each_bad_file_gets_its_own_error_and_the_rest_are_predicted(checkpoint, digit_files, tmp_path, capsys):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "huge.png").write_bytes(png_claiming_size(MAX_SIDE + 1, 10))
    bad = [tmp_path / "missing.png", tmp_path / "empty.png", tmp_path / "notes.png", tmp_path / "huge.png"]
    files = [digit_files[0], *bad[:2], digit_files[1], *bad[2:]]
    assert cli.main(["predict", str(checkpoint), *map(str, files)]) == 2
    out = capsys.readouterr()
    errors = out.err.splitlines()
    assert len(errors) == len(bad)
    for path, line in zip(bad, errors):
        assert line.startswith("mnistlab predict: error: ") and str(path) in line
    assert [line.split()[0] for line in out.out.splitlines()] == [str(digit_files[0]), str(digit_files[1])]

    assert cli.main(["predict", str(checkpoint), *map(str, files), "--json"]) == 2
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == list(map(str, files))
    assert ["error" in r for r in results] == [False, True, True, False, True, True]


def test_blank_image_is_no_digit_found_and_the_rest_are_predicted(checkpoint, digit_files, tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.new("L", (100, 100), 255).save(blank)
    files = list(map(str, [digit_files[0], blank, digit_files[1]]))
    assert cli.main(["predict", str(checkpoint), *files]) == 2
    out = capsys.readouterr()
    assert out.err == f"mnistlab predict: error: {blank}: no digit found (a blank image, or ink too faint to tell from the paper)\n"
    assert [line.split()[0] for line in out.out.splitlines()] == [files[0], files[2]]

    assert cli.main(["predict", str(checkpoint), *files, "--json"]) == 2
    results = json.loads(capsys.readouterr().out)
    assert results[1] == {"image": str(blank), "error": f"{blank}: no digit found (a blank image, or ink too faint to tell from the paper)"}
    assert "digit" in results[0] and "digit" in results[2]


def saved_name(path: Path) -> str:
    return f"{path.stem}.28x28.png"


def test_save_input_writes_the_28x28_image_the_model_saw(checkpoint, digit_files, tmp_path, capsys):
    seen = tmp_path / "seen" / "deeper"
    command = ["predict", str(checkpoint), *map(str, digit_files), "--save-input", str(seen), "--json"]
    model = load_model(checkpoint)[0]
    for _ in range(2):  # the second time, it replaces the files it wrote the first time
        assert cli.main(command) == 0
        results = json.loads(capsys.readouterr().out)
        assert sorted(p.name for p in seen.iterdir()) == sorted(map(saved_name, digit_files))  # no temporary files
        for path, result in zip(digit_files, results):
            assert result["saved"] == str(seen / saved_name(path))
            with Image.open(result["saved"]) as image:
                assert image.format == "PNG" and image.mode == "L" and image.size == (28, 28)
                pixels = np.array(image)
            assert np.array_equal(pixels, to_mnist(load_image(path)))  # white ink on black, as the page shows it
            assert np.allclose(predict_probabilities(model, pixels[None])[0], result["probabilities"], atol=1e-5)


def test_save_input_never_replaces_a_file_it_did_not_write(checkpoint, digit_files, tmp_path, capsys):
    seen = tmp_path / "seen"
    seen.mkdir()
    theirs = {
        digit_files[0]: b"my notes",
        digit_files[1]: png_bytes(Image.new("RGB", (28, 28), "white")),  # 28x28, but not an 8-bit greyscale PNG
    }
    for path, content in theirs.items():
        (seen / saved_name(path)).write_bytes(content)
    assert cli.main(["predict", str(checkpoint), *map(str, digit_files), "--save-input", str(seen)]) == 2
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == len(digit_files)  # all still predicted
    errors = out.err.splitlines()
    assert len(errors) == len(theirs)
    for path, line in zip(theirs, errors):
        assert line == f"mnistlab predict: error: {seen / saved_name(path)}: exists and is not a 28x28 image saved by --save-input: left as it is"
        assert (seen / saved_name(path)).read_bytes() == theirs[path]
    assert np.array_equal(np.asarray(Image.open(seen / saved_name(digit_files[2]))), to_mnist(load_image(digit_files[2])))


def test_save_input_names_that_clash_and_a_file_in_the_way(checkpoint, tmp_path, capsys):
    first, second = tmp_path / "a" / "seven.png", tmp_path / "b" / "seven.jpg"
    for path, digit in [(first, 7), (second, 4)]:
        path.parent.mkdir()
        draw_digit(digit).save(path)
    seen = tmp_path / "seen"
    assert cli.main(["predict", str(checkpoint), str(first), str(second), "--save-input", str(seen)]) == 2
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 2
    assert out.err == f"mnistlab predict: error: {seen / 'seven.28x28.png'}: not written for {second}: it holds the image of {first}\n"
    assert np.array_equal(np.asarray(Image.open(seen / "seven.28x28.png")), to_mnist(load_image(first)))

    in_the_way = tmp_path / "notes.txt"
    in_the_way.write_text("mine")
    assert cli.main(["predict", str(checkpoint), str(first), "--save-input", str(in_the_way)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == f"mnistlab predict: error: --save-input {in_the_way}: exists and is not a directory\n"
    assert in_the_way.read_text() == "mine"


def test_predict_help_states_the_size_limit(capsys):
    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    text = capsys.readouterr().out
    assert f"{MAX_SIDE}x{MAX_SIDE} pixels" in " ".join(text.split()) and "any size" not in text


@pytest.mark.parametrize("content", [None, b"", b"not a checkpoint"])
def test_bad_checkpoint_is_one_line_and_exit_2(tmp_path, digit_files, capsys, content):
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    assert cli.main(["predict", str(path), str(digit_files[0])]) == 2
    out = capsys.readouterr()
    assert out.out == "" and len(out.err.splitlines()) == 1 and out.err.startswith("mnistlab predict: error:")


def test_predict_probabilities_batches_and_sums_to_one():
    model = create_model("mlp").eval()
    images = np.stack([to_mnist(draw_digit(d)) for d in STROKES])
    p = predict_probabilities(model, images)
    assert p.shape == (len(STROKES), 10) and np.allclose(p.sum(1), 1)
    assert np.allclose(p[1], predict_probabilities(model, images[1:2])[0])
