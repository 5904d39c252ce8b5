"""Inside the networks: each stage against the model's own forward pass (forward hooks and logits),
the page's JSON, readable names, `mnistlab models`' shapes, and the API's moved, looked-inside answers."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from synthetic import (
    draw_digit,
    drawn_test_set,
    png_bytes,
    request,
    save_model,
    with_batch_norm_statistics,
)
from torch import nn

from mnistlab import cli
from mnistlab.checkpoint import load_model
from mnistlab.inputs import normalize
from mnistlab.inside import (
    TOP_UNITS,
    decode,
    format_shapes,
    layer_outputs,
    look_inside,
    model_label,
)
from mnistlab.models import CONVOLUTIONAL, MODELS, LeNet5, Registered, create_model
from mnistlab.predict import predict_probabilities
from mnistlab.preprocess import decode_image, to_mnist
from mnistlab.server import load_served_models, shown_path, study_summary
from mnistlab.transform import move_images

TEST_IMAGES, _ = drawn_test_set()
LENET5_SHAPES = "1x28x28 -> 6x24x24 -> 6x12x12 -> 16x8x8 -> 16x4x4 -> 256 -> 120 -> 84 -> 10"
MLP_SHAPES = "1x28x28 -> 784 -> 500 -> 150 -> 10"


def trained_looking(name: str, seed: int = 0) -> nn.Module:
    """A model of random weights, in eval mode, whose batch norms would show if a stage skipped them."""
    return with_batch_norm_statistics(name, seed).eval()


def images(n=4, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 28, 28), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def own_forward(model: nn.Module, x: torch.Tensor, grad: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The model's own forward: its logits, and the output of every ReLU module as forward hooks see it.
    Without grad, LeNet-5 runs its evaluation path (batch norm folded into the convolution)."""
    seen = []
    hooks = [
        m.register_forward_hook(lambda module, args, out: seen.append(out.detach().clone()))
        for m in model.modules()
        if isinstance(m, nn.ReLU)
    ]
    try:
        with torch.set_grad_enabled(grad):
            logits = model(normalize(x)).detach()
    finally:
        for hook in hooks:
            hook.remove()
    return logits, seen


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
@pytest.mark.parametrize("name", [name for name in MODELS if not name.startswith("lenet5-1998")])  # test_models_1998
def test_stages_are_the_tensors_of_the_models_own_forward(name, grad):
    model, x = trained_looking(name), images()
    outputs = layer_outputs(model, x)
    logits, relus = own_forward(model, x, grad)
    assert torch.allclose(outputs[list(outputs)[-1]], logits, atol=1e-5)
    activated = ["conv1", "conv2", "fc1", "fc2"] if name.startswith("lenet5") else ["fc1", "fc2"]  # ReLU, then pool
    assert len(relus) == len(activated)
    for stage, seen in zip(activated, relus):
        assert outputs[stage].shape == seen.shape and torch.allclose(outputs[stage], seen, atol=1e-5), stage


def test_conv_stages_are_the_maps_after_relu_and_their_pool():
    model, x = trained_looking("lenet5"), images()
    state = model.state_dict()  # keys that saved checkpoints rely on
    outputs = layer_outputs(model, x)
    conv1 = F.relu(F.conv2d(normalize(x), state["features.0.weight"], state["features.0.bias"]))
    assert torch.allclose(outputs["conv1"], conv1, atol=1e-6)
    assert torch.equal(outputs["pool1"], F.max_pool2d(outputs["conv1"], 2))
    conv2 = F.relu(F.conv2d(outputs["pool1"], state["features.3.weight"], state["features.3.bias"]))
    assert torch.allclose(outputs["conv2"], conv2, atol=1e-5)
    assert torch.equal(outputs["flatten"], outputs["pool2"].flatten(1))


def test_mlp_stages_by_hand():
    model, x = trained_looking("mlp"), images()
    state = model.state_dict()
    outputs = layer_outputs(model, x)
    hidden = F.relu(normalize(x).flatten(1) @ state["net.1.weight"].T + state["net.1.bias"])
    assert torch.allclose(outputs["fc1"], hidden, atol=1e-5)


@pytest.mark.parametrize(
    "name,shapes",
    [
        ("lenet5", LENET5_SHAPES),
        ("lenet5-reg", LENET5_SHAPES),
        ("mlp", MLP_SHAPES),
        ("mlp-small", "1x28x28 -> 784 -> 55 -> 17 -> 10"),
    ],
)
def test_shapes(name, shapes):
    assert format_shapes(create_model(name)) == shapes


def test_models_command_prints_the_shapes(capsys):
    assert cli.main(["models", "lenet5", "mlp"]) == 0
    out = capsys.readouterr().out
    assert f"  shapes {LENET5_SHAPES}\n" in out and out.rstrip().endswith(f"shapes {MLP_SHAPES}")


def test_look_inside_lenet5_gives_every_stage_and_the_learned_filters():
    model, image = trained_looking("lenet5-bn"), images(1)[0]
    answer = json.loads(json.dumps(look_inside(model, image)))  # what the page gets
    outputs = layer_outputs(model, image[None])
    assert [layer["name"] for layer in answer["layers"]] == [
        "conv1",
        "pool1",
        "conv2",
        "pool2",
        "flatten",
        "fc1",
        "fc2",
        "fc3",
    ]
    assert " -> ".join("x".join(map(str, s)) for s in answer["shapes"]) == LENET5_SHAPES
    for layer in answer["layers"]:
        expected = outputs[layer["name"]][0]
        assert layer["shape"] == list(expected.shape)
        assert np.array_equal(decode(layer["values"], layer["shape"]), expected.numpy()), layer["name"]
    assert answer["layers"][0]["title"] == "conv1 + ReLU: feature maps" and "logits" in answer["layers"][-1]["title"]
    filters = answer["filters"]
    assert filters["shape"] == [6, 5, 5]
    assert np.array_equal(
        decode(filters["values"], filters["shape"]), model.state_dict()["features.0.weight"][:, 0].numpy()
    )
    assert "units" not in answer


def test_look_inside_mlp_shows_the_weights_of_its_most_active_units():
    model, image = trained_looking("mlp"), images(1, seed=3)[0]
    answer = look_inside(model, image.numpy())
    hidden = layer_outputs(model, image[None])["fc1"][0]
    units = answer["units"]
    assert len(units["indices"]) == TOP_UNITS == 10
    activations = decode(units["activations"], [10])
    assert np.array_equal(activations, np.sort(hidden.numpy())[::-1][:10])
    assert np.array_equal(activations, hidden.numpy()[units["indices"]])
    weights = model.state_dict()["net.1.weight"]
    assert units["shape"] == [10, 28, 28]
    for index, image_of_weights in zip(units["indices"], decode(units["weights"], units["shape"])):
        assert np.array_equal(image_of_weights, weights[index].reshape(28, 28).numpy())
    assert "filters" not in answer and answer["layers"][1]["title"] == "hidden layer 1 + ReLU"


@pytest.mark.parametrize(
    "model,augment,label",
    [
        ("lenet5", False, "LeNet-5"),
        ("mlp", False, "MLP 500-150"),
        ("mlp-small", False, "MLP 55-17"),
        ("lenet5-bn", False, "LeNet-5 + batch norm"),
        ("lenet5-dropout", False, "LeNet-5 + dropout"),
        ("lenet5", True, "LeNet-5 + augmentation"),
        ("lenet5-reg", True, "LeNet-5 + batch norm + dropout + augmentation"),
        ("lenet5-reg", False, "LeNet-5 + batch norm + dropout"),
        ("mlp", True, "MLP 500-150 + augmentation"),
    ],
)
def test_readable_names_from_the_declaration_and_the_training(model, augment, label):
    assert model_label(model, augment) == label


def test_a_model_is_named_by_its_declaration_not_its_layers(monkeypatch):
    """A wider LeNet-5 has LeNet-5's layers; only its declared label tells them apart."""
    wide = Registered(partial(LeNet5, channels=(12, 32)), "LeNet-5, 12 and 32 channels", CONVOLUTIONAL)
    monkeypatch.setitem(MODELS, "lenet5-wide", wide)
    assert model_label("lenet5-wide") == "LeNet-5, 12 and 32 channels"
    assert model_label("lenet5-wide", augment=True) == "LeNet-5, 12 and 32 channels + augmentation"


# --- the API -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory, running):
    root = tmp_path_factory.mktemp("runs")
    dirs = [save_model(root / "lenet5-all-e10-s0", "lenet5-bn"), save_model(root / "mlp-e10-s0", "mlp", seed=1)]
    models = load_served_models(dirs)
    with running(models) as port:
        yield port, [load_model(d)[0] for d in dirs]


def test_predict_moves_the_digit_and_looks_inside_with_the_models_own_values(served):
    port, models = served
    png = png_bytes(draw_digit(7, (280, 280)))
    status, _, answer = request(
        port, "POST", "/api/predict?inside=1&dx=3&dy=-2&angle=-20", png, {"Content-Type": "image/png"}
    )
    assert status == 200 and answer["move"] == {"dx": 3, "dy": -2, "angle": -20.0}
    preprocessed = to_mnist(decode_image(png))
    moved = move_images(torch.from_numpy(preprocessed), 3, -2, -20.0)
    assert answer["preprocessed"] == preprocessed.tolist() and answer["model_input"] == moved.tolist()
    assert answer["model_input"] != answer["preprocessed"]
    for prediction, model in zip(answer["predictions"], models):
        logits, relus = own_forward(model, moved[None], grad=False)
        expected = predict_probabilities(model, moved.numpy()[None])[0]
        assert np.allclose(prediction["probabilities"], expected, atol=1e-5)
        layers = {layer["name"]: decode(layer["values"], layer["shape"]) for layer in prediction["inside"]["layers"]}
        assert np.allclose(layers["fc3"], logits[0].numpy(), atol=1e-5)  # the logits of the model's own forward
        activated = ["pool1", "pool2", "fc1", "fc2"] if "filters" in prediction["inside"] else ["fc1", "fc2"]
        for stage, seen in zip(activated, relus):
            assert np.allclose(layers[stage], seen[0].numpy(), atol=1e-5), stage


def test_without_inside_or_move_the_answer_is_as_before(served):
    port, models = served
    png = png_bytes(draw_digit(4, (280, 280)))
    status, _, answer = request(port, "POST", "/api/predict", png, {"Content-Type": "image/png"})
    assert status == 200 and all("inside" not in p for p in answer["predictions"])
    assert answer["model_input"] == answer["preprocessed"] and answer["move"] == {"dx": 0, "dy": 0, "angle": 0.0}


def test_test_digit_takes_the_same_options(served):
    port, models = served
    status, _, answer = request(port, "GET", "/api/test-digit?index=1&dx=-4&inside=1")
    assert status == 200 and answer["preprocessed"] == TEST_IMAGES[1].tolist()
    assert answer["model_input"] == move_images(torch.from_numpy(TEST_IMAGES[1]), -4, 0).tolist()
    assert "units" in answer["predictions"][1]["inside"]


@pytest.mark.parametrize("query", ["dx=1.5", "dy=seven", "dx=29", "angle=181", "angle=nan", "angle=inf", "inside=yes"])
def test_bad_move_options_get_a_400(served, query):
    port, _ = served
    png = png_bytes(draw_digit(7))
    status, _, answer = request(port, "POST", f"/api/predict?{query}", png, {"Content-Type": "image/png"})
    assert status == 400 and query.split("=")[0] in answer["error"]
    status, _, answer = request(port, "GET", f"/api/test-digit?index=0&{query}")
    assert status == 400
    assert request(port, "POST", "/api/predict", png, {"Content-Type": "image/png"})[0] == 200


def test_models_have_readable_labels_and_the_study_says_what_it_has(served, running, tmp_path):
    port, _ = served
    status, _, answer = request(port, "GET", "/api/models")
    assert [m["label"] for m in answer["models"]] == ["LeNet-5 + batch norm", "MLP 500-150"]
    assert answer["study"] == {"results": None, "robustness": None}

    results = tmp_path / "reports" / "mnist" / "results.json"
    assert study_summary(results) == {"results": None, "robustness": None}
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps({"variants": {"mlp": {"label": "MLP 500-150"}}, "runs": []}))
    assert study_summary(results) == {"results": shown_path(results), "robustness": None}  # never absolute
    results.write_text(
        json.dumps(
            {
                "variants": {"mlp": {"label": "MLP 500-150"}},
                "claims": {"robustness": {"shift": {"values": [0, 3, 6], "accuracy": {"mlp": [0.98, 0.5, 0.1]}}}},
            }
        )
    )
    with running([], study=study_summary(results)) as other:
        study = request(other, "GET", "/api/models")[2]["study"]
    means = [0.98, 0.5, 0.1]
    assert study["results"] == shown_path(results) and study["robustness"]["shift"]["lines"][0]["mean"] == means


def test_a_served_models_label_says_it_was_trained_with_augmentation(tmp_path):
    from mnistlab.checkpoint import save_checkpoint

    save_checkpoint(
        tmp_path / "lenet5-all-e10-s0" / "checkpoint.pt",
        model_name="lenet5-reg",
        model_kwargs={},
        config={"model": "lenet5-reg", "augment": True},
        epoch=1,
        metrics=[],
        model_state=create_model("lenet5-reg").state_dict(),
    )
    (served,) = load_served_models([tmp_path / "lenet5-all-e10-s0"])
    assert served.label == "LeNet-5 + batch norm + dropout + augmentation"
    assert served.describe()["label"] == served.label
