"""The faster CPU layers of fast/layers.py give the numbers of the plain layers they replace."""

import copy

import pytest
import torch
import torch.nn.functional as F
from synthetic import make_arrays

from mnistlab.checkpoint import load_model, save_checkpoint
from mnistlab.fast import prepare
from mnistlab.fast.layers import (
    FoldedSequential,
    MaxPool2x2,
    pool_before_relu,
    speed_up,
)
from mnistlab.fast.stacked import stacks_on_cpu
from mnistlab.inputs import normalize
from mnistlab.models import MODELS, create_model

FAST_LAYERS = (MaxPool2x2, FoldedSequential)
CL = torch.channels_last


def tie_heavy(shape):
    """Random maps with stretches of equal values, as convolutions of MNIST's flat background give."""
    torch.manual_seed(0)
    x = torch.randn(shape)
    x[: shape[0] // 4] = 0.5
    x[shape[0] // 4 : shape[0] // 2] = torch.randint(0, 3, x[shape[0] // 4 : shape[0] // 2].shape).float()
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape", [(16, 6, 24, 24), (16, 16, 8, 8), (4, 1, 6, 10)])
def test_fast_max_pool_gives_exactly_max_pool2d(shape):
    x = tie_heavy(shape)
    with torch.inference_mode():
        fast = MaxPool2x2()(x)
    assert torch.equal(fast, F.max_pool2d(x, 2))
    assert fast.is_contiguous(memory_format=torch.channels_last)
    # with autograd it is max_pool2d itself: the gradient goes to the first maximum of each window
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn(fast.shape)
    MaxPool2x2()(a).backward(grad)
    F.max_pool2d(b, 2).backward(grad)
    assert torch.equal(a.grad, b.grad)


def test_a_model_with_batch_norm_trains_as_the_plain_model_in_nchw_and_evaluates_channels_last():
    torch.manual_seed(0)
    textbook = create_model("lenet5-bn")
    wing = prepare(copy.deepcopy(textbook), torch.device("cpu"))
    assert all(p.is_contiguous() for p in wing.parameters())  # NCHW: channels-last batch norm trains slower
    assert (
        prepare(create_model("lenet5"), torch.device("cpu"))
        .features[0]
        .weight.is_contiguous(memory_format=torch.channels_last)
    )
    arrays = make_arrays(32, 1)
    images, labels = normalize(torch.from_numpy(arrays.train_images)), torch.from_numpy(arrays.train_labels).long()
    for model in (textbook, wing):
        F.cross_entropy(model(images), labels).backward()
    for p, q in zip(textbook.parameters(), wing.parameters()):
        assert torch.equal(p.grad, q.grad)  # the same step as the plain model's, to the bit
    wing.eval()
    with torch.inference_mode():
        seen = []
        pool = next(m for m in wing.modules() if isinstance(m, MaxPool2x2))
        pool.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(memory_format=CL)))
        torch.testing.assert_close(wing(images), textbook.eval()(images).detach(), rtol=1e-5, atol=1e-5)
    assert seen == [True]  # the folded convolution's output, in channels-last memory


def test_seeds_stack_on_a_cpu_for_a_convolutional_model():
    assert stacks_on_cpu("lenet5") and stacks_on_cpu("lenet5-bn") and stacks_on_cpu("lenet5-reg")
    assert not stacks_on_cpu("mlp")


@pytest.mark.parametrize("name", ["lenet5", "lenet5-reg"])
def test_evaluation_fast_paths_give_the_logits_of_the_plain_forward(name):
    torch.manual_seed(0)
    model = prepare(create_model(name), torch.device("cpu")).eval()
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        # statistics and an affine part far from the identity, a negative scale among them
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.2, 3)
        norm.weight.data.uniform_(-2, 2)
        norm.bias.data.uniform_(-1, 1)
    images = normalize(torch.from_numpy(make_arrays(64, 1).train_images))
    with torch.inference_mode():
        fast = model(images)
    plain = model(images).detach()  # grad enabled: max_pool2d itself, the batch norms unfolded
    if name == "lenet5":
        assert torch.equal(fast, plain)
    else:  # folding the batch norms into the convolutions only reorders the arithmetic
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
        assert not torch.equal(fast, plain)  # the folded path did run


@pytest.mark.parametrize("name", MODELS)
def test_speed_up_keeps_the_parameters_and_state_dict_keys(name):
    model = create_model(name)
    before = dict(model.state_dict(keep_vars=True))
    assert speed_up(model) is model
    after = model.state_dict(keep_vars=True)
    assert list(after) == list(before)
    assert all(after[k] is before[k] for k in before)  # the same tensors: an optimizer made before still works


def test_speed_up_swaps_exactly_the_layers_it_has_a_faster_version_of():
    model = speed_up(create_model("lenet5-reg"))
    assert type(model.features) is FoldedSequential and type(model.classifier) is torch.nn.Sequential
    assert [type(m) for m in model.features] == [
        torch.nn.Conv2d,
        torch.nn.BatchNorm2d,
        MaxPool2x2,
        torch.nn.ReLU,
        torch.nn.Conv2d,
        torch.nn.BatchNorm2d,
        MaxPool2x2,
        torch.nn.ReLU,
        torch.nn.Flatten,
    ]
    # models.py's order is the textbook's, conv, ReLU, pool; the wing pools first (the same values)
    assert [type(m) for m in create_model("lenet5-reg").features][2:4] == [torch.nn.ReLU, torch.nn.MaxPool2d]
    # without batch norm there is nothing to fold, and a pool other than 2x2 has no fast version
    plain = speed_up(create_model("lenet5"))
    assert type(plain.features) is torch.nn.Sequential
    assert type(speed_up(torch.nn.Sequential(torch.nn.MaxPool2d(3)))[0]) is torch.nn.MaxPool2d


def test_training_and_loaded_models_both_get_the_fast_layers(tmp_path):
    """Evaluation after training and evaluation of a saved checkpoint must compute the same numbers."""
    torch.manual_seed(0)
    trained = prepare(create_model("lenet5-bn"), torch.device("cpu"))
    assert {type(m) for m in trained.modules()} >= set(FAST_LAYERS)
    for norm in (m for m in trained.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.running_var.uniform_(0.2, 3)
    save_checkpoint(
        tmp_path / "checkpoint.pt",
        model_name="lenet5-bn",
        model_kwargs={},
        config={},
        epoch=1,
        metrics=[],
        model_state=trained.state_dict(),
    )
    loaded, _ = load_model(tmp_path)
    assert {type(m) for m in loaded.modules()} >= set(FAST_LAYERS)
    images = normalize(torch.from_numpy(make_arrays(64, 1).train_images))
    with torch.inference_mode():
        folded = loaded(images)
    assert not torch.equal(folded, loaded(images).detach())  # in inference the loaded model folds, as the engine's does


def test_pooling_before_the_relu_gives_the_same_values_and_gradients():
    torch.manual_seed(0)
    textbook = create_model("lenet5")
    swapped = copy.deepcopy(textbook)
    pool_before_relu(swapped.features)
    assert [type(m) for m in swapped.features[:3]] == [torch.nn.Conv2d, torch.nn.MaxPool2d, torch.nn.ReLU]
    images = normalize(torch.from_numpy(make_arrays(32, 1).train_images))
    a, b = textbook(images), swapped(images)
    assert torch.equal(a, b)
    a.square().sum().backward()
    b.square().sum().backward()
    for p, q in zip(textbook.parameters(), swapped.parameters()):
        assert torch.equal(p.grad, q.grad)
