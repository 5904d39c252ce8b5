"""LeNet-5 as published in 1998 (models_1998.py), its loss (engine.training_loss) and its optimizer (sdlm.py)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from synthetic import draw_digit, png_bytes, request, save_model
from torch import nn

from mnistlab.checkpoint import load_model
from mnistlab.cli import main
from mnistlab.config import TrainConfig, config_lr
from mnistlab.engine import build, make_optimizer, training_loss
from mnistlab.errors import UserError
from mnistlab.fast import prepare, run_steps
from mnistlab.fast.stacked import can_stack, worth_stacking
from mnistlab.inputs import normalize
from mnistlab.inside import layer_outputs
from mnistlab.models import count_parameters, create_model, hand_count, parameter_table
from mnistlab.models_1998 import TABLE_I, Squash, digit_codes
from mnistlab.sdlm import MU, SDLM, curvatures
from mnistlab.server import load_served_models
from mnistlab.site import browser_layers

ROAD = ["lenet5-1998", "lenet5-1998-relu", "lenet5-1998-maxpool", "lenet5-1998-fullc3", "lenet5-1998-linear"]

# Table I of the paper, row by row: the C3 maps that each S2 map feeds (X in its row)
PAPER_TABLE_I = {
    0: (0, 4, 5, 6, 9, 10, 11, 12, 14, 15),
    1: (0, 1, 5, 6, 7, 10, 11, 12, 13, 15),
    2: (0, 1, 2, 6, 7, 8, 11, 13, 14, 15),
    3: (1, 2, 3, 6, 7, 8, 9, 12, 14, 15),
    4: (2, 3, 4, 7, 8, 9, 10, 12, 13, 15),
    5: (3, 4, 5, 8, 9, 10, 11, 13, 14, 15),
}


def test_c3_reads_the_maps_of_table_i_and_no_others():
    assert [tuple(j for j, mark in enumerate(row) if mark == "X") for row in TABLE_I] == list(PAPER_TABLE_I.values())
    # what the layer computes: output map j changes with input map i exactly where Table I has an X
    c3 = create_model("lenet5-1998").C3[0]
    for i, maps in PAPER_TABLE_I.items():
        x = torch.zeros(1, 6, 14, 14)
        moved = x.clone()
        moved[0, i] = torch.randn(14, 14)
        changed = (c3(moved) - c3(x)).abs().flatten(2).amax(2)[0] > 0
        assert changed.nonzero().flatten().tolist() == list(maps), i


def test_parameters_per_layer_are_the_papers():
    model = create_model("lenet5-1998")
    rows = parameter_table(model)
    assert [(name, count) for name, _, count in rows] == [
        ("C1", 156),
        ("S2", 12),
        ("C3", 1_516),
        ("S4", 32),
        ("C5", 48_120),
        ("F6", 10_164),
    ]
    assert all(hand_count(formula) == count for _, formula, count in rows)
    assert count_parameters(model) == sum(count for *_, count in rows) == 60_000


def test_the_models_command_shows_the_1998_network_layer_by_layer(capsys):
    assert main(["models", "lenet5-1998"]) == 0
    out = capsys.readouterr().out
    assert "lenet5-1998 (LeNet-5 (1998)): 60,000 parameters" in out
    assert "C3     (3x5x5+1)x6+(4x5x5+1)x9+(6x5x5+1)x1 =     1,516" in out
    assert "shapes 1x28x28 -> 1x32x32 -> 6x28x28 -> 6x14x14 -> 16x10x10 -> 16x5x5 -> 120 -> 84 -> 10" in out


def test_the_input_is_the_digit_centred_in_a_32x32_field_from_minus_0_1_to_1_175():
    images = torch.zeros(2, 28, 28, dtype=torch.uint8)
    images[1, 10:18, 10:18] = 255
    field = create_model("lenet5-1998").input(normalize(images))
    assert field.shape == (2, 1, 32, 32)
    torch.testing.assert_close(field[0], torch.full((1, 32, 32), -0.1))
    torch.testing.assert_close(field[1, 0, 12:20, 12:20], torch.full((8, 8), 1.175))
    assert torch.allclose(field[1, 0, :12], torch.tensor(-0.1))


def test_squashing_subsampling_and_initialization_are_the_papers():
    torch.manual_seed(0)
    model = create_model("lenet5-1998")
    a = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(model.C1[1](a), 1.7159 * torch.tanh(2 * a / 3))
    assert abs(float(model.C1[1](torch.tensor(1.0))) - 1) < 1e-4  # f(1) = 1
    s2 = model.S2[0]
    x = torch.randn(2, 6, 28, 28)
    sums = x.unfold(2, 2, 2).unfold(3, 2, 2).sum((-1, -2))
    torch.testing.assert_close(s2(x), sums * s2.weight.view(1, -1, 1, 1) + s2.bias.view(1, -1, 1, 1))
    # uniform in +-2.4 / fan-in, per unit: C1 25 inputs, S2 4, C3 75, 100 or 150, C5 400, F6 120
    for layer, fan_in in [(model.C1[0], 25), (model.S2[0], 4), (model.C5[0], 400), (model.F6[0], 120)]:
        for p in layer.parameters():
            assert p.abs().max() <= 2.4 / fan_in
            assert p.numel() < 25 or p.abs().max() > 0.8 * 2.4 / fan_in  # and fills the range (enough draws to see it)
    c3 = model.C3[0]
    bound = 2.4 / (25 * c3.fan_ins().float())
    assert (c3.bias.abs() <= bound).all() and (c3.weight.abs().amax((1, 2)) <= bound[c3.outputs]).all()


def test_the_output_is_minus_the_squared_distance_to_fixed_codes_of_the_digits():
    codes = digit_codes()
    assert codes.shape == (10, 84) and set(codes.unique().tolist()) == {-1.0, 1.0}
    differing = (codes[:, None] != codes[None]).sum(2) + 84 * torch.eye(10, dtype=torch.long)
    assert differing.min() >= 11  # the closest pair (0 and 6) still differs in 11 of 84 bits
    model = create_model("lenet5-1998")
    assert not any("output" in name for name, _ in model.named_parameters())  # fixed: nothing to learn
    f6 = torch.rand(5, 84) * 2 - 1
    expected = -torch.stack([((f6 - codes[i]) ** 2).sum(1) for i in range(10)], 1)
    torch.testing.assert_close(model.output(f6), expected)


def test_the_map_loss_is_the_papers_formula():
    penalties = torch.rand(6, 10, dtype=torch.float64) * 30
    labels = torch.tensor([0, 3, 9, 2, 2, 7])
    j = 10.0  # config.RUBBISH_PENALTY
    direct = penalties[torch.arange(6), labels] + torch.log(math.exp(-j) + torch.exp(-penalties).sum(1))
    loss = training_loss(-penalties, labels, TrainConfig(model="lenet5-1998", loss="map"))
    torch.testing.assert_close(loss, direct.mean())
    assert training_loss(-penalties, labels, TrainConfig()) == F.cross_entropy(-penalties, labels)


def test_the_lecun98_schedule_is_the_papers_step_sizes_per_pass():
    config = TrainConfig(model="lenet5-1998", optimizer="sdlm", schedule="lecun98", lr=0.0005, epochs=20)
    per_pass = [config_lr(config, epoch * 100 + 50, 2000) for epoch in range(20)]
    expected = [0.0005] * 2 + [0.0002] * 3 + [0.0001] * 3 + [0.00005] * 4 + [0.00001] * 8
    assert per_pass == pytest.approx(expected, rel=1e-12)


@torch.no_grad()
def finite_difference_diagonal(model, images, targets, loss, eps=1e-4):
    """The loss's second derivative in each parameter, (L(w+e) - 2 L(w) + L(w-e)) / e^2, averaged over the images."""
    diagonals = []
    for param in model.parameters():
        diagonal = torch.zeros_like(param)
        flat = param.data.view(-1)
        for k in range(flat.numel()):
            values = []
            for delta in (eps, 0.0, -eps):
                flat[k] += delta
                values.append(float(loss(model(images), targets)))
                flat[k] -= delta
            diagonal.view(-1)[k] = (values[0] - 2 * values[1] + values[2]) / eps**2
        diagonals.append(diagonal)
    return diagonals


@pytest.mark.parametrize(
    "kind",
    [
        "one layer, cross-entropy",
        "two layers with ReLU, squared error",
        "two layers with the squashing function, squared error, at zero residual",
    ],
)
def test_sdlms_diagonal_is_the_second_derivative_on_a_network_where_its_approximations_are_exact(kind):
    """The paper's two approximations drop the squashing's second derivative and the terms between units; on a
    network with one layer, or with one output (one path from each weight), and ReLU units or a residual of
    zero (which multiplies the squashing's second derivative), there are none, so its h_kk is the loss's own."""
    torch.manual_seed(0)
    images = torch.randn(7, 4, dtype=torch.float64)
    if kind.startswith("one"):
        model = nn.Sequential(nn.Linear(4, 3)).double()
        targets = torch.randint(0, 3, (7,))
        loss = F.cross_entropy
    else:
        squashing = Squash() if "squashing" in kind else nn.ReLU()
        model = nn.Sequential(nn.Linear(4, 5), squashing, nn.Linear(5, 1)).double()
        targets = model(images).detach() if "zero residual" in kind else torch.randn(7, 1, dtype=torch.float64)

        def loss(outputs, targets):
            return 0.5 * (outputs - targets).square().mean()

    found = curvatures(model, images, targets, loss)
    expected = finite_difference_diagonal(model, images, targets, loss)
    for param, diagonal in zip(model.parameters(), expected):
        torch.testing.assert_close(found[param], diagonal, atol=1e-6, rtol=1e-5)


def test_sdlm_steps_each_parameter_by_lr_over_mu_plus_its_curvature():
    torch.manual_seed(0)
    config = TrainConfig(model="lenet5-1998", optimizer="sdlm", loss="map", lr=0.0005)
    model, optimizer = build(config, torch.device("cpu"))
    assert isinstance(optimizer, SDLM)
    images, labels = torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (20,))
    optimizer.estimate(model, images, labels, torch.arange(20), lambda out, y: training_loss(out, y, config))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    training_loss(model(normalize(images[:4])), labels[:4], config).backward()
    optimizer.step()
    for name, p in model.named_parameters():
        curvature = optimizer.state[p]["curvature"]
        assert (curvature >= 0).all() and curvature.abs().sum() > 0, name
        torch.testing.assert_close(p, before[name] - 0.0005 * p.grad / (MU + curvature), atol=1e-9, rtol=1e-6)


def test_sdlm_refuses_a_layer_it_cannot_propagate_through():
    with pytest.raises(Exception, match="cannot propagate second derivatives through a BatchNorm2d"):
        curvatures(create_model("lenet5-bn"), torch.randn(4, 1, 28, 28), torch.arange(4), F.cross_entropy)


def test_sdlm_takes_no_weight_decay_and_map_no_label_smoothing():
    with pytest.raises(Exception, match="sdlm optimizer takes no weight decay"):
        TrainConfig(optimizer="sdlm", weight_decay=1e-4)
    with pytest.raises(Exception, match="label smoothing applies to the cross-entropy loss"):
        TrainConfig(loss="map", label_smoothing=0.1)
    assert isinstance(make_optimizer(TrainConfig(optimizer="sdlm"), create_model("lenet5")), SDLM)


def test_the_speed_wing_leaves_the_1998_network_alone():
    assert not can_stack("lenet5-1998")
    for device in ("cpu", "cuda"):
        config = TrainConfig(model="lenet5-1998", optimizer="sdlm", loss="map")
        assert not worth_stacking(config, torch.device(device))
    model = create_model("lenet5-1998")
    classes = [type(m) for m in model.modules()]
    assert [type(m) for m in prepare(model, torch.device("cpu")).modules()] == classes
    # with the map loss the engine takes every step itself, even where the wing would take LeNet-5's
    config = TrainConfig(model="lenet5", loss="map", freeze_first_at=0.5)
    model, optimizer = build(config, torch.device("cpu"))
    images, labels = torch.zeros(8, 28, 28, dtype=torch.uint8), torch.zeros(8, dtype=torch.long)
    assert run_steps(model, optimizer, images, labels, config) is None
    assert run_steps(model, optimizer, images, labels, TrainConfig(freeze_first_at=0.5)) is not None


@pytest.mark.parametrize("name", ROAD)
def test_its_stages_are_its_named_layers_and_the_last_its_logits(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    seen = {}
    for name in model.stages:
        getattr(model, name).register_forward_hook(lambda m, args, out, name=name: seen.update({name: out}))
    logits = model(normalize(images))
    outputs = layer_outputs(model, images)
    assert list(outputs) == ["input", "field", "C1", "S2", "C3", "S4", "C5", "F6", "output"]
    assert torch.equal(outputs["output"], logits)
    for name in model.stages[1:]:
        assert torch.equal(outputs[name], seen[name]), name


def test_the_page_predicts_with_it_and_shows_its_stages(tmp_path, running):
    run_dir = save_model(tmp_path / "lenet5-1998-e20-s0", "lenet5-1998")
    with running(load_served_models([run_dir])) as port:
        png = png_bytes(draw_digit(7, (280, 280)))
        status, _, answer = request(port, "POST", "/api/predict?inside=1", png, {"Content-Type": "image/png"})
    assert status == 200
    (prediction,) = answer["predictions"]
    model = load_model(run_dir)[0]
    image = torch.tensor(answer["model_input"], dtype=torch.uint8)
    expected = torch.softmax(model(normalize(image[None])).double(), 1)[0]
    assert np.allclose(prediction["probabilities"], expected.detach().numpy(), atol=1e-6)
    inside = prediction["inside"]
    assert [layer["name"] for layer in inside["layers"]] == ["field", "C1", "S2", "C3", "S4", "C5", "F6", "output"]
    assert inside["filters"]["shape"] == [6, 5, 5]  # C1's kernels


def test_the_static_site_refuses_it_in_one_line():
    """forward.js runs the textbook layers only; the 1998 network is served by `mnistlab serve`, not the static site."""
    with pytest.raises(UserError, match="model lenet5-1998: its layer PaperInput\\(\\) cannot run in the browser"):
        browser_layers(create_model("lenet5-1998"), "lenet5-1998")


def test_each_step_of_the_road_makes_its_one_change():
    """From the paper's network towards the textbook LeNet-5, one change per step (models.MODELS)."""
    models = {name: create_model(name) for name in ROAD}

    def kinds(model):
        return {type(m).__name__ for m in model.modules()}

    steps = list(zip(ROAD, ROAD[1:]))
    changes = [(kinds(models[a]) - kinds(models[b]), kinds(models[b]) - kinds(models[a])) for a, b in steps]
    assert changes == [
        ({"Squash"}, {"ReLU"}),
        ({"Subsampling"}, {"MaxPool2d"}),
        ({"TableConv"}, set()),
        ({"EuclideanRBF"}, set()),
    ]
    counts = [count_parameters(models[name]) for name in ROAD]
    assert counts == [60_000, 60_000, 60_000 - 12 - 32, 60_000 - 44 - 1_516 + 2_416, 60_856 + 850]
    for name in ROAD:
        assert all(hand_count(formula) == count for _, formula, count in parameter_table(models[name]))
        assert not can_stack(name)
    logits = models["lenet5-1998-linear"](torch.randn(2, 1, 28, 28))
    assert logits.shape == (2, 10) and isinstance(models["lenet5-1998-linear"].output, nn.Linear)
