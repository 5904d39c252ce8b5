import pytest
import torch
import torch.nn.functional as F
from synthetic import make_arrays
from torch import nn

import mnistlab.engine
from mnistlab.config import TrainConfig
from mnistlab.engine import build, frozen_first_block, train_one_epoch
from mnistlab.frozen import split_lenet5
from mnistlab.tail_step import HandTail

CPU = torch.device("cpu")


def frozen_model(seed: int = 0, n: int = 300):
    """A LeNet-5 as the engine trains it, its first block cached over `n` synthetic images, and their labels."""
    torch.manual_seed(seed)
    config = TrainConfig(model="lenet5", freeze_first_at=0.5, eval_batch_size=128)
    model, _ = build(config, CPU)
    with torch.no_grad():
        for p in model.parameters():  # away from the initialization, so that ReLUs and maxima vary
            p.add_(torch.randn_like(p) * 0.05)
    arrays = make_arrays(n, 1, seed=seed)
    block = frozen_first_block(model, torch.from_numpy(arrays.train_images), config)
    return model, block, torch.from_numpy(arrays.train_labels).long()


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.25])
@pytest.mark.parametrize("batch", [64, 24, 7, 1])
def test_the_written_out_backward_gives_autograd_s_gradients_to_the_bit(label_smoothing, batch):
    model, block, labels = frozen_model(seed=batch)
    hand = HandTail.of(block.tail)
    params = list(block.tail.parameters())
    idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(batch))[:batch]

    loss = F.cross_entropy(block.tail(block.inputs(idx)), labels[idx], label_smoothing=label_smoothing)
    expected = torch.autograd.grad(loss, params)
    for p in params:
        p.grad = None
    hand.gradients(block.inputs(idx), labels[idx], label_smoothing)
    for p, want in zip(params, expected):
        assert p.grad is not None and p.grad.shape == p.shape
        assert torch.equal(p.grad, want), (p.shape, (p.grad - want).abs().max().item())


def test_training_with_the_written_out_backward_is_training_with_autograd(monkeypatch):
    """Every weight the same to the bit after two epochs with a freeze, a partial last batch, smoothing and weight decay."""
    arrays = make_arrays(330, 1, seed=3)
    images, labels = torch.from_numpy(arrays.train_images), torch.from_numpy(arrays.train_labels).long()
    config = TrainConfig(model="lenet5", batch_size=32, freeze_first_at=0.3, momentum=0.95, nesterov=True, weight_decay=5e-4,
                         label_smoothing=0.1)  # fmt: skip
    calls, states = [], []
    for by_hand in (True, False):
        if by_hand:
            original = HandTail.gradients
            monkeypatch.setattr(HandTail, "gradients", lambda self, *a: (calls.append(1), original(self, *a))[1])
        else:
            monkeypatch.setattr(mnistlab.engine.HandTail, "of", staticmethod(lambda tail: None))
        torch.manual_seed(0)
        model, optimizer = build(config, CPU)
        frozen = frozen_first_block(model, images, config)
        for epoch in range(2):
            train_one_epoch(model, optimizer, images, labels, config, torch.Generator().manual_seed(epoch), 11 * epoch, 22, frozen=frozen)
        states.append(model.state_dict())
    assert len(calls) == 22 - round(0.3 * 22)  # every step after the freeze, the partial batches included
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key


def test_only_a_plain_lenet5_tail_is_written_out():
    model, _ = build(TrainConfig(model="lenet5"), CPU)
    assert HandTail.of(split_lenet5(model)[1]) is not None
    dropout, _ = build(TrainConfig(model="lenet5-dropout"), CPU)
    assert HandTail.of(split_lenet5(dropout)[1]) is None
    conv = nn.Conv2d(6, 16, 5)
    assert HandTail.of(nn.Sequential(conv, nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))) is not None
    assert HandTail.of(nn.Sequential(nn.Conv2d(6, 16, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))) is None
    assert HandTail.of(nn.Sequential(conv, nn.MaxPool2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))) is None
    assert HandTail.of(nn.Sequential(conv, nn.MaxPool2d(2), nn.Tanh(), nn.Flatten(), nn.Linear(256, 10))) is None
    assert HandTail.of(nn.Sequential(conv, nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10, bias=False))) is None
    assert HandTail.of(nn.Sequential(conv, nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(256, 84), nn.Linear(84, 10))) is None
