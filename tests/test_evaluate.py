"""`mnistlab evaluate`: where its confusion-matrix PNG may go, and what happens when it cannot be written."""

from __future__ import annotations

import errno
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic import make_arrays, use_synthetic_data, write_checkpoint

from mnistlab import cli
from mnistlab.config import TrainConfig
from mnistlab.engine import fit, read_metrics_csv
from mnistlab.evaluate import evaluate_checkpoint, is_figure
from mnistlab.models import create_model
from mnistlab.plots import plot_confusion


@pytest.fixture(autouse=True)
def synthetic_data(monkeypatch):
    return use_synthetic_data(monkeypatch, 10, 100)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    write_checkpoint(tmp_path / "run" / "checkpoint.pt")
    return tmp_path / "run"


def evaluate(capsys, *args) -> tuple[int, str, list[str]]:
    code = cli.main(["evaluate", *map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err.splitlines()


def test_out_never_replaces_the_checkpoint(run_dir, capsys):
    checkpoint = run_dir / "checkpoint.pt"
    before = checkpoint.read_bytes()
    code, out, err = evaluate(capsys, run_dir, "--out", checkpoint)
    assert code == 2 and out == "" and len(err) == 1 and "PNG" in err[0]
    assert checkpoint.read_bytes() == before


@pytest.mark.parametrize("kind", ["photograph", "text", "directory"])
def test_out_refuses_an_existing_png_that_is_not_a_figure(run_dir, tmp_path, capsys, kind):
    target = tmp_path / "mine.png"
    if kind == "photograph":
        Image.new("L", (40, 30), 200).save(target)
    elif kind == "text":
        target.write_text("notes, not a picture\n")
    before = target.read_bytes() if target.is_file() else None
    if kind == "directory":  # --out DIR writes DIR/confusion.png: here that name is a directory of files
        (tmp_path / "out" / "confusion.png").mkdir(parents=True)
        target = tmp_path / "out"
    code, out, err = evaluate(capsys, run_dir, "--out", target)
    assert code == 2 and len(err) == 1 and "exists and is not a figure" in err[0]
    assert out == ""  # refused before the data is loaded
    if before is not None:
        assert target.read_bytes() == before


def test_out_replaces_a_figure(run_dir, tmp_path, capsys):
    figure = tmp_path / "figure.png"
    plot_confusion(np.eye(10, dtype=np.int64), figure, tuple("0123456789"), title="an earlier evaluation")
    before = figure.read_bytes()
    code, out, err = evaluate(capsys, run_dir, "--out", figure)
    assert code == 0 and err == [] and f"wrote {figure}" in out
    assert figure.read_bytes() != before and is_figure(figure)


def test_out_directory_gets_confusion_png_inside(run_dir, tmp_path, capsys):
    directory = tmp_path / "figures"
    directory.mkdir()
    code, out, err = evaluate(capsys, run_dir, "--out", directory)
    assert code == 0 and err == [] and f"wrote {directory / 'confusion.png'}" in out
    assert is_figure(directory / "confusion.png")


def test_out_must_be_a_png_name(run_dir, tmp_path, capsys):
    code, out, err = evaluate(capsys, run_dir, "--out", tmp_path / "results.json")
    assert code == 2 and len(err) == 1 and "ending in .png" in err[0]
    assert not (tmp_path / "results.json").exists()


def no_file_can_be_made_in(directory: Path, monkeypatch) -> None:
    """Make `directory` behave as a read-only one (chmod would not stop root, who may run the tests)."""
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == directory:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_read_only_run_directory_prints_the_results_and_warns(run_dir, capsys, monkeypatch):
    no_file_can_be_made_in(run_dir, monkeypatch)
    code, out, err = evaluate(capsys, run_dir)
    assert code == 0
    assert "on the mnist test set: loss" in out and "per-class accuracy" in out and "true\\pred" in out
    assert "wrote" not in out
    assert err == [
        f"mnistlab evaluate: warning: confusion matrix not written: {run_dir}: cannot write here (Permission denied)"
    ]
    assert not (run_dir / "confusion.png").exists()

    code, out, err = evaluate(capsys, run_dir, "--json")
    assert code == 0 and len(err) == 1
    result = json.loads(out)
    assert result["confusion_png"] is None and 0 <= result["test_acc"] <= 1


def test_an_out_that_cannot_be_written_prints_the_results_and_fails(run_dir, tmp_path, capsys, monkeypatch):
    target = tmp_path / "locked" / "confusion.png"
    target.parent.mkdir()
    no_file_can_be_made_in(target.parent, monkeypatch)
    code, out, err = evaluate(capsys, run_dir, "--out", target)
    assert code == 2 and "on the mnist test set: loss" in out
    assert err == [
        f"mnistlab evaluate: error: confusion matrix not written: {target.parent}: cannot write here (Permission denied)"
    ]


def test_a_model_with_another_number_of_classes_is_refused(tmp_path, capsys):
    model = create_model("mlp-small", num_classes=3)
    path = write_checkpoint(tmp_path / "three.pt", model_kwargs={"num_classes": 3}, model_state=model.state_dict())
    code, out, err = evaluate(capsys, path)
    assert code == 2 and err == [f"mnistlab evaluate: error: {path}: the model has 3 outputs, but mnist has 10 classes"]


def test_evaluate_agrees_with_training_metrics(tmp_path, capsys, monkeypatch):
    use_synthetic_data(monkeypatch, 600, 200)
    out = tmp_path / "run"
    assert (
        cli.main(
            ["train", "--epochs", "2", "--batch-size", "32", "--val-size", "100", "--threads", "1", "--out", str(out)]
        )
        == 0
    )
    capsys.readouterr()
    assert cli.main(["evaluate", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    last = read_metrics_csv(out / "metrics.csv")[-1]
    assert result["test_acc"] == pytest.approx(float(last["test_acc"]), abs=1e-6)
    assert result["test_loss"] == pytest.approx(float(last["test_loss"]), rel=1e-4)
    matrix = result["confusion_matrix"]
    assert sum(map(sum, matrix)) == 200
    assert sum(matrix[i][i] for i in range(10)) == round(result["test_acc"] * 200)
    assert (out / "confusion.png").stat().st_size > 0
    assert cli.main(["evaluate", str(out / "checkpoint.pt")]) == 0
    assert "true\\pred" in capsys.readouterr().out


def test_evaluate_tests_a_permuted_run_on_permuted_pixels(tmp_path):
    arrays = make_arrays(1100, 200)
    config = TrainConfig(model="mlp", val_size=100, epochs=3, device="cpu", permute=4)
    history = fit(config, arrays, tmp_path, log=lambda line: None)
    assert history[-1]["test_acc"] > 0.5  # learned: on pixels in place it would score no better than chance
    assert evaluate_checkpoint(tmp_path, arrays, torch.device("cpu"))["test_acc"] == pytest.approx(
        history[-1]["test_acc"], abs=1e-6
    )
