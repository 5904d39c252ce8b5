import contextlib
import csv
import json
import re

import pytest
import torch

import mnistlab.train
from mnistlab.checkpoint import load_checkpoint, load_model
from mnistlab.cli import main
from mnistlab.engine import METRIC_COLUMNS
from synthetic import use_synthetic_data

TINY = ["--epochs", "2", "--batch-size", "32", "--val-size", "100", "--threads", "1"]


@pytest.fixture(autouse=True)
def synthetic_data(monkeypatch):
    return use_synthetic_data(monkeypatch, 600, 200)


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_train_writes_the_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "lenet5", *TINY, "--optimizer", "adam", "--lr", "0.003", "--out", str(out)]) == 0
    for name in ("config.json", "metrics.csv", "checkpoint.pt", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "metrics.csv") as f:
        assert f.readline().strip() == ",".join(METRIC_COLUMNS)
    rows = read_rows(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        for split in ("train", "val", "test"):
            assert 0 <= float(r[f"{split}_acc"]) <= 1
            assert float(r[f"{split}_loss"]) > 0
    assert float(rows[-1]["train_acc"]) > 0.5  # the synthetic classes are easy to learn
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "lenet5" and config["epochs"] == 2 and config["batch_size"] == 32
    ckpt = load_checkpoint(out)  # weights_only=True inside
    assert ckpt["epoch"] == 2 and ckpt["model_name"] == "lenet5" and ckpt["config"] == config
    model, _ = load_model(out)
    assert not model.training
    console = capsys.readouterr().out
    assert "epoch 1/2" in console and "epoch 2/2" in console


def test_same_command_twice_gives_the_same_metrics(tmp_path):
    for name in ("a", "b"):
        assert main(["train", "--model", "lenet5-reg", "--augment", *TINY, "--out", str(tmp_path / name)]) == 0
    timing = {"epoch_seconds", "samples_per_second"}
    a, b = (read_rows(tmp_path / n / "metrics.csv") for n in ("a", "b"))
    assert [{k: v for k, v in r.items() if k not in timing} for r in a] == [
        {k: v for k, v in r.items() if k not in timing} for r in b
    ]
    c = tmp_path / "c"
    assert main(["train", "--model", "lenet5-reg", "--augment", *TINY, "--seed", "1", "--out", str(c)]) == 0
    assert read_rows(c / "metrics.csv")[-1]["val_loss"] != a[-1]["val_loss"]


@pytest.mark.parametrize("model", ["lenet5-reg", "mlp"])
def test_interrupt_and_resume_reaches_the_same_weights(tmp_path, monkeypatch, model):
    args = ["train", "--model", model, "--augment", "--epochs", "3", "--batch-size", "64", "--val-size", "100"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0

    real = mnistlab.train.train_one_epoch
    calls = []

    def interrupted_in_epoch_two(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # Ctrl-C after two batches of the second epoch
            def progress(it):
                for i, x in enumerate(it):
                    if i == 2:
                        raise KeyboardInterrupt
                    yield x
            a = (*a[:-1], progress)
        return real(*a, **k)

    monkeypatch.setattr(mnistlab.train, "train_one_epoch", interrupted_in_epoch_two)
    part = tmp_path / "part"
    assert main([*args, "--out", str(part)]) == 130
    assert load_checkpoint(part)["epoch"] == 1
    assert len(read_rows(part / "metrics.csv")) == 1
    monkeypatch.setattr(mnistlab.train, "train_one_epoch", real)

    assert main(["train", "--resume", str(part)]) == 0
    whole, resumed = load_checkpoint(tmp_path / "whole"), load_checkpoint(part)
    assert resumed["epoch"] == 3
    for key, value in whole["model_state"].items():
        assert torch.equal(value, resumed["model_state"][key]), key
    strip = lambda rows: [{k: v for k, v in r.items() if "second" not in k} for r in rows]  # noqa: E731
    assert strip(read_rows(part / "metrics.csv")) == strip(read_rows(tmp_path / "whole" / "metrics.csv"))


def test_resume_of_a_finished_run_does_nothing(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    assert main(["train", "--resume", str(out)]) == 0
    assert (out / "checkpoint.pt").read_bytes() == before


def test_evaluate_agrees_with_training_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    last = read_rows(out / "metrics.csv")[-1]
    assert result["test_acc"] == pytest.approx(float(last["test_acc"]), abs=1e-6)
    assert result["test_loss"] == pytest.approx(float(last["test_loss"]), rel=1e-4)
    matrix = result["confusion_matrix"]
    assert sum(map(sum, matrix)) == 200
    assert sum(matrix[i][i] for i in range(10)) == round(result["test_acc"] * 200)
    assert (out / "confusion.png").stat().st_size > 0
    assert main(["evaluate", str(out / "checkpoint.pt")]) == 0
    assert "true\\pred" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--model", "resnet"], "unknown model 'resnet'"),
        (["--epochs", "0"], "epochs must be positive"),
        (["--batch-size", "0"], "batch-size must be positive"),
        (["--lr", "0"], "learning rate must be > 0"),
        (["--lr", "-1"], "learning rate must be > 0"),
        (["--dropout", "1"], "dropout must be in [0, 1)"),
        (["--dropout", "-0.1"], "dropout must be in [0, 1)"),
        (["--epochs", "two"], "invalid int value"),
        (["--optimizer", "rmsprop"], "invalid choice"),
    ],
)
def test_bad_flags(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) if "invalid" in message else contextlib.nullcontext():
        code = main(["train", *flags, "--out", str(tmp_path / "run")])
        assert code == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--epochs", "x"])
    assert e.value.code == 2
    one_error_line(capsys)


@pytest.mark.parametrize("command", ["train", "compare", "bench", "evaluate", "predict", "export", "serve", "data"])
def test_help_states_each_default_once(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for flag_help in re.split(r"\s--?[a-z]", text):
        assert flag_help.count("(default:") <= 1, flag_help


def test_resume_without_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", "--resume", str(tmp_path / "empty")]) == 2
    assert "no checkpoint.pt" in one_error_line(capsys)


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(["train", *TINY, "--out", str(out)]) == 2
    assert "already holds a run" in one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("kind", ["garbage", "truncated", "foreign", "empty"])
def test_bad_checkpoints(tmp_path, capsys, kind):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    bad = tmp_path / f"{kind}.pt"
    good = (out / "checkpoint.pt").read_bytes()
    bad.write_bytes(
        {
            "garbage": b"not a checkpoint at all",
            "truncated": good[: len(good) // 2],
            "foreign": _torch_bytes({"state_dict": {"w": torch.zeros(2)}}),
            "empty": b"",
        }[kind]
    )
    before = bad.read_bytes()
    assert main(["evaluate", str(bad)]) == 2
    line = one_error_line(capsys)
    assert str(bad) in line
    assert bad.read_bytes() == before
    assert main(["train", "--resume", str(tmp_path)]) == 2  # no checkpoint.pt in tmp_path itself
    capsys.readouterr()


def _torch_bytes(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_models_command_prints_the_hand_calculation(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"conv1\s+\(1x5x5\+1\)x6\s+=\s+156\n", out)
    assert re.search(r"total\s+156 \+ 2,416 \+ 30,840 \+ 10,164 \+ 850 = 44,426\n", out)
    assert re.search(r"total\s+392,500 \+ 75,150 \+ 1,510 = 469,160\n", out)
    for text in ("2,416", "30,840", "10,164", "850", "44,426", "392,500", "75,150", "1,510", "469,160"):
        assert text in out, text
    assert main(["models", "nope"]) == 2
