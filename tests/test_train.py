import contextlib
import csv
import json
import re

import pytest
import torch
from synthetic import use_synthetic_data

from mnistlab.checkpoint import load_checkpoint, load_model
from mnistlab.cli import main
from mnistlab.config import TrainConfig, get_lr
from mnistlab.engine import evaluate, fit
from mnistlab.inputs import MEAN, STD
from mnistlab.metrics import METRIC_COLUMNS
from mnistlab.models import LeNet5
from mnistlab.sdlm import SDLM
from mnistlab.study import config_differences

TINY = ["--epochs", "2", "--batch-size", "32", "--val-size", "100", "--threads", "1"]


def steps_per_epoch(monkeypatch, train, epochs: int, optimizer=torch.optim.SGD) -> int:
    """The optimizer steps of one epoch of `train()`, a run of `epochs` epochs, counted at `optimizer`'s step."""
    steps = []
    real = optimizer.step
    monkeypatch.setattr(optimizer, "step", lambda self, *a, **k: (steps.append(1), real(self, *a, **k))[1])
    assert train() == 0
    monkeypatch.setattr(optimizer, "step", real)
    assert len(steps) % epochs == 0
    return len(steps) // epochs


@contextlib.contextmanager
def stopped_at_step(monkeypatch, n: int, optimizer=torch.optim.SGD):
    """Ctrl-C (KeyboardInterrupt) at the `n`-th optimizer step of the block, as if pressed in the middle of it."""
    steps = []
    real = optimizer.step

    def step(self, *a, **k):
        steps.append(1)
        if len(steps) == n:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(optimizer, "step", step)
    yield
    monkeypatch.setattr(optimizer, "step", real)


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
    # the line shows each epoch's peak rate; metrics.csv's lr stays the rate of the epoch's last step
    steps = -(-500 // 32)
    peaks = re.findall(r"\| peak lr (\S+) \|", console)
    assert peaks == [f"{0.003:.2e}", f"{get_lr(steps, 2 * steps, 0.003, 'cosine'):.2e}"]
    assert [float(r["lr"]) for r in rows] == pytest.approx(
        [get_lr(e * steps - 1, 2 * steps, 0.003, "cosine") for e in (1, 2)], rel=1e-5
    )


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


@pytest.mark.parametrize(
    "model, extra",
    [
        ("lenet5-reg", ["--augment"]),
        ("mlp", ["--augment"]),
        ("lenet5", ["--augment", "--freeze-first-at", "0.5"]),
        ("lenet5", ["--freeze-first-at", "0.2"]),
        ("lenet5-1998", ["--optimizer", "sdlm", "--loss", "map", "--schedule", "lecun98", "--lr", "0.00005"]),
    ],
)
def test_interrupt_and_resume_reaches_the_same_weights(tmp_path, monkeypatch, model, extra):
    # with --freeze-first-at 0.5 the first layer stops learning in the middle of epoch 2, after the interruption;
    # at 0.2 in epoch 1, so the resumed run computes the frozen block's outputs (frozen.py) anew from its checkpoint
    # lenet5-1998 with sdlm: its curvature, re-estimated before each epoch, must come back from the checkpoint too
    args = ["train", "--model", model, "--epochs", "3", "--batch-size", "64", "--val-size", "100", *extra]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0

    optimizer = SDLM if "sdlm" in extra else torch.optim.SGD
    per_epoch = steps_per_epoch(monkeypatch, lambda: main([*args, "--out", str(tmp_path / "copy")]), 3, optimizer)
    part = tmp_path / "part"
    with stopped_at_step(monkeypatch, per_epoch + 2, optimizer):  # Ctrl-C after two batches of the second epoch
        assert main([*args, "--out", str(part)]) == 130
    assert load_checkpoint(part)["epoch"] == 1
    assert len(read_rows(part / "metrics.csv")) == 1

    assert main(["train", "--resume", str(part)]) == 0
    whole, resumed = load_checkpoint(tmp_path / "whole"), load_checkpoint(part)
    assert resumed["epoch"] == 3
    for key, value in whole["model_state"].items():
        assert torch.equal(value, resumed["model_state"][key]), key
    strip = lambda rows: [{k: v for k, v in r.items() if "second" not in k} for r in rows]  # noqa: E731
    assert strip(read_rows(part / "metrics.csv")) == strip(read_rows(tmp_path / "whole" / "metrics.csv"))


def test_training_metrics_are_measured_on_the_same_subset_every_epoch(tmp_path, synthetic_data):
    measured = []  # the input of every batch the model sees in eval mode: the epochs' measurements

    def record(module, args, output):
        if isinstance(module, LeNet5) and not module.training:
            measured.append(args[0].clone())

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        config = TrainConfig(epochs=3, batch_size=32, val_size=100, train_eval_size=200)
        history = fit(config, synthetic_data, tmp_path, log=lambda line: None, show_progress=False)
    finally:
        hook.remove()
    train_sets = measured[0::3]  # each epoch measures train, validation, test in that order, one batch each
    assert len(train_sets) == 3 and all(len(images) == 200 for images in train_sets)
    assert all(torch.equal(images, train_sets[0]) for images in train_sets)
    # and the last row's training metrics are those of the final model on these images
    images = (train_sets[0].squeeze(1) * STD + MEAN).mul(255).round().to(torch.uint8)
    model, _ = load_model(tmp_path)
    labels = torch.from_numpy(synthetic_data.train_labels).long()
    rows = {img.tobytes(): i for i, img in enumerate(synthetic_data.train_images)}
    subset_labels = labels[[rows[img.numpy().tobytes()] for img in images]]
    assert evaluate(model, images, subset_labels)[1] == pytest.approx(history[-1]["train_acc"])


def test_recipe_sets_a_new_runs_settings_and_flags_win(tmp_path, capsys):
    from mnistlab.config import RECIPES

    out = tmp_path / "run"
    assert (
        main(["train", "--recipe", "fast", "--epochs", "1", "--val-size", "100", "--threads", "1", "--out", str(out)])
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 1 and config["val_size"] == 100
    assert {k: config[k] for k in RECIPES["fast"] if k != "epochs"} == {
        k: v for k, v in RECIPES["fast"].items() if k != "epochs"
    }
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--recipe", "fast"]) == 2
    assert "--recipe fast: --resume continues a run with its own settings" in one_error_line(capsys)


def test_resume_of_a_finished_run_does_nothing(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    assert main(["train", "--resume", str(out)]) == 0
    assert (out / "checkpoint.pt").read_bytes() == before


# the keys of config.json and of a checkpoint's config as they were before runs could be extended
PLAIN_CONFIG_KEYS = ["model", "dataset", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
                     "schedule", "augment", "dropout", "seed", "val_size", "device", "eval_batch_size", "amp",
                     "train_eval_size"]  # fmt: skip


def test_more_epochs_on_a_finished_run_is_refused_and_extend_records_its_segment(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    plain = json.loads((out / "config.json").read_text())
    assert list(plain) == PLAIN_CONFIG_KEYS  # a run never extended: the same config as always, so compare reuses it
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    first_rows = read_rows(out / "metrics.csv")
    capsys.readouterr()

    # the ambiguous form: refused, with what to use instead, and nothing on disk changes
    assert main(["train", "--resume", str(out), "--epochs", "4"]) == 2
    assert "--extend N" in one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    assert main(["train", "--resume", str(out), "--extend", "2", "--extend-lr", "0.002", "--threads", "1"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 4 and config["lr"] == 0.01
    assert config["segments"] == [
        {"epochs": 2, "lr": 0.01, "schedule": "cosine"},
        {"epochs": 2, "lr": 0.002, "schedule": "cosine"},
    ]
    assert load_checkpoint(out)["config"] == config
    rows = read_rows(out / "metrics.csv")
    timing = ("epoch_seconds", "samples_per_second")
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows[:2]] == [
        {k: v for k, v in r.items() if k not in timing} for r in first_rows
    ]  # epochs 1-2 stay as they were
    steps = -(-500 // 32)  # 600 images - 100 for validation, batches of 32
    assert [float(r["lr"]) for r in rows[2:]] == pytest.approx(
        [get_lr(steps - 1, 2 * steps, 0.002, "cosine"), get_lr(2 * steps - 1, 2 * steps, 0.002, "cosine")], rel=1e-5
    )  # the added epochs decay from --extend-lr, not from wherever the first cosine would have been
    assert float(rows[2]["lr"]) > float(rows[1]["lr"])

    # compare reuses a run whose saved config matches its own; an extended run is not the 2-epoch run
    two_epochs = TrainConfig(epochs=2, batch_size=32, val_size=100)
    assert not config_differences(plain, two_epochs)
    assert config_differences(config, two_epochs)
    assert TrainConfig.from_dict(config) == two_epochs.extended(2, 0.002)


def test_extend_interrupted_continues_with_the_same_command(tmp_path, monkeypatch, capsys):
    for name in ("whole", "part"):
        assert main(["train", *TINY, "--out", str(tmp_path / name)]) == 0
    extend = ["--extend", "2", "--threads", "1"]
    assert main(["train", "--resume", str(tmp_path / "whole"), *extend]) == 0

    per_epoch = steps_per_epoch(monkeypatch, lambda: main(["train", *TINY, "--out", str(tmp_path / "copy")]), epochs=2)
    part = tmp_path / "part"
    with stopped_at_step(monkeypatch, per_epoch + 1):  # Ctrl-C at the first step of the second added epoch
        assert main(["train", "--resume", str(part), *extend]) == 130
    assert f"mnistlab train --resume {part} --extend 2" in capsys.readouterr().err
    assert load_checkpoint(part)["epoch"] == 3

    # an unfinished run is finished before it is extended: another --extend is refused
    assert main(["train", "--resume", str(part), "--extend", "3"]) == 2
    assert "finish it first" in one_error_line(capsys)
    assert main(["train", "--resume", str(part), *extend]) == 0  # the interrupted command, again
    whole, resumed = load_checkpoint(tmp_path / "whole"), load_checkpoint(part)
    assert resumed["epoch"] == 4 and resumed["config"] == whole["config"]
    for key, value in whole["model_state"].items():
        assert torch.equal(value, resumed["model_state"][key]), key


def test_resume_refuses_the_flags_it_cannot_honour(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    other = tmp_path / "X"
    assert (
        main(
            ["train", "--resume", str(out), "--lr", "0.5", "--model", "mlp", "--optimizer", "adam", "--out", str(other)]
        )
        == 2
    )
    line = one_error_line(capsys)
    for flag in ("--lr 0.5", "--model mlp", "--optimizer adam", f"--out {other}"):
        assert flag in line, flag
    assert main(["train", "--resume", str(out), "--augment"]) == 2
    assert "--augment" in one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and not other.exists()
    # what resume does honour: the run's own values, its own directory, where to train
    assert (
        main(["train", "--resume", str(out), "--lr", "0.01", "--epochs", "2", "--out", str(out), "--device", "cpu"])
        == 0
    )
    assert "nothing to do" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--extend", "2"], "use it with --resume DIR"),
        (["--resume", "{run}", "--extend-lr", "0.1"], "give --extend N too"),
        (["--resume", "{run}", "--extend", "0"], "--extend must be in 1..10,000"),
        (["--resume", "{run}", "--extend", "100000000000"], "--extend must be in 1..10,000"),
        (["--resume", "{run}", "--extend", "1", "--extend-lr", "nan"], "--extend-lr must be a finite number > 0"),
    ],
)
def test_bad_extend_flags(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", *[f.format(run=out) for f in flags]]) == 2
    assert message in one_error_line(capsys)
    assert (out / "checkpoint.pt").read_bytes() == before


def test_a_loss_that_becomes_nan_stops_the_run_and_keeps_the_last_good_epoch(tmp_path, capsys):
    fresh = tmp_path / "fresh"
    assert main(["train", *TINY, "--lr", "3", "--out", str(fresh)]) == 2
    line = one_error_line(capsys)
    assert "epoch 1: the training loss is nan" in line and "try a lower --lr than 3" in line
    assert not (fresh / "checkpoint.pt").exists() and not (fresh / "metrics.csv").exists()

    out = tmp_path / "run"
    assert main(["train", "--model", "mlp", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--extend", "1", "--extend-lr", "10", "--threads", "1"]) == 2
    line = one_error_line(capsys)
    assert (
        "epoch 2: the training loss is nan" in line and "lower --extend-lr" in line and f"{out} keeps epoch 1" in line
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_run_stuck_at_chance_stops(tmp_path, capsys):
    out = tmp_path / "run"
    # 250 steps an epoch at a rate far too high: every answer is one class, the loss stays finite
    args = [
        "--model",
        "mlp-small",
        "--lr",
        "2",
        "--epochs",
        "3",
        "--batch-size",
        "2",
        "--val-size",
        "100",
        "--threads",
        "1",
    ]
    assert main(["train", *args, "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "epoch 2: the training accuracy stays at chance" in line and "lower --lr" in line
    assert load_checkpoint(out)["epoch"] == 1


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
        (["--seed", str(10**23)], "seed must be in [0, 2**63-1]"),
        (["--seed", "-1"], "seed must be in [0, 2**63-1]"),
        (["--lr", "inf"], "lr must be a finite number"),
        (["--lr", "nan"], "lr must be a finite number"),
        (["--weight-decay", "nan"], "weight-decay must be a finite number"),
        (["--weight-decay", "inf"], "weight-decay must be a finite number"),
        (["--momentum", "nan"], "momentum must be a finite number"),
        (["--dropout", "nan"], "dropout must be a finite number"),
        (["--threads", str(10**23)], "threads must be at most"),
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
