"""Training steps replayed from CUDA graphs: on a GPU, a small model's step is bound by kernel launches.

A LeNet-5 step at batch 64 launches 73 kernels, and on a GPU it takes as long at batch 256.
`StepGraphs` captures each kind of step of a run once and replays it for every later step of
that kind: one launch instead of 73 (what it gains: benchmarks/wing.md and benchmarks/cuda_graphs.md).

A graph replays fixed kernels on fixed memory, so what changes from step to step is fed in:
- the batch: the step gathers its images by an index tensor that the graph owns, refilled each step;
- the learning rate: a tensor the graph owns, refilled each step. torch.optim.SGD takes its rate
  as a Python number, baked into a captured kernel, so the update is written out in `sgd_update`:
  torch's SGD arithmetic, on the optimizer's own momentum buffers, so that its state dict,
  checkpoints and resuming are unchanged;
- augmentation: its random numbers are drawn on the host from the run's generator, for the whole
  epoch at its start (`affine_draws`), and each step's rows are copied in.

Each kind of step is its own graph: a step after the first layer freezes (`freeze_first_at`)
computes other gradients and updates fewer parameters. A step of another batch size (the last,
partial batch of a pass) runs eagerly. Before a kind is captured, its first WARMUP steps run
eagerly on a side stream, as real steps of the run, so that lazy initialization (cuBLAS and
cuDNN handles, the momentum buffers) happens outside the graph, as torch's documentation asks.

How the numbers relate to eager steps: the same kernels, but the update computes
`param - lr * step` where torch computes `param + (-lr) * step`, so the weights differ by rounding
(tests/test_graphs.py). Dropout masks come from CUDA's default generator, which torch advances
at each replay, so each step draws new masks.

Used on CUDA with SGD and without autocast (`fast.step_graphs`); everywhere else the steps are eager.
On a CPU, `StepGraphs(capture=False)` runs the same static-buffer step without a graph, which is
how the tests check everything here but the capture.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Sequence

import torch

WARMUP = 3  # eager steps of a kind before it is captured (torch's documentation uses 3)


class StepGraphs:
    """A run's training steps, each kind captured once as a CUDA graph and then replayed.

    `step(kind, loss_of, inputs, lr)` is one optimizer step: the backward pass of
    `loss_of(*inputs)` and the update at learning rate `lr`. Every step of one `kind` must compute
    the same thing from inputs of the same shapes, reading the same tensors besides its inputs
    (the dataset, the model): the graph replays the kind's first capture, on its memory.
    """

    def __init__(self, optimizer: torch.optim.SGD, capture: bool = True):
        if not isinstance(optimizer, torch.optim.SGD) or len(optimizer.param_groups) != 1:
            raise ValueError("StepGraphs replays torch.optim.SGD with one parameter group")
        self.optimizer, self.capture = optimizer, capture
        self.replays: dict[Hashable, Callable[[Sequence[torch.Tensor], float], None]] = {}
        self.eager_steps: Counter = Counter()  # per kind: the steps run eagerly before its capture
        self.replayed: Counter = Counter()  # per kind: the steps replayed
        self.stream = torch.cuda.Stream() if capture else None

    def step(
        self, kind: Hashable, loss_of: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], lr: float
    ) -> None:
        replay = self.replays.get(kind)
        if replay is None and self.eager_steps[kind] < WARMUP:
            self.eager_steps[kind] += 1
            with self.side_stream():
                self.optimizer.param_groups[0]["lr"] = lr
                self.optimizer.zero_grad(set_to_none=True)
                loss_of(*inputs).backward()
                self.optimizer.step()
            return
        if replay is None:
            replay = self.replays[kind] = self.record(loss_of, inputs)
        replay(inputs, lr)
        self.replayed[kind] += 1

    @contextlib.contextmanager
    def side_stream(self) -> Iterator[None]:
        if self.stream is None:
            yield
            return
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            yield
        torch.cuda.current_stream().wait_stream(self.stream)

    def record(
        self, loss_of: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor]
    ) -> Callable[[Sequence[torch.Tensor], float], None]:
        """Capture one step of this kind; returns what replays it on new inputs at a new rate."""
        static = [x.clone() for x in inputs]
        rate = torch.zeros((), device=static[0].device)
        group = self.optimizer.param_groups[0]
        params = [p for p in group["params"] if p.requires_grad]  # a frozen layer is neither differentiated nor updated
        momentum, weight_decay, nesterov = group["momentum"], group["weight_decay"], group["nesterov"]
        buffers = [self.optimizer.state[p].get("momentum_buffer") for p in params] if momentum else [None] * len(params)
        if any(b is None for b in buffers) and momentum:
            raise RuntimeError("a kind of step is captured only after an eager step has made its momentum buffers")

        def train_step() -> None:
            self.optimizer.zero_grad(set_to_none=True)  # the backward pass then writes the gradients, not adds to them
            loss_of(*static).backward()
            sgd_update(params, [p.grad for p in params], buffers, rate, momentum, weight_decay, nesterov)

        if self.capture:
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                train_step()
            run = graph.replay
        else:
            run = train_step

        def replay(new_inputs: Sequence[torch.Tensor], lr: float) -> None:
            for held, x in zip(static, new_inputs):
                held.copy_(x)
            rate.fill_(lr)
            group["lr"] = lr  # the optimizer's state dict shows the last step's rate, as after an eager step
            run()

        return replay


@torch.no_grad()
def sgd_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    buffers: list[torch.Tensor | None],
    lr: torch.Tensor,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
) -> None:
    """torch.optim.SGD's update (no dampening) with the learning rate a tensor; buffers are updated in place.

    `param - lr * step` where torch computes `param + (-lr) * step`: the same to rounding."""
    for param, grad, buf in zip(params, grads, buffers):
        if weight_decay:
            grad = grad.add(param, alpha=weight_decay)
        if buf is not None:
            buf.mul_(momentum).add_(grad)
            grad = grad.add(buf, alpha=momentum) if nesterov else buf
        param.sub_(grad * lr)
