"""SGD's update written out (sgd.py), against torch.optim.SGD itself."""

import pytest
import torch

from mnistlab.sgd import foreach_step, sgd_update

SETTINGS = [  # momentum, weight decay, nesterov
    (0.95, 5e-4, True),  # the fast recipe's
    (0.9, 0.0, False),  # the default
    (0.0, 1e-3, False),  # no buffers
    (0.0, 0.0, False),
]


def make(momentum, weight_decay, nesterov, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(7, 5, generator=g)), torch.nn.Parameter(torch.randn(3, generator=g)),
              torch.nn.Parameter(torch.randn(4, generator=g))]  # fmt: skip
    return params, torch.optim.SGD(params, lr=0.1, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, foreach=True)


@pytest.mark.parametrize("momentum,weight_decay,nesterov", SETTINGS)
def test_foreach_step_is_torchs_step_to_the_bit(momentum, weight_decay, nesterov):
    ours, ours_opt = make(momentum, weight_decay, nesterov)
    theirs, theirs_opt = make(momentum, weight_decay, nesterov)
    g = torch.Generator().manual_seed(1)
    for step in range(8):
        grads = [torch.randn(p.shape, generator=g) for p in ours]
        frozen = step >= 4  # the last parameter stops learning, as a frozen first layer does: no gradient
        for params, opt in ((ours, ours_opt), (theirs, theirs_opt)):
            for p, grad in zip(params, grads):
                p.grad = None if frozen and p is params[-1] else grad.clone()
            opt.param_groups[0]["lr"] = 0.1 / (step + 1)
        foreach_step(ours_opt)
        theirs_opt.step()
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b), step
        for a, b in zip(ours, theirs):
            assert torch.equal(ours_opt.state[a].get("momentum_buffer", torch.zeros(0)),
                               theirs_opt.state[b].get("momentum_buffer", torch.zeros(0))), step  # fmt: skip
    assert ours_opt.state_dict()["param_groups"] == theirs_opt.state_dict()["param_groups"]


def test_foreach_step_leaves_what_it_does_not_do_to_torch(monkeypatch):
    # its own arithmetic only where it is torch's foreach SGD with every momentum buffer made
    calls = []
    params, opt = make(0.9, 0.0, False)
    monkeypatch.setattr(type(opt), "step", lambda self, *a: calls.append("sgd"))
    for p in params:
        p.grad = torch.ones_like(p)
    foreach_step(opt)  # the first step: no buffers yet
    assert calls == ["sgd"]
    adam = torch.optim.Adam(params)
    monkeypatch.setattr(type(adam), "step", lambda self, *a: calls.append("adam"))
    foreach_step(adam)
    assert calls == ["sgd", "adam"]


def test_sgd_update_is_torchs_sgd_with_the_rate_a_tensor():
    torch.manual_seed(0)
    for momentum, weight_decay, nesterov in [(0.9, 5e-4, True), (0.9, 0.0, False), (0.0, 1e-3, False)]:
        params = [torch.randn(7, 5), torch.randn(3)]
        ours = [p.clone() for p in params]
        optimizer = torch.optim.SGD(params, lr=0.1, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
        buffers = None
        for step in range(6):
            grads = [torch.randn_like(p) for p in params]
            lr = 0.1 / (step + 1)
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.param_groups[0]["lr"] = lr
            optimizer.step()
            if buffers is None:  # torch's first step makes the buffers (a copy of the gradient); the graph comes after
                buffers = [optimizer.state[p].get("momentum_buffer") for p in params]
                buffers = [None if b is None else b.clone() for b in buffers]
                ours = [p.clone() for p in params]
                continue
            sgd_update(ours, grads, buffers, torch.tensor(lr), momentum, weight_decay, nesterov)
            for a, b in zip(ours, params):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


