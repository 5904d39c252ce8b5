import copy
import inspect
import re

import pytest
import torch
import torch.nn.functional as F

from mnistlab.cli import main
from mnistlab.errors import UserError
from mnistlab.fast import prepare
from mnistlab.models import (
    ARGUMENTS,
    MAX_CLASSES,
    MAX_HIDDEN_LAYERS,
    MAX_WIDTH,
    MODELS,
    check_model_args,
    count_parameters,
    create_model,
    hand_count,
    parameter_table,
)

EXPECTED = {"lenet5": 44_426, "lenet5-dropout": 44_426, "mlp": 469_160}


@pytest.mark.parametrize("name", MODELS)
def test_forward_shape_and_gradients(name):
    torch.manual_seed(0)
    model = create_model(name)
    images = torch.randn(8, 1, 28, 28)
    logits = model(images)
    assert logits.shape == (8, 10)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.arange(8)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname} gets no gradient"


@pytest.mark.parametrize("name", MODELS)
def test_num_classes(name):
    assert create_model(name, num_classes=3)(torch.randn(2, 1, 28, 28)).shape == (2, 3)


@pytest.mark.parametrize("name,count", EXPECTED.items())
def test_parameter_counts(name, count):
    assert count_parameters(create_model(name)) == count


def test_mlp_small_is_the_size_of_lenet5():
    lenet, small = count_parameters(create_model("lenet5")), count_parameters(create_model("mlp-small"))
    assert abs(small - lenet) / lenet <= 0.02


def test_lenet5_hand_calculation():
    rows = parameter_table(create_model("lenet5"))
    assert [(n, f, c) for n, f, c in rows] == [
        ("conv1", "(1x5x5+1)x6", 156),
        ("conv2", "(6x5x5+1)x16", 2_416),
        ("fc1", "(256+1)x120", 30_840),
        ("fc2", "(120+1)x84", 10_164),
        ("fc3", "(84+1)x10", 850),
    ]


@pytest.mark.parametrize("name", MODELS)
def test_hand_calculation_matches_tensors(name):
    model = create_model(name)
    rows = parameter_table(model)
    assert all(hand_count(formula) == count for _, formula, count in rows)
    assert sum(count for *_, count in rows) == count_parameters(model)


def test_regularizer_switches():
    plain, bn, drop, reg = (create_model(n) for n in ("lenet5", "lenet5-bn", "lenet5-dropout", "lenet5-reg"))

    def kinds(m, t):
        return sum(isinstance(x, t) for x in m.modules())

    assert kinds(plain, torch.nn.BatchNorm2d) == kinds(plain, torch.nn.Dropout) == 0
    assert kinds(bn, torch.nn.BatchNorm2d) == 2 and kinds(bn, torch.nn.Dropout) == 0
    assert kinds(drop, torch.nn.Dropout) == 2 and kinds(drop, torch.nn.BatchNorm2d) == 0
    assert kinds(reg, torch.nn.Dropout) == 2 and kinds(reg, torch.nn.BatchNorm2d) == 2
    assert all(m.p == 0.5 for m in drop.modules() if isinstance(m, torch.nn.Dropout))
    # batch norm comes straight after each conv, before its ReLU and pool (the textbook order)
    layers = list(bn.features)
    for i, layer in enumerate(layers):
        if isinstance(layer, torch.nn.Conv2d):
            assert isinstance(layers[i + 1], torch.nn.BatchNorm2d)
            assert [type(m) for m in layers[i + 2 : i + 4]] == [torch.nn.ReLU, torch.nn.MaxPool2d]


@pytest.mark.parametrize("name", ["lenet5", "lenet5-reg"])
def test_pool_before_relu_is_exactly_lenet5_as_written(name):
    """Our conv-(bn)-pool-ReLU gives the same logits and gradients as the textbook conv-(bn)-ReLU-pool."""
    torch.manual_seed(0)
    ours = prepare(create_model(name, dropout=0.0), torch.device("cpu"))
    textbook = copy.deepcopy(ours)
    layers = list(textbook.features)
    for i in [i for i, layer in enumerate(layers) if isinstance(layer, torch.nn.MaxPool2d)]:
        layers[i], layers[i + 1] = layers[i + 1], layers[i]
    textbook.features = torch.nn.Sequential(*layers)
    # a blank border makes windows of equal values, where the choice of gradient target shows
    images = torch.zeros(32, 1, 28, 28)
    images[:, :, 6:22, 6:22] = torch.randn(32, 1, 16, 16)
    labels = torch.randint(0, 10, (32,))
    for model in (ours, textbook):
        F.cross_entropy(model(images), labels).backward()
    assert torch.equal(ours(images), textbook(images))
    for (name_a, a), (_, b) in zip(ours.named_parameters(), textbook.named_parameters()):
        assert torch.equal(a.grad, b.grad), name_a


@pytest.mark.parametrize("name", MODELS)
def test_models_as_created_compute_the_same_with_and_without_autograd(name):
    """The models are plain: their forward does not branch on autograd (speedups.py's layers do, and only there)."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.running_var.uniform_(0.2, 3)
    images = torch.randn(16, 1, 28, 28)
    with torch.inference_mode():
        inference = model(images)
    assert torch.equal(inference, model(images).detach())


def test_dropout_is_off_in_eval_mode():
    model = create_model("lenet5-dropout").eval()
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(model(x), model(x))


def test_unknown_model_lists_known_ones():
    with pytest.raises(UserError, match="known models: lenet5"):
        create_model("resnet")


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_bad_dropout(p):
    with pytest.raises(UserError, match="dropout"):
        create_model("lenet5", dropout=p)


@pytest.mark.parametrize("name", MODELS)
def test_every_constructor_argument_has_a_check(name):
    assert set(inspect.signature(MODELS[name].build).parameters) <= set(ARGUMENTS)


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        (
            "mlp",
            {"hidden": [200_000, 200_000]},
            "hidden must be a list of at most 4 layer widths, each an integer from 1 to 2048",
        ),
        ("mlp", {"hidden": [10] * (MAX_HIDDEN_LAYERS + 1)}, "hidden must be"),
        ("mlp", {"hidden": [0]}, "hidden must be"),
        ("mlp", {"hidden": [10.0]}, "hidden must be"),
        ("mlp", {"hidden": "500"}, "hidden must be"),
        ("mlp", {"num_classes": 10**9}, "num_classes must be an integer from 1 to 1000"),
        ("lenet5", {"num_classes": 0}, "num_classes must be"),
        ("lenet5", {"num_classes": True}, "num_classes must be"),
        ("lenet5", {"batch_norm": "yes"}, "batch_norm must be true or false"),
        ("lenet5", {"dropout": "0.5"}, r"dropout must be a number in \[0, 1\)"),
        ("lenet5", {"dropout": float("nan")}, "dropout must be"),
        ("lenet5", {"hidden": [10]}, "'lenet5' takes no argument 'hidden'; it takes num_classes, batch_norm, dropout"),
        (["lenet5"], {}, r"unknown model \['lenet5'\]"),
    ],
)
def test_bad_model_arguments_are_refused_before_anything_is_built(name, kwargs, match, monkeypatch):
    def build(*args, **kwargs):
        raise AssertionError("a layer was built")

    for layer in (torch.nn.Linear, torch.nn.Conv2d):
        monkeypatch.setattr(layer, "__init__", build)
    with pytest.raises(UserError, match=match):
        create_model(name, **kwargs)


def test_model_arguments_must_be_a_mapping():
    with pytest.raises(UserError, match="arguments must be a mapping of names to values, got a list"):
        check_model_args("mlp", [500, 150])


def test_the_largest_model_allowed_is_bounded():
    largest = create_model("mlp", hidden=[MAX_WIDTH] * MAX_HIDDEN_LAYERS, num_classes=MAX_CLASSES)
    assert count_parameters(largest) == 16_245_736  # 65 MB of float32, as models.py says


@pytest.mark.parametrize(
    "name, weights",
    [
        ("lenet5", ["features.0", "features.3", "classifier.0", "classifier.2", "classifier.4"]),
        (
            "lenet5-reg",
            ["features.0", "features.1", "features.4", "features.5", "classifier.0", "classifier.3", "classifier.6"],
        ),
    ],
)
def test_state_dict_keys_stay_those_of_saved_checkpoints(name, weights):
    """Checkpoints name parameters by position; a reordering of layers must not move them."""
    keys = [k.removesuffix(".weight") for k in create_model(name).state_dict() if k.endswith(".weight")]
    assert keys == weights


def test_models_command_prints_the_hand_calculation(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"conv1\s+\(1x5x5\+1\)x6\s+=\s+156\n", out)
    assert re.search(r"total\s+156 \+ 2,416 \+ 30,840 \+ 10,164 \+ 850 = 44,426\n", out)
    assert re.search(r"total\s+392,500 \+ 75,150 \+ 1,510 = 469,160\n", out)
    for text in ("2,416", "30,840", "10,164", "850", "44,426", "392,500", "75,150", "1,510", "469,160"):
        assert text in out, text
    assert main(["models", "nope"]) == 2


def test_one_table_of_models_and_configurations_in_the_command_and_the_readme(capsys):
    """`mnistlab models` lists every model and every configuration of the study, and the README holds that table."""
    from pathlib import Path

    from mnistlab.cli.models import models_table
    from mnistlab.configurations import CONFIGURATIONS

    assert main(["models"]) == 0
    printed = capsys.readouterr().out
    table = models_table()
    assert printed.startswith(table + "\n")
    rows = {line.split(" | ")[0].strip("| `"): line for line in table.splitlines()[2:]}
    assert set(rows) == set(MODELS) | set(CONFIGURATIONS)
    assert "model `lenet5-reg`, augmentation" in rows["lenet5-all"] and "| no |" in rows["lenet5-all"]
    assert table in (Path(__file__).resolve().parents[1] / "README.md").read_text()
