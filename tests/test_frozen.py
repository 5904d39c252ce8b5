import pytest
import torch
from synthetic import make_arrays

from mnistlab.config import TrainConfig
from mnistlab.engine import build, fit, train_one_epoch
from mnistlab.fast import run_steps
from mnistlab.fast.frozen import FrozenFirstBlock, split_lenet5
from mnistlab.fast.steps import frozen_first_block
from mnistlab.inputs import normalize

CPU = torch.device("cpu")


def tensors(n: int, seed: int = 0):
    arrays = make_arrays(n, 1, seed=seed)
    return torch.from_numpy(arrays.train_images), torch.from_numpy(arrays.train_labels).long()


def test_the_split_model_gives_the_model_s_logits():
    model, _ = build(TrainConfig(model="lenet5"), CPU)
    images, _ = tensors(70)
    head, tail = split_lenet5(model)
    x = normalize(images)
    assert torch.equal(tail(head(x)), model(x))


def test_a_frozen_step_starts_from_the_block_s_outputs_of_its_own_images():
    model, _ = build(TrainConfig(model="lenet5"), CPU)
    images, _ = tensors(300)
    block = frozen_first_block(model, images, TrainConfig(model="lenet5", eval_batch_size=128, freeze_first_at=0.5))
    idx = torch.tensor([299, 0, 17, 128, 17])
    with torch.no_grad():
        expected = block.head(normalize(images[idx]))
        assert torch.equal(block.inputs(idx), expected)  # computed in batches of 128, the same values
        assert torch.equal(block.tail(block.inputs(idx)), model(normalize(images[idx])))
    assert block.inputs(idx).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "kwargs",
    [dict(freeze_first_at=1.0), dict(augment=True), dict(amp=True), dict(model="lenet5-bn"), dict(model="mlp")],
)
def test_no_block_is_cached_where_it_is_not_a_fixed_function_of_each_image(kwargs):
    config = TrainConfig(**{"model": "lenet5", "freeze_first_at": 0.5, **kwargs})
    model, _ = build(config, CPU)
    assert frozen_first_block(model, tensors(10)[0], config) is None  # and for plain LeNet-5 one is: the test above


def test_training_from_the_cached_block_is_training_through_it():
    """The same weights to the last bit: the cache changes what a step costs, not what it computes."""
    images, labels = tensors(320)
    config = TrainConfig(model="lenet5", batch_size=32, freeze_first_at=0.3, momentum=0.9, weight_decay=5e-4)
    states = []
    for cached in (True, False):
        model, optimizer = build(config, CPU)
        fast_steps = run_steps(model, optimizer, images, labels, config) if cached else None
        assert (fast_steps is not None) == cached
        for epoch in range(2):
            generator = torch.Generator().manual_seed(epoch)
            train_one_epoch(model, optimizer, images, labels, config, generator, 10 * epoch, 20, fast_steps=fast_steps)
        states.append(model.state_dict())
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key


def test_a_run_computes_the_block_once_for_all_its_epochs(tmp_path, monkeypatch):
    computed = []
    real = FrozenFirstBlock.compute

    def counted(self):
        computed.append(len(self.images))
        return real(self)

    monkeypatch.setattr(FrozenFirstBlock, "compute", counted)
    config = TrainConfig(model="lenet5", epochs=3, batch_size=32, val_size=40, freeze_first_at=0.2, device="cpu")
    fit(config, make_arrays(200, 20), tmp_path / "run", log=lambda line: None)
    assert computed == [160]  # the 160 training images, once, when the first layer froze in epoch 1
    fit(
        TrainConfig(model="lenet5", epochs=1, batch_size=32, val_size=40, device="cpu"),
        make_arrays(200, 20),
        tmp_path / "plain",
        log=lambda line: None,
    )
    assert computed == [160]  # a run whose first layer learns throughout has nothing to cache
