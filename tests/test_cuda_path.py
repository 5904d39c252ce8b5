"""The GPU path: data, batches and augmentation stay on the data's device, no host sync in an epoch, `amp`.

Most of it is checked on the CPU: a `meta` device stands in for the GPU (a CPU tensor mixed
into a computation on it raises), and host syncs are caught by making the calls that cause
them raise when mnistlab's code makes them. With CUDA present, the epoch also runs under
torch.cuda.set_sync_debug_mode("error").
"""

import sys
from pathlib import Path

import pytest
import torch

import mnistlab
from mnistlab.config import TrainConfig
from mnistlab.engine import build, evaluate, train_one_epoch
from mnistlab.fast import run_steps

CASES = [  # model, optimizer, augment, amp
    ("lenet5-reg", "sgd", True, False),
    ("lenet5", "adam", False, False),
    ("mlp", "adamw", True, False),
    ("lenet5-bn", "sgd", True, True),
]
PACKAGE = str(Path(mnistlab.__file__).parent)


def prepare(device, model, optimizer, augment, amp, n=100, batch_size=32):
    config = TrainConfig(model=model, optimizer=optimizer, augment=augment, amp=amp, batch_size=batch_size, val_size=0)
    net, opt = build(config, device)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8).to(device)
    labels = torch.randint(0, 10, (n,)).to(device)
    return net, lambda: train_one_epoch(
        net, opt, images, labels, config, torch.Generator().manual_seed(0), 0, -(-n // batch_size)
    )


def one_epoch(device, model, optimizer, augment, amp, n=100, batch_size=32):
    net, epoch = prepare(device, model, optimizer, augment, amp, n, batch_size)
    return net, epoch()


@pytest.mark.parametrize("model,optimizer,augment,amp", [case for case in CASES if not case[3]])  # no autocast on meta
def test_every_tensor_of_an_epoch_is_on_the_data_device(model, optimizer, augment, amp):
    # On `meta`, any CPU tensor (augmentation parameters, say) combined with the batch raises.
    net, steps = one_epoch(torch.device("meta"), model, optimizer, augment, amp)
    assert steps == 4
    assert all(p.device.type == "meta" for p in net.parameters())


def test_the_frozen_first_block_stays_on_the_data_device():
    device, n = torch.device("meta"), 100
    config = TrainConfig(model="lenet5", batch_size=32, val_size=0, freeze_first_at=0.5)
    net, opt = build(config, device)
    images, labels = (
        torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8).to(device),
        torch.randint(0, 10, (n,)).to(device),
    )
    fast_steps = run_steps(net, opt, images, labels, config)
    assert (
        train_one_epoch(net, opt, images, labels, config, torch.Generator().manual_seed(0), 0, 4, fast_steps=fast_steps)
        == 4
    )
    frozen = fast_steps.frozen
    assert frozen.outputs is not None and frozen.outputs.device == device


def test_batches_are_gathered_with_an_index_on_the_data_device(monkeypatch):
    # A CPU index into GPU data works, but copies the index and syncs on every batch.
    gathers = []
    real = torch.Tensor.index_select

    def index_select(self, dim, index):
        gathers.append((self.device, index.device))
        return real(self, dim, index)

    monkeypatch.setattr(torch.Tensor, "index_select", index_select)
    one_epoch(torch.device("meta"), "lenet5", "sgd", augment=True, amp=False)
    assert len(gathers) == 2 * 4  # images and labels, 4 batches
    assert all(data.type == "meta" and index.type == "meta" for data, index in gathers)


SYNCING = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


@pytest.mark.parametrize("model,optimizer,augment,amp", CASES)
def test_the_epoch_loop_reads_nothing_back_to_the_host(monkeypatch, model, optimizer, augment, amp):
    # On a GPU each of these waits for the device; mnistlab's own code must not call them in an epoch.
    calls = []

    def guard(name):
        real = getattr(torch.Tensor, name)

        def checked(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(PACKAGE):
                calls.append(f"{name} from {Path(caller).name}:{sys._getframe(1).f_lineno}")
            return real(self, *args, **kwargs)

        return checked

    for name in SYNCING:
        monkeypatch.setattr(torch.Tensor, name, guard(name))
    one_epoch(torch.device("cpu"), model, optimizer, augment, amp)
    assert calls == []


def test_the_guard_catches_a_sync_in_mnistlab_code(monkeypatch):
    # The test above would pass vacuously if the guard missed calls made from the package.
    calls = []
    real = torch.Tensor.item
    monkeypatch.setattr(
        torch.Tensor, "item", lambda self: calls.append(sys._getframe(1).f_code.co_filename) or real(self)
    )
    evaluate(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)),
        torch.zeros(4, 28, 28, dtype=torch.uint8),
        torch.zeros(4, dtype=torch.long),
    )
    assert calls and all(c.startswith(PACKAGE) for c in calls)


def test_amp_trains_in_bf16_on_cpu_and_is_reproducible():
    dtypes = []
    net, epoch = prepare(torch.device("cpu"), "lenet5", "sgd", augment=True, amp=True)
    hook = net.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    epoch()
    assert dtypes and set(dtypes) == {torch.bfloat16}
    again, _ = one_epoch(torch.device("cpu"), "lenet5", "sgd", augment=True, amp=True)
    for (name, a), b in zip(net.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
        assert a.dtype == torch.float32 and torch.isfinite(a).all(), name  # the weights stay float32

    images = torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (50,))
    dtypes.clear()
    loss_amp, acc_amp = evaluate(net, images, labels, batch_size=16, amp=True)
    assert set(dtypes) == {torch.bfloat16}
    hook.remove()
    loss, acc = evaluate(net, images, labels, batch_size=16)
    assert loss_amp == pytest.approx(loss, rel=0.05) and abs(acc_amp - acc) <= 0.1


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("model,optimizer,augment,amp", CASES)
def test_cuda_epoch_makes_no_host_sync(model, optimizer, augment, amp):
    device = torch.device("cuda")
    one_epoch(device, model, optimizer, augment, amp, n=64, batch_size=16)  # warm-up: lazy initialization may sync
    net, epoch = prepare(device, model, optimizer, augment, amp, n=256, batch_size=64)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        epoch()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(p.device.type == "cuda" for p in net.parameters())
