"""predictions.py: each run keeps its final model's predicted class of every test image, from the evaluation it
makes anyway, and a study makes a missing or damaged file again from the checkpoint."""

import numpy as np
import pytest
import torch
from synthetic import make_arrays

from mnistlab.checkpoint import load_model
from mnistlab.cli import main
from mnistlab.config import TrainConfig
from mnistlab.engine import fit
from mnistlab.fast.stacked import fit_stacked
from mnistlab.predictions import (
    PREDICTIONS_NAME,
    keep_test_predictions,
    predict_classes,
    read_test_predictions,
    write_test_predictions,
)
from mnistlab.splits import split_dataset

SMALL = {"epochs": 2, "batch_size": 32, "val_size": 100, "lr": 0.05, "train_eval_size": 100}


@pytest.fixture(scope="module")
def arrays():
    return make_arrays(500, 150)


def model_classes(run_dir, config, arrays) -> np.ndarray:
    """The predicted test classes of the checkpoint's model, on the run's own test images."""
    model, _ = load_model(run_dir)
    test = split_dataset(arrays, config.val_size, config.seed, torch.device("cpu"), permute=config.permute)
    return predict_classes(model, test.test_images).numpy()


@pytest.mark.parametrize("permute", [None, 0])
def test_a_run_keeps_the_test_classes_of_its_final_model_and_they_give_its_test_accuracy(tmp_path, arrays, permute):
    config = TrainConfig(model="lenet5", permute=permute, **SMALL)
    history = fit(config, arrays, tmp_path, log=lambda line: None)
    kept = read_test_predictions(tmp_path, 2, len(arrays.test_labels))
    assert kept is not None and kept.dtype == np.uint8
    np.testing.assert_array_equal(kept, model_classes(tmp_path, config, arrays))
    assert np.mean(kept == arrays.test_labels) == pytest.approx(history[-1]["test_acc"])
    assert read_test_predictions(tmp_path, 1, len(arrays.test_labels)) is None  # another epoch's model: not these


def test_stacked_seeds_each_keep_their_own_models_classes(tmp_path, arrays):
    configs = [TrainConfig(model="lenet5", seed=s, **SMALL) for s in (0, 1)]
    out = [tmp_path / "s0", tmp_path / "s1"]
    histories = fit_stacked(configs, arrays, out, log=lambda line: None)
    kept = [read_test_predictions(d, 2, len(arrays.test_labels)) for d in out]
    for run_dir, config, classes, history in zip(out, configs, kept, histories):
        np.testing.assert_array_equal(classes, model_classes(run_dir, config, arrays))
        assert np.mean(classes == arrays.test_labels) == pytest.approx(history[-1]["test_acc"])
    assert not np.array_equal(kept[0], kept[1])  # two seeds, two models


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.unlink(),
        lambda path: path.write_bytes(path.read_bytes()[:40]),
        lambda path: path.write_bytes(b"not an archive"),
        lambda path: write_test_predictions(path.parent, 7, np.zeros(150)),  # another epoch's
        lambda path: write_test_predictions(path.parent, 2, np.zeros(149)),  # another test set's
        lambda path: np.savez(path, epoch=2, predicted=np.array([object()] * 150)),  # needs pickle: refused
    ],
)
def test_a_missing_damaged_or_stale_file_is_made_again_from_the_checkpoint(tmp_path, arrays, damage):
    config = TrainConfig(model="mlp-small", **SMALL)
    fit(config, arrays, tmp_path, log=lambda line: None)
    good = read_test_predictions(tmp_path, 2, 150)
    damage(tmp_path / PREDICTIONS_NAME)
    assert read_test_predictions(tmp_path, 2, 150) is None
    assert keep_test_predictions(tmp_path, 2, arrays) is True
    np.testing.assert_array_equal(read_test_predictions(tmp_path, 2, 150), good)
    assert keep_test_predictions(tmp_path, 2, arrays) is False  # an intact file is left alone


def test_a_study_gives_a_run_of_an_older_version_its_classes_with_a_line(tmp_path, capsys, monkeypatch):
    from synthetic import use_synthetic_data

    arrays = use_synthetic_data(monkeypatch, 5400, 300)
    command = ["compare", "--quick", "--models", "mlp-small", "--seeds", "1", "--epochs", "1"]
    command += ["--threads", "1", "--jobs", "1", "--out", str(tmp_path / "study")]
    assert main(command) == 0
    run_dir = tmp_path / "study" / "runs" / "mlp-small-e1-s0"
    good = read_test_predictions(run_dir, 1, 300)
    assert good is not None
    (run_dir / PREDICTIONS_NAME).write_bytes(b"\x00damaged")
    capsys.readouterr()
    assert main(command) == 0
    assert f"{run_dir / PREDICTIONS_NAME}: missing or damaged; made again from checkpoint.pt" in capsys.readouterr().out
    np.testing.assert_array_equal(read_test_predictions(run_dir, 1, 300), good)
    assert np.mean(good == arrays.test_labels) > 0.1
