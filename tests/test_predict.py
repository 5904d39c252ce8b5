"""`mnistlab predict`: the digit in each image file, and the probabilities behind it (predict.py).

Digits are drawn with PIL (synthetic.py); checkpoints hold untrained models, whose answers are
arbitrary but must be well formed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic import STROKES, draw_digit, png_bytes, png_claiming_size, save_model

from mnistlab import cli
from mnistlab.checkpoint import load_model
from mnistlab.inputs import normalize
from mnistlab.models import create_model
from mnistlab.predict import predict_probabilities
from mnistlab.preprocess import MAX_SIDE, load_image, to_mnist


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
    assert (
        out.err
        == f"mnistlab predict: error: {blank}: no digit found (a blank image, or ink too faint to tell from the paper)\n"
    )
    assert [line.split()[0] for line in out.out.splitlines()] == [files[0], files[2]]

    assert cli.main(["predict", str(checkpoint), *files, "--json"]) == 2
    results = json.loads(capsys.readouterr().out)
    assert results[1] == {
        "image": str(blank),
        "error": f"{blank}: no digit found (a blank image, or ink too faint to tell from the paper)",
    }
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
        assert (
            line
            == f"mnistlab predict: error: {seen / saved_name(path)}: exists and is not a 28x28 image saved by --save-input: left as it is"
        )
        assert (seen / saved_name(path)).read_bytes() == theirs[path]
    assert np.array_equal(
        np.asarray(Image.open(seen / saved_name(digit_files[2]))), to_mnist(load_image(digit_files[2]))
    )


def test_save_input_names_that_clash_and_a_file_in_the_way(checkpoint, tmp_path, capsys):
    first, second = tmp_path / "a" / "seven.png", tmp_path / "b" / "seven.jpg"
    for path, digit in [(first, 7), (second, 4)]:
        path.parent.mkdir()
        draw_digit(digit).save(path)
    seen = tmp_path / "seen"
    assert cli.main(["predict", str(checkpoint), str(first), str(second), "--save-input", str(seen)]) == 2
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 2
    assert (
        out.err
        == f"mnistlab predict: error: {seen / 'seven.28x28.png'}: not written for {second}: it holds the image of {first}\n"
    )
    assert np.array_equal(np.asarray(Image.open(seen / "seven.28x28.png")), to_mnist(load_image(first)))

    in_the_way = tmp_path / "notes.txt"
    in_the_way.write_text("mine")
    assert cli.main(["predict", str(checkpoint), str(first), "--save-input", str(in_the_way)]) == 2
    out = capsys.readouterr()
    assert (
        out.out == ""
        and out.err == f"mnistlab predict: error: --save-input {in_the_way}: exists and is not a directory\n"
    )
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


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(checkpoint, digit_files, tmp_path, capsys):
    from mnistlab.preprocess import MAX_FILE_BYTES

    big = tmp_path / "huge.png"
    with open(big, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk taken, yet reading it would take 64 MB
    assert cli.main(["predict", str(checkpoint), str(big), str(digit_files[0])]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert f"{big}: {MAX_FILE_BYTES + 1:,} bytes, too large" in line
    assert "digit7.png" in captured.out  # the other file is still predicted


PREDICT = "import sys; from mnistlab.cli import main; raise SystemExit(main(sys.argv[1:]))"


def test_a_fifo_or_a_device_is_one_line_not_a_hang(checkpoint, digit_files, tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # nobody writes to it: opened and read as a file, it blocks forever
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", PREDICT, "predict", str(checkpoint), str(fifo), "/dev/zero", str(digit_files[0])],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and all("not a regular file" in line for line in lines), lines
    assert "digit7.png" in done.stdout


def test_a_fifo_in_place_of_the_dataset_cache_is_one_line_not_a_hang(tmp_path):
    from mnistlab.data import load_dataset
    from mnistlab.errors import UserError

    (tmp_path / "mnist").mkdir()
    fifo = tmp_path / "mnist" / "mnist.npz"
    os.mkfifo(fifo)
    outcome = []

    def load():
        try:
            load_dataset("mnist", tmp_path, log=lambda line: None, download=False)
        except UserError as e:
            outcome.append(str(e))

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():  # blocked opening the FIFO: let it go, then fail
        open(fifo, "wb").close()
        pytest.fail("load_dataset blocked on a FIFO in place of its cache")
    assert outcome and "not a regular file" in outcome[0], outcome
    assert fifo.exists() and not fifo.is_file()  # left as it was: nothing rebuilt over it
