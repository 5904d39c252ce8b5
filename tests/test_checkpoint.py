"""Loading checkpoints: a damaged, foreign or hostile file is refused in one line, before anything is built from it."""

from __future__ import annotations

import collections
import io

import pytest
import torch
from synthetic import use_synthetic_data, write_checkpoint

from mnistlab import cli
from mnistlab.checkpoint import load_checkpoint, load_model
from mnistlab.errors import UserError
from mnistlab.models import create_model


class Anything:
    """A class the weights-only unpickler does not know: a pickle of it could run code."""


# (file name, how to write it, what the one line must say)
BAD_FILES = [
    ("config-list.pt", lambda p: write_checkpoint(p, config=[1, 2]), "damaged checkpoint: config is a list, not a mapping"),
    ("config-dataset.pt", lambda p: write_checkpoint(p, config={"dataset": ["mnist"]}), "config's dataset is not a name"),
    ("config-permute.pt", lambda p: write_checkpoint(p, config={"dataset": "mnist", "permute": "7"}), "config's permute is not a seed"),
    ("kwargs-list.pt", lambda p: write_checkpoint(p, model_kwargs=[55, 17]), "arguments must be a mapping of names to values, got a list"),
    ("huge.pt", lambda p: write_checkpoint(p, model_name="mlp", model_kwargs={"hidden": [200_000, 200_000]}), "hidden must be a list of at most 4"),
    ("name-list.pt", lambda p: write_checkpoint(p, model_name=["mlp"]), r"unknown model \['mlp'\]"),
    ("epoch.pt", lambda p: write_checkpoint(p, epoch="1"), "epoch is not a count of epochs"),
    ("metrics.pt", lambda p: write_checkpoint(p, metrics={"val_acc": 1}), "metrics are not a list of rows"),
    ("state.pt", lambda p: write_checkpoint(p, model_state=[1, 2]), "model_state is not a mapping of names to tensors"),
    ("unsafe.pt", lambda p: torch.save({"format": Anything(), "hook": collections.OrderedDict}, p),
     r": not an mnistlab checkpoint \(or unsafe content\): refused$"),
    ("text.pt", lambda p: p.write_text("hello, this is a text file\n"), r"not a checkpoint \(a checkpoint is a PyTorch zip archive, and this file is not one\)$"),
    ("empty.pt", lambda p: p.write_bytes(b""), "empty file, not a checkpoint"),
    ("truncated.pt", lambda p: p.write_bytes(write_checkpoint(p).read_bytes()[:300]), r"damaged or incomplete checkpoint \(PyTorch cannot read the archive\)$"),
    ("not-mnistlab.pt", lambda p: torch.save({"weights": torch.zeros(3)}, p), "not an mnistlab checkpoint$"),
]  # fmt: skip


@pytest.mark.parametrize("name, write, message", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_checkpoint_is_refused_in_one_line(tmp_path, name, write, message, monkeypatch):
    path = tmp_path / name
    write(path)
    for layer in (torch.nn.Linear, torch.nn.Conv2d):  # "refused" means before any model is built
        monkeypatch.setattr(layer, "__init__", lambda *a, **k: pytest.fail("a layer was built"))
    with pytest.raises(UserError, match=message) as refused:
        load_model(path)
    line = str(refused.value)
    assert line.startswith(str(path)) and "\n" not in line
    assert "weights_only" not in line and "(101)" not in line


@pytest.mark.parametrize("name, write, message", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_evaluate_of_a_bad_checkpoint_is_one_line_exit_2_and_the_file_untouched(
    tmp_path, name, write, message, capsys, monkeypatch
):
    use_synthetic_data(monkeypatch, 10, 50)
    path = tmp_path / name
    write(path)
    before = path.read_bytes()
    assert cli.main(["evaluate", str(path), "--out", str(tmp_path / "confusion.png")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("mnistlab evaluate: error: ")
    assert path.read_bytes() == before and not (tmp_path / "confusion.png").exists()


def test_weights_that_do_not_fit_say_how(tmp_path):
    state = create_model("mlp-small").state_dict()
    state["net.1.weight"] = torch.zeros(3, 784)  # another shape
    del state["net.5.bias"]  # missing
    state["extra"] = torch.zeros(1)  # unexpected
    path = write_checkpoint(tmp_path / "misfit.pt", model_state=state)
    with pytest.raises(UserError) as refused:
        load_model(path)
    assert str(refused.value) == (
        f"{path}: weights do not fit model 'mlp-small': 1 missing ('net.5.bias'), 1 unexpected ('extra'), "
        "1 of another shape ('net.1.weight')"
    )


def test_a_checkpoint_with_model_arguments_is_rebuilt_from_them(tmp_path):
    model = create_model("mlp", hidden=[20, 10], dropout=0.1)
    path = write_checkpoint(
        tmp_path / "good.pt",
        model_name="mlp",
        model_kwargs={"hidden": [20, 10], "dropout": 0.1},
        model_state=model.state_dict(),
    )
    loaded, ckpt = load_model(path)
    assert [m.out_features for m in loaded.modules() if isinstance(m, torch.nn.Linear)] == [20, 10, 10]
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert load_checkpoint(path)["epoch"] == ckpt["epoch"] == 1


@pytest.mark.parametrize("kind", ["garbage", "truncated", "foreign", "empty"])
def test_bad_checkpoints(tmp_path, capsys, kind, monkeypatch):
    """What `mnistlab train` wrote, damaged or replaced: evaluate and train --resume say so in one line."""
    use_synthetic_data(monkeypatch, 600, 200)
    out = tmp_path / "run"
    assert cli.main(["train", "--epochs", "1", "--batch-size", "32", "--val-size", "100", "--out", str(out)]) == 0
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
    assert cli.main(["evaluate", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0] and str(bad) in err[0], err
    assert bad.read_bytes() == before
    assert cli.main(["train", "--resume", str(tmp_path)]) == 2  # no checkpoint.pt in tmp_path itself
    capsys.readouterr()


def _torch_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
