"""SGD's update written out: torch.optim.SGD's arithmetic without its per-step bookkeeping.

`torch.optim.SGD.step` spends most of a small model's update in Python: grouping the tensors by
device and dtype, gathering the state, hooks, profiling records. `foreach_step` makes the same
`torch._foreach_*` calls as torch's foreach implementation, in the same order, on the optimizer's
own parameters and momentum buffers, so the weights are the same to the bit
(tests/test_sgd.py) and the optimizer's state dict, checkpoints and resuming are unchanged.
`sgd_update` is the same update with the learning rate a tensor, which a CUDA graph can read
(graphs.py).
"""

from __future__ import annotations

import torch


def foreach_step(optimizer: torch.optim.Optimizer) -> None:
    """`optimizer.step()`, to the bit, for plain SGD whose momentum buffers exist; else torch's own step.

    "Plain": torch.optim.SGD with one parameter group, foreach, no dampening, not maximizing, no
    sparse gradients. The first step of a run with momentum makes the buffers (torch's step does).
    """
    if not isinstance(optimizer, torch.optim.SGD) or len(optimizer.param_groups) != 1:
        optimizer.step()
        return
    group = optimizer.param_groups[0]
    params = [p for p in group["params"] if p.grad is not None]
    momentum = group["momentum"]
    buffers = [optimizer.state[p].get("momentum_buffer") for p in params] if momentum else []
    plain = group["foreach"] and not (group["dampening"] or group["maximize"] or group["differentiable"])
    if not params or not plain or any(b is None for b in buffers) or any(p.grad.is_sparse for p in params):
        optimizer.step()
        return
    with torch.no_grad():
        grads = [p.grad for p in params]
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        if momentum:
            torch._foreach_mul_(buffers, momentum)
            torch._foreach_add_(buffers, grads, alpha=1)
            if group["nesterov"]:
                torch._foreach_add_(grads, buffers, alpha=momentum)
            else:
                grads = buffers
        torch._foreach_add_(params, grads, alpha=-group["lr"])


@torch.no_grad()
def sgd_update(
    params: list[torch.Tensor], grads: list[torch.Tensor], buffers: list[torch.Tensor | None], lr: torch.Tensor,
    momentum: float, weight_decay: float, nesterov: bool,
) -> None:  # fmt: skip
    """torch.optim.SGD's update (no dampening) with the learning rate a tensor; buffers are updated in place.

    `param - lr * step` where torch computes `param + (-lr) * step`: the same to rounding."""
    for param, grad, buf in zip(params, grads, buffers):
        if weight_decay:
            grad = grad.add(param, alpha=weight_decay)
        if buf is not None:
            buf.mul_(momentum).add_(grad)
            grad = grad.add(buf, alpha=momentum) if nesterov else buf
        param.sub_(grad * lr)
